"""API keys on the ledger table.

Items:
  PK=USER#<id>      SK=APIKEY#<key id>  the key: settings, budget counters, secret hashes
  PK=USER#<id>      SK=APIKEYS          how many active keys the user has (the 50 cap)
  PK=APIKEY#<hash>  SK=APIKEY           lookup by secret hash: one GetItem for the
                                        authorizer (owner, key id, what it may do)

The key item is the authority: the chat reserve checks it in the ledger's transaction.
The lookup items are written in the same transactions as every change to the fields
they copy, so the authorizer's single read agrees with it. No item holds a secret.
A previous secret's lookup item carries the table's TTL attribute (``expires_at``) a day
after its grace ends; the key item never carries ``expires_at`` (TTL would delete it).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from botocore.exceptions import ClientError

from llmcredits.dal.dynamodb_ledger import all_items, from_item, to_item, user_pk
from llmcredits.domain.api_keys import STATUS_ACTIVE, STATUS_REVOKED, ApiKey, LimitReset
from llmcredits.domain.api_keys import epoch as epoch_of

KEY_PREFIX = "APIKEY#"
COUNTER_SK = "APIKEYS"
LOOKUP_SK = "APIKEY"
LOOKUP_TTL_AFTER_GRACE_SECONDS = 86_400


class TooManyKeys(Exception):
    """The user has the maximum number of active keys."""


class KeyChanged(Exception):
    """The key changed since it was read (or is gone): re-read and retry."""


@dataclass(frozen=True)
class KeyLookup:
    """What the authorizer reads for one secret hash."""

    user_id: str
    key_id: str
    enabled: bool
    expires_epoch: int | None
    grace_epoch: int | None  # set on a previous secret: it works until then
    power_levels: tuple[str, ...] | None


def key_sk(key_id: str) -> str:
    return f"{KEY_PREFIX}{key_id}"


def lookup_pk(hash_: str) -> str:
    return f"{KEY_PREFIX}{hash_}"


def _iso(moment: datetime | None) -> str | None:
    return None if moment is None else moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _parse_iso(text: str | None) -> datetime | None:
    return None if not text else datetime.fromisoformat(text.replace("Z", "+00:00"))


def key_to_item(key: ApiKey) -> dict[str, Any]:
    return to_item(
        {
            "PK": user_pk(key.user_id),
            "SK": key_sk(key.id),
            "kind": "api_key",
            "id": key.id,
            "user_id": key.user_id,
            "name": key.name,
            "masked_key": key.masked_key,
            "secret_hash": key.secret_hash,
            "created_at": key.created_at,
            "updated_at": key.updated_at,
            "limit_reset": key.limit_reset.value,
            "period": key.period,
            "key_limit": key.limit,
            "period_spent": key.period_spent,
            "held": key.held,
            "headroom": key.headroom,
            "usage": key.usage,
            "key_expires_at": _iso(key.expires_at),
            "expires_epoch": None if key.expires_at is None else epoch_of(key.expires_at),
            "power_levels": None if key.power_levels is None else list(key.power_levels),
            "rate_limit_per_minute": key.rate_limit_per_minute,
            "rate_window": key.rate_window,
            "rate_count": key.rate_count,
            "enabled": key.enabled,
            "key_status": key.status,
            "last_used_at": key.last_used_at,
            "previous_hash": key.previous_hash,
            "grace_until": _iso(key.grace_until),
            "grace_epoch": None if key.grace_until is None else epoch_of(key.grace_until),
        }
    )


def key_from_item(item: dict[str, Any]) -> ApiKey:
    data = from_item(item)
    levels = data.get("power_levels")
    rate = data.get("rate_limit_per_minute")
    return ApiKey(
        id=data["id"],
        user_id=data["user_id"],
        name=data["name"],
        masked_key=data["masked_key"],
        secret_hash=data["secret_hash"],
        created_at=data["created_at"],
        updated_at=data["updated_at"],
        limit_reset=LimitReset(data["limit_reset"]),
        period=data["period"],
        limit=data.get("key_limit"),
        period_spent=data["period_spent"],
        held=data["held"],
        headroom=data.get("headroom"),
        usage=data["usage"],
        expires_at=_parse_iso(data.get("key_expires_at")),
        power_levels=None if levels is None else tuple(levels),
        rate_limit_per_minute=None if rate is None else int(rate),
        rate_window=int(data.get("rate_window", 0)),
        rate_count=int(data.get("rate_count", 0)),
        enabled=bool(data["enabled"]),
        status=data["key_status"],
        last_used_at=data.get("last_used_at"),
        previous_hash=data.get("previous_hash"),
        grace_until=_parse_iso(data.get("grace_until")),
    )


def _lookup_item(key: ApiKey, hash_: str, grace_until: datetime | None) -> dict[str, Any]:
    values: dict[str, Any] = {
        "PK": lookup_pk(hash_),
        "SK": LOOKUP_SK,
        "kind": "api_key_lookup",
        "user_id": key.user_id,
        "key_id": key.id,
        "enabled": key.enabled,
        "expires_epoch": None if key.expires_at is None else epoch_of(key.expires_at),
        "power_levels": None if key.power_levels is None else list(key.power_levels),
    }
    if grace_until is not None:
        values["grace_epoch"] = epoch_of(grace_until)
        values["expires_at"] = epoch_of(grace_until) + LOOKUP_TTL_AFTER_GRACE_SECONDS  # TTL
    return to_item(values)


class DynamoApiKeyStore:
    def __init__(self, client: Any, table: str) -> None:
        self._client = client
        self._table = table

    # -- reads ------------------------------------------------------------------------

    def get_key(self, user_id: str, key_id: str) -> ApiKey | None:
        resp = self._client.get_item(
            TableName=self._table,
            Key=to_item({"PK": user_pk(user_id), "SK": key_sk(key_id)}),
            ConsistentRead=True,
        )
        item = resp.get("Item")
        return key_from_item(item) if item else None

    def list_keys(self, user_id: str) -> list[ApiKey]:
        items = all_items(
            self._client,
            "query",
            TableName=self._table,
            KeyConditionExpression="PK = :pk AND begins_with(SK, :prefix)",
            ExpressionAttributeValues=to_item({":pk": user_pk(user_id), ":prefix": KEY_PREFIX}),
            ConsistentRead=True,
        )
        return [key_from_item(item) for item in items]

    def lookup(self, hash_: str) -> KeyLookup | None:
        """One GetItem by the secret's hash (strongly consistent: a revoke is seen at once)."""
        resp = self._client.get_item(
            TableName=self._table,
            Key=to_item({"PK": lookup_pk(hash_), "SK": LOOKUP_SK}),
            ConsistentRead=True,
        )
        item = resp.get("Item")
        if not item:
            return None
        data = from_item(item)
        levels = data.get("power_levels")
        expires, grace = data.get("expires_epoch"), data.get("grace_epoch")
        return KeyLookup(
            user_id=data["user_id"],
            key_id=data["key_id"],
            enabled=bool(data["enabled"]),
            expires_epoch=None if expires is None else int(expires),
            grace_epoch=None if grace is None else int(grace),
            power_levels=None if levels is None else tuple(levels),
        )

    # -- writes -----------------------------------------------------------------------

    def create(self, key: ApiKey, max_keys: int) -> None:
        items = [
            {"Update": {
                "TableName": self._table,
                "Key": to_item({"PK": user_pk(key.user_id), "SK": COUNTER_SK}),
                "UpdateExpression": "SET active_keys = if_not_exists(active_keys, :zero) + :one,"
                                    " #kind = :kind",
                "ExpressionAttributeNames": {"#kind": "kind"},
                "ConditionExpression": "attribute_not_exists(active_keys) OR active_keys < :max",
                "ExpressionAttributeValues": to_item(
                    {":zero": 0, ":one": 1, ":max": max_keys, ":kind": "api_key_count"}
                ),
            }},
            {"Put": self._put_new(key_to_item(key))},
            {"Put": self._put_new(_lookup_item(key, key.secret_hash, None))},
        ]
        failed = self._transact(items)
        if failed is not None:
            if 0 in failed:
                raise TooManyKeys
            raise KeyChanged

    def update_settings(self, before: ApiKey, after: ApiKey) -> None:
        """Name, limit, reset window, expiry, enabled, power levels, rate limit: the key
        item (guarded by the budget counters the new headroom was computed from) and the
        lookup items of its live secrets, together."""
        values: dict[str, Any] = {
            ":p": before.period, ":ps": before.period_spent, ":h": before.held,
            ":active": STATUS_ACTIVE, ":sh": before.secret_hash,
            ":name": after.name, ":reset": after.limit_reset.value, ":np": after.period,
            ":nps": after.period_spent, ":enabled": after.enabled, ":now": after.updated_at,
        }
        sets = ["#name = :name", "limit_reset = :reset", "#period = :np",
                "period_spent = :nps", "enabled = :enabled", "updated_at = :now"]
        removes: list[str] = []
        for attr, value in (("key_limit", after.limit), ("headroom", after.headroom),
                            ("key_expires_at", _iso(after.expires_at)),
                            ("expires_epoch",
                             None if after.expires_at is None else epoch_of(after.expires_at)),
                            ("power_levels",
                             None if after.power_levels is None else list(after.power_levels)),
                            ("rate_limit_per_minute", after.rate_limit_per_minute)):
            if value is None:
                removes.append(attr)
            else:
                sets.append(f"{attr} = :v_{attr}")
                values[f":v_{attr}"] = value
        update = "SET " + ", ".join(sets) + (" REMOVE " + ", ".join(removes) if removes else "")
        items: list[dict[str, Any]] = [{"Update": {
            "TableName": self._table,
            "Key": to_item({"PK": user_pk(before.user_id), "SK": key_sk(before.id)}),
            "UpdateExpression": update,
            # secret_hash too: a PATCH planned before a rotation must not re-create the
            # old secret's lookup item.
            "ConditionExpression": "#period = :p AND period_spent = :ps AND #held = :h "
                                   "AND key_status = :active AND secret_hash = :sh",
            "ExpressionAttributeNames": {"#name": "name", "#period": "period", "#held": "held"},
            "ExpressionAttributeValues": to_item(values),
        }}]
        items.append({"Put": {"TableName": self._table,
                              "Item": _lookup_item(after, after.secret_hash, None)}})
        if after.previous_hash is not None and after.grace_until is not None:
            items.append({"Put": {"TableName": self._table,
                                  "Item": _lookup_item(after, after.previous_hash,
                                                       after.grace_until)}})
        if self._transact(items) is not None:
            raise KeyChanged

    def rotate(self, before: ApiKey, after: ApiKey) -> None:
        """The new secret's lookup, the old one's (kept for the grace, or deleted), and the
        key item, guarded on the hash it had: two concurrent rotations cannot both win."""
        values: dict[str, Any] = {
            ":old": before.secret_hash, ":active": STATUS_ACTIVE,
            ":h": after.secret_hash, ":m": after.masked_key, ":now": after.updated_at,
        }
        sets = ["secret_hash = :h", "masked_key = :m", "updated_at = :now"]
        removes: list[str] = []
        if after.grace_until is not None and after.previous_hash is not None:
            sets += ["previous_hash = :prev", "grace_until = :gu", "grace_epoch = :ge"]
            values.update({":prev": after.previous_hash, ":gu": _iso(after.grace_until),
                           ":ge": epoch_of(after.grace_until)})
        else:
            removes = ["previous_hash", "grace_until", "grace_epoch"]
        update = "SET " + ", ".join(sets) + (" REMOVE " + ", ".join(removes) if removes else "")
        items: list[dict[str, Any]] = [
            {"Update": {
                "TableName": self._table,
                "Key": to_item({"PK": user_pk(before.user_id), "SK": key_sk(before.id)}),
                "UpdateExpression": update,
                "ConditionExpression": "secret_hash = :old AND key_status = :active",
                "ExpressionAttributeValues": to_item(values),
            }},
            {"Put": self._put_new(_lookup_item(after, after.secret_hash, None))},
        ]
        if after.grace_until is not None:
            items.append({"Put": {"TableName": self._table,
                                  "Item": _lookup_item(after, before.secret_hash,
                                                       after.grace_until)}})
        else:
            items.append({"Delete": self._lookup_key(before.secret_hash)})
        if before.previous_hash is not None:
            # A secret from two rotations ago stops now, whatever its grace said.
            items.append({"Delete": self._lookup_key(before.previous_hash)})
        if self._transact(items) is not None:
            raise KeyChanged

    def revoke(self, before: ApiKey, now: str) -> None:
        """The key item stays (history and in-flight settles name it), marked revoked;
        its lookup items go, and the user's active-key count drops."""
        items: list[dict[str, Any]] = [
            {"Update": {
                "TableName": self._table,
                "Key": to_item({"PK": user_pk(before.user_id), "SK": key_sk(before.id)}),
                "UpdateExpression": "SET key_status = :revoked, enabled = :false, "
                                    "updated_at = :now, revoked_at = :now",
                "ConditionExpression": "key_status = :active",
                "ExpressionAttributeValues": to_item(
                    {":revoked": STATUS_REVOKED, ":false": False, ":now": now,
                     ":active": STATUS_ACTIVE}
                ),
            }},
            {"Update": {
                "TableName": self._table,
                "Key": to_item({"PK": user_pk(before.user_id), "SK": COUNTER_SK}),
                "UpdateExpression": "SET active_keys = active_keys - :one",
                "ConditionExpression": "active_keys > :zero",
                "ExpressionAttributeValues": to_item({":one": 1, ":zero": 0}),
            }},
            {"Delete": self._lookup_key(before.secret_hash)},
        ]
        if before.previous_hash is not None:
            items.append({"Delete": self._lookup_key(before.previous_hash)})
        if self._transact(items) is not None:
            raise KeyChanged

    def roll_over(self, before: ApiKey, after: ApiKey) -> None:
        """Start the key's new budget period if ``before`` is still what is stored."""
        values: dict[str, Any] = {":old": before.period, ":new": after.period,
                                  ":zero": after.period_spent, ":h": before.held}
        update = "SET #period = :new, period_spent = :zero"
        if after.headroom is not None:
            update += ", headroom = :room"
            values[":room"] = after.headroom
        try:
            self._client.update_item(
                TableName=self._table,
                Key=to_item({"PK": user_pk(before.user_id), "SK": key_sk(before.id)}),
                UpdateExpression=update,
                ConditionExpression="#period = :old AND #held = :h",
                ExpressionAttributeNames={"#period": "period", "#held": "held"},
                ExpressionAttributeValues=to_item(values),
            )
        except ClientError as exc:
            if _code(exc) == "ConditionalCheckFailedException":
                raise KeyChanged from exc
            raise

    def touch(self, user_id: str, key_id: str, now: str, not_since: str) -> None:
        """Set last_used_at unless it was set after ``not_since`` (at most once a minute)."""
        try:
            self._client.update_item(
                TableName=self._table,
                Key=to_item({"PK": user_pk(user_id), "SK": key_sk(key_id)}),
                UpdateExpression="SET last_used_at = :now",
                ConditionExpression="attribute_exists(PK) AND (attribute_not_exists("
                                    "last_used_at) OR last_used_at < :since)",
                ExpressionAttributeValues=to_item({":now": now, ":since": not_since}),
            )
        except ClientError as exc:
            if _code(exc) != "ConditionalCheckFailedException":
                raise

    # -- helpers ----------------------------------------------------------------------

    def _lookup_key(self, hash_: str) -> dict[str, Any]:
        return {"TableName": self._table,
                "Key": to_item({"PK": lookup_pk(hash_), "SK": LOOKUP_SK})}

    def _put_new(self, item: dict[str, Any]) -> dict[str, Any]:
        return {"TableName": self._table, "Item": item,
                "ConditionExpression": "attribute_not_exists(PK)"}

    def _transact(self, items: list[dict[str, Any]]) -> set[int] | None:
        """None on success; else the positions whose condition failed (maybe none: a
        conflict with a concurrent transaction)."""
        try:
            self._client.transact_write_items(TransactItems=items)
        except ClientError as exc:
            if _code(exc) != "TransactionCanceledException":
                raise
            reasons = [r.get("Code") for r in exc.response.get("CancellationReasons", [])]
            return {i for i, code in enumerate(reasons) if code == "ConditionalCheckFailed"}
        return None


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))

