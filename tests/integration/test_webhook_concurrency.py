"""Invariant 3 under real concurrency, on DynamoDB Local (moto is not atomic): a Stripe
event, and a Checkout Session, credit at most once whatever the number, order and
overlap of deliveries; concurrent refund and dispute events claw back exactly what
Stripe refunded or lost. Payloads are signed as Stripe signs them and go through the
real verification."""

from __future__ import annotations

import random
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal

import pytest
from llmcredits.dal.stripe_checkout import StripeCheckout
from llmcredits.domain.ledger import EntryType
from llmcredits.services.payments import PaymentsService, PurchaseConfig
from llmcredits.services.reconcile import reconcile_account

from tests.fakes.stripe_api import (
    FakeStripe,
    charge,
    checkout_session,
    dispute,
    event,
    payload,
    sign,
)

pytestmark = pytest.mark.dynamodb_local

WHSEC = "whsec_integration"


@pytest.fixture
def payments(local_ledger) -> Iterator[PaymentsService]:
    with FakeStripe() as fake:
        provider = StripeCheckout(api_key=lambda: "sk_test_integration",
                                  webhook_secret=lambda: WHSEC, api_base=fake.url)
        yield PaymentsService(local_ledger, provider, PurchaseConfig.from_env({}))


def opened(payments: PaymentsService, user: str, cents: int, **kw) -> dict:
    """A session POST /credits/purchase's use case opened, as Stripe reports it paid."""
    started = payments.start_purchase(user, Decimal(cents).scaleb(-2),
                                      "http://localhost/ok", "http://localhost/cancel")
    return checkout_session(user_id=user, amount_cents=cents, session_id=started.session_id,
                            **kw)


def concurrently(payments: PaymentsService, events: list[dict], threads: int = 16) -> list[str]:
    """Deliver every event at once (a barrier releases all threads together)."""
    bodies = [payload(e) for e in events]
    barrier = threading.Barrier(len(bodies))

    def deliver(body: str) -> str:
        signature = sign(body, WHSEC)
        barrier.wait()
        return payments.handle_webhook(body, signature).outcome

    with ThreadPoolExecutor(max_workers=max(threads, len(bodies))) as pool:
        return list(pool.map(deliver, bodies))


def entries(ledger, user: str):
    page = ledger.history(user, 200, None, None)
    return list(page.entries)


def test_one_event_delivered_10_times_concurrently_credits_once(payments, local_ledger):
    evt = event("checkout.session.completed", opened(payments, "u1", 2500))
    outcomes = concurrently(payments, [evt] * 10)
    assert sorted(outcomes) == ["credited"] + ["duplicate"] * 9
    assert local_ledger.account("u1").balance == Decimal(25)
    [entry] = entries(local_ledger, "u1")
    assert entry.type is EntryType.PURCHASE and entry.amount == Decimal(25)
    assert reconcile_account(local_ledger._store, "u1") == []


@pytest.mark.parametrize("payment_intent", ["auto", None])
def test_completed_and_async_succeeded_of_one_session_credit_once(
    payments, local_ledger, payment_intent
):
    # Without a payment intent only the checkout-session record stands between them.
    session = opened(payments, "u2", 4999, payment_intent=payment_intent)
    events = [event("checkout.session.completed", session) for _ in range(5)]
    events += [event("checkout.session.async_payment_succeeded", session) for _ in range(5)]
    random.shuffle(events)
    outcomes = concurrently(payments, events + events)  # each event also delivered twice
    assert outcomes.count("credited") == 1
    assert local_ledger.account("u2").balance == Decimal("49.99")
    assert len(entries(local_ledger, "u2")) == 1
    assert reconcile_account(local_ledger._store, "u2") == []


def test_many_sessions_of_one_user_each_credit_once(payments, local_ledger):
    sessions = [opened(payments, "u3", 500 * (i + 1)) for i in range(8)]
    events = [event("checkout.session.completed", s) for s in sessions]
    outcomes = concurrently(payments, events * 3)
    assert outcomes.count("credited") == 8
    assert local_ledger.account("u3").balance == Decimal(5 * sum(range(1, 9)))
    assert reconcile_account(local_ledger._store, "u3") == []


