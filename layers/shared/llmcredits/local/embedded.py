"""Embedded AWS for the local stack: moto in-process, resources from template.yaml.

* DynamoDB: the template's tables are created in moto, or, when env
  ``DYNAMODB_ENDPOINT`` is set, on that endpoint (DynamoDB Local) if missing.
* KMS: the template's keys (and aliases) are created in moto.

moto is not atomic under concurrent requests, so every DynamoDB and DynamoDB
Streams request handled by moto runs under one global lock (:data:`MOTO_DYNAMODB_LOCK`):
conditional writes and transactions then behave atomically under a threaded server.

Persistence (``make dev``: env ``LLMCREDITS_DEV_STORE``, default folder ``.dev/store/``):
:class:`DevStore` keeps a pickled snapshot of moto's DynamoDB and KMS backends plus a
write-ahead journal of every committed DynamoDB write request (appended under the
lock, so the journal order is the commit order). At start the snapshot is loaded, the
journal replayed through moto's own request handler, and a new snapshot written
(generation N+1, a fresh journal); a clean stop writes one too. A journal line costs
one small file append per write, where pickling the store costs O(table) (~60 ms at
3000 items), which a chat request (two writes) must not pay.

Endpoint (env ``LLMCREDITS_DEV_ENDPOINT=1``): moto's server mode on 127.0.0.1 (a free
port) in this process serves the same backends, so ``llmcredits admin`` and the AWS CLI
reach the embedded store from another process; its requests take the same lock.

moto also ignores TransactWriteItems' ClientRequestToken; DynamoDB (and DynamoDB Local,
checked) answer a repeat of a committed transaction with the same token and items as a
success without applying it again, and a repeat with other items with
IdempotentParameterMismatchException, for 10 minutes. :func:`install_client_request_tokens`
teaches moto the same.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import os
import pickle
import threading
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import boto3

from llmcredits.local.template import ResourceValues, Template, Unresolvable

log = logging.getLogger("llmcredits.local")

#: Serializes every DynamoDB (and Streams) request served by moto.
MOTO_DYNAMODB_LOCK = threading.RLock()
_patch_lock = threading.Lock()
_patched = False

#: Env: the folder where ``make dev`` keeps the embedded store (unset: in memory only).
STORE_DIR_ENV = "LLMCREDITS_DEV_STORE"
#: Env: "1" serves the embedded AWS on a 127.0.0.1 port for other processes.
ENDPOINT_ENV = "LLMCREDITS_DEV_ENDPOINT"
#: The dummy credential for DynamoDB Local (it scopes tables by access key id).
DYNAMODB_LOCAL_CREDENTIAL = "local"
#: moto's account for requests with unknown (dummy) credentials.
MOTO_ACCOUNT_ID = "123456789012"

#: DynamoDB actions that change state: journaled when they succeed.
WRITE_ACTIONS = frozenset({
    "PutItem", "UpdateItem", "DeleteItem", "BatchWriteItem", "TransactWriteItems",
    "CreateTable", "DeleteTable", "UpdateTable", "UpdateTimeToLive",
    "ExecuteStatement", "BatchExecuteStatement", "ExecuteTransaction",
    "TagResource", "UntagResource", "UpdateContinuousBackups",
})
#: DynamoDB Streams keep records 24 h; older ones are dropped when a snapshot loads
#: (the aggregator's markers outlive that, so a redelivered record counts once).
STREAM_RETENTION = timedelta(hours=24)

_active_store: DevStore | None = None


def install_moto_dynamodb_lock() -> None:
    """Wrap moto's DynamoDB/Streams request dispatch in :data:`MOTO_DYNAMODB_LOCK` (idempotent)."""
    global _patched
    with _patch_lock:
        if _patched:
            return
        from moto.dynamodb.responses import DynamoHandler
        from moto.dynamodbstreams.responses import DynamoDBStreamsHandler

        for cls in (DynamoHandler, DynamoDBStreamsHandler):
            original: Callable[..., Any] = cls.call_action

            def locked(
                self: Any, *args: Any, _orig: Callable[..., Any] = original, **kwargs: Any
            ) -> Any:
                with MOTO_DYNAMODB_LOCK:
                    response = _orig(self, *args, **kwargs)
                    store = _active_store
                    if store is not None and not store.replaying:
                        store.record(self, response)
                    return response

            functools.update_wrapper(locked, original)
            cls.call_action = locked  # type: ignore[method-assign]
        _install_cheap_transaction_snapshots()
        install_client_request_tokens()
        _patched = True


