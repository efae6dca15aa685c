"""The ledger on one DynamoDB table.

Keys (one partition per user, so each money change is one TransactWriteItems):
  PK=USER#<id>  SK=ACCOUNT                          the account
  PK=USER#<id>  SK=LEDGER#<created_at>#<entry id>   a ledger entry (newest first by SK)
  PK=USER#<id>  SK=IDEMP#<scope>#<key>              an idempotency record (TTL)
  PK=USER#<id>  SK=HOLD#<hold id>                   an open hold of a chat request in flight
  PK=USER#<id>  SK=RECORD#<key>                     bookkeeping (e.g. a Stripe event applied)
  PK=RECORD#<key> SK=RECORD                         a global record (e.g. payment -> user)
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator, Sequence
from decimal import Decimal
from typing import Any

from boto3.dynamodb.types import TypeDeserializer, TypeSerializer
from botocore.exceptions import ClientError

from llmcredits.domain.api_keys import KeyWrite
from llmcredits.domain.ledger import (
    Account,
    EntryType,
    Hold,
    IdempotencyClaim,
    LedgerEntry,
    Mutation,
    RecordWrite,
    Tier,
)
from llmcredits.domain.ports import (
    EntryPage,
    HoldGone,
    IdempotentReplay,
    RecordConflict,
    StaleRead,
    StoredResult,
)

ACCOUNT_SK = "ACCOUNT"
LEDGER_PREFIX = "LEDGER#"
IDEMPOTENCY_PREFIX = "IDEMP#"
HOLD_PREFIX = "HOLD#"
HOLD_SHARDS = 8
HOLDS_INDEX = "HoldsByAge"
IDEMPOTENCY_TTL_SECONDS = 24 * 3600

_serializer = TypeSerializer()
_deserializer = TypeDeserializer()


def user_pk(user_id: str) -> str:
    return f"USER#{user_id}"


def ledger_sk(entry: LedgerEntry) -> str:
    return f"{LEDGER_PREFIX}{entry.created_at}#{entry.id}"


def idempotency_sk(claim: IdempotencyClaim) -> str:
    return f"{IDEMPOTENCY_PREFIX}{claim.scope}#{claim.key}"


def all_items(client: Any, operation: str, **kwargs: Any) -> Iterator[dict[str, Any]]:
    """Every item of a ``query`` or ``scan``, across pages (boto3's own paginator)."""
    for page in client.get_paginator(operation).paginate(**kwargs):
        yield from page.get("Items", [])


def to_item(values: dict[str, Any]) -> dict[str, Any]:
    return {k: _serializer.serialize(v) for k, v in values.items() if v is not None}


def from_item(item: dict[str, Any]) -> dict[str, Any]:
    return {k: _deserializer.deserialize(v) for k, v in item.items()}


def account_from_item(item: dict[str, Any]) -> Account:
    data = from_item(item)
    return Account(
        user_id=data["user_id"],
        balance=data["balance"],
        available=data["available"],
        tier=Tier(data["tier"]),
        month=data["month"],
        month_spent=data["month_spent"],
        monthly_cap=data.get("monthly_cap"),
        cap_headroom=data.get("cap_headroom"),
        created_at=data.get("created_at", ""),
        updated_at=data.get("updated_at", ""),
        flags=frozenset(data.get("flags", ())),
        rate_window=int(data.get("rate_window", 0)),
        rate_count=int(data.get("rate_count", 0)),
    )


def record_key(key: str, owner: str | None) -> tuple[str, str]:
    if owner is None:
        return f"RECORD#{key}", "RECORD"
    return user_pk(owner), f"RECORD#{key}"


def hold_sk(hold_id: str) -> str:
    return f"{HOLD_PREFIX}{hold_id}"


def hold_to_item(hold: Hold) -> dict[str, Any]:
    # hold_shard/hold_created_at put open holds on the sparse HoldsByAge index, spread
    # over shards so the index has no hot partition; the sweeper reads each shard.
    shard = int(hold.id[:8], 16) % HOLD_SHARDS
    return to_item(
        {
            "PK": user_pk(hold.user_id),
            "SK": hold_sk(hold.id),
            "kind": "hold",
            "id": hold.id,
            "user_id": hold.user_id,
            "amount": hold.amount,
            "created_at": hold.created_at,
            "request_id": hold.request_id,
            "model": hold.model,
            "key_id": hold.key_id or None,
            "hold_shard": f"HOLDS#{shard}",
            "hold_created_at": hold.created_at,
        }
    )


def hold_from_item(item: dict[str, Any]) -> Hold:
    data = from_item(item)
    return Hold(
        id=data["id"],
        user_id=data["user_id"],
        amount=data["amount"],
        created_at=data["created_at"],
        request_id=data.get("request_id", ""),
        model=data.get("model", ""),
        key_id=data.get("key_id", ""),
    )


def entry_to_item(entry: LedgerEntry) -> dict[str, Any]:
    return to_item(
        {
            "PK": user_pk(entry.user_id),
            "SK": ledger_sk(entry),
            "kind": "ledger",
            "id": entry.id,
            "user_id": entry.user_id,
            "created_at": entry.created_at,
            "type": entry.type.value,
            "amount": entry.amount,
            "balance_after": entry.balance_after,
            "provider": entry.provider,
            "model": entry.model,
            "tokens": entry.tokens,
            "cost": entry.cost,
            "key_id": entry.key_id,
            "metadata": json.dumps(entry.metadata, sort_keys=True, default=str),
        }
    )


def entry_from_item(item: dict[str, Any]) -> LedgerEntry:
    data = from_item(item)
    tokens = data.get("tokens")
    return LedgerEntry(
        id=data["id"],
        user_id=data["user_id"],
        created_at=data["created_at"],
        type=EntryType(data["type"]),
        amount=data["amount"],
        balance_after=data["balance_after"],
        provider=data.get("provider"),
        model=data.get("model"),
        tokens=None if tokens is None else int(tokens),
        cost=data.get("cost"),
        metadata=json.loads(data.get("metadata") or "{}"),
        key_id=data.get("key_id"),
    )


class DynamoLedgerStore:
    """LedgerStore on DynamoDB (real, Local, or moto)."""

    def __init__(self, client: Any, table: str) -> None:
        self._client = client
        self._table = table

    # -- accounts ---------------------------------------------------------------------

    def get_account(self, user_id: str) -> Account | None:
        resp = self._client.get_item(
            TableName=self._table,
            Key=to_item({"PK": user_pk(user_id), "SK": ACCOUNT_SK}),
            ConsistentRead=True,
        )
        item = resp.get("Item")
        return account_from_item(item) if item else None

    def create_account(self, account: Account) -> bool:
        try:
            self._client.put_item(
                TableName=self._table,
                Item=to_item(
                    {
                        "PK": user_pk(account.user_id),
                        "SK": ACCOUNT_SK,
                        "kind": "account",
                        "user_id": account.user_id,
                        "balance": account.balance,
                        "available": account.available,
                        "tier": account.tier.value,
                        "month": account.month,
                        "month_spent": account.month_spent,
                        "created_at": account.created_at,
                        "updated_at": account.updated_at,
                    }
                ),
                ConditionExpression="attribute_not_exists(PK)",
            )
        except ClientError as exc:
            if _code(exc) == "ConditionalCheckFailedException":
                return False
            raise
        return True

    def roll_over(self, before: Account, after: Account) -> None:
        names = {"#month": "month"}
        values: dict[str, Any] = {
            ":old": before.month,
            ":new": after.month,
            ":zero": after.month_spent,
            ":b": before.balance,
            ":av": before.available,
        }
        update = "SET #month = :new, month_spent = :zero"
        if after.cap_headroom is not None:
            update += ", cap_headroom = :h"
            values[":h"] = after.cap_headroom
        self._update_account(
            before.user_id,
            update,
            "#month = :old AND balance = :b AND available = :av",
            names,
            values,
        )

    def set_monthly_cap(self, before: Account, after: Account) -> None:
        names = {"#month": "month"}
        values: dict[str, Any] = {
            ":m": before.month,
            ":b": before.balance,
            ":av": before.available,
            ":ms": before.month_spent,
            ":now": after.updated_at,
        }
        if after.monthly_cap is None:
            update = "SET updated_at = :now REMOVE monthly_cap, cap_headroom"
        else:
            update = "SET monthly_cap = :cap, cap_headroom = :h, updated_at = :now"
            values[":cap"] = after.monthly_cap
            values[":h"] = after.cap_headroom
        self._update_account(
            before.user_id,
            update,
            "#month = :m AND balance = :b AND available = :av AND month_spent = :ms",
            names,
            values,
        )

    def set_tier(self, user_id: str, tier: Tier, now: str) -> None:
        self._update_account(
            user_id,
            "SET tier = :t, updated_at = :now",
            "attribute_exists(PK)",
            {},
            {":t": tier.value, ":now": now},
        )

    def _update_account(
        self,
        user_id: str,
        update: str,
        condition: str,
        names: dict[str, str],
        values: dict[str, Any],
    ) -> None:
        kwargs: dict[str, Any] = {
            "TableName": self._table,
            "Key": to_item({"PK": user_pk(user_id), "SK": ACCOUNT_SK}),
            "UpdateExpression": update,
            "ConditionExpression": condition,
            "ExpressionAttributeValues": to_item(values),
        }
        if names:
            kwargs["ExpressionAttributeNames"] = names
        try:
            self._client.update_item(**kwargs)
        except ClientError as exc:
            if _code(exc) == "ConditionalCheckFailedException":
                raise StaleRead from exc
            raise

    # -- money changes ----------------------------------------------------------------

    def commit(
        self,
        user_id: str,
        mutation: Mutation,
        entry: LedgerEntry | None,
        now: str,
        idempotency: tuple[IdempotencyClaim, StoredResult] | None = None,
        hold_put: Hold | None = None,
        hold_delete: Hold | None = None,
        records: Sequence[RecordWrite] = (),
        key_write: KeyWrite | None = None,
    ) -> None:
        items: list[dict[str, Any]] = [{"Update": self._mutation_update(user_id, mutation, now)}]
        if key_write is not None:
            # The API key's budget and state, in the same transaction (issue 11); a failed
            # guard there is a StaleRead like the account's: the service re-reads and re-plans.
            from llmcredits.dal.dynamodb_api_keys import key_write_update

            items.append({"Update": key_write_update(self._table, key_write)})
        record_at = {len(items) + i: record for i, record in enumerate(records)}
        items.extend({"Put": self._record_put(record)} for record in records)
        if hold_put is not None:
            items.append({"Put": self._put_new(hold_to_item(hold_put))})
        hold_delete_at = len(items)
        if hold_delete is not None:
            # Settled or released once: a second settle/release of the same hold fails here.
            items.append(
                {
                    "Delete": {
                        "TableName": self._table,
                        "Key": to_item({"PK": user_pk(user_id), "SK": hold_sk(hold_delete.id)}),
                        "ConditionExpression": "attribute_exists(PK)",
                    }
                }
            )
        if entry is not None:
            items.append({"Put": self._put_new(entry_to_item(entry))})
        if idempotency is not None:
            items.append({"Put": self._idempotency_put(user_id, *idempotency)})
        try:
            self._client.transact_write_items(TransactItems=items)
        except ClientError as exc:
            if _code(exc) != "TransactionCanceledException":
                raise
            reasons = [r.get("Code") for r in exc.response.get("CancellationReasons", [])]
            failed = {
                i for i, code in enumerate(reasons) if code == "ConditionalCheckFailed"
            } if len(reasons) == len(items) else set()
            for position, record in record_at.items():
                if position in failed:
                    raise RecordConflict(record.key) from exc
            if hold_delete is not None and hold_delete_at in failed:
                raise HoldGone(hold_delete.id) from exc
            if idempotency is not None and len(items) - 1 in failed:
                stored = self.get_idempotent_result(user_id, idempotency[0])
                if stored is not None:
                    raise IdempotentReplay(stored) from exc
            # ConditionalCheckFailed on the account, or TransactionConflict with a
            # concurrent writer: either way the read is stale.
            raise StaleRead from exc

    def _mutation_update(self, user_id: str, mutation: Mutation, now: str) -> dict[str, Any]:
        names = {"#month": "month"}
        values: dict[str, Any] = {":m": mutation.month}
        sets: list[str] = []
        conditions = ["#month = :m"]
        if mutation.expected_balance is not None:
            conditions.append("balance = :b")
            values[":b"] = mutation.expected_balance
            sets.append("balance = :nb")
            values[":nb"] = mutation.balance_after
        elif mutation.balance_delta:
            sets.append("balance = balance + :bd")
            values[":bd"] = mutation.balance_delta
        if mutation.available_delta:
            sets.append("available = available + :ad")
            values[":ad"] = mutation.available_delta
        if mutation.require_available is not None:
            conditions.append("available >= :ra")
            values[":ra"] = mutation.require_available
        if mutation.spend_delta:
            sets.append("month_spent = month_spent + :sd")
            values[":sd"] = mutation.spend_delta
        if mutation.capped is True:
            conditions.append("attribute_exists(cap_headroom)")
            if mutation.headroom_delta:
                sets.append("cap_headroom = cap_headroom + :hd")
                values[":hd"] = mutation.headroom_delta
            if mutation.require_headroom is not None:
                conditions.append("cap_headroom >= :rh")
                values[":rh"] = mutation.require_headroom
        elif mutation.capped is False:
            conditions.append("attribute_not_exists(cap_headroom)")
        if mutation.rate is not None:
            values[":rw"] = mutation.rate.window
            if mutation.rate.same_window:
                conditions.append("rate_window = :rw AND rate_count < :rl")
                values[":rl"] = mutation.rate.limit
                sets.append("rate_count = rate_count + :one")
                values[":one"] = 1
            else:
                conditions.append("(attribute_not_exists(rate_window) OR rate_window < :rw)")
                sets.append("rate_window = :rw, rate_count = :one")
                values[":one"] = 1
        sets.append("updated_at = :now")
        values[":now"] = now
        return {
            "TableName": self._table,
            "Key": to_item({"PK": user_pk(user_id), "SK": ACCOUNT_SK}),
            "UpdateExpression": "SET " + ", ".join(sets),
            "ConditionExpression": " AND ".join(conditions),
            "ExpressionAttributeNames": names,
            "ExpressionAttributeValues": to_item(values),
        }

    def get_idempotent_result(self, user_id: str, claim: IdempotencyClaim) -> StoredResult | None:
        resp = self._client.get_item(
            TableName=self._table,
            Key=to_item({"PK": user_pk(user_id), "SK": idempotency_sk(claim)}),
            ConsistentRead=True,
        )
        item = resp.get("Item")
        if not item:
            return None
        data = from_item(item)
        if int(data["expires_at"]) < int(time.time()):
            return None
        return StoredResult(
            fingerprint=data["fingerprint"],
            status=int(data["status"]),
            body=json.loads(data["body"], parse_float=Decimal),
        )

    def _put_new(self, item: dict[str, Any]) -> dict[str, Any]:
        return {
            "TableName": self._table,
            "Item": item,
            "ConditionExpression": "attribute_not_exists(PK)",
        }

    def _idempotency_put(
        self, user_id: str, claim: IdempotencyClaim, result: StoredResult
    ) -> dict[str, Any]:
        epoch = int(time.time())
        return {
            "TableName": self._table,
            "Item": to_item(
                {
                    "PK": user_pk(user_id),
                    "SK": idempotency_sk(claim),
                    "kind": "idempotency",
                    "fingerprint": result.fingerprint,
                    "status": result.status,
                    "body": json.dumps(result.body, sort_keys=True),
                    "expires_at": epoch + IDEMPOTENCY_TTL_SECONDS,
                }
            ),
            # An expired record that TTL has not deleted yet counts as absent.
            "ConditionExpression": "attribute_not_exists(PK) OR expires_at < :now",
            "ExpressionAttributeValues": {":now": {"N": str(epoch)}},
        }

    def _record_put(self, record: RecordWrite) -> dict[str, Any]:
        pk, sk = record_key(record.key, record.owner)
        put: dict[str, Any] = {
            "TableName": self._table,
            "Item": to_item({**record.values, "PK": pk, "SK": sk, "kind": "record"}),
        }
        if record.expect is None:
            put["ConditionExpression"] = "attribute_not_exists(PK)"
        else:
            names = {f"#e{i}": name for i, name in enumerate(record.expect)}
            put["ConditionExpression"] = " AND ".join(f"#e{i} = :e{i}" for i in range(len(names)))
            put["ExpressionAttributeNames"] = names
            put["ExpressionAttributeValues"] = to_item(
                {f":e{i}": value for i, value in enumerate(record.expect.values())}
            )
        return put

    def put_record(
        self, key: str, owner: str | None, values: dict[str, Any], *, only_new: bool = False
    ) -> bool:
        """Write a bookkeeping record outside any money change. False if ``only_new`` and
        it existed."""
        pk, sk = record_key(key, owner)
        kwargs: dict[str, Any] = {
            "TableName": self._table,
            "Item": to_item({**values, "PK": pk, "SK": sk, "kind": "record"}),
        }
        if only_new:
            kwargs["ConditionExpression"] = "attribute_not_exists(PK)"
        try:
            self._client.put_item(**kwargs)
        except ClientError as exc:
            if only_new and _code(exc) == "ConditionalCheckFailedException":
                return False
            raise
        return True

    def get_record(self, key: str, owner: str | None) -> dict[str, Any] | None:
        pk, sk = record_key(key, owner)
        resp = self._client.get_item(
            TableName=self._table, Key=to_item({"PK": pk, "SK": sk}), ConsistentRead=True
        )
        item = resp.get("Item")
        if not item:
            return None
        data = from_item(item)
        for name in ("PK", "SK", "kind"):
            data.pop(name, None)
        return data

    def get_hold(self, user_id: str, hold_id: str) -> Hold | None:
        resp = self._client.get_item(
            TableName=self._table,
            Key=to_item({"PK": user_pk(user_id), "SK": hold_sk(hold_id)}),
            ConsistentRead=True,
        )
        item = resp.get("Item")
        return hold_from_item(item) if item else None

    def holds_created_before(self, cutoff: str) -> list[Hold]:
        """Open holds older than ``cutoff``, from every shard of the HoldsByAge index."""
        return [
            hold_from_item(item)
            for shard in range(HOLD_SHARDS)
            for item in all_items(
                self._client,
                "query",
                TableName=self._table,
                IndexName=HOLDS_INDEX,
                KeyConditionExpression="hold_shard = :s AND hold_created_at < :cutoff",
                ExpressionAttributeValues=to_item({":s": f"HOLDS#{shard}", ":cutoff": cutoff}),
            )
        ]

    def sum_open_holds(self, user_id: str) -> Decimal:
        items = all_items(
            self._client,
            "query",
            TableName=self._table,
            KeyConditionExpression="PK = :pk AND begins_with(SK, :prefix)",
            ExpressionAttributeValues=to_item({":pk": user_pk(user_id), ":prefix": HOLD_PREFIX}),
            ConsistentRead=True,
        )
        return sum((from_item(item)["amount"] for item in items), Decimal(0))

    # -- history ----------------------------------------------------------------------

    def list_entries(
        self, user_id: str, limit: int, after_key: str | None, entry_type: str | None,
        key_id: str | None = None,
    ) -> EntryPage:
        """Newest first; with a type filter, keeps reading pages until ``limit`` match."""
        entries: list[LedgerEntry] = []
        start = after_key
        while True:
            kwargs: dict[str, Any] = {
                "TableName": self._table,
                "KeyConditionExpression": "PK = :pk AND begins_with(SK, :prefix)",
                "ExpressionAttributeValues": to_item(
                    {":pk": user_pk(user_id), ":prefix": LEDGER_PREFIX}
                ),
                "ScanIndexForward": False,
                "ConsistentRead": True,
                "Limit": limit - len(entries),
            }
            filters = []
            if entry_type:
                filters.append("#type = :type")
                kwargs["ExpressionAttributeNames"] = {"#type": "type"}
                kwargs["ExpressionAttributeValues"][":type"] = {"S": entry_type}
            if key_id:
                filters.append("key_id = :key")
                kwargs["ExpressionAttributeValues"][":key"] = {"S": key_id}
            if filters:
                kwargs["FilterExpression"] = " AND ".join(filters)
            if start:
                kwargs["ExclusiveStartKey"] = to_item({"PK": user_pk(user_id), "SK": start})
            resp = self._client.query(**kwargs)
            entries.extend(entry_from_item(item) for item in resp.get("Items", []))
            last = resp.get("LastEvaluatedKey")
            start = from_item(last)["SK"] if last else None
            if start is None or len(entries) >= limit:
                return EntryPage(entries=entries, last_key=start)


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))
