"""Every condition of every money write, proven on moto in milliseconds, without threads.

A guard in a DynamoDB condition only matters when the account changed between the read
and the write. Instead of hoping a thread storm hits that window (the DynamoDB Local
storms in tests/integration still run), each test here builds the window on purpose:
it plans from a STALE snapshot (reserve twice from one read; a store whose next
``get_account`` or ``get_idempotent_result`` answers with an earlier read; a payment
record read before another refund landed). With the guard the stale write is refused
and re-planned; without it the books go wrong, and the test says how.

``make mutants`` (scripts/mutants.py) removes each guard in turn and expects these
tests to fail.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from llmcredits.domain.ledger import Account, EntryType, IdempotencyClaim
from llmcredits.domain.ports import HoldGone, StoredResult
from llmcredits.errors import InsufficientCredits, MonthlyCapReached, RateLimited

from tests.unit.money_books import assert_books_balance

USER = "guard-user"
START = datetime(2026, 11, 27, 8, 0, 0, tzinfo=UTC)


class TickingClock:
    """A clock that moves 1 ms per reading: every timestamp is distinct and later than
    the one before, and a test of a few hundred calls stays inside one rate window."""

    def __init__(self, start: datetime = START) -> None:
        self.now = start

    def __call__(self) -> datetime:
        self.now += timedelta(milliseconds=1)
        return self.now


class StaleStore:
    """A LedgerStore that can answer the next ``get_account`` (or idempotency lookup)
    with an earlier read: the interleaving "another writer committed after my read"."""

    def __init__(self, store: Any) -> None:
        self._store = store
        self._stale_accounts: list[Account] = []
        self._hide_idempotency = 0

    def serve_stale_account(self, snapshot: Account) -> None:
        self._stale_accounts.append(snapshot)

    def hide_idempotent_result_once(self) -> None:
        self._hide_idempotency += 1

    def get_account(self, user_id: str) -> Account | None:
        if self._stale_accounts:
            return self._stale_accounts.pop(0)
        return self._store.get_account(user_id)

    def get_idempotent_result(self, user_id: str, claim: IdempotencyClaim) -> StoredResult | None:
        if self._hide_idempotency:
            self._hide_idempotency -= 1
            return None
        return self._store.get_idempotent_result(user_id, claim)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)


@pytest.fixture
def store(aws: None) -> StaleStore:
    from llmcredits.dal.aws import dynamodb_client, table_name
    from llmcredits.dal.dynamodb_ledger import DynamoLedgerStore

    return StaleStore(DynamoLedgerStore(dynamodb_client(), table_name()))


@pytest.fixture
def ledger(store: StaleStore) -> Iterator[Any]:
    from llmcredits.services.ledger import LedgerService

    # No backoff sleeps: a retry loop that never converges fails fast, not in seconds.
    yield LedgerService(store, clock=TickingClock(), sleep=lambda _seconds: None)


def fund(ledger: Any, amount: str, user: str = USER) -> Account:
    ledger.grant(user, Decimal(amount), EntryType.BONUS, "seed", "test")
    return ledger.account(user)


def usage_entries(ledger: Any, user: str = USER) -> list[Any]:
    page = ledger.history(user, 200, None, EntryType.USAGE)
    return list(page.entries)


# -- reserve: one conditional write enforces funds, cap headroom and the rate limit ---------


def test_reserve_from_a_stale_snapshot_cannot_overdraw(ledger: Any) -> None:
    snapshot = fund(ledger, "10")
    ledger.reserve(snapshot, Decimal(6), rate_limit=None)
    # The snapshot still says 10 available: only the write's funds guard knows better.
    with pytest.raises(InsufficientCredits):
        ledger.reserve(snapshot, Decimal(6), rate_limit=None)
    account = ledger.account(USER)
    assert (account.balance, account.available) == (Decimal(10), Decimal(4))
    assert_books_balance(USER)


def test_reserve_of_exactly_the_available_credits_is_allowed(ledger: Any) -> None:
    snapshot = fund(ledger, "10")
    hold = ledger.reserve(snapshot, Decimal(10), rate_limit=None)
    assert hold.amount == Decimal(10)
    assert ledger.account(USER).available == Decimal(0)
    with pytest.raises(InsufficientCredits):
        ledger.reserve(ledger.account(USER), Decimal("0.000001"), rate_limit=None)


def test_reserve_from_a_stale_snapshot_cannot_pass_the_monthly_cap(ledger: Any) -> None:
    fund(ledger, "100")
    ledger.set_monthly_cap(USER, Decimal(10))
    snapshot = ledger.account(USER)
    ledger.reserve(snapshot, Decimal(6), rate_limit=None)
    with pytest.raises(MonthlyCapReached):
        ledger.reserve(snapshot, Decimal(6), rate_limit=None)
    account = ledger.account(USER)
    assert account.cap_headroom == Decimal(4) and account.available == Decimal(94)
    assert_books_balance(USER)


def test_reserve_of_exactly_the_cap_headroom_is_allowed(ledger: Any) -> None:
    fund(ledger, "100")
    ledger.set_monthly_cap(USER, Decimal(10))
    ledger.reserve(ledger.account(USER), Decimal(10), rate_limit=None)
    assert ledger.account(USER).cap_headroom == Decimal(0)
    with pytest.raises(MonthlyCapReached):
        ledger.reserve(ledger.account(USER), Decimal("0.000001"), rate_limit=None)


def test_reserve_from_a_stale_snapshot_cannot_pass_the_rate_limit(ledger: Any) -> None:
    fund(ledger, "100")
    ledger.reserve(ledger.account(USER), Decimal(1), rate_limit=2)
    snapshot = ledger.account(USER)  # one request counted in this window
    ledger.reserve(snapshot, Decimal(1), rate_limit=2)  # the second: allowed
    with pytest.raises(RateLimited):
        ledger.reserve(snapshot, Decimal(1), rate_limit=2)  # the snapshot still says 1
    assert ledger.account(USER).rate_count == 2


def test_a_stale_snapshot_from_an_earlier_window_cannot_reset_the_count(ledger: Any) -> None:
    snapshot = fund(ledger, "100")  # no request counted yet: a "new window" plan
    ledger.reserve(snapshot, Decimal(1), rate_limit=1)
    with pytest.raises(RateLimited):
        ledger.reserve(snapshot, Decimal(1), rate_limit=1)  # would reset the window to 1
    assert ledger.account(USER).rate_count == 1


# -- settle and release: the hold is closed once; the balance lands exactly -----------------


def test_a_hold_settles_once(ledger: Any) -> None:
    hold = ledger.reserve(fund(ledger, "10"), Decimal(5), rate_limit=None)
    ledger.settle(ledger.account(USER), hold, Decimal(2), provider="p", model="m", tokens=3,
                  metadata={})
    # A retried settle of the same hold (a client retry, a botocore retry after a lost
    # response) must not charge again, whether it reports HoldGone or succeeds as a no-op.
    with contextlib.suppress(HoldGone):
        ledger.settle(ledger.account(USER), hold, Decimal(2), provider="p", model="m",
                      tokens=3, metadata={})
    account = ledger.account(USER)
    assert (account.balance, account.available) == (Decimal(8), Decimal(8))
    assert [e.amount for e in usage_entries(ledger)] == [Decimal(-2)]
    assert_books_balance(USER)


def test_settle_charges_the_cost_not_the_hold(ledger: Any) -> None:
    hold = ledger.reserve(fund(ledger, "10"), Decimal(5), rate_limit=None)
    entry = ledger.settle(ledger.account(USER), hold, Decimal("1.250000"), provider="p",
                          model="m", tokens=3, metadata={}).entry
    assert entry.amount == Decimal("-1.25") and entry.balance_after == Decimal("8.75")
    account = ledger.account(USER)
    assert (account.balance, account.available) == (Decimal("8.75"), Decimal("8.75"))
    assert account.month_spent == Decimal("1.25")


def test_a_hold_released_twice_gives_back_once(ledger: Any) -> None:
    hold = ledger.reserve(fund(ledger, "10"), Decimal(5), rate_limit=None)
    assert ledger.release(hold) is True
    assert ledger.release(hold) is False
    account = ledger.account(USER)
    assert (account.balance, account.available) == (Decimal(10), Decimal(10))
    assert_books_balance(USER)


def test_a_settled_hold_cannot_be_released_by_the_sweeper(ledger: Any) -> None:
    hold = ledger.reserve(fund(ledger, "10"), Decimal(5), rate_limit=None)
    ledger.settle(ledger.account(USER), hold, Decimal(5), provider="p", model="m", tokens=3,
                  metadata={})
    assert ledger.release(hold) is False
    account = ledger.account(USER)
    assert (account.balance, account.available) == (Decimal(5), Decimal(5))


def test_release_restores_cap_headroom(ledger: Any) -> None:
    fund(ledger, "100")
    ledger.set_monthly_cap(USER, Decimal(10))
    hold = ledger.reserve(ledger.account(USER), Decimal(4), rate_limit=None)
    ledger.release(hold)
    account = ledger.account(USER)
    assert (account.available, account.cap_headroom) == (Decimal(100), Decimal(10))


def test_the_sweeper_leaves_live_holds_alone(ledger: Any) -> None:
    hold = ledger.reserve(fund(ledger, "10"), Decimal(5), rate_limit=None)
    swept = ledger.sweep_holds(600)
    assert (swept.released, swept.settled) == ([], [])
    assert ledger.account(USER).available == Decimal(5)
    ledger.settle(ledger.account(USER), hold, Decimal(1), provider="p", model="m", tokens=1,
                  metadata={})
    assert ledger.account(USER).balance == Decimal(9)


def test_settle_from_a_stale_snapshot_lands_on_the_current_balance(
    ledger: Any, store: StaleStore
) -> None:
    stale = fund(ledger, "10")
    hold = ledger.reserve(stale, Decimal(5), rate_limit=None)
    fund(ledger, "10")  # another writer: balance 20 now
    entry = ledger.settle(stale, hold, Decimal(2), provider="p", model="m", tokens=1,
                          metadata={}).entry
    assert entry.balance_after == Decimal(18)
    assert ledger.account(USER).balance == Decimal(18)
    assert_books_balance(USER)


# -- credits and debits planned from a stale read --------------------------------------------


def test_a_grant_planned_from_a_stale_read_lands_on_the_current_balance(
    ledger: Any, store: StaleStore
) -> None:
    stale = fund(ledger, "10")
    fund(ledger, "5")  # balance 15
    store.serve_stale_account(stale)  # the next grant plans from balance 10
    result = ledger.grant(USER, Decimal(1), EntryType.BONUS, "late", "test")
    assert result.body["balance"] == "16.000000"
    assert ledger.account(USER).balance == Decimal(16)
    assert_books_balance(USER)


def test_a_usage_debit_planned_from_a_stale_read_cannot_overdraw(
    ledger: Any, store: StaleStore
) -> None:
    stale = fund(ledger, "10")
    ledger.debit_usage(USER, Decimal(8), model="m")
    store.serve_stale_account(stale)  # says 10 available; 2 are
    with pytest.raises(InsufficientCredits):
        ledger.debit_usage(USER, Decimal(8), model="m")
    assert ledger.account(USER).balance == Decimal(2)
    assert_books_balance(USER)


def test_an_adjustment_planned_from_a_stale_read_cannot_go_negative(
    ledger: Any, store: StaleStore
) -> None:
    stale = fund(ledger, "10")
    ledger.adjust_down(USER, Decimal(8), "fix", "test")
    store.serve_stale_account(stale)
    with pytest.raises(InsufficientCredits):
        ledger.adjust_down(USER, Decimal(8), "fix", "test")
    assert ledger.account(USER).balance == Decimal(2)


# -- idempotency records -------------------------------------------------------------------


def test_a_grant_with_a_key_writes_its_idempotency_record(ledger: Any) -> None:
    from tests.unit.money_books import items_of

    ledger.grant(USER, Decimal(3), EntryType.BONUS, "promo", "admin-1", idempotency_key="k-1")
    [record] = [i for i in items_of(USER) if i["SK"].startswith("IDEMP#")]
    assert "k-1" in record["SK"] and record["status"] == 201


def test_two_grants_with_one_key_that_both_missed_the_lookup_credit_once(
    ledger: Any, store: StaleStore
) -> None:
    """The interleaving of two concurrent retries: both looked the key up before either
    committed. Only the idempotency record's own condition can stop the second."""
    first = ledger.grant(USER, Decimal(3), EntryType.BONUS, "promo", "admin-1",
                         idempotency_key="k-2")
    store.hide_idempotent_result_once()
    second = ledger.grant(USER, Decimal(3), EntryType.BONUS, "promo", "admin-1",
                          idempotency_key="k-2")
    assert second.replayed and second.body == first.body
    assert ledger.account(USER).balance == Decimal(3)
    assert_books_balance(USER)
