"""Every dedupe, idempotency and marker record a money transaction promises is in the
table after the first delivery, and each one's condition is what stops a repeat.

A dedupe record that is never written can hide behind another one (the Stripe event
record behind the session record) until the day the other changes; so the records are
asserted by reading the moto table, and each guard is driven with an interleaving that
only that guard can stop (a second event of one session with no payment intent, a
payment record read before another refund landed).
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest
from llmcredits.local.dev_stripe import charge, checkout_session, dispute, event

from tests.unit.money_books import assert_books_balance, items_of, record_exists

USER = "records-user"


class NoProvider:
    """Checkout sessions with chosen ids; webhooks are applied already verified."""

    def __init__(self) -> None:
        self.next_id = ""

    def create_checkout_session(self, request: Any) -> Any:
        from llmcredits.services.payments import CheckoutSession

        return CheckoutSession(self.next_id, f"https://checkout.test/{self.next_id}")

    def verify_webhook(self, payload: str, signature: str | None) -> dict[str, Any]:
        raise AssertionError("tests call apply_event")

    def receipt_url(self, payment_intent: str) -> str | None:
        return f"https://pay.stripe.test/receipts/{payment_intent}"


class StaleRecords:
    """A LedgerService whose ``get_record`` can answer once with an earlier read: the
    interleaving "another refund committed after this one read the payment"."""

    def __init__(self, ledger: Any) -> None:
        self._ledger = ledger
        self.recording = False
        self._seen: dict[tuple[str, str | None], Any] = {}
        self._stale: dict[tuple[str, str | None], Any] = {}

    def replay_recorded_once(self) -> None:
        self._stale, self._seen, self.recording = dict(self._seen), {}, False

    def get_record(self, key: str, owner: str | None) -> Any:
        if (key, owner) in self._stale:
            return self._stale.pop((key, owner))
        value = self._ledger.get_record(key, owner)
        if self.recording:
            self._seen.setdefault((key, owner), value)
        return value

    def __getattr__(self, name: str) -> Any:
        return getattr(self._ledger, name)


@pytest.fixture
def ledger(aws: None) -> Any:
    from llmcredits import bootstrap

    return bootstrap.ledger_service()


@pytest.fixture
def provider() -> NoProvider:
    return NoProvider()


@pytest.fixture
def stale(ledger: Any) -> StaleRecords:
    return StaleRecords(ledger)


@pytest.fixture
def payments(stale: StaleRecords, provider: NoProvider) -> Any:
    from llmcredits.services.payments import PaymentsService, PurchaseConfig

    return PaymentsService(stale, provider, PurchaseConfig.from_env({}))  # type: ignore[arg-type]


def started(payments: Any, provider: NoProvider, session_id: str, cents: int,
            user: str = USER) -> None:
    """POST /credits/purchase: the purchase this service starts before Stripe's events."""
    provider.next_id = session_id
    payments.start_purchase(user, Decimal(cents).scaleb(-2), "http://localhost/ok",
                            "http://localhost/cancel")


def session(session_id: str, cents: int, *, payment_intent: str | None = "auto",
            user: str = USER) -> dict[str, Any]:
    return checkout_session(user_id=user, amount_cents=cents, session_id=session_id,
                            payment_intent=payment_intent)


def balance(ledger: Any, user: str = USER) -> Decimal:
    return Decimal(ledger.account(user).balance)


def entries(ledger: Any, user: str = USER) -> list[Any]:
    return list(ledger.history(user, 200, None, None).entries)


# -- a purchase ------------------------------------------------------------------------------


def test_a_credited_session_writes_its_event_session_and_payment_records(
    ledger: Any, payments: Any, provider: NoProvider
) -> None:
    started(payments, provider, "cs_rec_1", 2500)
    paid = session("cs_rec_1", 2500)
    evt = event("checkout.session.completed", paid)
    assert payments.apply_event(evt).outcome == "credited"
    assert record_exists(f"stripe-event:{evt['id']}", USER)
    assert record_exists("checkout-session:cs_rec_1", USER)
    assert record_exists(f"payment-intent:{paid['payment_intent']}", None)
    assert balance(ledger) == Decimal(25)
    assert_books_balance(USER)


def test_one_session_through_two_events_without_a_payment_intent_credits_once(
    ledger: Any, payments: Any, provider: NoProvider
) -> None:
    """Only the session record can stop this one (no payment-intent record exists)."""
    started(payments, provider, "cs_rec_2", 1200)
    paid = session("cs_rec_2", 1200, payment_intent=None)
    assert payments.apply_event(event("checkout.session.completed", paid)).outcome == "credited"
    second = payments.apply_event(event("checkout.session.async_payment_succeeded", paid))
    assert second.outcome == "duplicate"
    assert balance(ledger) == Decimal(12)
    assert [e.type.value for e in entries(ledger)] == ["purchase"]