def test_concurrent_and_out_of_order_refunds_claw_back_exactly_the_refunded_total(
    payments, local_ledger
):
    session = opened(payments, "u4", 10000)
    concurrently(payments, [event("checkout.session.completed", session)])
    pi = session["payment_intent"]
    ch = charge(payment_intent=pi, amount=10000, amount_refunded=0)
    # Three partial refunds (cumulative 10, 25, 40 USD), each delivered 4 times, all at once.
    refunds = [event("charge.refunded", {**ch, "amount_refunded": cents})
               for cents in (1000, 2500, 4000)]
    deliveries = refunds * 4
    random.shuffle(deliveries)
    outcomes = concurrently(payments, deliveries)
    assert "refunded" in outcomes and set(outcomes) <= {"refunded", "duplicate"}
    assert local_ledger.account("u4").balance == Decimal(60)
    clawed = [e for e in entries(local_ledger, "u4") if e.type is EntryType.REFUND]
    assert sum(e.amount for e in clawed) == Decimal(-40)
    assert all(e.metadata["checkout_session"] == session["id"] for e in clawed)
    state = payments.payment_state(pi)
    assert (state.refunded_cents, state.clawed_back_cents) == (4000, 4000)
    assert reconcile_account(local_ledger._store, "u4") == []


def test_concurrent_refund_and_dispute_on_one_payment_both_apply_once(payments, local_ledger):
    session = opened(payments, "u5", 5000)
    concurrently(payments, [event("checkout.session.completed", session)])
    pi = session["payment_intent"]
    refund = event("charge.refunded", charge(payment_intent=pi, amount=5000,
                                             amount_refunded=2000))
    dp = event("charge.dispute.created", dispute(payment_intent=pi, amount=3000))
    outcomes = concurrently(payments, [refund, dp] * 6)
    assert outcomes.count("refunded") == 1 and outcomes.count("disputed") == 1
    assert local_ledger.account("u5").balance == Decimal(0)
    state = payments.payment_state(pi)
    assert (state.refunded_cents, state.disputed_cents) == (2000, 3000)
    assert reconcile_account(local_ledger._store, "u5") == []


def test_purchase_and_refunds_delivered_together_never_lose_the_clawback(
    payments, local_ledger
):
    """A refund that overtakes its purchase is refused (Stripe retries it); retried until
    accepted, the end state is exact whatever the interleaving."""
    session = opened(payments, "u6", 3000)
    completed = event("checkout.session.completed", session)
    refund = event("charge.refunded", charge(payment_intent=session["payment_intent"],
                                             amount=3000, amount_refunded=3000))
    from llmcredits.services.payments import RetryLater

    def deliver(evt: dict) -> str:
        body = payload(evt)
        for _ in range(200):
            try:
                return payments.handle_webhook(body, sign(body, WHSEC)).outcome
            except RetryLater:
                continue  # Stripe's retry
        raise AssertionError("never applied")

    with ThreadPoolExecutor(max_workers=8) as pool:
        outcomes = list(pool.map(deliver, [refund, completed] * 4))
    assert outcomes.count("credited") == 1 and outcomes.count("refunded") == 1
    assert local_ledger.account("u6").balance == Decimal(0)
    assert reconcile_account(local_ledger._store, "u6") == []


def test_concurrent_full_refund_and_full_dispute_claw_back_the_charge_once(
    payments, local_ledger
):
    session = opened(payments, "u7", 2500)
    concurrently(payments, [event("checkout.session.completed", session)])
    pi = session["payment_intent"]
    refund = event("charge.refunded", charge(payment_intent=pi, amount=2500,
                                             amount_refunded=2500))
    dp = dispute(payment_intent=pi, amount=2500)
    created = event("charge.dispute.created", dp)
    withdrawn = event("charge.dispute.funds_withdrawn", {**dp, "status": "needs_response"})
    outcomes = concurrently(payments, [refund, created, withdrawn] * 5)
    assert outcomes.count("refunded") + outcomes.count("disputed") == 1, outcomes
    assert local_ledger.account("u7").balance == Decimal(0)  # not -25
    assert payments.payment_state(pi).clawed_back_cents == 2500
    assert reconcile_account(local_ledger._store, "u7") == []


def test_concurrent_won_and_reinstated_deliveries_give_the_chargeback_back_once(
    payments, local_ledger
):
    session = opened(payments, "u8", 2500)
    concurrently(payments, [event("checkout.session.completed", session)])
    dp = dispute(payment_intent=session["payment_intent"], amount=2500)
    concurrently(payments, [event("charge.dispute.created", dp)])
    assert local_ledger.account("u8").balance == Decimal(0)
    won = event("charge.dispute.closed", {**dp, "status": "won"})
    reinstated = event("charge.dispute.funds_reinstated", {**dp, "status": "won"})
    outcomes = concurrently(payments, [won, reinstated] * 8)
    assert outcomes.count("reinstated") == 1, outcomes
    assert local_ledger.account("u8").balance == Decimal(25)
    kinds = sorted(e.type.value for e in entries(local_ledger, "u8"))
    assert kinds == ["chargeback", "purchase", "reinstatement"]
    assert reconcile_account(local_ledger._store, "u8") == []