#: How long DynamoDB remembers a transaction's ClientRequestToken.
CLIENT_REQUEST_TOKEN_SECONDS = 600
_tokens_lock = threading.Lock()
_tokens_installed = False


def install_client_request_tokens(clock: Callable[[], float] = time.monotonic) -> None:
    """Make moto's TransactWriteItems honour ClientRequestToken as DynamoDB does (idempotent)."""
    global _tokens_installed
    with _tokens_lock:
        if _tokens_installed:
            return
        from moto.dynamodb.exceptions import DynamodbException
        from moto.dynamodb.responses import DynamoHandler

        class IdempotentParameterMismatch(DynamodbException):
            error_type = "com.amazonaws.dynamodb.v20120810#IdempotentParameterMismatchException"

            def __init__(self) -> None:
                super().__init__(self.error_type, message=(
                    "The request uses the same client token as a previous, but non-identical "
                    "request."))

        original: Callable[..., Any] = DynamoHandler.transact_write_items
        # (backend, token) -> (hash of the items, when committed, moto's answer)
        committed: dict[tuple[int, str], tuple[str, float, Any]] = {}

        def transact_write_items(self: Any) -> Any:
            token = self.body.get("ClientRequestToken")
            if not token:
                return original(self)
            digest = hashlib.sha256(
                json.dumps(self.body["TransactItems"], sort_keys=True, default=repr).encode()
            ).hexdigest()
            key = (id(self.dynamodb_backend), token)
            now = clock()
            with _tokens_lock:
                for old in [k for k, v in committed.items()
                            if now - v[1] > CLIENT_REQUEST_TOKEN_SECONDS]:
                    del committed[old]
                seen = committed.get(key)
            if seen is not None:
                if seen[0] != digest:
                    raise IdempotentParameterMismatch()
                return seen[2]  # committed before: success, nothing applied again
            result = original(self)
            with _tokens_lock:
                committed[key] = (digest, now, result)
            return result

        functools.update_wrapper(transact_write_items, original)
        DynamoHandler.transact_write_items = transact_write_items  # type: ignore[method-assign]
        _tokens_installed = True


