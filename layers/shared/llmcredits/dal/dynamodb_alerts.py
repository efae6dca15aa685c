"""Alert settings and the alert-event outbox on the ledger table.

  PK=USER#<id>  SK=ALERTS               kind "alerts": low_balance, cap_percent,
                                        webhook_url, ``low`` (the balance alert's state),
                                        the signing secret sealed (Fernet token, KMS-
                                        encrypted data key, KMS key id), updated_at
  PK=USER#<id>  SK=ALERTEVENT#<evt id>  kind "alert_event": the event's exact body, type,
                                        attempts, published (to the bus), status; while
                                        a delivery is due also ``delivery_shard`` and
                                        ``delivery_due`` (sparse index AlertDeliveries)

The account item's ``flags`` holds ``alerts`` while settings exist (same transaction as
the settings), so the stream watcher reads nothing for accounts without alerts.

An event is recorded with "only if absent" (its id is deterministic), in the same
transaction as the state flip it causes (``low`` must still be the value read), so a
redelivered stream record, or a concurrent copy of one, records nothing the second time.
Event items expire (TTL) 30 days after creation: far past the 24 h of stream retention
and of webhook retries, so a late redelivery still finds them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from botocore.exceptions import ClientError

from llmcredits.dal.dynamodb_ledger import ACCOUNT_SK, from_item, to_item, user_pk
from llmcredits.domain.alerts import ALERTS_FLAG, AlertEvent, AlertSettings

ALERTS_SK = "ALERTS"
EVENT_PREFIX = "ALERTEVENT#"
DELIVERY_INDEX = "AlertDeliveries"
DELIVERY_SHARDS = 8
EVENT_TTL_SECONDS = 30 * 24 * 3600


def event_sk(event_id: str) -> str:
    return f"{EVENT_PREFIX}{event_id}"


def delivery_shard(event_id: str) -> str:
    digest = event_id.removeprefix("evt_")
    try:
        number = int(digest[:8], 16)
    except ValueError:
        number = sum(event_id.encode())
    return f"ALERTDUE#{number % DELIVERY_SHARDS}"


@dataclass(frozen=True)
class SealedSecret:
    """The webhook signing secret as stored: nothing here reveals it without KMS."""

    token: str  # Fernet token
    encrypted_data_key: bytes  # KMS CiphertextBlob of the Fernet key
    kms_key_id: str

    def __repr__(self) -> str:
        return f"SealedSecret(kms_key_id={self.kms_key_id!r})"


@dataclass(frozen=True)
class StoredAlerts:
    user_id: str
    settings: AlertSettings
    low: bool
    sealed: SealedSecret | None  # the webhook signing secret, sealed; None: no webhook
    updated_at: str

    def __repr__(self) -> str:  # no ciphertext in logs
        return f"StoredAlerts(user_id={self.user_id!r}, settings={self.settings!r})"


@dataclass(frozen=True)
class OutboxEvent:
    user_id: str
    id: str
    type: str
    created: int
    body: bytes
    attempts: int
    published: bool
    status: str


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _reasons(exc: ClientError) -> list[str]:
    return [r.get("Code", "") for r in exc.response.get("CancellationReasons", [])]


def _binary(value: Any) -> bytes:
    return bytes(value.value if hasattr(value, "value") else value)


def _alerts_from_item(item: dict[str, Any]) -> StoredAlerts:
    data = from_item(item)
    sealed = None
    if data.get("secret_token"):
        sealed = SealedSecret(data["secret_token"], _binary(data["secret_edk"]),
                        data["secret_kms_key_id"])
    return StoredAlerts(
        user_id=data["user_id"],
        settings=AlertSettings(
            low_balance=data.get("low_balance"),
            cap_percent=tuple(int(p) for p in data.get("cap_percent", ())),
            webhook_url=data.get("webhook_url"),
        ),
        low=bool(data.get("low", False)),
        sealed=sealed,
        updated_at=data.get("updated_at", ""),
    )


def _event_from_item(item: dict[str, Any]) -> OutboxEvent:
    data = from_item(item)
    return OutboxEvent(
        user_id=data["user_id"], id=data["id"], type=data["type"], created=int(data["created"]),
        body=str(data["body"]).encode(), attempts=int(data.get("attempts", 0)),
        published=bool(data.get("published", False)), status=str(data.get("status", "")),
    )


class DynamoAlertStore:
    def __init__(self, client: Any, table: str) -> None:
        self._client = client
        self._table = table

    def _key(self, user_id: str, sk: str) -> dict[str, Any]:
        return to_item({"PK": user_pk(user_id), "SK": sk})

    # -- settings ----------------------------------------------------------------------
    def get(self, user_id: str) -> StoredAlerts | None:
        item = self._client.get_item(TableName=self._table, Key=self._key(user_id, ALERTS_SK),
                                     ConsistentRead=True).get("Item")
        return _alerts_from_item(item) if item else None

    def put(self, user_id: str, settings: AlertSettings, low: bool, sealed: SealedSecret | None,
            now: str) -> None:
        """Replace the settings (and secret) and set the account flag, in one transaction.
        With nothing configured the item is deleted and the flag removed."""
        flag = {
            "TableName": self._table,
            "Key": self._key(user_id, ACCOUNT_SK),
            "UpdateExpression": ("ADD" if settings.configured else "DELETE") + " #flags :f",
            "ConditionExpression": "attribute_exists(PK)",
            "ExpressionAttributeNames": {"#flags": "flags"},
            "ExpressionAttributeValues": {":f": {"SS": [ALERTS_FLAG]}},
        }
        op: dict[str, Any]
        if settings.configured:
            values: dict[str, Any] = {
                "PK": user_pk(user_id), "SK": ALERTS_SK, "kind": "alerts", "user_id": user_id,
                "low_balance": settings.low_balance,
                "cap_percent": [Decimal(p) for p in settings.cap_percent],
                "webhook_url": settings.webhook_url, "low": low, "updated_at": now,
            }
            if sealed is not None:
                values.update(secret_token=sealed.token, secret_edk=sealed.encrypted_data_key,
                              secret_kms_key_id=sealed.kms_key_id)
            op = {"Put": {"TableName": self._table, "Item": to_item(values)}}
        else:
            op = {"Delete": {"TableName": self._table, "Key": self._key(user_id, ALERTS_SK)}}
        self._client.transact_write_items(TransactItems=[op, {"Update": flag}])

    # -- events ------------------------------------------------------------------------
    def _event_put(self, event: AlertEvent, due: str) -> dict[str, Any]:
        return {"Put": {
            "TableName": self._table,
            "Item": to_item({
                "PK": user_pk(event.user_id), "SK": event_sk(event.id), "kind": "alert_event",
                "id": event.id, "type": event.type, "user_id": event.user_id,
                "created": event.created, "body": event.body().decode(), "attempts": 0,
                "published": False, "status": "pending",
                "delivery_shard": delivery_shard(event.id), "delivery_due": due,
                "expires_at": event.created + EVENT_TTL_SECONDS,
            }),
            "ConditionExpression": "attribute_not_exists(PK)",
        }}

    def record(self, event: AlertEvent, due: str,
               state: tuple[bool, bool] | None = None) -> bool:
        """Record ``event`` (due for delivery at ``due``) unless it exists; with ``state``
        = (low before, low after), flip the alert's state in the same transaction, only if
        it is still ``low before``. True when recorded now."""
        put = self._event_put(event, due)
        if state is None:
            try:
                self._client.put_item(**put["Put"])
                return True
            except ClientError as exc:
                if _code(exc) == "ConditionalCheckFailedException":
                    return False
                raise
        before, after = state
        flip = {"Update": {
            "TableName": self._table,
            "Key": self._key(event.user_id, ALERTS_SK),
            "UpdateExpression": "SET #low = :after",
            "ConditionExpression": "attribute_exists(PK) AND #low = :before",
            "ExpressionAttributeNames": {"#low": "low"},
            "ExpressionAttributeValues": to_item({":after": after, ":before": before}),
        }}
        try:
            self._client.transact_write_items(
                TransactItems=[flip, put],
                ClientRequestToken=event.id.removeprefix("evt_")[:32])
            return True
        except ClientError as exc:
            if _code(exc) == "TransactionCanceledException" and "ConditionalCheckFailed" in \
                    _reasons(exc):
                return False  # already recorded, or the state has moved on
            raise

    def get_event(self, user_id: str, event_id: str) -> OutboxEvent | None:
        item = self._client.get_item(TableName=self._table, Key=self._key(user_id,
                                                                          event_sk(event_id)),
                                     ConsistentRead=True).get("Item")
        return _event_from_item(item) if item else None

    def due(self, shard: int, now: str, limit: int) -> list[OutboxEvent]:
        """Events of one index shard whose delivery is due at ``now`` (oldest first)."""
        resp = self._client.query(
            TableName=self._table,
            IndexName=DELIVERY_INDEX,
            KeyConditionExpression="delivery_shard = :s AND delivery_due <= :now",
            ExpressionAttributeValues=to_item({":s": f"ALERTDUE#{shard}", ":now": now}),
            Limit=limit,
        )
        return [_event_from_item(item) for item in resp.get("Items", [])]

    def claim(self, user_id: str, event_id: str, now: int, lease_seconds: int) -> bool:
        """Take the event for one delivery attempt (no other attempt until the lease ends);
        False when it is not due any more or another attempt holds it."""
        try:
            self._client.update_item(
                TableName=self._table, Key=self._key(user_id, event_sk(event_id)),
                UpdateExpression="SET lease_until = :until",
                ConditionExpression=("attribute_exists(delivery_due) AND "
                                     "(attribute_not_exists(lease_until) OR lease_until < :now)"),
                ExpressionAttributeValues=to_item({":until": now + lease_seconds, ":now": now}),
            )
            return True
        except ClientError as exc:
            if _code(exc) == "ConditionalCheckFailedException":
                return False
            raise

    def mark_published(self, user_id: str, event_id: str) -> None:
        self._client.update_item(
            TableName=self._table, Key=self._key(user_id, event_sk(event_id)),
            UpdateExpression="SET published = :t", ExpressionAttributeValues=to_item({":t": True}))

    def finish(self, user_id: str, event_id: str, status: str, attempts: int,
               last_result: str) -> None:
        """Done (delivered, or given up): off the due index."""
        self._client.update_item(
            TableName=self._table, Key=self._key(user_id, event_sk(event_id)),
            UpdateExpression=("SET #status = :s, attempts = :a, last_result = :r "
                              "REMOVE delivery_shard, delivery_due, lease_until"),
            ExpressionAttributeNames={"#status": "status"},
            ExpressionAttributeValues=to_item({":s": status, ":a": attempts,
                                               ":r": last_result}))

    def reschedule(self, user_id: str, event_id: str, attempts: int, due: str,
                   last_result: str) -> None:
        self._client.update_item(
            TableName=self._table, Key=self._key(user_id, event_sk(event_id)),
            UpdateExpression=("SET attempts = :a, delivery_due = :due, last_result = :r "
                              "REMOVE lease_until"),
            ExpressionAttributeValues=to_item({":a": attempts, ":due": due, ":r": last_result}))


def event_json(event: OutboxEvent) -> dict[str, Any]:
    parsed: dict[str, Any] = json.loads(event.body)
    return parsed
