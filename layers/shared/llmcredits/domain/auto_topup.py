"""Auto top-up rules, as pure values and functions (DESIGN section 7).

One settings-and-state value per user (``AutoTopup``): what the user configured
(enabled, threshold, amount, monthly limit), the saved card, and the top-up in flight.
At most one top-up is in flight per account: a claim moves ``state`` from idle to
claimed, written only if the stored ``revision`` is still the one read (every write of
the item increments it), so of any number of concurrent crossings one claim lands.
``month_total`` counts this month's top-ups *including the one in flight*, so a claim
that would pass ``monthly_limit`` is never made; a failed top-up gives its amount back.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, replace
from decimal import Decimal
from enum import StrEnum

from llmcredits.domain.ledger import Account
from llmcredits.money import ZERO

#: The account flag that says auto top-up is enabled (watchers read nothing without it).
AUTOTOPUP_FLAG = "autotopup"
#: Consecutive failed top-ups that disable auto top-up.
MAX_CONSECUTIVE_FAILURES = 3


class TopupState(StrEnum):
    IDLE = "idle"
    CLAIMED = "claimed"  # a crossing claimed the account; the worker creates the payment
    CREATED = "created"  # the PaymentIntent exists; its webhook resolves it


@dataclass(frozen=True)
class SavedCard:
    payment_method: str
    brand: str = ""
    last4: str = ""


@dataclass(frozen=True)
class InFlight:
    """The top-up an account has in flight (one at most)."""

    topup_id: str
    amount: Decimal
    month: str  # the month whose total counts it
    claimed_at: str
    payment_intent: str | None = None


@dataclass(frozen=True)
class AutoTopup:
    user_id: str
    enabled: bool = False
    threshold: Decimal | None = None
    amount: Decimal | None = None
    monthly_limit: Decimal | None = None
    customer: str | None = None
    card: SavedCard | None = None
    revision: int = 0  # 0: never stored
    month: str = ""
    month_total: Decimal = ZERO
    state: TopupState = TopupState.IDLE
    in_flight: InFlight | None = None
    failures: int = 0  # consecutive
    updated_at: str = ""

    def topped_up(self, month: str) -> Decimal:
        """This month's top-ups, the one in flight included."""
        return self.month_total if self.month == month else ZERO


def topup_id_for(user_id: str, crossing_id: str) -> str:
    """The top-up a crossing starts, derived from it (the stream record's eventID), so a
    redelivered record names the same top-up and the same Stripe idempotency key."""
    raw = json.dumps(["auto-topup", user_id, crossing_id])
    return hashlib.sha256(raw.encode()).hexdigest()[:32]


def may_cross(old: Account | None, new: Account | None) -> bool:
    """Whether this account change can be a crossing, from the images alone (no read):
    auto top-up enabled now, and ``available`` went down or top-up was just enabled."""
    if new is None or AUTOTOPUP_FLAG not in new.flags:
        return False
    if old is None or AUTOTOPUP_FLAG not in old.flags:
        return True
    return new.available < old.available


def is_crossing(old: Account | None, new: Account, threshold: Decimal) -> bool:
    """``available`` left at or above the threshold and now below it. Enabling auto
    top-up while already below counts as a crossing (the user asked for a floor)."""
    if new.available >= threshold:
        return False
    if old is None or AUTOTOPUP_FLAG not in old.flags:
        return True
    return old.available >= threshold


class SkipReason(StrEnum):
    DISABLED = "disabled"
    NO_CARD = "no_card"
    IN_FLIGHT = "in_flight"
    MONTHLY_LIMIT = "monthly_limit"


@dataclass(frozen=True)
class Claim:
    """The item after a successful claim (written only if ``revision`` is still read)."""

    before: AutoTopup
    after: AutoTopup

    @property
    def in_flight(self) -> InFlight:
        assert self.after.in_flight is not None
        return self.after.in_flight


def plan_claim(config: AutoTopup, topup_id: str, month: str, now: str) -> Claim | SkipReason:
    """Claim the account for one top-up of ``config.amount``, or why not."""
    if not config.enabled or config.amount is None or config.monthly_limit is None:
        return SkipReason.DISABLED
    if config.card is None or not config.customer:
        return SkipReason.NO_CARD
    if config.state is not TopupState.IDLE:
        return SkipReason.IN_FLIGHT
    total = config.topped_up(month) + config.amount
    if total > config.monthly_limit:
        return SkipReason.MONTHLY_LIMIT
    after = replace(
        config,
        revision=config.revision + 1,
        month=month,
        month_total=total,
        state=TopupState.CLAIMED,
        in_flight=InFlight(topup_id, config.amount, month, now),
        updated_at=now,
    )
    return Claim(config, after)


@dataclass(frozen=True)
class Failure:
    """A failed top-up applied to the item: its amount leaves the month's total again,
    and the third failure in a row disables auto top-up."""

    before: AutoTopup
    after: AutoTopup

    @property
    def disabled(self) -> bool:
        return self.before.enabled and not self.after.enabled


def plan_failure(config: AutoTopup, topup_id: str, now: str) -> Failure | None:
    """None when ``topup_id`` is not the one in flight (applied already, or stale)."""
    flight = config.in_flight
    if flight is None or flight.topup_id != topup_id:
        return None
    failures = config.failures + 1
    total = config.month_total
    if config.month == flight.month:
        total = max(ZERO, total - flight.amount)
    after = replace(
        config,
        revision=config.revision + 1,
        month_total=total,
        state=TopupState.IDLE,
        in_flight=None,
        failures=failures,
        enabled=config.enabled and failures < MAX_CONSECUTIVE_FAILURES,
        updated_at=now,
    )
    return Failure(config, after)


def plan_success(config: AutoTopup, topup_id: str, now: str) -> AutoTopup | None:
    """The item once the top-up in flight was paid; None if it is not in flight."""
    flight = config.in_flight
    if flight is None or flight.topup_id != topup_id:
        return None
    return replace(config, revision=config.revision + 1, state=TopupState.IDLE,
                   in_flight=None, failures=0, updated_at=now)
