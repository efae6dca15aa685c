"""Accounts and ledger rules, as pure values and functions.

An account stores ``balance`` and ``available`` (= balance - open holds). ``held`` is
derived. ``available`` is stored because DynamoDB conditions cannot do arithmetic:
"available >= :amount" is the one condition that keeps usage from overdrawing under
any concurrency. For the same reason a capped account stores ``cap_headroom``
(= monthly_cap - month_spent - holds this month).

Lots (DESIGN section 7). Every credit is a lot (amount, source, optional expiry); usage
spends the soonest-expiring lot first, lots without expiry last. A settle carries no
guard on the balance (concurrent settles of one account must not collide), so it does
not rewrite lots: it adds its charge to one counter, ``lot_draw``, and a lot's
remaining is *derived*: the stored remainders with ``lot_draw`` consumed in spending
order. Guarded changes (credits, clawbacks, adjustments, expiry) materialize that view
(stored remainders minus the draw, counter back to what no lot covers) and write the
whole list under ``lots_version``. So ``balance == sum(stored remaining) - lot_draw``
after every change, and, while the balance is positive, the sum of the derived
remainders is the balance (reconcile checks it).
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Iterable, Sequence
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
    EXPIRY = "expiry"  # expired grant lots (DESIGN section 7)
    REINSTATEMENT = "reinstatement"  # a clawback given back (a dispute won)


# What an operator may grant through the admin route.
GRANT_TYPES = (EntryType.BONUS, EntryType.REFUND, EntryType.ADJUSTMENT)

#: Tiers from lowest to highest (promotion only ever moves up this list).
TIER_ORDER = (Tier.FREE, Tier.STARTER, Tier.PROFESSIONAL, Tier.ENTERPRISE)


class LotSource(StrEnum):
    """Where a lot of credits came from."""

    PURCHASE = "purchase"
    AUTO_TOPUP = "auto_topup"
    BONUS = "bonus"
    REFUND = "refund"
    ADJUSTMENT = "adjustment"
    REINSTATEMENT = "reinstatement"  # a clawback given back (a dispute won)
    MIGRATED = "migrated"  # the balance of an account from before lots existed


#: Lots paid for: they count towards the cumulative paid amount (tier promotion).
PAID_SOURCES = frozenset({LotSource.PURCHASE, LotSource.AUTO_TOPUP})
#: The id of the implicit lot of an account from before lots (never stored as such).
MIGRATED_LOT_ID = "migrated"


@dataclass(frozen=True)
class Lot:
    """Credits from one credit entry (``id`` is that entry's id).

    ``remaining``: as stored at the last guarded change, or as derived (``current_lots``)
    once the account's ``lot_draw`` is consumed. ``expires_at``: a ``timestamp()``
    string, or None for credits that never expire."""

    id: str
    amount: Decimal
    remaining: Decimal
    source: LotSource
    created_at: str
    expires_at: str | None = None

    def due(self, now: str) -> bool:
        return self.expires_at is not None and self.expires_at <= now


def spending_order(lot: Lot) -> tuple[bool, str, str, str]:
    """Soonest expiry first, lots without expiry last; ties oldest first."""
    return (lot.expires_at is None, lot.expires_at or "", lot.created_at, lot.id)


def drawn(lots: Iterable[Lot], draw: Decimal) -> tuple[tuple[Lot, ...], Decimal]:
    """``lots`` (in spending order) after ``draw`` is taken from them in that order, and
    what no lot covered (> 0 only when the balance is negative)."""
    left = draw
    out = []
    for lot in sorted(lots, key=spending_order):
        take = min(lot.remaining, max(left, ZERO))
        left -= take
        out.append(replace(lot, remaining=lot.remaining - take))
    return tuple(out), left


def migrated_lots(balance: Decimal, draw: Decimal, created_at: str) -> tuple[
        tuple[Lot, ...], Decimal]:
    """Stored lots and draw of an account from before lots: its balance (plus what has
    been drawn since) as one non-expiring lot; a negative balance as a draw no lot
    covers. Either way balance == sum(remaining) - draw."""
    base = balance + draw
    if base <= ZERO:
        return (), -balance
    lot = Lot(id=MIGRATED_LOT_ID, amount=base, remaining=base, source=LotSource.MIGRATED,
              created_at=created_at)
    return (lot,), draw


@dataclass(frozen=True)
class LotsWrite:
    """The account's whole lot list after a guarded change.

    The write requires ``lots_version`` to still be ``version`` (and sets version + 1),
    so two guarded changes never both build on one list."""

    version: int
    lots: tuple[Lot, ...]
    draw: Decimal

    @property
    def next_expiry(self) -> str | None:
        """The soonest expiry of a lot with something left (what the expiry job and the
        expiring-lots query look up by); None: nothing here can expire."""
        dates = [lot.expires_at for lot in self.lots
                 if lot.expires_at is not None and lot.remaining > ZERO]
        return min(dates) if dates else None


def promoted_tier(
    tier: Tier, paid_before: Decimal, paid_after: Decimal,
    thresholds: Sequence[tuple[Tier, Decimal]],
) -> Tier:
    """The tier after the cumulative paid amount moves from ``paid_before`` to
    ``paid_after``: the highest tier whose threshold this payment reaches (crossing it
    now, so an operator's lower tier stays until the next threshold), never lower."""
    best = tier
    for candidate, threshold in thresholds:
        crossed = paid_before < threshold <= paid_after
        if crossed and TIER_ORDER.index(candidate) > TIER_ORDER.index(best):
            best = candidate
    return best


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
    # Lots as stored at the last guarded change, the draw since, and the list's version.
    lots: tuple[Lot, ...] = ()
    lot_draw: Decimal = ZERO
    lots_version: int = 0
    paid_total: Decimal = ZERO  # cumulative paid amount (purchases and auto top-ups)

    @property
    def held(self) -> Decimal:
        return self.balance - self.available

    @property
    def current_lots(self) -> tuple[Lot, ...]:
        """The lots with something left, remaining derived, in spending order."""
        lots, _ = drawn(self.lots, self.lot_draw)
        return tuple(lot for lot in lots if lot.remaining > ZERO)

    def materialized(self) -> tuple[tuple[Lot, ...], Decimal]:
        """The lots with the draw applied (spent lots dropped) and what no lot covers."""
        lots, left = drawn(self.lots, self.lot_draw)
        return tuple(lot for lot in lots if lot.remaining > ZERO), left

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
class Condition:
    """One condition on an attribute of a GuardedWrite's item, checked by the write.

    ``op`` is one of "=", "<>", "<", "<=", ">", ">=" (compared with ``value``), or
    "exists" / "not_exists" (``value`` unused).
    """

    attribute: str
    op: str
    value: Any = None


CONDITION_OPS = ("=", "<>", "<", "<=", ">", ">=", "exists", "not_exists")


@dataclass(frozen=True)
class GuardedWrite:
    """An update of another item, made in the same transaction as a money change.

    The hook for other adapters (e.g. an API key's spend and limit): ``owner`` is the
    user whose partition holds the item and ``sort_key`` names it; ``add`` are numeric
    deltas, ``set`` plain values; every ``conditions`` entry must hold *before* the
    write, else nothing in the transaction is written and ``error`` is raised (or, when
    ``error`` is None, the change is re-read and re-planned like any stale read).
    Values must be JSON-representable (str, int, Decimal, bool): a settlement stores
    its extra writes with its intent so a later worker applies exactly the same ones.
    """

    owner: str
    sort_key: str
    add: dict[str, Decimal | int] = field(default_factory=dict)
    set: dict[str, Any] = field(default_factory=dict)
    conditions: tuple[Condition, ...] = ()
    error: Exception | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        for condition in self.conditions:
            if condition.op not in CONDITION_OPS:
                raise ValueError(f"unknown condition operator {condition.op!r}")
        if not (self.add or self.set):
            raise ValueError("a guarded write must change something")

    def to_json(self) -> dict[str, Any]:
        return {
            "owner": self.owner,
            "sort_key": self.sort_key,
            "add": {k: str(v) for k, v in self.add.items()},
            "add_int": sorted(k for k, v in self.add.items() if isinstance(v, int)),
            "set": {k: [type(v).__name__, str(v) if isinstance(v, Decimal) else v]
                    for k, v in self.set.items()},
            "conditions": [[c.attribute, c.op,
                            [type(c.value).__name__,
                             str(c.value) if isinstance(c.value, Decimal) else c.value]]
                           for c in self.conditions],
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> GuardedWrite:
        ints = set(data.get("add_int", ()))

        def value(tagged: list[Any]) -> Any:
            kind, raw = tagged
            return Decimal(raw) if kind == "Decimal" else raw

        return cls(
            owner=data["owner"],
            sort_key=data["sort_key"],
            add={k: int(v) if k in ints else Decimal(v) for k, v in data["add"].items()},
            set={k: value(v) for k, v in data["set"].items()},
            conditions=tuple(Condition(a, op, value(v)) for a, op, v in data["conditions"]),
        )


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
    # None: no guard (settle), the store records the exact balance_after itself.
    expected_balance: Decimal | None = None
    # available must be >= this before the write (usage and holds).
    require_available: Decimal | None = None
    # cap_headroom must be >= this before the write (capped accounts only).
    require_headroom: Decimal | None = None
    # True: the account must have a cap; False: it must have none; None: cap untouched.
    capped: bool | None = None
    # Per-minute request counter, checked and counted in the same write.
    rate: RateGuard | None = None
    # Extra guarded item updates (e.g. an API key's spend) in the same transaction.
    extra: tuple[GuardedWrite, ...] = ()
    # Lots: a guarded change rewrites the list (under its version); a settle only adds
    # its charge to the draw counter (no guard). Every balance change does one of them.
    lots: LotsWrite | None = None
    draw_delta: Decimal = ZERO
    paid_delta: Decimal = ZERO  # added to paid_total
    # (tier read, tier after): promotion, written only if the tier is still the one read.
    tier_change: tuple[Tier, Tier] | None = None

    @property
    def balance_after(self) -> Decimal:
        if self.expected_balance is None:
            raise ValueError("balance_after needs an expected balance")
        return self.expected_balance + self.balance_delta


def plan_credit(
    account: Account,
    amount: Decimal,
    *,
    lot_id: str,
    created_at: str,
    source: LotSource,
    expires_at: str | None = None,
    promotion: Sequence[tuple[Tier, Decimal]] = (),
) -> Mutation:
    """Money in (purchase, bonus, refund to the user, adjustment up): no limit applies.

    The credit is a new lot; a paid one (``PAID_SOURCES``) adds to the cumulative paid
    amount and may promote the tier (``promotion``: (tier, paid threshold) pairs)."""
    if amount <= ZERO:
        raise ValueError("a credit must be positive")
    if expires_at is not None and expires_at <= created_at:
        raise ValueError("a lot must expire after it is credited")
    lots, uncovered = account.materialized()
    new = Lot(id=lot_id, amount=amount, remaining=amount, source=source,
              created_at=created_at, expires_at=expires_at)
    # What no lot covered (a negative balance) is taken from the new lot at once.
    after, left = drawn((*lots, new), uncovered)
    paid = amount if source in PAID_SOURCES else ZERO
    tier = promoted_tier(account.tier, account.paid_total, account.paid_total + paid,
                         promotion) if paid else account.tier
    return Mutation(
        month=account.month,
        balance_delta=amount,
        available_delta=amount,
        expected_balance=account.balance,
        lots=LotsWrite(account.lots_version, _kept(after), left),
        paid_delta=paid,
        tier_change=(account.tier, tier) if tier != account.tier else None,
    )


def _kept(lots: Iterable[Lot]) -> tuple[Lot, ...]:
    return tuple(lot for lot in lots if lot.remaining > ZERO)


def taken_last_first(account: Account, amount: Decimal) -> LotsWrite:
    """The lots after ``amount`` leaves them from the end of the spending order
    (non-expiring first, then the latest expiry): money taken back (a refund or dispute
    of a purchase, an operator's correction) never turns an expiring bonus into credits
    that stay; what no lot covers becomes draw (a negative balance)."""
    lots, uncovered = account.materialized()
    left = amount
    out = []
    for lot in sorted(lots, key=spending_order, reverse=True):
        take = min(lot.remaining, left)
        left -= take
        out.append(replace(lot, remaining=lot.remaining - take))
    return LotsWrite(account.lots_version, _kept(sorted(out, key=spending_order)),
                     uncovered + left)


def plan_expiry(account: Account, lot_id: str, now: str) -> Mutation:
    """Remove what is left of the due lot ``lot_id``: it leaves the balance and
    ``available`` (which must stay >= 0: the write checks it). Raises LotNotDue when the
    lot is gone (expired or spent already) or not due; LotReserved when open holds
    reserve part of it (it stays spendable until they settle)."""
    lots, uncovered = account.materialized()
    lot = next((x for x in lots if x.id == lot_id), None)
    if lot is None or not lot.due(now):
        raise LotNotDue(lot_id)
    if account.available < lot.remaining:
        raise LotReserved(lot_id)
    return Mutation(
        month=account.month,
        balance_delta=-lot.remaining,
        available_delta=-lot.remaining,
        expected_balance=account.balance,
        require_available=lot.remaining,
        lots=LotsWrite(account.lots_version, tuple(x for x in lots if x.id != lot_id),
                       uncovered),
    )


def plan_lots_tidy(account: Account) -> Mutation:
    """No money moves: spent lots are dropped and the soonest expiry recomputed (the
    expiry job found an account whose due lot was spent by usage meanwhile)."""
    lots, uncovered = account.materialized()
    return Mutation(
        month=account.month,
        expected_balance=account.balance,
        lots=LotsWrite(account.lots_version, lots, uncovered),
    )


class LotNotDue(Exception):
    """The lot to expire is gone (expired or spent already) or not due yet."""


class LotReserved(Exception):
    """Expiring the lot now would take ``available`` below zero: holds reserve it."""


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
        lots=taken_last_first(account, amount),
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
        lots=taken_last_first(account, amount),
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
        draw_delta=amount,  # spent from the lots in spending order
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
    # The recorded answer (outbox): once set, the hold is only ever settled, never freed.
    settlement: Settlement | None = None
    key_id: str = ""  # the API key that made the request, if any (its budget holds it too)
    # The extra writes that give this hold back (e.g. to an API key's headroom), kept
    # on the hold so the sweeper's release of a dead request applies them too.
    release_extra: tuple[GuardedWrite, ...] = ()


@dataclass(frozen=True)
class Settlement:
    """What an answered request owes, recorded on its hold before settling (the outbox).

    Everything the settle transaction writes is derived from it, so the request, a
    retry and the settle worker all send the same transaction (one ClientRequestToken).
    """

    entry_id: str
    created_at: str
    cost: Decimal
    provider: str | None = None
    model: str | None = None
    tokens: int | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    extra: tuple[GuardedWrite, ...] = ()

    def to_json(self) -> str:
        return json.dumps(
            {
                "entry_id": self.entry_id,
                "created_at": self.created_at,
                "cost": str(self.cost),
                "provider": self.provider,
                "model": self.model,
                "tokens": self.tokens,
                "metadata": self.metadata,
                "extra": [w.to_json() for w in self.extra],
            },
            sort_keys=True,
            default=str,
        )

    @classmethod
    def from_json(cls, text: str) -> Settlement:
        data = json.loads(text)
        return cls(
            entry_id=data["entry_id"],
            created_at=data["created_at"],
            cost=Decimal(data["cost"]),
            provider=data.get("provider"),
            model=data.get("model"),
            tokens=data.get("tokens"),
            metadata=data.get("metadata") or {},
            extra=tuple(GuardedWrite.from_json(w) for w in data.get("extra", ())),
        )


def settlement_entry(hold: Hold, settlement: Settlement) -> LedgerEntry:
    """The usage entry a settlement writes; ``balance_after`` is stamped after commit."""
    return LedgerEntry(
        id=settlement.entry_id,
        user_id=hold.user_id,
        created_at=settlement.created_at,
        type=EntryType.USAGE,
        amount=-settlement.cost,
        balance_after=None,
        provider=settlement.provider,
        model=settlement.model,
        tokens=settlement.tokens,
        cost=settlement.cost,
        metadata={**settlement.metadata, "hold_id": hold.id, "hold": format_money(hold.amount)},
        key_id=hold.key_id or None,
    )


def operation_token(kind: str, operation_id: str, *parts: str) -> str:
    """A TransactWriteItems ClientRequestToken derived from the operation (<= 36 chars).

    The same operation (kind, hold or entry id, and whatever else shapes its items,
    e.g. the month) always gets the same token, so a retry of a transaction that
    already committed is answered as a success instead of being applied again."""
    raw = ":".join((kind, operation_id, *parts))
    return hashlib.sha256(raw.encode()).hexdigest()[:32]


def plan_reserve(
    account: Account,
    amount: Decimal,
    rate: RateGuard | None,
    extra: tuple[GuardedWrite, ...] = (),
) -> Mutation:
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
        extra=extra,
    )


def plan_settle(
    account: Account, hold: Hold, cost: Decimal, extra: tuple[GuardedWrite, ...] = ()
) -> Mutation:
    """Charge ``cost`` (<= the hold) and give the rest of the hold back.

    No guard on the balance: the hold already reserved the money, so the charge cannot
    overdraw, and concurrent settles of one account must not retry each other. The
    store records the exact balance after this change in the same write."""
    if cost > hold.amount or cost < ZERO:
        raise ValueError("a settlement must be between 0 and its hold")
    capped = account.monthly_cap is not None
    return Mutation(
        month=account.month,
        balance_delta=-cost,
        available_delta=hold.amount - cost,
        spend_delta=cost,
        headroom_delta=hold.amount - cost if capped else ZERO,
        capped=capped,
        extra=extra,
        draw_delta=cost,  # no guard: the lots' remainders are derived from the draw
    )


def plan_release(
    account: Account, hold: Hold, extra: tuple[GuardedWrite, ...] = ()
) -> Mutation:
    """Give a hold back in full (upstream failed, or the request died)."""
    capped = account.monthly_cap is not None
    return Mutation(
        month=account.month,
        available_delta=hold.amount,
        headroom_delta=hold.amount if capped else ZERO,
        capped=capped,
        extra=extra,
    )


@dataclass(frozen=True)
class LedgerEntry:
    id: str
    user_id: str
    created_at: str
    type: EntryType
    amount: Decimal
    # None only between a settle's commit and its stamp (see DynamoLedgerStore.stamp).
    balance_after: Decimal | None
    provider: str | None = None
    model: str | None = None
    tokens: int | None = None
    cost: Decimal | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    key_id: str | None = None  # usage made with an API key
    receipt_url: str | None = None  # a purchase's receipt at the payment provider


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


def hold_id_for(user_id: str, request_id: str) -> str:
    """The id of the hold a request reserves: derived from its user and request id, so
    the request's charge is found from the id alone (GET /generations/{request_id})
    with consistent GetItems and no write beyond the chat's own.

    32 hex digits (the HoldsByAge shard is read from the first 8). The request id is the
    platform's (API Gateway's ``requestId``, a UUID; never a client header), so it is
    unique; the user is in the hash too because transaction tokens derive from hold
    ids and DynamoDB scopes tokens to the account, not the item. A hold of a request
    without an id (tests, tools) gets a random id."""
    if not request_id:
        return uuid.uuid4().hex
    return hashlib.sha256(f"request:{user_id}\0{request_id}".encode()).hexdigest()[:32]


def hold_charged_key(hold_id: str) -> str:
    return f"hold-charged:{hold_id}"


def hold_charged_record(hold: Hold, entry: LedgerEntry) -> RecordWrite:
    """The marker each charge of a hold writes in its own transaction (must not exist):
    the settle, or the balance debit of a hold the sweeper freed. A second charge of the
    same hold (a retried settle after the first committed) fails on it, charging nothing.

    It names the entry's key (created_at and id), so the request's charge is one more
    GetItem away. Kept, with no TTL, as long as the entry: it is how GET
    /generations/{request_id} finds the charge, and the dedupe never lapses."""
    return RecordWrite(
        key=hold_charged_key(hold.id),
        values={"entry_id": entry.id, "entry_created_at": entry.created_at},
        owner=hold.user_id,
    )
