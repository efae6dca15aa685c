"""Invariant 1 and 2 under real concurrency, on DynamoDB Local (moto is not atomic).

200 usage debits of 1 credit from 32 threads against a balance of 100: exactly 100
succeed, the rest get 402, the balance ends at 0, never goes below it, and the ledger
sums to the balance. The same shape for the monthly cap.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal

import pytest
from llmcredits.domain.ledger import EntryType
from llmcredits.errors import InsufficientCredits, MonthlyCapReached
from llmcredits.services.reconcile import reconcile_account

pytestmark = pytest.mark.dynamodb_local

ONE = Decimal(1)


def hammer(ledger, user: str, n: int, threads: int) -> tuple[int, list[Exception]]:
    def debit(i: int) -> Exception | None:
        try:
            ledger.debit_usage(user, ONE, model="test", metadata={"i": i})
        except (InsufficientCredits, MonthlyCapReached) as exc:
            return exc
        return None

    with ThreadPoolExecutor(max_workers=threads) as pool:
        outcomes = list(pool.map(debit, range(n)))
    refused = [o for o in outcomes if o is not None]
    return n - len(refused), refused


def all_entries(ledger, user: str):
    page = ledger.history(user, 200, None, None)
    entries = list(page.entries)
    while page.next_cursor:
        page = ledger.history(user, 200, page.next_cursor, None)
        entries.extend(page.entries)
    return entries


def test_balance_never_overdrawn(local_ledger):
    local_ledger.grant("racer", Decimal(100), EntryType.BONUS, "seed", actor="test")
    succeeded, refused = hammer(local_ledger, "racer", 200, 32)
    assert succeeded == 100
    assert len(refused) == 100 and all(isinstance(r, InsufficientCredits) for r in refused)
    account = local_ledger.account("racer")
    assert account.balance == 0 and account.available == 0
    entries = all_entries(local_ledger, "racer")
    usage = [e for e in entries if e.type is EntryType.USAGE]
    assert len(usage) == 100
    # Every intermediate balance was >= 0 and the running balances are exactly 99..0.
    assert sorted(e.balance_after for e in usage) == [Decimal(i) for i in range(100)]
    assert sum(e.amount for e in entries) == account.balance
    assert reconcile_account(local_ledger._store, "racer") == []


def test_monthly_cap_never_exceeded(local_ledger):
    local_ledger.grant("capped", Decimal(1000), EntryType.BONUS, "seed", actor="test")
    local_ledger.set_monthly_cap("capped", Decimal(50))
    succeeded, refused = hammer(local_ledger, "capped", 200, 32)
    assert succeeded == 50
    assert len(refused) == 150 and all(isinstance(r, MonthlyCapReached) for r in refused)
    account = local_ledger.account("capped")
    assert account.month_spent == 50 and account.cap_headroom == 0
    assert account.balance == 950
    assert reconcile_account(local_ledger._store, "capped") == []


def test_concurrent_grants_with_one_key_credit_once(local_ledger):
    def send(_: int):
        return local_ledger.grant("dup", Decimal(10), EntryType.BONUS, "r", actor="ops",
                                  idempotency_key="same-key")

    with ThreadPoolExecutor(max_workers=16) as pool:
        results = list(pool.map(send, range(32)))
    assert len({r.body["entry"]["id"] for r in results}) == 1
    assert sum(not r.replayed for r in results) == 1
    assert local_ledger.account("dup").balance == 10
    assert len(all_entries(local_ledger, "dup")) == 1