def test_one_payment_intent_through_two_sessions_credits_once(
    ledger: Any, payments: Any, provider: NoProvider
) -> None:
    """Only the global payment-intent record can stop this one."""
    started(payments, provider, "cs_rec_3a", 1000)
    started(payments, provider, "cs_rec_3b", 1000)
    first = session("cs_rec_3a", 1000, payment_intent="pi_rec_3")
    again = session("cs_rec_3b", 1000, payment_intent="pi_rec_3")
    assert payments.apply_event(event("checkout.session.completed", first)).outcome == "credited"
    payments.apply_event(event("checkout.session.completed", again))
    assert balance(ledger) == Decimal(10)


def test_a_redelivered_event_credits_once(
    ledger: Any, payments: Any, provider: NoProvider
) -> None:
    started(payments, provider, "cs_rec_4", 700)
    evt = event("checkout.session.completed", session("cs_rec_4", 700))
    payments.apply_event(evt)
    assert payments.apply_event(evt).outcome == "duplicate"
    assert balance(ledger) == Decimal(7)


# -- refunds and disputes --------------------------------------------------------------------


def bought(payments: Any, provider: NoProvider, session_id: str, cents: int) -> str:
    started(payments, provider, session_id, cents)
    paid = session(session_id, cents)
    assert payments.apply_event(event("checkout.session.completed", paid)).outcome == "credited"
    return str(paid["payment_intent"])


def test_a_refund_writes_its_event_record(
    ledger: Any, payments: Any, provider: NoProvider
) -> None:
    pi = bought(payments, provider, "cs_rec_5", 2500)
    refund = event("charge.refunded", charge(payment_intent=pi, amount=2500,
                                             amount_refunded=1000))
    assert payments.apply_event(refund).outcome == "refunded"
    assert record_exists(f"stripe-event:{refund['id']}", USER)
    assert balance(ledger) == Decimal(15)
    assert payments.apply_event(refund).outcome == "duplicate"
    assert balance(ledger) == Decimal(15)


def test_a_refund_planned_from_a_stale_payment_record_claws_back_only_the_new_amount(
    ledger: Any, payments: Any, provider: NoProvider, stale: StaleRecords
) -> None:
    """Two refunds of one charge in flight at once: the second read the payment before
    the first committed. Only the payment record's version guard makes it re-read."""
    pi = bought(payments, provider, "cs_rec_6", 5000)
    ch = charge(payment_intent=pi, amount=5000, amount_refunded=0)
    stale.recording = True  # remember what the first refund reads
    assert payments.apply_event(
        event("charge.refunded", {**ch, "amount_refunded": 1000})).outcome == "refunded"
    stale.replay_recorded_once()  # the second refund reads the pre-first-refund state
    payments.apply_event(event("charge.refunded", {**ch, "amount_refunded": 3000}))
    assert balance(ledger) == Decimal(20)  # 50 - 30 refunded in total, not 50 - 40
    assert sorted(e.amount for e in entries(ledger) if e.type.value == "refund") == [
        Decimal(-20), Decimal(-10)]
    assert_books_balance(USER)


def test_a_dispute_writes_its_event_and_charge_state_records_and_claws_back_once(
    ledger: Any, payments: Any, provider: NoProvider
) -> None:
    pi = bought(payments, provider, "cs_rec_7", 2500)
    dp = dispute(payment_intent=pi, amount=2500)
    evt = event("charge.dispute.created", dp)
    assert payments.apply_event(evt).outcome == "disputed"
    assert record_exists(f"stripe-event:{evt['id']}", USER)
    # The charge's state (a chain of must-not-exist records, global) now knows the dispute.
    assert record_exists(f"charge-state:{pi}:1", None)
    # The same dispute in another event: only the charge state stops it.
    assert payments.apply_event(event("charge.dispute.created", dp)).outcome == "duplicate"
    assert balance(ledger) == Decimal(0)


# -- usage aggregation markers ---------------------------------------------------------------


def usage_record(entry_id: str, cost: str) -> Any:
    from llmcredits.domain.ledger import EntryType, LedgerEntry
    from llmcredits.services.usage import usage_of_entry

    return usage_of_entry(LedgerEntry(
        id=entry_id, user_id=USER, created_at="2026-11-27T08:00:00.000000Z",
        type=EntryType.USAGE, amount=-Decimal(cost), balance_after=Decimal(0),
        provider="openai", model="gpt-x", tokens=3, cost=Decimal(cost),
        metadata={"prompt_tokens": 1, "completion_tokens": 2},
    ))


def test_aggregating_an_entry_writes_its_marker_and_a_redelivery_counts_nothing(
    aws: None,
) -> None:
    from llmcredits import bootstrap

    store = bootstrap.usage_store()
    first, second = usage_record("u-1", "0.000100"), usage_record("u-2", "0.000200")
    assert store.apply_group(first.key, [first, second]) == 2
    marks = {i["SK"] for i in items_of(USER) if i["SK"].startswith("USAGEMARK#")}
    assert marks == {"USAGEMARK#u-1", "USAGEMARK#u-2"}
    # Redelivered (alone, and with a new entry): only the new entry counts.
    assert store.apply_group(first.key, [first]) == 0
    third = usage_record("u-3", "0.000400")
    assert store.apply_group(first.key, [second, third]) == 1
    [aggregate] = store.all_aggregates(USER)
    assert aggregate.totals.requests == 3
    assert aggregate.totals.cost == Decimal("0.000700")
