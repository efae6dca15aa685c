"""Auto top-up settings and state on the ledger table.

  PK=USER#<id>  SK=AUTOTOPUP         kind "autotopup": settings, the Stripe customer and
                                     saved card, the month's total, the top-up in flight
  PK=USER#<id>  SK=RECORD#topup:<t>  one top-up (written with its claim): amount, status,
                                     payment intent; what the webhook checks it started

Every write replaces the whole AUTOTOPUP item only if its ``revision`` is still the one
read (a compare-and-swap; ``attribute_not_exists`` for the first write), so a claim, a
settings change and a webhook's outcome never overwrite one another: the loser re-reads.
The account's ``autotopup`` flag is written in the same transaction as ``enabled``.
A claim moves ``state`` to ``claimed``; the table stream delivers that record to the
top-up worker (the template filters it), which creates the PaymentIntent.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from botocore.exceptions import ClientError

from llmcredits.dal.dynamodb_ledger import ACCOUNT_SK, from_item, record_key, to_item, user_pk
from llmcredits.domain.auto_topup import (
    AUTOTOPUP_FLAG,
    AutoTopup,
    InFlight,
    SavedCard,
    TopupState,
)
from llmcredits.domain.ports import StaleRead
from llmcredits.money import ZERO

AUTOTOPUP_SK = "AUTOTOPUP"
KIND = "autotopup"


def topup_record_key(topup_id: str) -> str:
    return f"topup:{topup_id}"


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _reasons(exc: ClientError) -> list[str]:
    return [r.get("Code", "") for r in exc.response.get("CancellationReasons", [])]


def config_to_item(config: AutoTopup) -> dict[str, Any]:
    flight = config.in_flight
    card = config.card
    return to_item({
        "PK": user_pk(config.user_id),
        "SK": AUTOTOPUP_SK,
        "kind": KIND,
        "user_id": config.user_id,
        "enabled": config.enabled,
        "threshold": config.threshold,
        "amount": config.amount,
        "monthly_limit": config.monthly_limit,
        "customer": config.customer,
        "payment_method": card.payment_method if card else None,
        "card_brand": card.brand if card else None,
        "card_last4": card.last4 if card else None,
        "revision": config.revision,
        "month": config.month or None,
        "month_total": config.month_total,
        "state": config.state.value,
        "topup_id": flight.topup_id if flight else None,
        "topup_amount": flight.amount if flight else None,
        "topup_month": flight.month if flight else None,
        "claimed_at": flight.claimed_at if flight else None,
        "payment_intent": flight.payment_intent if flight else None,
        "failures": config.failures,
        "updated_at": config.updated_at or None,
    })


def config_from_item(item: dict[str, Any]) -> AutoTopup:
    data = from_item(item)
    flight = None
    if data.get("topup_id"):
        flight = InFlight(
            topup_id=str(data["topup_id"]),
            amount=Decimal(data["topup_amount"]),
            month=str(data.get("topup_month", "")),
            claimed_at=str(data.get("claimed_at", "")),
            payment_intent=data.get("payment_intent"),
        )
    card = None
    if data.get("payment_method"):
        card = SavedCard(str(data["payment_method"]), str(data.get("card_brand", "")),
                         str(data.get("card_last4", "")))
    return AutoTopup(
        user_id=str(data["user_id"]),
        enabled=bool(data.get("enabled", False)),
        threshold=data.get("threshold"),
        amount=data.get("amount"),
        monthly_limit=data.get("monthly_limit"),
        customer=data.get("customer"),
        card=card,
        revision=int(data.get("revision", 0)),
        month=str(data.get("month", "")),
        month_total=data.get("month_total", ZERO),
        state=TopupState(data.get("state", TopupState.IDLE.value)),
        in_flight=flight,
        failures=int(data.get("failures", 0)),
        updated_at=str(data.get("updated_at", "")),
    )


class DynamoAutoTopupStore:
    def __init__(self, client: Any, table: str) -> None:
        self._client = client
        self._table = table

    def get(self, user_id: str) -> AutoTopup | None:
        resp = self._client.get_item(
            TableName=self._table,
            Key=to_item({"PK": user_pk(user_id), "SK": AUTOTOPUP_SK}),
            ConsistentRead=True,
        )
        item = resp.get("Item")
        return config_from_item(item) if item else None

    def _put(self, before: AutoTopup, after: AutoTopup) -> dict[str, Any]:
        if after.revision != before.revision + 1 or after.user_id != before.user_id:
            raise ValueError("an auto top-up write must be the next revision of what was read")
        put: dict[str, Any] = {"TableName": self._table, "Item": config_to_item(after)}
        if before.revision == 0:
            put["ConditionExpression"] = "attribute_not_exists(PK)"
        else:
            put["ConditionExpression"] = "revision = :rev"
            put["ExpressionAttributeValues"] = to_item({":rev": before.revision})
        return put

    def _flag(self, user_id: str, enabled: bool) -> dict[str, Any]:
        return {
            "TableName": self._table,
            "Key": to_item({"PK": user_pk(user_id), "SK": ACCOUNT_SK}),
            "UpdateExpression": ("ADD" if enabled else "DELETE") + " #flags :f",
            "ConditionExpression": "attribute_exists(PK)",
            "ExpressionAttributeNames": {"#flags": "flags"},
            "ExpressionAttributeValues": {":f": {"SS": [AUTOTOPUP_FLAG]}},
        }

    def replace(self, before: AutoTopup, after: AutoTopup) -> None:
        """Write ``after`` if the item is still ``before``, and the account flag with it
        when ``enabled`` changes. Raises StaleRead when another write came first."""
        items: list[dict[str, Any]] = [{"Put": self._put(before, after)}]
        if after.enabled != before.enabled:
            items.append({"Update": self._flag(after.user_id, after.enabled)})
        self._transact(items)

    def claim(self, before: AutoTopup, after: AutoTopup, record: dict[str, Any]) -> bool:
        """The claim and its top-up record (must not exist), in one transaction.

        False when the record exists already: this crossing's top-up was claimed before
        (a redelivered stream record). Raises StaleRead when the item changed."""
        flight = after.in_flight
        assert flight is not None
        pk, sk = record_key(topup_record_key(flight.topup_id), after.user_id)
        items = [
            {"Put": self._put(before, after)},
            {"Put": {
                "TableName": self._table,
                "Item": to_item({**record, "PK": pk, "SK": sk, "kind": "record"}),
                "ConditionExpression": "attribute_not_exists(PK)",
            }},
        ]
        try:
            self._transact(items, new_record=True)
        except _RecordExists:
            return False
        return True

    def resolve(self, before: AutoTopup, after: AutoTopup, topup_id: str,
                outcome: dict[str, Any]) -> None:
        """The in-flight top-up's end: the item (and the account flag if auto top-up is
        disabled by it) and the top-up record's outcome, in one transaction."""
        pk, sk = record_key(topup_record_key(topup_id), after.user_id)
        names = {f"#o{i}": k for i, k in enumerate(outcome)}
        sets = ", ".join(f"#o{i} = :o{i}" for i in range(len(outcome)))
        items: list[dict[str, Any]] = [
            {"Put": self._put(before, after)},
            {"Update": {
                "TableName": self._table,
                "Key": to_item({"PK": pk, "SK": sk}),
                "UpdateExpression": f"SET {sets}",
                "ConditionExpression": "attribute_exists(PK)",
                "ExpressionAttributeNames": names,
                "ExpressionAttributeValues": to_item(
                    {f":o{i}": v for i, v in enumerate(outcome.values())}),
            }},
        ]
        if after.enabled != before.enabled:
            items.append({"Update": self._flag(after.user_id, after.enabled)})
        self._transact(items)

    def _transact(self, items: list[dict[str, Any]], *, new_record: bool = False) -> None:
        """The item's guard is always first; with ``new_record`` the second is a record
        that must not exist; an account flag update, if any, is last."""
        try:
            self._client.transact_write_items(TransactItems=items)
        except ClientError as exc:
            if _code(exc) != "TransactionCanceledException":
                raise
            reasons = _reasons(exc)
            if reasons[:1] == ["ConditionalCheckFailed"] or "TransactionConflict" in reasons:
                raise StaleRead() from None
            if new_record and reasons[1:2] == ["ConditionalCheckFailed"]:
                raise _RecordExists() from None
            if len(items) > 1 and "Update" in items[-1] and \
                    reasons[len(items) - 1:] == ["ConditionalCheckFailed"] and \
                    items[-1]["Update"]["Key"]["SK"] == {"S": ACCOUNT_SK}:
                raise AccountMissing() from None
            raise


class _RecordExists(Exception):
    pass


class AccountMissing(Exception):
    """The account item to flag does not exist (accounts are created on first use)."""
