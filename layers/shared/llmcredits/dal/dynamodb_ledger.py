"""The ledger on one DynamoDB table.

Keys (one partition per user, so each money change is one TransactWriteItems):
  PK=USER#<id>  SK=ACCOUNT                          the account
  PK=USER#<id>  SK=LEDGER#<created_at>#<entry id>   a ledger entry (newest first by SK)
  PK=USER#<id>  SK=IDEMP#<scope>#<key>              an idempotency record (TTL)
  PK=USER#<id>  SK=HOLD#<hold id>                   an open hold of a chat request in flight
                                                    (with ``settlement`` once answered: the outbox)
  PK=USER#<id>  SK=RECORD#<key>                     bookkeeping (e.g. a Stripe event applied)
  PK=RECORD#<key> SK=RECORD                         a global record (e.g. payment -> user)

Index HistoryByType (type_pk = USER#<id>#TYPE#<type>, SK): one user's entries of one type,
newest first, so a filtered history page is one Query whatever lies between matches.

Index LotsByExpiry (lot_shard = LOTS#<n>, next_expiry; keys only): accounts that hold a
lot with an expiry, by the soonest one, so the expiry job and the expiring-lots query
read only those accounts. Sparse: set and removed by every rewrite of the lot list.
The account's ``lots`` (a list of maps), ``lot_draw`` and ``lots_version`` are
described in ``llmcredits.domain.ledger``; an account item without ``lots`` is from
before lots and reads as one non-expiring lot (``migrated_lots``).

Settles carry no guard on the balance. The account update records the exact balance it
produced in an attribute named for the entry (``ba_<entry id>`` = balance + delta, which
DynamoDB evaluates on the value the update itself changes); after the commit that value
is copied onto the entry and the attribute removed, in one more transaction (``stamp``).
"""

from __future__ import annotations

import hashlib
import json
import random
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace
from decimal import Decimal
from typing import Any

from boto3.dynamodb.types import TypeDeserializer, TypeSerializer
from botocore.exceptions import BotoCoreError, ClientError

from llmcredits.domain.ledger import (
    Account,
    Condition,
    EntryType,
    GuardedWrite,
    Hold,
    IdempotencyClaim,
    LedgerEntry,
    Lot,
    LotSource,
    Mutation,
    RecordWrite,
    Settlement,
    Tier,
    hold_charged_record,
    migrated_lots,
    operation_token,
    settlement_entry,
)
from llmcredits.domain.ports import (
    EntryPage,
    HoldAnswered,
    HoldGone,
    IdempotentReplay,
    RecordConflict,
    ResponseClaim,
    StaleRead,
    StoredResponse,
    StoredResult,
    StoreUnavailable,
)

ACCOUNT_SK = "ACCOUNT"
LEDGER_PREFIX = "LEDGER#"
IDEMPOTENCY_PREFIX = "IDEMP#"
HOLD_PREFIX = "HOLD#"
HOLD_SHARDS = 8
HOLDS_INDEX = "HoldsByAge"
IDEMPOTENCY_TTL_SECONDS = 24 * 3600
HISTORY_INDEX = "HistoryByType"
LOTS_INDEX = "LotsByExpiry"
LOT_SHARDS = 8
# Items read per Query when filtering history by API key (DynamoDB caps a page at 1 MB).
KEY_FILTER_PAGE = 1000
BALANCE_AFTER_PREFIX = "ba_"
RESPONSE_SCOPE = "chat"
# A transaction whose outcome is unknown (timeout, 5xx, throttling after botocore's own
# retries) is sent again unchanged, with the same token, this many times in all.
SEND_ATTEMPTS = 4
# Errors that say nothing was written: re-sending would fail the same way.
DEFINITIVE_ERRORS = frozenset(
    {"TransactionCanceledException", "ValidationException", "ResourceNotFoundException",
     "IdempotentParameterMismatchException", "AccessDeniedException",
     "ConditionalCheckFailedException"}
)

