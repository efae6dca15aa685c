"""Credit lots under real concurrency, on DynamoDB Local (moto is not atomic).

- The must-show scenario with a real clock: a 10.00 bonus expiring in 2 s, 3.00 spent:
  expiry removes exactly 7.00 once, however many runs race for it.
- Settles stay guard-free (issue 10): concurrent settles across lots never retry each
  other, and the lots' remainders (derived from the draw counter) still add up.
- Expiry racing concurrent holds, settles and grants: available never below zero, one
  expiry entry per lot, balance == sum of entries == sum of the lots' remainders.
"""

from __future__ import annotations

import contextlib
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from llmcredits.domain.ledger import EntryType, Tier
from llmcredits.domain.ports import StaleRead
from llmcredits.errors import InsufficientCredits
from llmcredits.services.reconcile import reconcile_account

pytestmark = pytest.mark.dynamodb_local

D = Decimal


def all_entries(ledger, user):
    page = ledger.history(user, 200, None, None)
    entries = list(page.entries)
    while page.next_cursor:
        page = ledger.history(user, 200, page.next_cursor, None)
        entries.extend(page.entries)
    return entries


def books_balance(ledger, user) -> None:
    account = ledger.account(user)
    assert sum(e.amount for e in all_entries(ledger, user)) == account.balance
    assert reconcile_account(ledger._store, user) == []
    assert sum(lot.remaining for lot in account.current_lots) == max(account.balance, D(0))


def spend(ledger, user, amount: Decimal) -> None:
    hold = ledger.reserve(ledger.account(user), amount, rate_limit=None)
    ledger.settle(ledger.account(user), hold, amount, provider="p", model="m", tokens=1,
                  metadata={})


def test_a_bonus_expires_once_however_many_runs_race(local_ledger):
    user = "expiring"
    # A few seconds (this machine is shared: a tighter window can pass before the spend).
    expires = datetime.now(UTC) + timedelta(seconds=6)
    local_ledger.grant(user, D(10), EntryType.BONUS, "promo", actor="ops", expires_at=expires)
    spend(local_ledger, user, D(3))
    early = local_ledger.expire_due_lots()
    assert early.expired == [] or datetime.now(UTC) >= expires
    time.sleep(max(0.0, (expires - datetime.now(UTC)).total_seconds()) + 0.2)
    with ThreadPoolExecutor(max_workers=8) as pool:
        reports = list(pool.map(lambda _: local_ledger.expire_due_lots(), range(8)))
    assert local_ledger.expire_due_lots().expired == []  # and once more, later
    expired = [e for r in [early, *reports] for e in r.expired if e.user_id == user]
    assert [e.amount for e in expired] == [D(-7)]
    history = [e for e in all_entries(local_ledger, user) if e.type is EntryType.EXPIRY]
    assert [(e.amount, e.balance_after) for e in history] == [(D(-7), D(0))]
    account = local_ledger.account(user)
    assert (account.balance, account.available, account.current_lots) == (0, 0, ())
    books_balance(local_ledger, user)


def test_a_hold_open_at_expiry_is_settled_from_the_lot_then_the_rest_expires(local_ledger):
    user = "in-flight"
    expires = datetime.now(UTC) + timedelta(seconds=6)
    local_ledger.grant(user, D(10), EntryType.BONUS, "promo", actor="ops", expires_at=expires)
    spend(local_ledger, user, D(3))
    hold = local_ledger.reserve(local_ledger.account(user), D(2), rate_limit=None)
    time.sleep(max(0.0, (expires - datetime.now(UTC)).total_seconds()) + 0.2)
    report = local_ledger.expire_due_lots()
    assert report.expired == [] and len(report.deferred) == 1
    local_ledger.settle(local_ledger.account(user), hold, D("1.25"), provider="p", model="m",
                        tokens=1, metadata={})
    assert [e.amount for e in local_ledger.expire_due_lots().expired] == [D("-5.75")]
    assert local_ledger.expire_due_lots().expired == []
    books_balance(local_ledger, user)


def test_concurrent_settles_across_lots_never_retry_and_the_lots_add_up(local_ledger):
    user = "many-lots"
    local_ledger.account(user)
    local_ledger._store.set_tier(user, Tier.ENTERPRISE, "now")
    now = datetime.now(UTC)
    local_ledger.grant(user, D(30), EntryType.ADJUSTMENT, "never", actor="ops")
    local_ledger.grant(user, D(20), EntryType.BONUS, "late", actor="ops",
                       expires_at=now + timedelta(days=30))
    local_ledger.grant(user, D(10), EntryType.BONUS, "soon", actor="ops",
                       expires_at=now + timedelta(days=3))
    store = local_ledger._store
    stale = []
    settle = store.settle

    def counted(*args, **kwargs):
        try:
            return settle(*args, **kwargs)
        except StaleRead:
            stale.append(1)
            raise

    store.settle = counted
    with ThreadPoolExecutor(max_workers=16) as pool:
        list(pool.map(lambda _: spend(local_ledger, user, D("0.5")), range(64)))
    assert stale == []  # the draw counter adds no guard to a settle
    account = local_ledger.account(user)
    assert account.balance == D(28)
    # 32.00 spent: the soon bonus (10), the late one (20), then 2.00 of the rest.
    assert [(lot.source.value, lot.remaining) for lot in account.current_lots] == [
        ("adjustment", D(28))]
    books_balance(local_ledger, user)


def test_expiry_racing_holds_settles_and_grants_keeps_every_invariant(local_ledger):
    user = "racing"
    local_ledger.account(user)
    local_ledger._store.set_tier(user, Tier.ENTERPRISE, "now")
    expires = datetime.now(UTC) + timedelta(seconds=5)
    for _ in range(3):
        local_ledger.grant(user, D(5), EntryType.BONUS, "promo", actor="ops",
                           expires_at=expires)
    local_ledger.grant(user, D(5), EntryType.ADJUSTMENT, "never", actor="ops")
    time.sleep(max(0.0, (expires - datetime.now(UTC)).total_seconds()) + 0.1)
    stop = threading.Event()
    lowest = []

    def watch() -> None:
        while not stop.is_set():
            lowest.append(local_ledger._store.get_account(user).available)

    def client(i: int) -> None:
        with contextlib.suppress(InsufficientCredits):  # the bonus may be gone
            spend(local_ledger, user, D("0.25"))
        if i % 8 == 0:
            local_ledger.grant(user, D(1), EntryType.ADJUSTMENT, f"top {i}", actor="ops")

    watcher = threading.Thread(target=watch)
    watcher.start()
    with ThreadPoolExecutor(max_workers=12) as pool:
        clients = [pool.submit(client, i) for i in range(48)]
        runs = [pool.submit(local_ledger.expire_due_lots) for _ in range(6)]
        for f in clients + runs:
            f.result()
    while local_ledger.expire_due_lots().deferred:  # holds settled: what is left goes
        time.sleep(0.05)
    stop.set()
    watcher.join()
    assert min(lowest) >= 0
    expiries = [e for e in all_entries(local_ledger, user) if e.type is EntryType.EXPIRY]
    lot_ids = [e.metadata["lot_id"] for e in expiries]
    assert lot_ids and len(lot_ids) == len(set(lot_ids))  # each lot at most once
    account = local_ledger.account(user)
    assert all(lot.expires_at is None for lot in account.current_lots)
    assert account.held == 0
    books_balance(local_ledger, user)
