"""Reading the moto table directly, to check what a money change promised was written.

Tests assert on records (dedupe, idempotency, markers) and on the books themselves
(DESIGN invariant 2), not only on what the service answered.
"""

from __future__ import annotations

import os
from decimal import Decimal
from typing import Any

import boto3
from boto3.dynamodb.types import TypeDeserializer

_deserializer = TypeDeserializer()


def _plain(item: dict[str, Any]) -> dict[str, Any]:
    return {k: _deserializer.deserialize(v) for k, v in item.items()}


def all_items() -> list[dict[str, Any]]:
    """Every item of the table (moto tables in unit tests are small)."""
    client = boto3.client("dynamodb")
    pages = client.get_paginator("scan").paginate(
        TableName=os.environ["TABLE_NAME"], ConsistentRead=True
    )
    return [_plain(item) for page in pages for item in page.get("Items", [])]


def items_of(user_id: str) -> list[dict[str, Any]]:
    """Every item in a user's partition, by sort key."""
    client = boto3.client("dynamodb")
    pages = client.get_paginator("query").paginate(
        TableName=os.environ["TABLE_NAME"],
        KeyConditionExpression="PK = :pk",
        ExpressionAttributeValues={":pk": {"S": f"USER#{user_id}"}},
        ConsistentRead=True,
    )
    return [_plain(item) for page in pages for item in page.get("Items", [])]


def record_exists(key: str, owner: str | None) -> bool:
    """A bookkeeping record (``RecordWrite``) is in the table, however it is keyed."""
    pk = "RECORD#" + key if owner is None else f"USER#{owner}"
    sk = "RECORD" if owner is None else f"RECORD#{key}"
    return any(i["PK"] == pk and i["SK"] == sk for i in all_items())


def assert_books_balance(user_id: str) -> None:
    """Invariant 2: balance == sum of ledger amounts; available == balance - open holds;
    each entry's balance_after is the running sum at that entry."""
    items = items_of(user_id)
    [account] = [i for i in items if i["SK"] == "ACCOUNT"]
    entries = sorted((i for i in items if i["SK"].startswith("LEDGER#")),
                     key=lambda i: (i["created_at"], i["SK"]))
    holds = [i for i in items if i["SK"].startswith("HOLD#")]
    running = Decimal(0)
    for entry in entries:
        running += entry["amount"]
        assert entry["balance_after"] == running, (entry, running)
    assert account["balance"] == running, (account["balance"], running)
    held = sum((h["amount"] for h in holds), Decimal(0))
    assert account["available"] == account["balance"] - held, (account, held)
