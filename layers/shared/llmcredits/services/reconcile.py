"""Invariant 2: balance == sum(ledger amounts) and held == sum(open holds), per account."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

from llmcredits.domain.ports import LedgerStore
from llmcredits.money import ZERO

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
    return found