def _install_cheap_transaction_snapshots() -> None:
    """Make moto's TransactWriteItems rollback copy only the items it touches.

    moto deep-copies every table a transaction names, once per transact item, so a
    chat request (two transactions) got slower with every row the dev table held
    (~40 ms per transaction at a few hundred items). Under MOTO_DYNAMODB_LOCK nothing
    else runs meanwhile, so a snapshot of the touched items (plus the stream length,
    to drop records of a cancelled transaction) restores exactly what moto's copy did.
    """
    import copy as copy_module
    import types
    from collections import defaultdict

    from moto.dynamodb import models as moto_models
    from moto.dynamodb.models.dynamo_type import DynamoType
    from moto.dynamodb.models.table import Table

    original = moto_models.DynamoDBBackend.transact_write_items

    def touched_keys(transact_items: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
        keys: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for entry in transact_items:
            for op in entry.values():
                key = op.get("Key") or op.get("Item")
                if op.get("TableName") and key:
                    keys[op["TableName"]].append(key)
        return keys

    def snapshot(table: Table, keys: list[dict[str, Any]]) -> Table:
        snap = copy_module.copy(table)
        items = table.items
        snap.items = type(items)(items.default_factory) if isinstance(items, defaultdict) \
            else dict(items)
        snap.items.update(items)
        copied: set[DynamoType] = set()
        for key in keys:
            hash_value = DynamoType(key[table.hash_key_attr])
            if hash_value not in items:
                continue
            if table.range_key_attr:
                if hash_value not in copied:  # copy each partition's index once
                    snap.items[hash_value] = dict(items[hash_value])
                    copied.add(hash_value)
                partition = snap.items[hash_value]
                range_value = DynamoType(key[table.range_key_attr])
                if range_value in partition:
                    partition[range_value] = copy_module.deepcopy(items[hash_value][range_value])
            else:
                snap.items[hash_value] = copy_module.deepcopy(items[hash_value])
        return snap

    def transact_write_items(self: Any, transact_items: list[dict[str, Any]]) -> None:
        keys = touched_keys(transact_items)
        streams = {
            name: (table.stream_shard, len(table.stream_shard.items))
            for name, table in self.tables.items()
            if name in keys and table.stream_shard is not None
        }

        def deepcopy(obj: Any, memo: Any = None) -> Any:
            if isinstance(obj, Table):
                return snapshot(obj, keys.get(obj.name, []))
            return copy_module.deepcopy(obj, memo)

        moto_models.copy = types.SimpleNamespace(deepcopy=deepcopy)  # type: ignore[assignment]
        try:
            original(self, transact_items)
        except Exception:
            for shard, length in streams.values():
                del shard.items[length:]  # a cancelled transaction leaves no stream records
            raise
        finally:
            moto_models.copy = copy_module

    moto_models.DynamoDBBackend.transact_write_items = transact_write_items  # type: ignore[method-assign]


class StoreInUse(RuntimeError):
    """Another process has the dev store open (two journals would corrupt it)."""


class DevStore:
    """Snapshot + write-ahead journal of the embedded moto store in ``folder``.

    Files: ``snapshot.pickle`` ({"generation": N, "dynamodb": ..., "kms": ..., "meta":
    ...}) and ``journal-N.jsonl`` (the writes committed since snapshot N). A snapshot is
    written to a temporary file and renamed, then older journals are deleted, so a crash
    at any point leaves a snapshot and exactly the journal that follows it.
    """

    SNAPSHOT = "snapshot.pickle"

    def __init__(self, folder: Path, region_name: str) -> None:
        self.folder = folder
        self.region_name = region_name
        self.generation = 0
        self.meta: dict[str, Any] = {}
        self.replaying = False
        self.writes = 0
        self.record_seconds = 0.0
        self._journal: Any = None
        self._lock: Any = None

    # -- moto's backends ---------------------------------------------------------------
    def _backends(self) -> tuple[Any, Any]:
        from moto.backends import get_backend

        return (get_backend("dynamodb")[MOTO_ACCOUNT_ID][self.region_name],
                get_backend("kms")[MOTO_ACCOUNT_ID][self.region_name])

    # -- start ----------------------------------------------------------------------------
    def load(self) -> bool:
        """Restore the snapshot and replay its journal; False when the folder is empty."""
        self.folder.mkdir(parents=True, exist_ok=True)
        self._lock_folder()
        path = self.folder / self.SNAPSHOT
        restored = False
        if path.exists():
            with path.open("rb") as f:
                state = pickle.load(f)  # noqa: S301 - our own file in the dev folder
            dynamodb, kms = self._backends()
            dynamodb.__dict__.update(state["dynamodb"])
            kms.__dict__.update(state["kms"])
            self.generation = int(state["generation"])
            self.meta = dict(state.get("meta") or {})
            _trim_streams(dynamodb)
            restored = True
        journal = self._journal_path(self.generation)
        if journal.exists():
            restored = self._replay(journal) or restored
        return restored

    def _lock_folder(self) -> None:
        import fcntl

        lock = (self.folder / "lock").open("a+", encoding="utf-8")
        try:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.seek(0)
            holder = lock.read().strip() or "?"
            lock.close()
            raise StoreInUse(
                f"the dev store {self.folder} is in use by another llmcredits dev (pid "
                f"{holder}); stop it, or set {STORE_DIR_ENV} to another folder"
            ) from None
        lock.truncate(0)
        lock.write(str(os.getpid()))
        lock.flush()
        self._lock = lock

    def _journal_path(self, generation: int) -> Path:
        return self.folder / f"journal-{generation}.jsonl"

    def _replay(self, journal: Path) -> bool:
        from moto.core.request import Request as MotoRequest
        from moto.dynamodb.responses import DynamoHandler

        count = 0
        self.replaying = True
        try:
            with journal.open(encoding="utf-8") as lines:
                for line in lines:
                    try:
                        entry = json.loads(line)
                    except json.JSONDecodeError:  # a torn last line (killed mid-append)
                        log.warning("dev store: ignoring a torn journal line in %s", journal)
                        break
                    region_name = entry.get("region") or self.region_name
                    url = f"https://dynamodb.{region_name}.amazonaws.com/"
                    headers: dict[str, str] = {
                        "Content-Type": "application/x-amz-json-1.0",
                        "X-Amz-Target": f"DynamoDB_20120810.{entry['action']}",
                        "Authorization": (
                            "AWS4-HMAC-SHA256 Credential=replay/20260101/"
                            f"{region_name}/dynamodb/aws4_request, "
                            "SignedHeaders=host, Signature=0"
                        ),
                    }
                    request = MotoRequest.from_primitives(
                        "POST", url, headers, entry["body"].encode())
                    status = DynamoHandler.dispatch(request, url, dict(request.headers))[0]
                    if int(status) != 200:  # it succeeded before: the store diverged
                        log.warning("dev store: replayed %s answered %s", entry["action"],
                                    status)
                    count += 1
        finally:
            self.replaying = False
        if count:
            log.info("dev store: replayed %d write(s) from %s", count, journal.name)
        return count > 0

    # -- running --------------------------------------------------------------------------
    def open_journal(self) -> None:
        """Snapshot what is loaded (generation + 1) and journal from there on."""
        self.checkpoint()

    def record(self, handler: Any, response: Any) -> None:
        """Append a committed write (called under MOTO_DYNAMODB_LOCK)."""
        if self._journal is None:
            return
        try:
            action = handler._get_action()
        except Exception:
            return
        if action not in WRITE_ACTIONS:
            return
        status = response[0] if isinstance(response, tuple) else 200
        if int(status) != 200:
            return
        started = time.perf_counter()
        body = handler.raw_body  # the request's JSON text, as sent
        if isinstance(body, bytes):
            body = body.decode("utf-8")
        line = json.dumps({"action": action, "region": handler.region, "body": body},
                          separators=(",", ":"))
        self._journal.write(line + "\n")
        self._journal.flush()  # the OS has it: survives a killed process, not a power cut
        self.writes += 1
        self.record_seconds += time.perf_counter() - started

    def checkpoint(self) -> None:
        """Write snapshot generation + 1 (under the lock), start its journal, drop the old."""
        with MOTO_DYNAMODB_LOCK:
            dynamodb, kms = self._backends()
            state = {
                "generation": self.generation + 1,
                "dynamodb": dict(dynamodb.__dict__),
                "kms": dict(kms.__dict__),
                "meta": self.meta,
            }
            partial = self.folder / (self.SNAPSHOT + ".partial")
            with partial.open("wb") as f:
                _KeyPickler(f, protocol=pickle.HIGHEST_PROTOCOL).dump(state)
                f.flush()
                os.fsync(f.fileno())
            partial.replace(self.folder / self.SNAPSHOT)
            if self._journal is not None:
                self._journal.close()
            self.generation += 1
            self._journal = self._journal_path(self.generation).open("a", encoding="utf-8")
            for old in self.folder.glob("journal-*.jsonl"):
                if old != self._journal_path(self.generation):
                    old.unlink(missing_ok=True)

    def close(self) -> None:
        try:
            if self._journal is not None:
                self.checkpoint()
                self._journal.close()
                self._journal = None
        finally:
            if self._lock is not None:
                self._lock.close()  # releases the flock
                self._lock = None


class _KeyPickler(pickle.Pickler):
    """Pickles moto's KMS keys: their cryptography private keys travel as PKCS#8 DER."""

    def reducer_override(self, obj: Any) -> Any:
        module = type(obj).__module__
        if module.startswith("cryptography.") and hasattr(obj, "private_bytes"):
            from cryptography.hazmat.primitives import serialization

            der = obj.private_bytes(
                serialization.Encoding.DER,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
            return _load_private_key, (der,)
        return NotImplemented


def _load_private_key(der: bytes) -> Any:
    from cryptography.hazmat.primitives import serialization

    return serialization.load_der_private_key(der, None)


def _trim_streams(dynamodb_backend: Any) -> None:
    """Drop stream records older than the retention (keeping sequence numbers valid)."""
    cutoff = datetime.now(UTC) - STREAM_RETENTION
    for table in dynamodb_backend.tables.values():
        shard = getattr(table, "stream_shard", None)
        if shard is None or not shard.items:
            continue
        keep = 0
        for index, record in enumerate(shard.items):
            created = record.record["dynamodb"].get("ApproximateCreationDateTime")
            if isinstance(created, datetime):
                created = created if created.tzinfo else created.replace(tzinfo=UTC)
                if created < cutoff:
                    keep = index + 1
                    continue
            break
        if keep:
            del shard.items[:keep]
            shard.starting_sequence_number += keep


def default_store_dir() -> Path:
    return Path(__file__).resolve().parents[4] / ".dev" / "store"


def region() -> str:
    return os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"


def dynamodb_client(endpoint: str | None = None) -> Any:
    return boto3.client("dynamodb", region_name=region(), endpoint_url=endpoint or None)


def streams_client(endpoint: str | None = None) -> Any:
    return boto3.client("dynamodbstreams", region_name=region(), endpoint_url=endpoint or None)


def _table_request(name: str, props: Mapping[str, Any]) -> dict[str, Any]:
    billing = props.get("BillingMode", "PROVISIONED")
    req: dict[str, Any] = {
        "TableName": name,
        "KeySchema": props["KeySchema"],
        "AttributeDefinitions": props["AttributeDefinitions"],
        "BillingMode": billing,
    }
    if billing != "PAY_PER_REQUEST":
        req["ProvisionedThroughput"] = props.get(
            "ProvisionedThroughput", {"ReadCapacityUnits": 5, "WriteCapacityUnits": 5}
        )
    for index_kind in ("GlobalSecondaryIndexes", "LocalSecondaryIndexes"):
        indexes = props.get(index_kind)
        if indexes:
            cleaned = []
            for index in indexes:
                index = dict(index)
                if billing == "PAY_PER_REQUEST":
                    index.pop("ProvisionedThroughput", None)
                index.pop("ContributorInsightsSpecification", None)
                cleaned.append(index)
            req[index_kind] = cleaned
    stream = props.get("StreamSpecification")
    if stream and stream.get("StreamViewType"):
        req["StreamSpecification"] = {
            "StreamEnabled": True,
            "StreamViewType": stream["StreamViewType"],
        }
    return req


def _add_missing_indexes(client: Any, name: str, props: Mapping[str, Any],
                         desc: dict[str, Any]) -> dict[str, Any]:
    """Create the template's GSIs a kept table lacks (a store from before they existed)."""
    have = {i["IndexName"] for i in desc.get("GlobalSecondaryIndexes", [])}
    request = _table_request(name, props)
    attributes = {a["AttributeName"]: a for a in request["AttributeDefinitions"]}
    for index in request.get("GlobalSecondaryIndexes", []):
        if index["IndexName"] in have:
            continue
        used = [attributes[k["AttributeName"]] for k in index["KeySchema"]]
        log.info("table %s: creating index %s", name, index["IndexName"])
        client.update_table(TableName=name, AttributeDefinitions=used,
                            GlobalSecondaryIndexUpdates=[{"Create": index}])
        for _ in range(60):  # DynamoDB Local builds it at once; AWS takes a while
            desc = client.describe_table(TableName=name)["Table"]
            states = {i["IndexName"]: i.get("IndexStatus") for i in
                      desc.get("GlobalSecondaryIndexes", [])}
            if states.get(index["IndexName"]) in ("ACTIVE", None) and \
                    index["IndexName"] in states:
                break
            time.sleep(0.5)
    return desc


class EmbeddedAws:
    """Starts moto (once per instance) and creates the template's tables and keys.

    After :meth:`start`, ``resources`` maps logical ids to local physical values
    (for !Ref / !GetAtt) and ``env`` holds the variables that were set
    (``TABLE_NAME``, ``BYOK_KMS_KEY_ID``).
    """

    def __init__(
        self,
        template: Template,
        dynamodb_endpoint: str | None = None,
        stack_name: str = "llmcredits-local",
    ) -> None:
        self.template = template
        self.dynamodb_endpoint = dynamodb_endpoint
        self.stack_name = stack_name
        self.resources: dict[str, ResourceValues] = {}
        self.env: dict[str, str] = {}
        self.table_names: dict[str, str] = {}
        self._mock: Any = None
        self._started = False
        #: The persistent store (env LLMCREDITS_DEV_STORE), None when in memory only.
        self.store: DevStore | None = None
        #: True when the store held data from an earlier run.
        self.restored = False
        #: moto's server mode on 127.0.0.1 (env LLMCREDITS_DEV_ENDPOINT=1), for other
        #: processes (``llmcredits admin``); None when not served.
        self.endpoint_url: str | None = None
        self._server: Any = None

    @property
    def uses_moto_dynamodb(self) -> bool:
        return not self.dynamodb_endpoint

    def start(self) -> EmbeddedAws:
        if self._started:
            return self
        from moto import mock_aws

        install_moto_dynamodb_lock()
        os.environ.setdefault("AWS_DEFAULT_REGION", region())
        os.environ.setdefault("AWS_REGION", region())
        own_credentials = {
            name: os.environ[name]
            for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")
            if os.environ.get(name)
        }
        self._mock = mock_aws()
        self._mock.start()
        self._started = True
        if self.dynamodb_endpoint:
            # DynamoDB Local accepts any credentials but scopes tables by key id, and
            # mock_aws just replaced them with its FOOBARKEY: use the caller's, else the
            # dummy "local" that the README's DynamoDB Local recipe uses.
            os.environ["AWS_ACCESS_KEY_ID"] = own_credentials.get(
                "AWS_ACCESS_KEY_ID", DYNAMODB_LOCAL_CREDENTIAL)
            os.environ["AWS_SECRET_ACCESS_KEY"] = own_credentials.get(
                "AWS_SECRET_ACCESS_KEY", DYNAMODB_LOCAL_CREDENTIAL)
        try:
            self._open_store()
            self._create_tables()
            self._create_keys()
            self._create_event_buses()
            if self.store is not None:
                self.store.open_journal()
            if os.environ.get(ENDPOINT_ENV) == "1":
                self._serve_endpoint()
        except Exception:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        global _active_store
        if self._server is not None:
            self._server.stop()
            self._server = None
            self.endpoint_url = None
        if self.store is not None:
            try:
                self.store.close()
            finally:
                _active_store = None
                self.store = None
        if self._started and self._mock is not None:
            self._mock.stop()
        self._mock = None
        self._started = False

    # -- persistence and the endpoint for other processes ------------------------------
    def _open_store(self) -> None:
        global _active_store
        folder = os.environ.get(STORE_DIR_ENV)
        if not folder or not self.uses_moto_dynamodb:
            return
        store = DevStore(Path(folder), region())
        try:
            self.restored = store.load()
        except BaseException:
            store.close()
            raise
        self.store = store
        _active_store = store

    def _serve_endpoint(self) -> None:
        from moto.server import ThreadedMotoServer

        logging.getLogger("werkzeug").setLevel(logging.WARNING)  # no line per request
        server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        server.start()
        host, port = server.get_host_and_port()
        self._server = server
        self.endpoint_url = f"http://{host}:{port}"

    # -- DynamoDB ------------------------------------------------------------
    def _create_tables(self) -> None:
        client = dynamodb_client(self.dynamodb_endpoint)
        resolver = self.template.resolver(self.resources, region=region())
        for lid, raw_props in self.template.tables().items():
            props = resolver.resolve(raw_props)
            name = str(props.get("TableName") or f"{self.stack_name}-{lid}")
            try:
                desc = client.describe_table(TableName=name)["Table"]
                log.info("using existing table %s on %s", name, self.dynamodb_endpoint)
                desc = _add_missing_indexes(client, name, props, desc)
            except client.exceptions.ResourceNotFoundException:
                desc = client.create_table(**_table_request(name, props))["TableDescription"]
                client.get_waiter("table_exists").wait(
                    TableName=name, WaiterConfig={"Delay": 1, "MaxAttempts": 30}
                )
                ttl = props.get("TimeToLiveSpecification") or {}
                if ttl.get("Enabled") in (True, "true") and ttl.get("AttributeName"):
                    client.update_time_to_live(
                        TableName=name,
                        TimeToLiveSpecification={
                            "Enabled": True,
                            "AttributeName": ttl["AttributeName"],
                        },
                    )
                desc = client.describe_table(TableName=name)["Table"]
            attrs = {"Arn": desc["TableArn"]}
            if desc.get("LatestStreamArn"):
                attrs["StreamArn"] = desc["LatestStreamArn"]
            self.resources[lid] = ResourceValues(ref=name, attrs=attrs)
            self.table_names[lid] = name
        if self.table_names:
            self.env["TABLE_NAME"] = next(iter(self.table_names.values()))

    # -- KMS -------------------------------------------------------------------
    def _create_keys(self) -> None:
        keys = self.template.kms_keys()
        if not keys:
            return
        kms = boto3.client("kms", region_name=region())
        resolver = self.template.resolver(self.resources, region=region())
        kept = self.store.meta.get("kms_keys", {}) if self.store is not None else {}
        if kept and set(kept) >= set(keys):  # restored: the same keys (and their material)
            for lid in keys:
                self.resources[lid] = ResourceValues(
                    ref=kept[lid]["ref"], attrs=dict(kept[lid]["attrs"]))
            self._use_keys(keys)
            resolver = self.template.resolver(self.resources, region=region())
            for lid, raw_props in self.template.kms_aliases().items():
                with contextlib.suppress(Unresolvable, KeyError):  # the alias is restored too
                    self.resources[lid] = ResourceValues(
                        ref=str(resolver.resolve(raw_props)["AliasName"]))
            return
        for lid in keys:  # a store from before a key was added: keep the ones it has
            if lid in kept:
                self.resources[lid] = ResourceValues(
                    ref=kept[lid]["ref"], attrs=dict(kept[lid]["attrs"]))
        for lid, raw_props in keys.items():
            if lid in self.resources:
                continue
            try:
                props = resolver.resolve({k: v for k, v in raw_props.items() if k != "KeyPolicy"})
            except Unresolvable:
                props = {}
            args: dict[str, Any] = {}
            for name in ("Description", "KeyUsage", "KeySpec"):
                if isinstance(props.get(name), str):
                    args[name] = props[name]
            meta = kms.create_key(**args)["KeyMetadata"]
            self.resources[lid] = ResourceValues(
                ref=meta["KeyId"], attrs={"Arn": meta["Arn"], "KeyId": meta["KeyId"]}
            )
        if self.store is not None:
            self.store.meta["kms_keys"] = {
                lid: {"ref": self.resources[lid].ref, "attrs": self.resources[lid].attrs}
                for lid in keys
            }
        self._use_keys(keys)
        for lid, raw_props in self.template.kms_aliases().items():
            resolver = self.template.resolver(self.resources, region=region())
            try:
                props = resolver.resolve(raw_props)
                try:
                    kms.create_alias(AliasName=props["AliasName"], TargetKeyId=props["TargetKeyId"])
                except kms.exceptions.AlreadyExistsException:  # a nested stack in one moto
                    kms.update_alias(AliasName=props["AliasName"], TargetKeyId=props["TargetKeyId"])
                self.resources[lid] = ResourceValues(ref=str(props["AliasName"]))
            except (Unresolvable, KeyError) as exc:
                log.warning("KMS alias %s not created: %s", lid, exc)

    # -- EventBridge -------------------------------------------------------------
    def _create_event_buses(self) -> None:
        """The template's event buses in moto (not kept across restarts: they hold no
        data; a test reads what was put through a rule of its own)."""
        buses = self.template.resources_of_type("AWS::Events::EventBus")
        if not buses:
            return
        events = boto3.client("events", region_name=region())
        resolver = self.template.resolver(self.resources, region=region())
        for lid, res in buses.items():
            try:
                name = str(resolver.resolve((res.get("Properties") or {}).get("Name")))
            except Unresolvable as exc:
                log.warning("event bus %s not created: %s", lid, exc)
                continue
            try:
                arn = events.create_event_bus(Name=name)["EventBusArn"]
            except events.exceptions.ResourceAlreadyExistsException:
                arn = events.describe_event_bus(Name=name)["Arn"]
            self.resources[lid] = ResourceValues(ref=name, attrs={"Arn": arn, "Name": name})

    def _use_keys(self, keys: Mapping[str, Any]) -> None:
        first = next(iter(keys))
        byok = next((lid for lid in keys if "byok" in lid.lower()), first)
        self.env["BYOK_KMS_KEY_ID"] = self.resources[byok].ref