_serializer = TypeSerializer()
_deserializer = TypeDeserializer()


def user_pk(user_id: str) -> str:
    return f"USER#{user_id}"


def ledger_sk(entry: LedgerEntry) -> str:
    return f"{LEDGER_PREFIX}{entry.created_at}#{entry.id}"


def idempotency_sk(claim: IdempotencyClaim) -> str:
    return f"{IDEMPOTENCY_PREFIX}{claim.scope}#{claim.key}"


def response_sk(key: str) -> str:
    return f"{IDEMPOTENCY_PREFIX}{RESPONSE_SCOPE}#{key}"


def type_pk(user_id: str, entry_type: str) -> str:
    return f"{user_pk(user_id)}#TYPE#{entry_type}"


def balance_after_attribute(entry_id: str) -> str:
    return f"{BALANCE_AFTER_PREFIX}{entry_id}"


def all_items(client: Any, operation: str, **kwargs: Any) -> Iterator[dict[str, Any]]:
    """Every item of a ``query`` or ``scan``, across pages (boto3's own paginator)."""
    for page in client.get_paginator(operation).paginate(**kwargs):
        yield from page.get("Items", [])


def to_item(values: dict[str, Any]) -> dict[str, Any]:
    return {k: _serializer.serialize(v) for k, v in values.items() if v is not None}


def from_item(item: dict[str, Any]) -> dict[str, Any]:
    return {k: _deserializer.deserialize(v) for k, v in item.items()}


def lot_shard(user_id: str) -> str:
    digest = hashlib.sha256(user_id.encode()).hexdigest()
    return f"LOTS#{int(digest[:8], 16) % LOT_SHARDS}"


def lot_to_map(lot: Lot) -> dict[str, Any]:
    values: dict[str, Any] = {"id": lot.id, "amount": lot.amount, "remaining": lot.remaining,
                              "source": lot.source.value, "created_at": lot.created_at}
    if lot.expires_at is not None:
        values["expires_at"] = lot.expires_at
    return values


def lot_from_map(data: dict[str, Any]) -> Lot:
    return Lot(id=data["id"], amount=data["amount"], remaining=data["remaining"],
               source=LotSource(data["source"]), created_at=data["created_at"],
               expires_at=data.get("expires_at"))


def account_from_item(item: dict[str, Any]) -> Account:
    data = from_item(item)
    draw = data.get("lot_draw", Decimal(0))
    if "lots" in data:
        lots = tuple(lot_from_map(x) for x in data["lots"])
    else:  # an account from before lots
        lots, draw = migrated_lots(data["balance"], draw, data.get("created_at", ""))
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
        lots=lots,
        lot_draw=draw,
        lots_version=int(data.get("lots_version", 0)),
        paid_total=data.get("paid_total", Decimal(0)),
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
            "hold_shard": f"HOLDS#{shard}",
            "hold_created_at": hold.created_at,
            "settlement": None if hold.settlement is None else hold.settlement.to_json(),
            "key_id": hold.key_id or None,
            "release_extra": json.dumps([w.to_json() for w in hold.release_extra])
            if hold.release_extra else None,
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
        settlement=Settlement.from_json(data["settlement"]) if data.get("settlement") else None,
        key_id=data.get("key_id", ""),
        release_extra=tuple(GuardedWrite.from_json(w)
                            for w in json.loads(data.get("release_extra") or "[]")),
    )


