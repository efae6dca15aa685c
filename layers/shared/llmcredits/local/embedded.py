"""Embedded AWS for the local stack: moto in-process, resources from template.yaml.

* DynamoDB: the template's tables are created in moto, or, when env
  ``DYNAMODB_ENDPOINT`` is set, on that endpoint (DynamoDB Local) if missing.
* KMS: the template's keys (and aliases) are created in moto.

moto is not atomic under concurrent requests, so every DynamoDB and DynamoDB
Streams request handled by moto runs under one global lock (:data:`MOTO_DYNAMODB_LOCK`):
conditional writes and transactions then behave atomically under a threaded server.

moto also ignores TransactWriteItems' ClientRequestToken; DynamoDB (and DynamoDB Local,
checked) answer a repeat of a committed transaction with the same token and items as a
success without applying it again, and a repeat with other items with
IdempotentParameterMismatchException, for 10 minutes. :func:`install_client_request_tokens`
teaches moto the same.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

import boto3

from llmcredits.local.template import ResourceValues, Template, Unresolvable

log = logging.getLogger("llmcredits.local")

#: Serializes every DynamoDB (and Streams) request served by moto.
MOTO_DYNAMODB_LOCK = threading.RLock()
_patch_lock = threading.Lock()
_patched = False


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
                    return _orig(self, *args, **kwargs)

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
        if self.dynamodb_endpoint:
            # DynamoDB Local accepts any credentials but scopes tables by key id.
            os.environ.setdefault("AWS_ACCESS_KEY_ID", "local")
            os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "local")
        self._mock = mock_aws()
        self._mock.start()
        self._started = True
        try:
            self._create_tables()
            self._create_keys()
        except Exception:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        if self._started and self._mock is not None:
            self._mock.stop()
        self._mock = None
        self._started = False

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
        for lid, raw_props in keys.items():
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
        first = next(iter(keys))
        byok = next((lid for lid in keys if "byok" in lid.lower()), first)
        self.env["BYOK_KMS_KEY_ID"] = self.resources[byok].ref
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
