"""DESIGN invariants checked by operators (``llmcredits admin reconcile``, and a
scheduled function):

2. balance == sum(ledger amounts) and held == sum(open holds), per account, and, while
   the balance is positive, the sum of the lots' remaining credits == balance (section 7);
4. usage aggregates == sums of the usage ledger entries, per (user, day, provider, model).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Protocol

from llmcredits.domain.ledger import LedgerEntry, timestamp
from llmcredits.domain.ports import LedgerStore
from llmcredits.money import ZERO
from llmcredits.services.usage import Aggregate, UsageKey, UsageTotals, usage_of_entry

PAGE = 200


@dataclass(frozen=True)
class Discrepancy:
    user_id: str
    what: str
    stored: Decimal
    expected: Decimal

    def __str__(self) -> str:
        return f"{self.user_id}: {self.what} is {self.stored}, ledger says {self.expected}"


def reconcile_account(store: LedgerStore, user_id: str) -> list[Discrepancy]:
    account = store.get_account(user_id)
    if account is None:
        return []
    total = ZERO
    after: str | None = None
    while True:
        page = store.list_entries(user_id, PAGE, after, None)
        total += sum((e.amount for e in page.entries), ZERO)
        if page.last_key is None:
            break
        after = page.last_key
    found = []
    if account.balance != total:
        found.append(Discrepancy(user_id, "balance", account.balance, total))
    open_holds = store.sum_open_holds(user_id)
    if account.held != open_holds:
        found.append(Discrepancy(user_id, "held", account.held, open_holds))
    remaining = sum((lot.remaining for lot in account.current_lots), ZERO)
    if account.balance > ZERO and remaining != account.balance:
        found.append(Discrepancy(user_id, "lots remaining", remaining, account.balance))
    return found


# -- invariant 4 and the all-accounts run ----------------------------------------------

USAGE_FIELDS = ("requests", "prompt_tokens", "completion_tokens", "total_tokens", "cost")


class UnreadableEntry(Discrepancy):
    """A usage ledger entry the aggregator cannot count (it failed on the stream too)."""

    def __str__(self) -> str:
        return f"{self.user_id}: {self.what} is unreadable"


class UsageLedger(Protocol):
    """What the usage check reads (``llmcredits.dal.dynamodb_usage.DynamoUsageStore``)."""

    def usage_entries(self, user_id: str) -> Iterable[LedgerEntry]: ...

    def all_aggregates(self, user_id: str) -> list[Aggregate]: ...

    def account_ids(self) -> Iterable[str]: ...


def reconcile_usage(
    usage: UsageLedger,
    user_id: str,
    *,
    now: datetime | None = None,
    grace_seconds: int = 0,
) -> list[Discrepancy]:
    """Invariant 4: each (day, provider, model) aggregate of the user equals the sums of
    the user's usage ledger entries of that key (``usage_of_entry``, as the aggregator).

    With ``grace_seconds`` > 0, a key with an entry younger than that is not checked
    (its stream records may still be in flight); it is checked once the key is quiet."""
    cutoff = None
    if grace_seconds > 0:
        cutoff = timestamp((now or datetime.now(UTC)) - timedelta(seconds=grace_seconds))
    expected: dict[UsageKey, UsageTotals] = {}
    recent: set[UsageKey] = set()
    found: list[Discrepancy] = []
    for entry in usage.usage_entries(user_id):
        try:
            record = usage_of_entry(entry)
        except ValueError as exc:
            found.append(UnreadableEntry(user_id, f"usage entry {entry.id}: {exc}", ZERO, ZERO))
            continue
        expected[record.key] = expected.get(record.key, UsageTotals()) + record.totals
        if cutoff is not None and entry.created_at >= cutoff:
            recent.add(record.key)
    stored = {agg.key: agg.totals for agg in usage.all_aggregates(user_id)}
    for key in sorted(set(expected) | set(stored)):
        if key in recent:
            continue
        want = expected.get(key, UsageTotals())
        have = stored.get(key, UsageTotals())
        for name in USAGE_FIELDS:
            have_value, want_value = getattr(have, name), getattr(want, name)
            if have_value != want_value:
                found.append(
                    Discrepancy(
                        user_id,
                        f"usage {key.day} {key.provider} {key.model} {name}",
                        Decimal(have_value),
                        Decimal(want_value),
                    )
                )
    return found


@dataclass
class ReconcileReport:
    accounts: int = 0
    discrepancies: list[Discrepancy] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.discrepancies


def reconcile_all(
    store: LedgerStore,
    usage: UsageLedger,
    *,
    user_id: str | None = None,
    now: datetime | None = None,
    grace_seconds: int = 0,
    recheck: Callable[[], None] | None = None,
) -> ReconcileReport:
    """Invariants 2 and 4 for every account (or one). An account found inconsistent is
    checked again (after ``recheck()``, e.g. a short sleep) and reported only if it still
    is, so a money change landing between two reads is not a false alarm."""
    report = ReconcileReport()
    users = [user_id] if user_id is not None else usage.account_ids()

    def check(uid: str) -> list[Discrepancy]:
        return reconcile_account(store, uid) + reconcile_usage(
            usage, uid, now=now, grace_seconds=grace_seconds
        )

    for uid in users:
        report.accounts += 1
        found = check(uid)
        if found and recheck is not None:
            recheck()
            found = check(uid)
        report.discrepancies.extend(found)
    return report
