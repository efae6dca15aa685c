"""Saved card and auto top-up through the real handlers on moto, against the dev Stripe
stand-in (the real stripe library talks to it): setup-mode Checkout, the crossing
watcher's claim, the worker fed by the claim's own stream records (through the template's
filter), off-session PaymentIntents and their signed webhooks. The claim under real
concurrency is proven on DynamoDB Local (tests/integration/test_auto_topup_concurrency.py)."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest

from tests.fakes.stripe_api import FakeStripe, event, payload, sign, webhook_request
from tests.support import ROOT, invoke
from tests.support import event as api_event

WHSEC = "whsec_unit_test_secret"
SK = "sk_test_unit_key_do_not_log"
URLS = {"success_url": "http://localhost:3000/billing/card-saved",
        "cancel_url": "http://127.0.0.1:5173/billing"}


class RecordingAlerts:
    def __init__(self) -> None:
        self.emitted: list[tuple[str, str, dict[str, Any], str]] = []

    def emit(self, user_id: str, event_type: str, detail: dict[str, Any],
             source_id: str) -> None:
        self.emitted.append((user_id, event_type, detail, source_id))


@pytest.fixture
def alerts(monkeypatch) -> RecordingAlerts:
    from llmcredits import bootstrap

    sink = RecordingAlerts()
    monkeypatch.setattr(bootstrap, "alert_sink", lambda: sink)
    return sink


@pytest.fixture
def stripe(aws, monkeypatch, alerts):
    from llmcredits import bootstrap

    with FakeStripe() as fake:
        monkeypatch.setenv("STRIPE_SECRET_KEY", SK)
        monkeypatch.setenv("STRIPE_API_BASE", fake.url)
        monkeypatch.setenv("STRIPE_WEBHOOK_SECRET", WHSEC)
        for name in ("CHECKOUT_URL_ALLOWLIST", "PURCHASE_MIN_USD", "PURCHASE_MAX_USD"):
            monkeypatch.delenv(name, raising=False)
        bootstrap.reset()
        yield fake
        bootstrap.reset()


def deliver(evt: dict[str, Any]) -> dict[str, Any]:
    body = payload(evt)
    status, _, answer = invoke("stripe_webhook", webhook_request(body, sign(body, WHSEC)))
    assert status == 200, answer
    return answer


def call(function: str, method: str, path: str, user: str, body: Any = None
         ) -> tuple[int, Any]:
    status, _, answer = invoke(function, api_event(method, path, body=body, sub=user))
    return status, answer


def put_settings(user: str, **body: Any) -> tuple[int, Any]:
    return call("credits_auto_topup_put", "PUT", "/api/v1/llm/credits/auto-topup", user, body)


def save_card(fake: FakeStripe, user: str, card: str = "pm_card_visa") -> dict[str, Any]:
    status, body = call("credits_payment_method_post", "POST",
                        "/api/v1/llm/credits/payment-method", user, URLS)
    assert status == 201, body
    session_id = body["checkout_url"].rsplit("/", 1)[1]
    fake.pay(session_id, card)
    (completed,) = [e for e in fake.events if e["type"] == "checkout.session.completed"
                    and e["data"]["object"]["id"] == session_id]
    assert deliver(completed)["outcome"] == "payment_method_saved"
    return completed


def enable(fake: FakeStripe, user: str, card: str = "pm_card_visa", **settings: str) -> None:
    save_card(fake, user, card)
    body = {"enabled": True, "threshold": "5.00", "amount": "20.00", "monthly_limit": "100.00",
            **settings}
    status, answer = put_settings(user, **body)
    assert status == 200, answer


def grant(user: str, amount: str) -> None:
    from llmcredits.bootstrap import ledger_service
    from llmcredits.domain.ledger import EntryType

    ledger_service().grant(user, Decimal(amount), EntryType.BONUS, "test", "pytest")


_changes = iter(range(1_000_000))


def cross(user: str, before: str = "10", after: str = "4", event_id: str | None = None,
          old_flags: frozenset[str] | None = None) -> str | None:
    """The watcher sees the account go from ``before`` to ``after`` available."""
    from llmcredits.bootstrap import auto_topup_service, ledger_service
    from llmcredits.services.account_events import AccountChange

    account = ledger_service().account(user)
    old = replace(account, available=Decimal(before), balance=Decimal(before))
    if old_flags is not None:
        old = replace(old, flags=old_flags)
    new = replace(account, available=Decimal(after), balance=Decimal(after))
    change = AccountChange(user, old, new, event_id or f"evt-{next(_changes)}",
                           datetime.now(UTC))
    return auto_topup_service().on_account_change(change)


def run_worker() -> list[dict[str, Any]]:
    """Feed the worker what Lambda would: the table's stream so far, through the
    AutoTopupWorkerFunction's FilterCriteria in template.yaml."""
    import boto3
    from llmcredits.local.streams import read_stream
    from llmcredits.local.template import Template

    from tests.support import Context

    (mapping,) = [e for e in Template(ROOT / "template.yaml").stream_events()
                  if e.function_id == "AutoTopupWorkerFunction"]
    client = boto3.client("dynamodb")
    arn = client.describe_table(TableName="llmcredits-test")["Table"]["LatestStreamArn"]
    records = read_stream(boto3.client("dynamodbstreams"), arn, "us-east-1", mapping.filters)
    from llmcredits.openapi_doc import import_handler

    module = import_handler(ROOT / "functions" / "auto_topup_worker" / "app.py")
    result = module.lambda_handler({"Records": records}, Context())
    assert result == {"batchItemFailures": []}
    return records