def entry_to_item(entry: LedgerEntry) -> dict[str, Any]:
    return to_item(
        {
            "PK": user_pk(entry.user_id),
            "SK": ledger_sk(entry),
            "kind": "ledger",
            "type_pk": type_pk(entry.user_id, entry.type.value),
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
            "metadata": json.dumps(entry.metadata, sort_keys=True, default=str),
            "key_id": entry.key_id,
            "receipt_url": entry.receipt_url,
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
        balance_after=data.get("balance_after"),
        provider=data.get("provider"),
        model=data.get("model"),
        tokens=None if tokens is None else int(tokens),
        cost=data.get("cost"),
        metadata=json.loads(data.get("metadata") or "{}"),
        key_id=data.get("key_id"),
        receipt_url=data.get("receipt_url"),
    )


class DynamoLedgerStore:
    """LedgerStore on DynamoDB (real, Local, or moto)."""

    def __init__(
        self, client: Any, table: str, sleep: Callable[[float], None] = time.sleep
    ) -> None:
        self._client = client
        self._table = table
        self._sleep = sleep

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
                        "lots": [lot_to_map(lot) for lot in account.lots],
                        "lot_draw": account.lot_draw,
                        "lots_version": account.lots_version,
                        "paid_total": account.paid_total,
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
        token: str | None = None,
    ) -> None:
        items: list[dict[str, Any]] = [{"Update": self._mutation_update(user_id, mutation, now,
                                                                        entry)}]
        record_at = {len(items) + i: record for i, record in enumerate(records)}
        items.extend({"Put": self._record_put(record)} for record in records)
        extra_at = {len(items) + i: write for i, write in enumerate(mutation.extra)}
        items.extend({"Update": self._guarded_update(write)} for write in mutation.extra)
        if hold_put is not None:
            items.append({"Put": self._put_new(hold_to_item(hold_put))})
        hold_delete_at = len(items)
        if hold_delete is not None:
            # Settled or released once: a second settle/release of the same hold fails
            # here, and so does a release of a hold whose answer is recorded.
            items.append({"Delete": self._hold_delete(user_id, hold_delete,
                                                      answered_ok=entry is not None)})
        if entry is not None:
            items.append({"Put": self._put_new(entry_to_item(entry))})
        if idempotency is not None:
            items.append({"Put": self._idempotency_put(user_id, *idempotency)})
        if token is None:
            token = self._derived_token(mutation, entry, hold_put, hold_delete, records)
        try:
            self.transact(items, token)
        except ClientError as exc:
            if _code(exc) == "IdempotentParameterMismatchException" and hold_delete is not None:
                # Tokens of hold operations derive from the hold: another settle or
                # release of this hold committed within 10 minutes, so the hold is gone.
                raise HoldGone(hold_delete.id) from exc
            if _code(exc) != "TransactionCanceledException":
                raise
            reasons = exc.response.get("CancellationReasons", [])
            failed = {
                i for i, reason in enumerate(reasons)
                if reason.get("Code") == "ConditionalCheckFailed"
            } if len(reasons) == len(items) else set()
            for position, record in record_at.items():
                if position in failed:
                    raise RecordConflict(record.key) from exc
            for position, write in extra_at.items():
                if position in failed and write.error is not None:
                    raise write.error from exc
            if hold_delete is not None and hold_delete_at in failed:
                old: dict[str, Any] = dict(reasons[hold_delete_at].get("Item") or {})
                if "settlement" in old:
                    raise HoldAnswered(hold_from_item(old)) from exc
                raise HoldGone(hold_delete.id) from exc
            if idempotency is not None and len(items) - 1 in failed:
                stored = self.get_idempotent_result(user_id, idempotency[0])
                if stored is not None:
                    raise IdempotentReplay(stored) from exc
            # ConditionalCheckFailed on the account, or TransactionConflict with a
            # concurrent writer: either way the read is stale.
            raise StaleRead from exc

    @staticmethod
    def _derived_token(
        mutation: Mutation,
        entry: LedgerEntry | None,
        hold_put: Hold | None,
        hold_delete: Hold | None,
        records: Sequence[RecordWrite],
    ) -> str:
        shape = (mutation.month, str(mutation.capped))
        if entry is not None:
            return operation_token("entry", entry.id, *shape)
        if hold_put is not None:
            return operation_token("reserve", hold_put.id, *shape)
        if hold_delete is not None:
            return operation_token("release", hold_delete.id, *shape)
        return operation_token("records", ",".join(r.key for r in records), *shape)

    def transact(self, items: list[dict[str, Any]], token: str) -> None:
        """TransactWriteItems with ``token``; an unknown outcome is re-sent unchanged.

        botocore already retries with the same token inside one call; this covers the
        call failing as a whole (its retries used up) after the write may have landed.
        A re-send of a committed transaction is a success (DynamoDB keeps tokens for
        10 minutes), so nothing is applied twice."""
        for attempt in range(SEND_ATTEMPTS):
            try:
                self._client.transact_write_items(TransactItems=items, ClientRequestToken=token)
                return
            except ClientError as exc:
                if _code(exc) in DEFINITIVE_ERRORS or attempt == SEND_ATTEMPTS - 1:
                    if _code(exc) in DEFINITIVE_ERRORS:
                        raise
                    raise StoreUnavailable(_code(exc)) from exc
            except BotoCoreError as exc:  # timeouts, dropped connections
                if attempt == SEND_ATTEMPTS - 1:
                    raise StoreUnavailable(type(exc).__name__) from exc
            self._sleep(random.uniform(0, 0.05 * 2**attempt))  # noqa: S311

    def _hold_delete(self, user_id: str, hold: Hold, *, answered_ok: bool) -> dict[str, Any]:
        condition = "attribute_exists(PK)"
        if not answered_ok:
            condition += " AND attribute_not_exists(settlement)"
        return {
            "TableName": self._table,
            "Key": to_item({"PK": user_pk(user_id), "SK": hold_sk(hold.id)}),
            "ConditionExpression": condition,
            "ReturnValuesOnConditionCheckFailure": "ALL_OLD",
        }

    def _guarded_update(self, write: GuardedWrite) -> dict[str, Any]:
        names: dict[str, str] = {}
        values: dict[str, Any] = {}

        def name(attribute: str) -> str:
            alias = f"#g{len(names)}"
            names[alias] = attribute
            return alias

        def value(v: Any) -> str:
            alias = f":g{len(values)}"
            values[alias] = v
            return alias

        clauses = []
        if write.set:
            clauses.append("SET " + ", ".join(f"{name(k)} = {value(v)}"
                                             for k, v in write.set.items()))
        if write.add:
            clauses.append("ADD " + ", ".join(f"{name(k)} {value(v)}"
                                             for k, v in write.add.items()))
        update: dict[str, Any] = {
            "TableName": self._table,
            "Key": to_item({"PK": user_pk(write.owner), "SK": write.sort_key}),
            "UpdateExpression": " ".join(clauses),
        }
        conditions = [_condition(c, name, value) for c in write.conditions]
        if conditions:
            update["ConditionExpression"] = " AND ".join(conditions)
        update["ExpressionAttributeNames"] = names
        if values:
            update["ExpressionAttributeValues"] = to_item(values)
        return update

    # -- settlements (the outbox on the hold) ------------------------------------------

    def record_settlement(self, hold: Hold, settlement: Settlement) -> bool:
        try:
            self._client.update_item(
                TableName=self._table,
                Key=to_item({"PK": user_pk(hold.user_id), "SK": hold_sk(hold.id)}),
                UpdateExpression="SET settlement = :s",
                ConditionExpression="attribute_exists(PK) AND attribute_not_exists(settlement)",
                ExpressionAttributeValues=to_item({":s": settlement.to_json()}),
                ReturnValuesOnConditionCheckFailure="ALL_OLD",
            )
        except ClientError as exc:
            if _code(exc) != "ConditionalCheckFailedException":
                raise
            old: dict[str, Any] = dict(exc.response.get("Item") or {})  # type: ignore[call-overload]
            return "settlement" in old  # recorded already: fine
        return True

    def settle(self, hold: Hold, settlement: Settlement, mutation: Mutation) -> None:
        entry = settlement_entry(hold, settlement)
        token = operation_token("settle", hold.id, mutation.month, str(mutation.capped))
        charged = hold_charged_record(hold, entry)
        try:
            self.commit(hold.user_id, mutation, entry, settlement.created_at,
                        hold_delete=hold, token=token, records=(charged,))
        except RecordConflict:
            return  # this hold was charged already: nothing more to do
        except HoldGone:
            # Committed before (its token expired, or another process applied it)?
            if self._entry_exists(entry):
                return
            raise

    def _entry_exists(self, entry: LedgerEntry) -> bool:
        resp = self._client.get_item(
            TableName=self._table,
            Key=to_item({"PK": user_pk(entry.user_id), "SK": ledger_sk(entry)}),
            ConsistentRead=True,
            ProjectionExpression="PK",
        )
        return "Item" in resp

    def stamp_balance_after(self, user_id: str, entry: LedgerEntry) -> Decimal:
        """Copy the balance the settle recorded on the account onto its entry.

        Read first, then write entry and removal together: a crash in between leaves
        the value on the account, where the next stamp (or a history read) finds it."""
        attribute = balance_after_attribute(entry.id)
        resp = self._client.get_item(
            TableName=self._table,
            Key=to_item({"PK": user_pk(user_id), "SK": ACCOUNT_SK}),
            ConsistentRead=True,
            ProjectionExpression="#ba",
            ExpressionAttributeNames={"#ba": attribute},
        )
        item = resp.get("Item") or {}
        if attribute not in item:
            stamped = self._client.get_item(
                TableName=self._table,
                Key=to_item({"PK": user_pk(user_id), "SK": ledger_sk(entry)}),
                ConsistentRead=True,
            ).get("Item")
            if stamped is None or "balance_after" not in stamped:
                raise StoreUnavailable(f"no recorded balance for entry {entry.id}")
            return Decimal(stamped["balance_after"]["N"])
        balance_after = Decimal(item[attribute]["N"])
        self._stamp(user_id, entry, balance_after)
        return balance_after

    def _stamp(self, user_id: str, entry: LedgerEntry, balance_after: Decimal) -> None:
        attribute = balance_after_attribute(entry.id)
        items = [
            {"Update": {
                "TableName": self._table,
                "Key": to_item({"PK": user_pk(user_id), "SK": ledger_sk(entry)}),
                "UpdateExpression": "SET balance_after = :v",
                "ConditionExpression": "attribute_exists(PK)",
                "ExpressionAttributeValues": to_item({":v": balance_after}),
            }},
            {"Update": {
                "TableName": self._table,
                "Key": to_item({"PK": user_pk(user_id), "SK": ACCOUNT_SK}),
                "UpdateExpression": "REMOVE #ba",
                "ExpressionAttributeNames": {"#ba": attribute},
            }},
        ]
        self.transact(items, operation_token("stamp", entry.id))

    def settlements_recorded_before(self, cutoff: str) -> list[Hold]:
        """Holds older than ``cutoff`` whose answer is recorded (the settle worker's work)."""
        return self._holds_before(cutoff, FilterExpression="attribute_exists(settlement)")

    # -- chat responses kept for an Idempotency-Key ------------------------------------

    def claim_response(
        self, user_id: str, key: str, fingerprint: str, lease_seconds: int
    ) -> ResponseClaim | None:
        epoch = int(time.time())
        try:
            self._client.put_item(
                TableName=self._table,
                Item=to_item({
                    "PK": user_pk(user_id),
                    "SK": response_sk(key),
                    "kind": "idempotency",
                    "fingerprint": fingerprint,
                    "state": "running",
                    "lease_until": epoch + lease_seconds,
                    "expires_at": epoch + IDEMPOTENCY_TTL_SECONDS,
                }),
                # Free, expired (TTL not run yet), or a running claim whose process died.
                ConditionExpression=("attribute_not_exists(PK) OR expires_at < :now OR "
                                     "(#state = :running AND lease_until < :now)"),
                ExpressionAttributeNames={"#state": "state"},
                ExpressionAttributeValues=to_item({":now": epoch, ":running": "running"}),
                ReturnValuesOnConditionCheckFailure="ALL_OLD",
            )
            return None
        except ClientError as exc:
            if _code(exc) != "ConditionalCheckFailedException":
                raise
            old = from_item(dict(exc.response.get("Item") or {}))  # type: ignore[call-overload]
        if old.get("state") == "running":
            return ResponseClaim(fingerprint=str(old.get("fingerprint")), running=True)
        return ResponseClaim(
            fingerprint=str(old.get("fingerprint")),
            running=False,
            response=StoredResponse(
                status=int(old["status"]),
                content_type=str(old["content_type"]),
                body=old.get("body"),
                headers=json.loads(old.get("headers") or "{}"),
            ),
        )

    def finish_response(
        self, user_id: str, key: str, fingerprint: str, response: StoredResponse
    ) -> None:
        epoch = int(time.time())
        self._client.put_item(
            TableName=self._table,
            Item=to_item({
                "PK": user_pk(user_id),
                "SK": response_sk(key),
                "kind": "idempotency",
                "fingerprint": fingerprint,
                "state": "done",
                "status": response.status,
                "content_type": response.content_type,
                "body": response.body,
                "headers": json.dumps(response.headers, sort_keys=True),
                "expires_at": epoch + IDEMPOTENCY_TTL_SECONDS,
            }),
        )

    def drop_response_claim(self, user_id: str, key: str) -> None:
        self._client.delete_item(
            TableName=self._table,
            Key=to_item({"PK": user_pk(user_id), "SK": response_sk(key)}),
        )

    def _mutation_update(
        self, user_id: str, mutation: Mutation, now: str, entry: LedgerEntry | None = None
    ) -> dict[str, Any]:
        names = {"#month": "month"}
        values: dict[str, Any] = {":m": mutation.month}
        sets: list[str] = []
        conditions = ["#month = :m"]
        if mutation.expected_balance is not None:
            conditions.append("balance = :b")
            values[":b"] = mutation.expected_balance
            sets.append("balance = :nb")
            values[":nb"] = mutation.balance_after
        elif mutation.balance_delta or entry is not None:
            sets.append("balance = balance + :bd")
            values[":bd"] = mutation.balance_delta
            if entry is not None:
                # Operands are read before the update: this is the balance it produces.
                sets.append("#ba = balance + :bd")
                names["#ba"] = balance_after_attribute(entry.id)
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
        removes = self._lots_update(user_id, mutation, sets, conditions, values)
        sets.append("updated_at = :now")
        values[":now"] = now
        update = "SET " + ", ".join(sets) + (" REMOVE " + ", ".join(removes) if removes else "")
        return {
            "TableName": self._table,
            "Key": to_item({"PK": user_pk(user_id), "SK": ACCOUNT_SK}),
            "UpdateExpression": update,
            "ConditionExpression": " AND ".join(conditions),
            "ExpressionAttributeNames": names,
            "ExpressionAttributeValues": to_item(values),
        }

    @staticmethod
    def _lots_update(
        user_id: str, mutation: Mutation, sets: list[str], conditions: list[str],
        values: dict[str, Any],
    ) -> list[str]:
        """The lots, draw, paid total and tier part of an account update; returns the
        attributes to REMOVE."""
        removes: list[str] = []
        write = mutation.lots
        if write is not None:
            # A list rewritten since the read (another guarded change) fails the write.
            version = "lots_version = :lv"
            conditions.append(f"(attribute_not_exists(lots_version) OR {version})"
                              if write.version == 0 else version)
            values[":lv"] = write.version
            values[":lvn"] = write.version + 1
            values[":lots"] = [lot_to_map(lot) for lot in write.lots]
            values[":ldraw"] = write.draw
            sets.extend(["lots = :lots", "lot_draw = :ldraw", "lots_version = :lvn"])
            if write.next_expiry is not None:
                sets.extend(["next_expiry = :nx", "lot_shard = :ls"])
                values[":nx"] = write.next_expiry
                values[":ls"] = lot_shard(user_id)
            else:
                removes.extend(["next_expiry", "lot_shard"])
        elif mutation.draw_delta:
            sets.append("lot_draw = if_not_exists(lot_draw, :zero) + :dd")
            values[":dd"] = mutation.draw_delta
            values[":zero"] = Decimal(0)
        if mutation.paid_delta:
            sets.append("paid_total = if_not_exists(paid_total, :pzero) + :pd")
            values[":pd"] = mutation.paid_delta
            values[":pzero"] = Decimal(0)
        if mutation.tier_change is not None:
            before, after = mutation.tier_change
            # An operator's change of the tier since the read wins (re-read, re-plan).
            conditions.append("tier = :tier_before")
            sets.append("tier = :tier_after")
            values[":tier_before"] = before.value
            values[":tier_after"] = after.value
        return removes

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

    def get_entry(self, user_id: str, created_at: str, entry_id: str) -> LedgerEntry | None:
        """One ledger entry by its key (a consistent GetItem), e.g. the one a
        ``hold-charged`` marker names."""
        resp = self._client.get_item(
            TableName=self._table,
            Key=to_item({"PK": user_pk(user_id),
                         "SK": f"{LEDGER_PREFIX}{created_at}#{entry_id}"}),
            ConsistentRead=True,
        )
        item = resp.get("Item")
        return entry_from_item(item) if item else None

    def holds_created_before(self, cutoff: str) -> list[Hold]:
        """Open holds older than ``cutoff``."""
        return self._holds_before(cutoff)

    def _holds_before(self, cutoff: str, **query: Any) -> list[Hold]:
        """Holds older than ``cutoff``, from every shard of the HoldsByAge index."""
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
                **query,
            )
        ]

    def accounts_with_expiry_before(self, cutoff: str, *, inclusive: bool = False) -> list[str]:
        """Users whose soonest lot expiry is before ``cutoff`` (or at it, ``inclusive``),
        from every shard of the LotsByExpiry index (eventually consistent: the caller
        reads each account again)."""
        op = "<=" if inclusive else "<"
        return [
            from_item(item)["PK"].removeprefix("USER#")
            for shard in range(LOT_SHARDS)
            for item in all_items(
                self._client,
                "query",
                TableName=self._table,
                IndexName=LOTS_INDEX,
                KeyConditionExpression=f"lot_shard = :s AND next_expiry {op} :cutoff",
                ExpressionAttributeValues=to_item({":s": f"LOTS#{shard}", ":cutoff": cutoff}),
            )
        ]

    def open_holds(self, user_id: str) -> list[Hold]:
        items = all_items(
            self._client,
            "query",
            TableName=self._table,
            KeyConditionExpression="PK = :pk AND begins_with(SK, :prefix)",
            ExpressionAttributeValues=to_item({":pk": user_pk(user_id), ":prefix": HOLD_PREFIX}),
            ConsistentRead=True,
        )
        return [hold_from_item(item) for item in items]

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
        """Newest first, one Query per page: a type filter reads the HistoryByType index
        (only that type's entries), so no page is read and thrown away."""
        if key_id:
            return self._entries_of_key(user_id, limit, after_key, entry_type, key_id)
        kwargs: dict[str, Any] = {
            "TableName": self._table,
            "ScanIndexForward": False,
            "Limit": limit,
        }
        if entry_type:
            partition = type_pk(user_id, entry_type)
            kwargs["IndexName"] = HISTORY_INDEX
            kwargs["KeyConditionExpression"] = "type_pk = :pk AND begins_with(SK, :prefix)"
            kwargs["ExpressionAttributeValues"] = to_item(
                {":pk": partition, ":prefix": LEDGER_PREFIX}
            )
            if after_key:
                kwargs["ExclusiveStartKey"] = to_item(
                    {"type_pk": partition, "SK": after_key, "PK": user_pk(user_id)}
                )
        else:
            kwargs["KeyConditionExpression"] = "PK = :pk AND begins_with(SK, :prefix)"
            kwargs["ExpressionAttributeValues"] = to_item(
                {":pk": user_pk(user_id), ":prefix": LEDGER_PREFIX}
            )
            kwargs["ConsistentRead"] = True
            if after_key:
                kwargs["ExclusiveStartKey"] = to_item({"PK": user_pk(user_id), "SK": after_key})
        resp = self._client.query(**kwargs)
        entries = [entry_from_item(item) for item in resp.get("Items", [])]
        last = resp.get("LastEvaluatedKey")
        return EntryPage(entries=self._with_balances(user_id, entries),
                         last_key=from_item(last)["SK"] if last else None)

    def _entries_of_key(
        self, user_id: str, limit: int, after_key: str | None, entry_type: str | None,
        key_id: str,
    ) -> EntryPage:
        """One API key's entries: the user's partition read newest first with a filter.

        No index per key: the items read are proportional to the user's history between
        matches (a key with few entries among many pays for all of them). They are read
        in pages of KEY_FILTER_PAGE items (DynamoDB's Limit counts items read, not
        matches), so that costs one round trip per page, not one per ``limit`` items; a
        page with more matches than needed ends at the last one returned (the cursor)."""
        entries: list[LedgerEntry] = []
        start = after_key
        while True:
            kwargs: dict[str, Any] = {
                "TableName": self._table,
                "KeyConditionExpression": "PK = :pk AND begins_with(SK, :prefix)",
                "ExpressionAttributeValues": to_item(
                    {":pk": user_pk(user_id), ":prefix": LEDGER_PREFIX, ":key": key_id}
                ),
                "FilterExpression": "key_id = :key",
                "ScanIndexForward": False,
                "ConsistentRead": True,
                "Limit": KEY_FILTER_PAGE,
            }
            if entry_type:
                kwargs["FilterExpression"] += " AND #type = :type"
                kwargs["ExpressionAttributeNames"] = {"#type": "type"}
                kwargs["ExpressionAttributeValues"][":type"] = {"S": entry_type}
            if start:
                kwargs["ExclusiveStartKey"] = to_item({"PK": user_pk(user_id), "SK": start})
            resp = self._client.query(**kwargs)
            entries.extend(entry_from_item(item) for item in resp.get("Items", []))
            last = resp.get("LastEvaluatedKey")
            start = from_item(last)["SK"] if last else None
            if len(entries) > limit:
                entries = entries[:limit]
                start = ledger_sk(entries[-1])  # the next page starts after this one
            if start is None or len(entries) >= limit:
                return EntryPage(entries=self._with_balances(user_id, entries),
                                 last_key=start)

    def _with_balances(self, user_id: str, entries: list[LedgerEntry]) -> list[LedgerEntry]:
        """Fill in ``balance_after`` of settles not stamped yet, from the account."""
        pending = [e for e in entries if e.balance_after is None]
        if not pending:
            return entries
        account = self._client.get_item(
            TableName=self._table,
            Key=to_item({"PK": user_pk(user_id), "SK": ACCOUNT_SK}),
            ConsistentRead=True,
        ).get("Item") or {}
        filled = {}
        for entry in pending:
            raw = account.get(balance_after_attribute(entry.id))
            if raw is not None:
                filled[entry.id] = replace(entry, balance_after=Decimal(raw["N"]))
            else:  # stamped since the page was read (GSI reads lag): read it again
                item = self._client.get_item(
                    TableName=self._table,
                    Key=to_item({"PK": user_pk(user_id), "SK": ledger_sk(entry)}),
                    ConsistentRead=True,
                ).get("Item")
                if item is not None:
                    filled[entry.id] = entry_from_item(item)
        return [filled.get(e.id, e) for e in entries]


def _condition(
    condition: Condition, name: Callable[[str], str], value: Callable[[Any], str]
) -> str:
    if condition.op == "exists":
        return f"attribute_exists({name(condition.attribute)})"
    if condition.op == "not_exists":
        return f"attribute_not_exists({name(condition.attribute)})"
    return f"{name(condition.attribute)} {condition.op} {value(condition.value)}"


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))
