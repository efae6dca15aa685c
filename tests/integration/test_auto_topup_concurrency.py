"""Auto top-up under real concurrency, on DynamoDB Local (moto is not atomic): 16 chat-like
debits cross the threshold at once and each thread drives the watcher with the account
images its own write produced; exactly one top-up is claimed and exactly one off-session
PaymentIntent reaches the (dev) Stripe API, however many workers race on the claim; its
webhook delivered 5 times at once credits it once; a declining card fails three times,
is disabled and alerted; the monthly limit is never passed."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest
from llmcredits.dal.dynamodb_auto_topup import DynamoAutoTopupStore
from llmcredits.dal.stripe_checkout import StripeCheckout
from llmcredits.dal.stripe_topups import StripeTopups
from llmcredits.domain.ledger import EntryType
from llmcredits.services.account_events import AccountChange, AccountEventsService
from llmcredits.services.auto_topup import AutoTopupService, AutoTopupWatcher, SettingsUpdate
from llmcredits.services.ledger import LedgerService
from llmcredits.services.payments import PaymentsService, PurchaseConfig
from llmcredits.services.reconcile import reconcile_account

from tests.fakes.stripe_api import FakeStripe, payload, sign

pytestmark = pytest.mark.dynamodb_local

WHSEC = "whsec_integration"
URL = "http://localhost:3000/billing"


class Alerts:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.emitted: list[tuple[str, str, dict[str, Any], str]] = []

    def emit(self, user_id: str, event_type: str, detail: dict[str, Any],
             source_id: str) -> None:
        with self.lock:
            self.emitted.append((user_id, event_type, detail, source_id))


@dataclass
class Stack:
    client: Any
    table: str
    ledger: LedgerService
    service: AutoTopupService
    payments: PaymentsService
    store: DynamoAutoTopupStore
    stripe: FakeStripe
    alerts: Alerts

    def deliver(self, evt: dict[str, Any]) -> str:
        body = payload(evt)
        return self.payments.handle_webhook(body, sign(body, WHSEC)).outcome

    def save_card(self, user: str, card: str) -> None:
        url = self.service.start_payment_method(user, URL, URL)
        session_id = url.rsplit("/", 1)[1]
        self.stripe.pay(session_id, card)
        (done,) = [e for e in self.stripe.events if e["data"]["object"]["id"] == session_id]
        assert self.deliver(done) == "payment_method_saved"

    def enable(self, user: str, card: str = "pm_card_visa", limit: str = "100.00") -> None:
        self.save_card(user, card)
        self.service.update_settings(user, SettingsUpdate(
            True, Decimal("5.00"), Decimal("20.00"), Decimal(limit)))

    def events(self, type_: str) -> list[dict[str, Any]]:
        return [e for e in self.stripe.events if e["type"] == type_]

    def claimed_topups(self, user: str) -> list[str]:
        """Every top-up ever claimed for ``user`` (the records claims write)."""
        items = self.client.query(
            TableName=self.table, ConsistentRead=True,
            KeyConditionExpression="PK = :pk AND begins_with(SK, :sk)",
            ExpressionAttributeValues={":pk": {"S": f"USER#{user}"},
                                       ":sk": {"S": "RECORD#topup:"}})["Items"]
        return [item["topup_id"]["S"] for item in items]

    def claim_of(self, user: str) -> str | None:
        config = self.store.get(user)
        return None if config is None or config.in_flight is None else \
            config.in_flight.topup_id


@pytest.fixture
def stack(local_table) -> Iterator[Stack]:
    client, name = local_table
    from llmcredits.dal.dynamodb_ledger import DynamoLedgerStore

    ledger = LedgerService(DynamoLedgerStore(client, name))
    store = DynamoAutoTopupStore(client, name)
    alerts = Alerts()
    with FakeStripe() as fake:
        provider = StripeTopups(api_key=lambda: "sk_test_integration", api_base=fake.url)
        service = AutoTopupService(ledger, store, provider, PurchaseConfig.from_env({}), alerts)
        checkout = StripeCheckout(api_key=lambda: "sk_test_integration",
                                  webhook_secret=lambda: WHSEC, api_base=fake.url)
        payments = PaymentsService(ledger, checkout, PurchaseConfig.from_env({}),
                                   topups=service)
        yield Stack(client, name, ledger, service, payments, store, fake, alerts)


def crossing_together(stack: Stack, user: str, threads: int = 16) -> None:
    """``threads`` concurrent debits of 0.40 on 10.00 (threshold 5.00); each thread then
    hands the watcher the account before and after its own write, all at once."""
    events = AccountEventsService([AutoTopupWatcher(stack.service)])
    start = threading.Barrier(threads)

    def one(n: int) -> None:
        start.wait()
        old = stack.ledger.account(user)
        stack.ledger.debit_usage(user, Decimal("0.40"))
        new = stack.ledger.account(user)
        # Every thread believes it crossed (its own before/after), as many records of a
        # busy account may when concurrent writes interleave with reads.
        old = old if old.available >= Decimal(5) else \
            _with_available(old, Decimal("5.20"))
        new = new if new.available < Decimal(5) else _with_available(new, Decimal("4.80"))
        change = AccountChange(user, old, new, f"{user}-record-{n}", datetime.now(UTC))
        events.handle(change)

    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(one, range(threads)))


def _with_available(account: Any, available: Decimal) -> Any:
    from dataclasses import replace

    return replace(account, available=available)


def test_sixteen_concurrent_crossings_make_one_payment_credited_once(stack: Stack):
    user = "race-alice"
    stack.ledger.account(user)
    stack.enable(user)
    stack.ledger.grant(user, Decimal("10.00"), EntryType.BONUS, "seed", "pytest")
    crossing_together(stack, user)
    topup_id = stack.claim_of(user)
    assert topup_id is not None
    assert stack.claimed_topups(user) == [topup_id]  # one claim of the 16
    # The claim's stream record may reach several workers (redelivery, retries).
    with ThreadPoolExecutor(4) as pool:
        outcomes = list(pool.map(lambda _: stack.service.process_claim(user, topup_id),
                                 range(4)))
    assert "created" in outcomes
    creates = [r for r in stack.stripe.requests if r.path == "/v1/payment_intents"]
    assert len(stack.stripe.payment_intents) == 1
    assert {r.idempotency_key for r in creates} == {f"llmcredits-topup-{topup_id}"}
    assert all(r.form["off_session"] == "true" and r.form["confirm"] == "true"
               for r in creates)
    (succeeded,) = stack.events("payment_intent.succeeded")
    with ThreadPoolExecutor(5) as pool:
        delivered = list(pool.map(lambda _: stack.deliver(succeeded), range(5)))
    assert sorted(delivered) == ["credited"] + ["duplicate"] * 4
    account = stack.ledger.account(user)
    assert account.balance == Decimal("10.00") - 16 * Decimal("0.40") + Decimal("20.00")
    assert reconcile_account(stack.ledger._store, user) == []
    assert stack.claim_of(user) is None


def test_a_declining_card_fails_three_times_then_is_disabled_and_alerted(stack: Stack):
    user = "race-bob"
    stack.ledger.account(user)
    stack.enable(user, card="pm_card_chargeDeclined")
    for _round in range(3):
        stack.ledger.grant(user, Decimal("10.00"), EntryType.BONUS, "seed", "pytest")
        crossing_together(stack, user, threads=8)
        topup_id = stack.claim_of(user)
        assert topup_id is not None
        failed_before = len(stack.events("payment_intent.payment_failed"))
        stack.service.process_claim(user, topup_id)
        (failed,) = stack.events("payment_intent.payment_failed")[failed_before:]
        with ThreadPoolExecutor(3) as pool:
            outcomes = set(pool.map(stack.deliver, [failed] * 3))
        assert outcomes == {"topup_failed"}
    assert len(stack.stripe.payment_intents) == 3
    config = stack.store.get(user)
    assert config is not None and not config.enabled and config.failures == 3
    assert config.month_total == 0
    assert "autotopup" not in stack.ledger.account(user).flags
    by_event = {event_id: detail for _, _, detail, event_id in stack.alerts.emitted}
    assert len(by_event) == 3
    assert sorted(d["consecutive_failures"] for d in by_event.values()) == [1, 2, 3]
    assert [d["auto_topup_disabled"] for d in by_event.values()].count(True) == 1


def test_never_past_the_monthly_limit_under_concurrency(stack: Stack):
    user = "race-carol"
    stack.ledger.account(user)
    stack.enable(user, limit="40.00")  # two top-ups of 20
    for _round in range(4):
        available = stack.ledger.account(user).available
        if available > 0:  # back to 10.00 available each round, so each round crosses
            stack.ledger.adjust_down(user, available, "reset", "pytest")
        stack.ledger.grant(user, Decimal("10.00"), EntryType.BONUS, "seed", "pytest")
        crossing_together(stack, user, threads=8)
        topup_id = stack.claim_of(user)
        if topup_id is None:
            continue
        stack.service.process_claim(user, topup_id)
        for evt in stack.events("payment_intent.succeeded"):
            stack.deliver(evt)
    assert len(stack.stripe.payment_intents) == 2
    config = stack.store.get(user)
    assert config is not None and config.month_total == Decimal("40.00")