def pi_requests(fake: FakeStripe) -> list[Any]:
    return [r for r in fake.requests if r.method == "POST" and r.path == "/v1/payment_intents"]


def pi_events(fake: FakeStripe, type_: str) -> list[dict[str, Any]]:
    return [e for e in fake.events if e["type"] == type_]


def balance(user: str) -> str:
    status, body = call("credits_get", "GET", "/api/v1/llm/credits", user)
    assert status == 200, body
    return body["balance"]


def settings(user: str) -> dict[str, Any]:
    status, body = call("credits_auto_topup_get", "GET", "/api/v1/llm/credits/auto-topup", user)
    assert status == 200, body
    return body


# -- the saved card ---------------------------------------------------------------------------


def test_payment_method_opens_a_setup_session_for_one_customer_per_user(stripe):
    for _ in range(2):
        status, body = call("credits_payment_method_post", "POST",
                            "/api/v1/llm/credits/payment-method", "carol", URLS)
        assert status == 201, body
        assert body["checkout_url"].startswith(stripe.url + "/pay/cs_test_")
    creates = [r for r in stripe.requests if r.path == "/v1/checkout/sessions"]
    assert [r.form["mode"] for r in creates] == ["setup", "setup"]
    assert len(stripe.customers) == 1  # created once, then kept on the user's item
    (customer,) = stripe.customers
    assert {r.form["customer"] for r in creates} == {customer}
    customer_calls = [r for r in stripe.requests if r.path == "/v1/customers"]
    assert len(customer_calls) == 1 and customer_calls[0].idempotency_key


def test_payment_method_urls_must_be_on_the_allow_list_and_jwt_only(stripe):
    status, body = call("credits_payment_method_post", "POST",
                        "/api/v1/llm/credits/payment-method", "carol",
                        {**URLS, "success_url": "https://evil.example.com/x"})
    assert status == 400 and body["error"]["code"] == "url_not_allowed"
    status, _, body = invoke("credits_payment_method_post", api_event(
        "POST", "/api/v1/llm/credits/payment-method", body=URLS, sub="carol", kind="api_key",
        key_id="key_1"))
    assert status == 403, body
    assert not [r for r in stripe.requests if r.path.startswith("/v1/")]


def test_the_setup_webhook_saves_the_card(stripe):
    completed = save_card(stripe, "dave")
    got = settings("dave")
    assert got["payment_method"] == {"brand": "visa", "last4": "4242"}
    assert got["enabled"] is False
    assert deliver(completed)["outcome"] == "duplicate"  # redelivered: nothing changes


def test_a_setup_session_this_service_did_not_start_saves_nothing(stripe):
    from tests.fakes.stripe_api import checkout_session

    session = {**checkout_session(user_id="erin", amount_cents=0), "mode": "setup",
               "customer": "cus_test_forged", "setup_intent": "seti_test_forged"}
    assert deliver(event("checkout.session.completed", session))["outcome"] == \
        "unknown_payment_ignored"
    assert settings("erin")["payment_method"] is None


# -- settings -------------------------------------------------------------------------------


def test_enabling_needs_a_saved_card(stripe):
    status, body = put_settings("frank", enabled=True, threshold="5.00", amount="20.00",
                                monthly_limit="100.00")
    assert status == 400 and body["error"]["code"] == "payment_method_required"
    assert "payment-method" in body["error"]["message"]


@pytest.mark.parametrize("field,value", [
    ("amount", "4.99"), ("amount", "1000.01"), ("amount", "20.001"), ("threshold", "-1"),
    ("threshold", True), ("threshold", "abc"), ("monthly_limit", "10.00"),
])
def test_bad_settings_are_a_400(stripe, field, value):
    save_card(stripe, "gina")
    body = {"enabled": True, "threshold": "5.00", "amount": "20.00", "monthly_limit": "100.00",
            field: value}
    status, answer = put_settings("gina", **body)
    assert status == 400, answer
    assert answer["error"]["param"] in (field, f"body.{field}", f"{field}") or \
        field in answer["error"]["message"]


