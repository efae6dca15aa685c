"""An account item's stream record (Lambda's DynamoDB event shape) -> AccountChange."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from llmcredits.dal.dynamodb_ledger import ACCOUNT_SK, account_from_item
from llmcredits.services.account_events import AccountChange


class NotAnAccountRecord(ValueError):
    """The record is not an account item's (the event filter should have dropped it)."""


def account_change_from_record(record: dict[str, Any]) -> AccountChange:
    ddb = record.get("dynamodb") or {}
    keys = ddb.get("Keys") or {}
    pk = (keys.get("PK") or {}).get("S", "")
    if (keys.get("SK") or {}).get("S") != ACCOUNT_SK or not pk.startswith("USER#"):
        raise NotAnAccountRecord(f"record {record.get('eventID')} is not an account item's")
    old = ddb.get("OldImage")
    new = ddb.get("NewImage")
    created = ddb.get("ApproximateCreationDateTime")
    at = datetime.fromtimestamp(int(created), UTC) if created is not None else datetime.now(UTC)
    return AccountChange(
        user_id=pk[len("USER#"):],
        old=account_from_item(old) if old else None,
        new=account_from_item(new) if new else None,
        event_id=str(record["eventID"]),
        at=at,
    )
