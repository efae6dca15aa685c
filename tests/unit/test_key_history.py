"""GET /credits/history?key_id=: one key's entries, paged exactly, in few round trips.

There is no index per key (the user's partition is read with a filter); these check that
paging never skips or repeats an entry when a read page holds more matches than the
requested page, and that a sparse key costs one Query per KEY_FILTER_PAGE items read,
not one per ``limit`` items."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import boto3
from llmcredits.dal.dynamodb_ledger import KEY_FILTER_PAGE, DynamoLedgerStore, entry_to_item
from llmcredits.domain.ledger import EntryType, LedgerEntry
from llmcredits.services.ledger import LedgerService

TABLE = "llmcredits-test"


def put_entries(client: Any, user: str, keys: list[str | None]) -> None:
    for i, key_id in enumerate(keys):
        client.put_item(TableName=TABLE, Item=entry_to_item(LedgerEntry(
            id=f"e{i:05}", user_id=user, created_at=f"2026-12-01T00:00:00.{i:06}Z",
            type=EntryType.USAGE, amount=Decimal("-0.01"), balance_after=Decimal(1),
            cost=Decimal("0.01"), key_id=key_id)))


class CountingClient:
    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self.queries = 0

    def __getattr__(self, name: str) -> Any:
        if name == "query":
            self.queries += 1
        return getattr(self._inner, name)


def test_paging_one_keys_entries_returns_each_once_newest_first(aws):
    client = boto3.client("dynamodb")
    keys: list[str | None] = [("k1", "k2", None)[i % 3] for i in range(40)]
    put_entries(client, "pam", keys)
    ledger = LedgerService(DynamoLedgerStore(client, TABLE))
    seen, cursor = [], None
    while True:
        page = ledger.history("pam", 4, cursor, None, "k1")
        assert len(page.entries) <= 4
        seen.extend(e.id for e in page.entries)
        cursor = page.next_cursor
        if cursor is None:
            break
    expected = [f"e{i:05}" for i in reversed(range(40)) if keys[i] == "k1"]
    assert seen == expected  # none skipped, none repeated


def test_a_sparse_key_costs_a_query_per_read_page_not_per_limit(aws):
    raw = boto3.client("dynamodb")
    many = 2 * KEY_FILTER_PAGE
    put_entries(raw, "sam", ["k1"] * 5 + [None] * many)  # the key's entries are the oldest
    client = CountingClient(raw)
    page = DynamoLedgerStore(client, TABLE).list_entries("sam", 5, None, None, "k1")
    assert [e.id for e in page.entries] == [f"e{i:05}" for i in reversed(range(5))]
    assert client.queries <= 3  # (2000 + 5 items) / KEY_FILTER_PAGE, rounded up