def test_enabling_sets_the_account_flag_and_disabling_removes_it(stripe):
    from llmcredits.bootstrap import ledger_service

    enable(stripe, "hana")
    assert "autotopup" in ledger_service().account("hana").flags
    got = settings("hana")
    assert (got["enabled"], got["threshold"], got["amount"], got["monthly_limit"]) == (
        True, "5.000000", "20.000000", "100.000000")
    status, body = put_settings("hana", enabled=False)
    assert status == 200 and body["enabled"] is False and body["amount"] == "20.000000"
    assert "autotopup" not in ledger_service().account("hana").flags


# -- the crossing, the worker and the webhook -------------------------------------------------


def test_a_crossing_charges_the_saved_card_off_session_once_and_credits_once(stripe, alerts):
    enable(stripe, "ivan")
    grant("ivan", "10")
    assert cross("ivan", "10", "4", event_id="rec-1") == "claimed"
    assert cross("ivan", "10", "4", event_id="rec-1") == "in_flight"  # redelivered record
    assert cross("ivan", "4", "3") is None  # already below: no crossing
    run_worker()
    run_worker()  # the claim's record delivered again: created already, no call
    (request,) = pi_requests(stripe)
    assert len(stripe.payment_intents) == 1
    form = request.form
    assert (form["off_session"], form["confirm"], form["amount"], form["currency"]) == (
        "true", "true", "2000", "usd")
    assert form["metadata[llmcredits_user_id]"] == "ivan"
    assert request.idempotency_key and request.idempotency_key.startswith("llmcredits-topup-")
    assert settings("ivan")["in_flight"] is True
    (succeeded,) = pi_events(stripe, "payment_intent.succeeded")
    outcomes = [deliver(succeeded)["outcome"] for _ in range(5)]
    assert outcomes == ["credited"] + ["duplicate"] * 4
    assert balance("ivan") == "30.000000"
    got = settings("ivan")
    assert got["in_flight"] is False and got["month_topped_up"] == "20.000000"
    status, body = call("credits_history_get", "GET", "/api/v1/llm/credits/history", "ivan")
    assert status == 200, body
    (entry,) = [i for i in body["items"] if i["type"] == "purchase"]
    assert entry["amount"] == "20.000000" and entry["metadata"]["source"] == "auto_topup"
    assert entry["receipt_url"].endswith(succeeded["data"]["object"]["latest_charge"])
    assert alerts.emitted == []
    # the same crossing's record delivered after it all: its top-up exists, no second one
    assert cross("ivan", "10", "4", event_id="rec-1") == "duplicate"
    assert len(stripe.payment_intents) == 1


def test_no_read_without_the_flag_and_none_when_available_did_not_go_down(stripe, monkeypatch):
    from llmcredits.bootstrap import auto_topup_store

    enable(stripe, "jill")
    reads: list[str] = []
    store = auto_topup_store()
    real_get = store.get
    monkeypatch.setattr(store, "get", lambda user: reads.append(user) or real_get(user))
    assert cross("jill", "4", "6") is None  # went up
    assert reads == []
    status, _ = put_settings("jill", enabled=False)
    assert status == 200
    assert cross("jill", "10", "4", old_flags=frozenset()) is None  # flag gone: no read
    assert reads == ["jill"]  # only the PUT's own read


def test_enabling_while_below_the_threshold_tops_up(stripe):
    enable(stripe, "kate")
    assert cross("kate", "1", "1", old_flags=frozenset()) == "claimed"


def test_never_past_the_monthly_limit_in_flight_included(stripe):
    enable(stripe, "liam", monthly_limit="50.00")  # 20 + 20 fit, a third 20 does not
    for n in range(3):
        outcome = cross("liam", "10", "4")
        if n < 2:
            assert outcome == "claimed"
            run_worker()
            for evt in pi_events(stripe, "payment_intent.succeeded"):
                deliver(evt)
        else:
            assert outcome == "monthly_limit"
    assert len(stripe.payment_intents) == 2
    assert settings("liam")["month_topped_up"] == "40.000000"


