"""DynamoDB Streams → Lambda, as an event source mapping does: shards polled in order,
filter criteria, batch size, partial batch responses and retries."""

from __future__ import annotations

import base64
import logging
import threading
import time
import traceback
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal, InvalidOperation
from typing import TYPE_CHECKING, Any

from llmcredits.local.embedded import (
    MOTO_DYNAMODB_LOCK,
    region,
    streams_client,
)
from llmcredits.local.template import (
    LOCAL_ACCOUNT_ID,
    StreamEvent,
)
from llmcredits.units import Seconds

if TYPE_CHECKING:
    from llmcredits.local.server import LocalStack

log = logging.getLogger("llmcredits.local")


def _to_decimal(value: Any) -> Decimal | None:
    if isinstance(value, bool):
        return None
    try:
        return Decimal(str(value))
    except (InvalidOperation, ValueError):
        return None


def _match_value(cond: Any, value: Any) -> bool:
    if isinstance(cond, dict):
        if "prefix" in cond:
            return isinstance(value, str) and value.startswith(str(cond["prefix"]))
        if "suffix" in cond:
            return isinstance(value, str) and value.endswith(str(cond["suffix"]))
        if "equals-ignore-case" in cond:
            return (
                isinstance(value, str) and value.lower() == str(cond["equals-ignore-case"]).lower()
            )
        if "anything-but" in cond:
            but = cond["anything-but"]
            if isinstance(but, dict):
                return not _match_value(but, value)
            buts = but if isinstance(but, list) else [but]
            return not any(_match_value(b, value) for b in buts)
        if "numeric" in cond:
            number = _to_decimal(value)
            if number is None:
                return False
            ops = cond["numeric"]
            for op, bound in zip(ops[::2], ops[1::2], strict=False):
                limit = _to_decimal(bound)
                if limit is None:
                    return False
                ok = {
                    "=": number == limit,
                    "<": number < limit,
                    "<=": number <= limit,
                    ">": number > limit,
                    ">=": number >= limit,
                }.get(op, False)
                if not ok:
                    return False
            return True
        return False
    if cond is None:
        return value is None
    if isinstance(cond, bool):
        return value is cond
    if isinstance(cond, int | Decimal | Seconds):
        a, b = _to_decimal(cond), _to_decimal(value)
        return a is not None and b is not None and a == b
    return isinstance(value, str) and value == cond


_MISSING = object()


def filter_matches(pattern: Mapping[str, Any], record: Any) -> bool:
    """Lambda event filtering (EventBridge pattern syntax) of one record."""
    if not isinstance(record, dict):
        return False
    for key, cond in pattern.items():
        value = record.get(key, _MISSING)
        if isinstance(cond, dict) and not ({"exists"} & set(cond)):
            if not isinstance(value, dict) or not filter_matches(cond, value):
                return False
            continue
        conds = cond if isinstance(cond, list) else [cond]
        values = value if isinstance(value, list) else [value]
        ok = False
        for c in conds:
            if isinstance(c, dict) and "exists" in c:
                present = value is not _MISSING and not isinstance(value, dict)
                if bool(c["exists"]) == present:
                    ok = True
                    break
                continue
            if value is _MISSING:
                continue
            if any(_match_value(c, v) for v in values):
                ok = True
                break
        if not ok:
            return False
    return True


