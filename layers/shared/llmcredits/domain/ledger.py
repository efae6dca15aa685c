"""Accounts and ledger rules, as pure values and functions.

An account stores ``balance`` and ``available`` (= balance - open holds). ``held`` is
derived. ``available`` is stored because DynamoDB conditions cannot do arithmetic:
"available >= :amount" is the one condition that keeps usage from overdrawing under
any concurrency. For the same reason a capped account stores ``cap_headroom``
(= monthly_cap - month_spent - holds this month).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from decimal import Decimal
from enum import StrEnum
from typing import Any

from llmcredits.errors import InsufficientCredits, MonthlyCapReached, RateLimited
from llmcredits.money import ZERO, format_money


class Tier(StrEnum):
    FREE = "free"
    STARTER = "starter"
    PROFESSIONAL = "professional"
    ENTERPRISE = "enterprise"


class EntryType(StrEnum):
    PURCHASE = "purchase"
    USAGE = "usage"
    REFUND = "refund"
    BONUS = "bonus"
    ADJUSTMENT = "adjustment"
    CHARGEBACK = "chargeback"


# What an operator may grant through the admin route.
GRANT_TYPES = (EntryType.BONUS, EntryType.REFUND, EntryType.ADJUSTMENT)


def month_of(now: datetime) -> str:
    """The UTC calendar month an amount of spend belongs to, e.g. "2026-11"."""
    return now.astimezone(UTC).strftime("%Y-%m")


def timestamp(now: datetime) -> str:
    """Sortable UTC timestamp with microseconds."""
    return now.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass(frozen=True)
class Account:
    user_id: str
    balance: Decimal
    available: Decimal
    tier: Tier
    month: str
    month_spent: Decimal
    monthly_cap: Decimal | None = None
    cap_headroom: Decimal | None = None
    created_at: str = ""
    updated_at: str = ""
    flags: frozenset[str] = field(default_factory=frozenset)
    rate_window: int = 0
    rate_count: int = 0

    @property
    def held(self) -> Decimal:
        return self.balance - self.available

    @classmethod
    def new(cls, user_id: str, now: datetime) -> Account:
        ts = timestamp(now)
        return cls(
            user_id=user_id,
            balance=ZERO,
            available=ZERO,
            tier=Tier.FREE,
            month=month_of(now),
            month_spent=ZERO,
            created_at=ts,
            updated_at=ts,
        )


def rolled_over(account: Account, month: str) -> Account:
    """The account at the start of ``month``: spend restarts at 0; open holds still count."""
    if account.month >= month:
        return account
    headroom = None if account.monthly_cap is None else account.monthly_cap - account.held
    return replace(account, month=month, month_spent=ZERO, cap_headroom=headroom)


def with_monthly_cap(account: Account, cap: Decimal | None) -> Account:
    headroom = None if cap is None else cap - account.month_spent - account.held
    return replace(account, monthly_cap=cap, cap_headroom=headroom)


@dataclass(frozen=True)
class RateGuard:
    """A fixed one-minute window: at most ``limit`` holds per window."""

    window: int  # epoch minute
    limit: int
    same_window: bool  # the account's stored window is this one (count it) or older (reset)


@dataclass(frozen=True)
class Mutation:
    """One conditional change to an account, planned from a read of it.

    The store applies the deltas and checks the guards atomically; a guard that fails
    means the read is stale (retry) or the change is not allowed (re-plan and raise).
    """

    month: str
    balance_delta: Decimal = ZERO
    available_delta: Decimal = ZERO
    spend_delta: Decimal = ZERO  # added to month_spent
    headroom_delta: Decimal = ZERO  # added to cap_headroom (capped accounts only)
    # Optimistic guard: the balance must still be this, so ``balance_after`` is exact.
    expected_balance: Decimal | None = None
    # available must be >= this before the write (usage and holds).
    require_available: Decimal | None = None
    # cap_headroom must be >= this before the write (capped accounts only).
    require_headroom: Decimal | None = None
    # True: the account must have a cap; False: it must have none; None: cap untouched.
    capped: bool | None = None
    # Per-minute request counter, checked and counted in the same write.
    rate: RateGuard | None = None

    @property
    def balance_after(self) -> Decimal:
        if self.expected_balance is None:
            raise ValueError("balance_after needs an expected balance")
        return self.expected_balance + self.balance_delta


def plan_credit(account: Account, amount: Decimal) -> Mutation:
    """Money in (purchase, bonus, refund to the user, adjustment up): no limit applies."""
    if amount <= ZERO:
        raise ValueError("a credit must be positive")
    return Mutation(
        month=account.month,
        balance_delta=amount,
        available_delta=amount,
        expected_balance=account.balance,
    )


def plan_clawback(account: Account, amount: Decimal) -> Mutation:
    """Money taken back after a refund or dispute at the payment provider.

    The only change that may take a balance below zero: the money has already left.
    """
    if amount <= ZERO:
        raise ValueError("a clawback must be positive")
    return Mutation(
        month=account.month,
        balance_delta=-amount,
        available_delta=-amount,
        expected_balance=account.balance,
    )


def plan_adjustment_debit(
    account: Account, amount: Decimal, allow_negative: bool = False
) -> Mutation:
    """An operator's downward correction of ``amount`` (> 0) credits.

    Not spend: the month's spend and cap headroom are untouched. Unless
    ``allow_negative``, it must leave ``available`` (balance - open holds) at or above
    zero, and the write itself checks that, so a concurrent hold cannot race past it.
    """
    if amount <= ZERO:
        raise ValueError("an adjustment debit must be positive")
    if not allow_negative and account.available < amount:
        raise InsufficientCredits(
            f"Adjusting {account.user_id!r} down by {format_money(amount)} would take "
            f"available credits below zero ({format_money(account.available)} available).",
            code="would_go_negative",
        )
    return Mutation(
        month=account.month,
        balance_delta=-amount,
        available_delta=-amount,
        expected_balance=account.balance,
        require_available=None if allow_negative else amount,
    )


def plan_usage_debit(account: Account, amount: Decimal) -> Mutation:
    """Usage paid from the balance: never below zero, never above the monthly cap."""
    if amount < ZERO:
        raise ValueError("a debit must not be negative")
    check_spend(account, amount)
    capped = account.monthly_cap is not None
    return Mutation(
        month=account.month,
        balance_delta=-amount,
        available_delta=-amount,
        spend_delta=amount,
        headroom_delta=-amount if capped else ZERO,
        expected_balance=account.balance,
        require_available=amount,
        require_headroom=amount if capped else None,
        capped=capped,
    )


def check_spend(account: Account, amount: Decimal) -> None:
    """Raise the 402 that applies if ``amount`` of new spend is not allowed now."""
    if account.available < amount:
        raise InsufficientCredits(
            f"Insufficient credits: this request needs up to {amount} credits and "
            f"{max(account.available, ZERO)} are available. Buy credits at POST "
            "/api/v1/llm/credits/purchase."
        )
    if account.cap_headroom is not None and account.cap_headroom < amount:
        raise MonthlyCapReached(
            f"Monthly spending cap of {account.monthly_cap} reached for {account.month}. "
            "Raise it with PUT /api/v1/llm/credits/monthly-cap."
        )


def rate_guard(account: Account, now: datetime, limit: int) -> RateGuard:
    """Raise 429 if the caller used up this minute; else the guard that counts this request."""
    window = int(now.timestamp()) // 60
    same = account.rate_window == window
    if same and account.rate_count >= limit:
        retry_after = 60 - int(now.timestamp()) % 60
        raise RateLimited(
            f"Rate limit of {limit} requests per minute reached for the {account.tier.value} "
            f"tier; retry in {retry_after} s.",
            headers={"Retry-After": str(retry_after)},
        )
    return RateGuard(window=window, limit=limit, same_window=same)


@dataclass(frozen=True)
class Hold:
    """Credits reserved for one chat request in flight: an upper bound of its charge."""

    id: str
    user_id: str
    amount: Decimal
    created_at: str
    request_id: str = ""
    model: str = ""
    key_id: str = ""  # the API key that made the request, if any (its budget holds it too)


def plan_reserve(account: Account, amount: Decimal, rate: RateGuard | None) -> Mutation:
    """Take ``amount`` out of ``available`` (and cap headroom); the balance is untouched."""
    check_spend(account, amount)
    capped = account.monthly_cap is not None
    return Mutation(
        month=account.month,
        available_delta=-amount,
        headroom_delta=-amount if capped else ZERO,
        require_available=amount,
        require_headroom=amount if capped else None,
        capped=capped,
        rate=rate,
    )


def plan_settle(account: Account, hold: Hold, cost: Decimal) -> Mutation:
    """Charge ``cost`` (<= the hold) and give the rest of the hold back."""
    if cost > hold.amount or cost < ZERO:
        raise ValueError("a settlement must be between 0 and its hold")
    capped = account.monthly_cap is not None
    return Mutation(
        month=account.month,
        balance_delta=-cost,
        available_delta=hold.amount - cost,
        spend_delta=cost,
        headroom_delta=hold.amount - cost if capped else ZERO,
        expected_balance=account.balance,
        capped=capped,
    )


def plan_release(account: Account, hold: Hold) -> Mutation:
    """Give a hold back in full (upstream failed, or the request died)."""
    capped = account.monthly_cap is not None
    return Mutation(
        month=account.month,
        available_delta=hold.amount,
        headroom_delta=hold.amount if capped else ZERO,
        capped=capped,
    )


@dataclass(frozen=True)
class LedgerEntry:
    id: str
    user_id: str
    created_at: str
    type: EntryType
    amount: Decimal
    balance_after: Decimal
    provider: str | None = None
    model: str | None = None
    tokens: int | None = None
    cost: Decimal | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    key_id: str | None = None  # usage made with an API key


@dataclass(frozen=True)
class IdempotencyClaim:
    """A client's Idempotency-Key, scoped to what it was sent to, with the request's hash."""

    scope: str
    key: str
    fingerprint: str


@dataclass(frozen=True)
class RecordWrite:
    """A bookkeeping record written in the same transaction as a money change.

    ``key`` names it (e.g. "stripe-event:evt_1"); ``owner`` is the user whose partition
    holds it, or None for a global record (e.g. a payment id -> user lookup).
    ``expect`` None means the record must not exist yet (dedupe); otherwise each listed
    attribute must still have that value (optimistic guard). The record is then
    replaced by ``values``.
    """

    key: str
    values: dict[str, Any]
    owner: str | None
    expect: dict[str, Any] | None = None


def fingerprint(payload: dict[str, Any]) -> str:
    """Stable hash of a request's meaningful fields (Decimals as their exact strings)."""
    canonical = json.dumps(payload, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()
