"""How much of one paid charge has been taken back, as a pure state machine.

One Checkout payment is one charge (one PaymentIntent). Stripe tells us about it in
pieces, in any order, any number of times: refunds (``charge.refunded`` carries the
cumulative ``amount_refunded``), disputes opened (funds withdrawn), closed won or lost,
funds reinstated. Instead of applying each event as a delta (a refund then a dispute of
the same $25 took $50), every event updates a state, and the money that should be
taken back is derived from it:

    clawed back = min(charge amount, refunded + sum of disputes whose funds are out)

Each event moves the balance by (new target - clawed back so far): positive is a
refund or chargeback entry, negative a ``reinstatement``. The transitions are idempotent
(refunded is a maximum; a dispute's status only moves forward) so a redelivered or
overtaken event changes nothing, and "won" is terminal so a dispute won after its funds
were reinstated does not pay twice.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any


class DisputeStatus(StrEnum):
    INQUIRY = "inquiry"  # Stripe's "warning_*" inquiries: no funds withdrawn
    OPEN = "open"  # funds withdrawn, outcome pending
    LOST = "lost"  # funds gone for good
    WON = "won"  # funds returned (won, or reinstated): terminal

    @property
    def holds_funds(self) -> bool:
        return self in (DisputeStatus.OPEN, DisputeStatus.LOST)


# Where a status may move (anything else is a stale or repeated event: no change).
_FORWARD = {
    DisputeStatus.INQUIRY: {DisputeStatus.OPEN, DisputeStatus.LOST, DisputeStatus.WON},
    DisputeStatus.OPEN: {DisputeStatus.LOST, DisputeStatus.WON},
    DisputeStatus.LOST: {DisputeStatus.WON},  # funds_reinstated after all
    DisputeStatus.WON: set(),
}


@dataclass(frozen=True)
class ChargeState:
    """What we know of one charge; ``version`` orders the stored states (0 = as credited)."""

    user_id: str
    checkout_session: str
    payment_intent: str
    amount_cents: int
    refunded_cents: int = 0
    clawed_back_cents: int = 0
    disputes: dict[str, tuple[int, DisputeStatus]] = field(default_factory=dict)
    version: int = 0

    @property
    def disputed_cents(self) -> int:
        """Disputed amounts whose funds are out (open or lost)."""
        return sum(amount for amount, status in self.disputes.values() if status.holds_funds)

    @property
    def target_cents(self) -> int:
        return min(self.amount_cents, self.refunded_cents + self.disputed_cents)

    def refunded(self, total_cents: int) -> ChargeState:
        """Stripe's cumulative refunded total at the time of some event."""
        return replace(self, refunded_cents=max(self.refunded_cents, total_cents))

    def dispute(self, dispute_id: str, amount_cents: int, status: DisputeStatus) -> ChargeState:
        current = self.disputes.get(dispute_id)
        if current is not None and status not in _FORWARD[current[1]]:
            return self
        amount = amount_cents if current is None else current[0]
        return replace(self, disputes={**self.disputes, dispute_id: (amount, status)})

    def settled(self) -> ChargeState:
        """The next stored state: the clawback brought to its target."""
        return replace(self, clawed_back_cents=self.target_cents, version=self.version + 1)

    def same_facts(self, other: ChargeState) -> bool:
        return (self.refunded_cents, self.disputes) == (other.refunded_cents, other.disputes)

    # -- storage form (plain values) ------------------------------------------------------

    def to_record(self) -> dict[str, Any]:
        return {
            "user_id": self.user_id,
            "checkout_session": self.checkout_session,
            "payment_intent": self.payment_intent,
            "amount_cents": self.amount_cents,
            "refunded_cents": self.refunded_cents,
            "clawed_back_cents": self.clawed_back_cents,
            "disputed_cents": self.disputed_cents,
            "disputes": {k: {"amount_cents": a, "status": s.value}
                         for k, (a, s) in self.disputes.items()},
            "version": self.version,
        }

    @classmethod
    def from_record(cls, record: dict[str, Any], payment_intent: str) -> ChargeState:
        disputes = {
            str(k): (int(v["amount_cents"]), DisputeStatus(v["status"]))
            for k, v in (record.get("disputes") or {}).items()
        }
        return cls(
            user_id=str(record["user_id"]),
            checkout_session=str(record.get("checkout_session", "")),
            payment_intent=payment_intent,
            amount_cents=int(record["amount_cents"]),
            refunded_cents=int(record.get("refunded_cents", 0)),
            clawed_back_cents=int(record.get("clawed_back_cents", 0)),
            disputes=disputes,
            version=int(record.get("version", 0)),
        )


def dispute_status(event_type: str, stripe_status: str) -> DisputeStatus | None:
    """The status a dispute event implies, or None if it says nothing about funds."""
    if event_type == "charge.dispute.funds_reinstated":
        return DisputeStatus.WON
    if event_type == "charge.dispute.funds_withdrawn":
        return DisputeStatus.OPEN
    if event_type == "charge.dispute.created":
        return DisputeStatus.INQUIRY if stripe_status.startswith("warning_") else \
            DisputeStatus.OPEN
    if event_type == "charge.dispute.closed":
        return {"won": DisputeStatus.WON, "warning_closed": DisputeStatus.WON,
                "lost": DisputeStatus.LOST}.get(stripe_status)
    return None