def _lambda_attr(value: Any) -> Any:
    """Attribute values as Lambda delivers them (binary as base64 text)."""
    if isinstance(value, dict):
        return {k: _lambda_attr(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_lambda_attr(v) for v in value]
    if isinstance(value, bytes | bytearray):
        return base64.b64encode(bytes(value)).decode("ascii")
    return value


def lambda_stream_record(
    record: Mapping[str, Any], stream_arn: str, region_name: str
) -> dict[str, Any]:
    """A dynamodbstreams GetRecords record in Lambda's DynamoDB event shape."""
    ddb = dict(record.get("dynamodb") or {})
    created = ddb.get("ApproximateCreationDateTime")
    if isinstance(created, datetime):
        ddb["ApproximateCreationDateTime"] = int(created.timestamp())
    for key in ("Keys", "NewImage", "OldImage"):
        if key in ddb:
            ddb[key] = _lambda_attr(ddb[key])
    out = {
        "eventID": record.get("eventID") or uuid.uuid4().hex,
        "eventName": record.get("eventName"),
        "eventVersion": record.get("eventVersion", "1.1"),
        "eventSource": "aws:dynamodb",
        "awsRegion": record.get("awsRegion") or region_name,
        "dynamodb": ddb,
        "eventSourceARN": stream_arn,
    }
    if "userIdentity" in record:
        out["userIdentity"] = record["userIdentity"]
    return out


def read_stream(
    streams_client: Any,
    stream_arn: str,
    region_name: str,
    patterns: Sequence[Mapping[str, Any]] = (),
) -> list[dict[str, Any]]:
    """Every record of a table's stream so far, in Lambda's event shape, kept when it
    matches any of ``patterns`` (an event source mapping's FilterCriteria; none = all).
    For tests and benchmarks that feed a stream function by hand."""
    records: list[dict[str, Any]] = []
    shards = streams_client.describe_stream(StreamArn=stream_arn)["StreamDescription"]["Shards"]
    for shard in shards:
        iterator = streams_client.get_shard_iterator(
            StreamArn=stream_arn, ShardId=shard["ShardId"], ShardIteratorType="TRIM_HORIZON"
        )["ShardIterator"]
        while iterator:
            resp = streams_client.get_records(ShardIterator=iterator, Limit=1000)
            if not resp["Records"]:
                break
            records.extend(lambda_stream_record(r, stream_arn, region_name)
                           for r in resp["Records"])
            iterator = resp.get("NextShardIterator")
    return [r for r in records if not patterns or any(filter_matches(p, r) for p in patterns)]


class Worker(threading.Thread):
    def __init__(self, name: str) -> None:
        super().__init__(name=name, daemon=True)
        self.stop_event = threading.Event()

    def stop(self) -> None:
        self.stop_event.set()


@dataclass
class _Shard:
    shard_id: str
    iterator: str | None = None
    last_seq: str | None = None
    closed: bool = False
    pending: list[dict[str, Any]] = field(default_factory=list)
    failures: int = 0
    retry_at: Seconds = 0.0


class StreamWorker(Worker):
    """Polls a table's stream and invokes a function as Lambda's event source mapping does."""

    def __init__(
        self,
        stack: LocalStack,
        event: StreamEvent,
        stream_arn: str,
        endpoint: str | None,
        poll_interval: Seconds = 0.1,
    ) -> None:
        super().__init__(f"stream-{event.function_id}-{event.event_name}")
        self.stack = stack
        self.event = event
        self.stream_arn = stream_arn
        self.endpoint = endpoint
        self.embedded = not endpoint
        self.poll_interval = poll_interval
        self.shards: dict[str, _Shard] = {}
        self.cycles = 0
        self.idle_cycle = -1  # last cycle that found nothing new and nothing pending
        self.cond = threading.Condition()
        self._first_describe = True
        self._client = streams_client(endpoint)

    # -- polling -----------------------------------------------------------
    def run(self) -> None:
        while not self.stop_event.is_set():
            try:
                got = self.poll_once()
            except Exception:
                log.exception("stream worker %s: poll failed", self.name)
                got = False
            busy = got or any(s.pending for s in self.shards.values())
            with self.cond:
                self.cycles += 1
                if not busy:
                    self.idle_cycle = self.cycles
                self.cond.notify_all()
            if not busy or any(s.retry_at > time.monotonic() for s in self.shards.values()):
                self.stop_event.wait(self.poll_interval)

    def _discover_shards(self) -> None:
        desc = self._client.describe_stream(StreamArn=self.stream_arn)["StreamDescription"]
        for shard in desc.get("Shards", []):
            sid = shard["ShardId"]
            if sid in self.shards:
                continue
            state = _Shard(sid)
            if (
                self.embedded
                or self.event.starting_position == "TRIM_HORIZON"
                or not self._first_describe
            ):
                position = "TRIM_HORIZON"
            else:
                position = "LATEST"
            if not self.embedded:
                state.iterator = self._client.get_shard_iterator(
                    StreamArn=self.stream_arn, ShardId=sid, ShardIteratorType=position
                )["ShardIterator"]
            self.shards[sid] = state
        self._first_describe = False

    def _fetch(self, shard: _Shard) -> list[dict[str, Any]]:
        if self.embedded:
            # moto replaces a table object (and its stream shard) when a transaction
            # is cancelled, so take a fresh iterator from the last sequence number.
            kwargs: dict[str, Any] = {"StreamArn": self.stream_arn, "ShardId": shard.shard_id}
            if shard.last_seq is None:
                kwargs["ShardIteratorType"] = "TRIM_HORIZON"
            else:
                kwargs["ShardIteratorType"] = "AFTER_SEQUENCE_NUMBER"
                kwargs["SequenceNumber"] = shard.last_seq
            iterator = self._client.get_shard_iterator(**kwargs)["ShardIterator"]
            resp = self._client.get_records(ShardIterator=iterator, Limit=1000)
            self._forget_moto_iterators(iterator, resp.get("NextShardIterator"))
            return list(resp.get("Records", []))
        if shard.iterator is None:
            shard.closed = True
            return []
        try:
            resp = self._client.get_records(ShardIterator=shard.iterator, Limit=1000)
        except self._client.exceptions.ExpiredIteratorException:
            kwargs = {"StreamArn": self.stream_arn, "ShardId": shard.shard_id}
            if shard.last_seq:
                kwargs.update(
                    ShardIteratorType="AFTER_SEQUENCE_NUMBER", SequenceNumber=shard.last_seq
                )
            else:
                kwargs.update(ShardIteratorType="TRIM_HORIZON")
            shard.iterator = self._client.get_shard_iterator(**kwargs)["ShardIterator"]
            resp = self._client.get_records(ShardIterator=shard.iterator, Limit=1000)
        shard.iterator = resp.get("NextShardIterator")
        return list(resp.get("Records", []))

    @staticmethod
    def _forget_moto_iterators(*arns: str | None) -> None:
        try:
            from moto.dynamodbstreams.models import dynamodbstreams_backends

            backend = dynamodbstreams_backends[LOCAL_ACCOUNT_ID][region()]
        except Exception:
            return
        with MOTO_DYNAMODB_LOCK:
            for arn in arns:
                if arn:
                    backend.shard_iterators.pop(arn, None)

    def poll_once(self) -> bool:
        """One polling cycle; True when new records were fetched."""
        self._discover_shards()
        got = False
        for shard in list(self.shards.values()):
            if shard.closed and not shard.pending:
                continue
            if not shard.closed and len(shard.pending) < self.event.batch_size:
                records = self._fetch(shard)
                if records:
                    got = True
                    shard.last_seq = str(records[-1]["dynamodb"]["SequenceNumber"])
                for raw in records:
                    rec = lambda_stream_record(raw, self.stream_arn, region())
                    if not self.event.filters or any(
                        filter_matches(p, rec) for p in self.event.filters
                    ):
                        shard.pending.append(rec)
            self._deliver(shard)
        return got

    # -- delivery ------------------------------------------------------------
    def _deliver(self, shard: _Shard) -> None:
        while shard.pending and not self.stop_event.is_set():
            if shard.retry_at > time.monotonic():
                return
            batch = shard.pending[: self.event.batch_size]
            try:
                result = self.stack.functions.invoke(self.event.function_id, {"Records": batch})
            except Exception:
                log.error(
                    "stream worker %s: invocation failed (batch of %d)\n%s",
                    self.name,
                    len(batch),
                    traceback.format_exc(),
                )
                self._retry(shard, batch, 0)
                continue
            failed_index = self._failed_index(batch, result)
            if failed_index is None:
                del shard.pending[: len(batch)]
                shard.failures = 0
                shard.retry_at = 0.0
            else:
                self._retry(shard, batch, failed_index)

    def _failed_index(self, batch: list[dict[str, Any]], result: Any) -> int | None:
        if not isinstance(result, dict) or not result.get("batchItemFailures"):
            return None
        if not self.event.report_batch_item_failures:
            log.warning(
                "%s returned batchItemFailures but its event has no "
                "FunctionResponseTypes: [ReportBatchItemFailures]; Lambda ignores them",
                self.event.function_id,
            )
            return None
        seqs = [r["dynamodb"]["SequenceNumber"] for r in batch]
        indexes: list[int] = []
        for failure in result["batchItemFailures"]:
            ident = failure.get("itemIdentifier") if isinstance(failure, dict) else None
            if not ident or ident not in seqs:
                return 0  # invalid identifier: the whole batch failed
            indexes.append(seqs.index(ident))
        return min(indexes)

    def _retry(self, shard: _Shard, batch: list[dict[str, Any]], failed_index: int) -> None:
        del shard.pending[:failed_index]
        shard.failures += 1
        limit = self.event.maximum_retry_attempts
        if limit >= 0 and shard.failures > limit:
            log.error(
                "stream worker %s: dropping %d record(s) after %d retries",
                self.name,
                len(batch) - failed_index,
                limit,
            )
            del shard.pending[: len(batch) - failed_index]
            shard.failures = 0
            return
        shard.retry_at = time.monotonic() + min(0.05 * (2 ** (shard.failures - 1)), 2.0)

    def wait_idle(self, timeout: Seconds) -> bool:
        """Wait until a full poll cycle, started after this call, found nothing to do."""
        deadline = time.monotonic() + timeout
        with self.cond:
            target = self.cycles + 2
            while self.idle_cycle < target:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not self.is_alive():
                    return False
                self.cond.wait(remaining)
        return True
