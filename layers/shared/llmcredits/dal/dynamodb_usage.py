"""Usage aggregates on the ledger table, written from its stream.

Keys (in the user's partition, beside the ledger):
  PK=USER#<id>  SK=USAGE#<yyyy-mm-dd>#<provider>#<model>  an aggregate (ADDed to)
  PK=USER#<id>  SK=USAGE#<yyyy-mm-dd>#<provider>#<model>#<key id>  the same, per API key
  PK=USER#<id>  SK=USAGEMARK#<ledger entry id>            "this entry is counted" (TTL)

Idempotency: the aggregate Update (ADD requests, tokens, cost) and one marker Put per
ledger entry (``attribute_not_exists``) go in ONE TransactWriteItems. A redelivered entry
cancels the transaction on its marker; the markers that exist are read back
(consistent BatchGetItem) and the group is written again with the new entries only.
So an entry is added exactly once, whatever the batching of its deliveries. Markers
expire (TTL ``expires_at``) after 7 days, far beyond the stream's 24 h retention: no
record can arrive after its marker is gone.

``USAGEMARK#`` sorts after every ``USAGE#<day>...`` key ('M' > '#'), so one Query with
``SK BETWEEN USAGE#<first> AND USAGE#<last>$`` reads exactly a window of aggregates.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from botocore.exceptions import ClientError

from llmcredits.dal.dynamodb_ledger import (
    ACCOUNT_SK,
    LEDGER_PREFIX,
    all_items,
    entry_from_item,
    from_item,
    to_item,
    user_pk,
)
from llmcredits.domain.ledger import LedgerEntry, timestamp
from llmcredits.services.usage import (
    Aggregate,
    PoisonRecord,
    UsageKey,
    UsageRecord,
    UsageTotals,
    sum_totals,
    usage_of_entry,
)

USAGE_PREFIX = "USAGE#"
MARK_PREFIX = "USAGEMARK#"
MARKER_TTL_SECONDS = 7 * 24 * 3600
MAX_TRANSACT_ITEMS = 100  # DynamoDB's limit: the aggregate Update + 99 markers
ENTRIES_PER_TRANSACTION = MAX_TRANSACT_ITEMS - 1
MAX_ATTEMPTS = 10
MAX_BACKOFF_SECONDS = 0.2


def _part(text: str) -> str:
    """A key component that cannot contain the separator."""
    return text.replace("%", "%25").replace("#", "%23")


def usage_sk(key: UsageKey) -> str:
    sk = f"{USAGE_PREFIX}{key.day}#{_part(key.provider)}#{_part(key.model)}"
    return f"{sk}#{_part(key.key_id)}" if key.key_id else sk


def marker_sk(entry_id: str) -> str:
    return f"{MARK_PREFIX}{entry_id}"


def usage_from_stream_record(record: Mapping[str, Any]) -> UsageRecord | None:
    """The usage a Lambda DynamoDB stream record adds; None when it is not a usage
    ledger insert (nothing to do); PoisonRecord when it is one but cannot be read."""
    if record.get("eventName") != "INSERT":
        return None
    ddb = record.get("dynamodb")
    image = ddb.get("NewImage") if isinstance(ddb, Mapping) else None
    if not isinstance(image, Mapping):
        raise PoisonRecord("INSERT record without a NewImage")
    if image.get("kind") != {"S": "ledger"} or image.get("type") != {"S": "usage"}:
        return None
    try:
        entry = entry_from_item(dict(image))
        usage = usage_of_entry(entry)
    except Exception as exc:
        raise PoisonRecord(f"unreadable usage entry: {type(exc).__name__}: {exc}") from exc
    if image.get("PK") != {"S": user_pk(usage.key.user_id)}:
        raise PoisonRecord(f"usage entry {usage.entry_id} is not in its user's partition")
    return usage


def aggregate_from_item(item: Mapping[str, Any]) -> Aggregate:
    data = from_item(dict(item))
    return Aggregate(
        key=UsageKey(
            user_id=data["user_id"], day=data["day"], provider=data["provider"],
            model=data["model"], key_id=data.get("key_id", ""),
        ),
        totals=UsageTotals(
            requests=int(data.get("requests", 0)),
            prompt_tokens=int(data.get("prompt_tokens", 0)),
            completion_tokens=int(data.get("completion_tokens", 0)),
            total_tokens=int(data.get("total_tokens", 0)),
            cost=data.get("cost", 0) + 0,
        ),
    )


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


class DynamoUsageStore:
    """UsageStore on DynamoDB (real, Local, or moto)."""

    def __init__(
        self,
        client: Any,
        table: str,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._client = client
        self._table = table
        self._clock = clock
        self._sleep = sleep

    # -- writes (the aggregator) ------------------------------------------------------

    def apply_group(self, key: UsageKey, records: Sequence[UsageRecord]) -> int:
        unique = list({r.entry_id: r for r in records if r.key == key}.values())
        if len(unique) != len(records):
            raise ValueError("apply_group: records must be distinct entries of the key")
        applied = 0
        for start in range(0, len(unique), ENTRIES_PER_TRANSACTION):
            applied += self._apply_chunk(key, unique[start : start + ENTRIES_PER_TRANSACTION])
        return applied

    def _apply_chunk(self, key: UsageKey, chunk: list[UsageRecord]) -> int:
        remaining = chunk
        for attempt in range(MAX_ATTEMPTS):
            if not remaining:
                return 0
            try:
                self._client.transact_write_items(TransactItems=self._items(key, remaining))
                return len(remaining)
            except ClientError as exc:
                if _code(exc) != "TransactionCanceledException":
                    raise
                reasons = [
                    str(r.get("Code") or "None")
                    for r in exc.response.get("CancellationReasons", [])
                ]
                if "ConditionalCheckFailed" in reasons or not reasons:
                    # Some entries were counted by an earlier delivery: drop them.
                    done = self._existing_markers(key.user_id, [r.entry_id for r in remaining])
                    if done:
                        remaining = [r for r in remaining if r.entry_id not in done]
                        continue
                elif any(code not in ("None", "TransactionConflict") for code in reasons):
                    raise
                # A concurrent transaction on the aggregate: back off and retry.
                self._sleep(random.uniform(0, min(MAX_BACKOFF_SECONDS, 0.005 * 2**attempt)))  # noqa: S311
        raise RuntimeError(f"usage aggregate {usage_sk(key)}: gave up after {MAX_ATTEMPTS} tries")

    def _items(self, key: UsageKey, records: Sequence[UsageRecord]) -> list[dict[str, Any]]:
        now = self._clock()
        delta = sum_totals(records)
        pk = user_pk(key.user_id)
        sk = usage_sk(key)
        update = {
            "Update": {
                "TableName": self._table,
                "Key": to_item({"PK": pk, "SK": sk}),
                "UpdateExpression": (
                    "SET #kind = :kind, #user = :user, #day = :day, #provider = :provider, "
                    "#model = :model, #updated = :now, key_id = :key "
                    "ADD #requests :requests, #prompt :prompt, #completion :completion, "
                    "#tokens :tokens, #cost :cost"
                ),
                "ExpressionAttributeNames": {
                    "#kind": "kind", "#user": "user_id", "#day": "day",
                    "#provider": "provider", "#model": "model", "#updated": "updated_at",
                    "#requests": "requests", "#prompt": "prompt_tokens",
                    "#completion": "completion_tokens", "#tokens": "total_tokens",
                    "#cost": "cost",
                },
                "ExpressionAttributeValues": to_item(
                    {
                        ":kind": "usage", ":user": key.user_id, ":day": key.day,
                        ":provider": key.provider, ":model": key.model, ":key": key.key_id,
                        ":now": timestamp(datetime.fromtimestamp(now, UTC)),
                        ":requests": delta.requests, ":prompt": delta.prompt_tokens,
                        ":completion": delta.completion_tokens, ":tokens": delta.total_tokens,
                        ":cost": delta.cost,
                    }
                ),
            }
        }
        expires = int(now) + MARKER_TTL_SECONDS
        markers = [
            {
                "Put": {
                    "TableName": self._table,
                    "Item": to_item(
                        {
                            "PK": pk,
                            "SK": marker_sk(r.entry_id),
                            "kind": "usage_mark",
                            "aggregate": sk,
                            "expires_at": expires,
                        }
                    ),
                    "ConditionExpression": "attribute_not_exists(PK)",
                }
            }
            for r in records
        ]
        return [update, *markers]

    def _existing_markers(self, user_id: str, entry_ids: Sequence[str]) -> set[str]:
        found: set[str] = set()
        pk = user_pk(user_id)
        for start in range(0, len(entry_ids), 100):
            request: dict[str, Any] = {
                self._table: {
                    "Keys": [
                        to_item({"PK": pk, "SK": marker_sk(i)})
                        for i in entry_ids[start : start + 100]
                    ],
                    "ConsistentRead": True,
                    "ProjectionExpression": "SK",
                }
            }
            while request:
                resp = self._client.batch_get_item(RequestItems=request)
                for item in resp.get("Responses", {}).get(self._table, []):
                    found.add(item["SK"]["S"][len(MARK_PREFIX) :])
                request = resp.get("UnprocessedKeys") or {}
        return found

    # -- reads ------------------------------------------------------------------------

    def aggregates(
        self, user_id: str, first_day: str, last_day: str, *, consistent: bool = False
    ) -> list[Aggregate]:
        """One Query (paged past 1 MB) over the user's aggregates of a window of days."""
        return list(
            self._query(
                "PK = :pk AND SK BETWEEN :lo AND :hi",
                {
                    ":pk": user_pk(user_id),
                    ":lo": f"{USAGE_PREFIX}{first_day}",
                    ":hi": f"{USAGE_PREFIX}{last_day}$",  # '$' sorts right after '#'
                },
                consistent=consistent,
                convert=aggregate_from_item,
            )
        )

    def all_aggregates(self, user_id: str) -> list[Aggregate]:
        return list(
            self._query(
                "PK = :pk AND begins_with(SK, :prefix)",
                {":pk": user_pk(user_id), ":prefix": USAGE_PREFIX},
                consistent=True,
                convert=aggregate_from_item,
            )
        )

    def usage_entries(self, user_id: str) -> Iterator[LedgerEntry]:
        """Every usage ledger entry of the user (consistent)."""
        return self._query(
            "PK = :pk AND begins_with(SK, :prefix)",
            {":pk": user_pk(user_id), ":prefix": LEDGER_PREFIX, ":usage": "usage"},
            consistent=True,
            convert=entry_from_item,
            filter_expression="#type = :usage",
            names={"#type": "type"},
        )

    def account_ids(self) -> Iterator[str]:
        """Every account's user id (a paged Scan: an operator's tool, not a request path)."""
        for item in all_items(
            self._client,
            "scan",
            TableName=self._table,
            FilterExpression="SK = :account",
            ProjectionExpression="user_id",
            ExpressionAttributeValues=to_item({":account": ACCOUNT_SK}),
        ):
            if "user_id" in item:
                yield item["user_id"]["S"]

    def _query(
        self,
        condition: str,
        values: dict[str, Any],
        *,
        consistent: bool,
        convert: Callable[[dict[str, Any]], Any],
        filter_expression: str | None = None,
        names: dict[str, str] | None = None,
    ) -> Iterator[Any]:
        kwargs: dict[str, Any] = {
            "TableName": self._table,
            "KeyConditionExpression": condition,
            "ExpressionAttributeValues": to_item(values),
            "ConsistentRead": consistent,
        }
        if filter_expression:
            kwargs["FilterExpression"] = filter_expression
        if names:
            kwargs["ExpressionAttributeNames"] = names
        yield from (convert(item) for item in all_items(self._client, "query", **kwargs))