def test_three_failures_in_a_row_disable_auto_topup_and_alert(stripe, alerts):
    from llmcredits.bootstrap import ledger_service

    enable(stripe, "mona", card="pm_card_chargeDeclined")
    for _ in range(3):
        assert cross("mona", "10", "4") == "claimed"
        run_worker()  # the decline is applied from Stripe's answer at once
        for evt in pi_events(stripe, "payment_intent.payment_failed"):
            assert deliver(evt)["outcome"] == "topup_failed"  # webhook: the same alert again
    assert len(stripe.payment_intents) == 3
    ids = {event_id for _, _, _, event_id in alerts.emitted}
    assert len(ids) == 3  # one alert per failed top-up (redeliveries carry its event id)
    assert all(t == "topup.failed" and u == "mona" for u, t, _, _ in alerts.emitted)
    for event_id in ids:  # a redelivery raises the very same alert (the sink dedupes)
        details = [d for _, _, d, i in alerts.emitted if i == event_id]
        assert len(details) >= 2 and all(d == details[0] for d in details)
    last = alerts.emitted[-1][2]
    assert last["consecutive_failures"] == 3 and last["auto_topup_disabled"] is True
    assert "disabled" in last["message"] and last["reason"] == "generic_decline"
    got = settings("mona")
    assert got["enabled"] is False and got["month_topped_up"] == "0.000000"
    assert "autotopup" not in ledger_service().account("mona").flags
    assert balance("mona") == "0.000000"
    assert cross("mona", "10", "4") is None


def test_requires_action_is_a_failure_and_a_success_resets_the_run(stripe, alerts):
    enable(stripe, "nina", card="pm_card_authenticationRequired")
    assert cross("nina", "10", "4") == "claimed"
    run_worker()
    assert settings("nina")["consecutive_failures"] == 1
    (evt,) = pi_events(stripe, "payment_intent.requires_action")
    assert deliver(evt)["outcome"] == "topup_failed"
    assert alerts.emitted[-1][2]["reason"] == "authentication_required"
    assert alerts.emitted[-1][2]["auto_topup_disabled"] is False
    pm = next(iter(stripe.payment_methods))
    stripe.set_card(pm, "pm_card_visa")
    assert cross("nina", "10", "4") == "claimed"
    run_worker()
    for e in pi_events(stripe, "payment_intent.succeeded"):
        deliver(e)
    assert settings("nina")["consecutive_failures"] == 0


def test_payment_intents_this_service_did_not_start_credit_nothing(stripe):
    from llmcredits.local.dev_stripe import payment_intent

    enable(stripe, "omar")
    forged = payment_intent(amount=2000, customer=None, payment_method_id=None,
                            metadata={"llmcredits_user_id": "omar",
                                      "llmcredits_topup_id": "0" * 32})
    assert deliver(event("payment_intent.succeeded", forged))["outcome"] == \
        "unknown_payment_ignored"
    plain = payment_intent(amount=2000, customer=None, payment_method_id=None)
    assert deliver(event("payment_intent.succeeded", plain))["outcome"] == "ignored"
    # a real claim's PaymentIntent with another amount is not that top-up either
    assert cross("omar", "10", "4") == "claimed"
    run_worker()
    (real,) = pi_events(stripe, "payment_intent.succeeded")
    other = {**real["data"]["object"], "amount": 100000, "amount_received": 100000}
    assert deliver(event("payment_intent.succeeded", other))["outcome"] == \
        "unknown_payment_ignored"
    assert balance("omar") == "0.000000"


def test_stripe_down_leaves_the_claim_for_the_retry(stripe):
    from llmcredits.bootstrap import auto_topup_service
    from llmcredits.services.auto_topup import ProviderBusy

    enable(stripe, "pia")
    assert cross("pia", "10", "4") == "claimed"
    stripe.fail_with = (500, {"error": {"type": "api_error", "message": "down"}})
    from llmcredits.bootstrap import auto_topup_store

    config = auto_topup_store().get("pia")
    assert config is not None and config.in_flight is not None
    with pytest.raises(ProviderBusy):
        auto_topup_service().process_claim("pia", config.in_flight.topup_id)
    stripe.fail_with = None
    assert auto_topup_service().process_claim("pia", config.in_flight.topup_id) == "created"
    assert len(stripe.payment_intents) == 1


def test_a_worker_that_died_after_stripe_answered_makes_no_second_payment(stripe, monkeypatch):
    from llmcredits.bootstrap import auto_topup_service, auto_topup_store
    from llmcredits.domain.auto_topup import TopupState

    enable(stripe, "quin")
    assert cross("quin", "10", "4") == "claimed"
    store = auto_topup_store()
    config = store.get("quin")
    assert config is not None and config.in_flight is not None
    real_replace = store.replace

    def dies(before, after):
        raise RuntimeError("the process died before recording the PaymentIntent")

    monkeypatch.setattr(store, "replace", dies)
    with pytest.raises(RuntimeError):
        auto_topup_service().process_claim("quin", config.in_flight.topup_id)
    monkeypatch.setattr(store, "replace", real_replace)
    assert auto_topup_service().process_claim("quin", config.in_flight.topup_id) == "created"
    first, second = pi_requests(stripe)
    assert first.idempotency_key == second.idempotency_key
    assert len(stripe.payment_intents) == 1  # Stripe replayed the first answer
    after = store.get("quin")
    assert after is not None and after.state is TopupState.CREATED
    assert after.in_flight is not None and \
        after.in_flight.payment_intent == next(iter(stripe.payment_intents))
