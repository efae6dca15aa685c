"""Credit purchases (Stripe Checkout) and the Stripe webhook, through the real handlers on
moto, with Checkout Sessions created against a local fake of Stripe's API and webhook
payloads signed exactly as Stripe signs them. Concurrency is proven on DynamoDB Local in
tests/integration/test_webhook_concurrency.py."""

from __future__ import annotations

import json
import time
from decimal import Decimal

import pytest

from tests.fakes.stripe_api import (
    FakeStripe,
    charge,
    checkout_session,
    dispute,
    event,
    payload,
    sign,
    webhook_request,
)
from tests.support import event as api_event
from tests.support import invoke

WHSEC = "whsec_unit_test_secret"
SK = "sk_test_unit_key_do_not_log"
OK_URLS = {"success_url": "http://localhost:3000/billing/ok?session={CHECKOUT_SESSION_ID}",
           "cancel_url": "http://127.0.0.1:5173/billing"}


@pytest.fixture
def stripe(aws, monkeypatch):
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


def reconfigure(monkeypatch, **env):
    from llmcredits import bootstrap

    for name, value in env.items():
        monkeypatch.setenv(name, value)
    bootstrap.reset()


def purchase(body, key=None, sub="alice"):
    headers = {"Idempotency-Key": key} if key else {}
    return invoke("credits_purchase_post",
                  api_event("POST", "/api/v1/llm/credits/purchase", body=body, headers=headers,
                            sub=sub))


def deliver(evt, *, secret=WHSEC, timestamp=None, signature="sign", base64_body=False):
    body = payload(evt)
    if signature == "sign":
        signature = sign(body, secret, timestamp)
    return invoke("stripe_webhook", webhook_request(body, signature, base64_body=base64_body))


def balance(user):
    status, _, body = invoke("credits_get", api_event("GET", "/api/v1/llm/credits", sub=user))
    assert status == 200, body
    return body["balance"]


def history(user):
    status, _, body = invoke("credits_history_get",
                             api_event("GET", "/api/v1/llm/credits/history", sub=user))
    assert status == 200, body
    return body["items"]


def record(key, owner):
    from llmcredits import bootstrap

    return bootstrap.ledger_service().get_record(key, owner)


def paid_session(user="alice", cents=2500, **kw):
    """A session POST /credits/purchase opened for ``user``, as Stripe reports it paid."""
    amount = f"{cents // 100}.{cents % 100:02d}"
    status, _, body = purchase({"amount": amount, **OK_URLS}, sub=user)
    assert status == 201, body
    return checkout_session(user_id=user, amount_cents=cents, session_id=body["session_id"],
                            **kw)


def foreign_session(user="alice", cents=2500, **kw):
    """A paid session this service never opened (a Payment Link, another integration)."""
    return checkout_session(user_id=user, amount_cents=cents, **kw)


def assert_openai_error(status, body, expected, code=None, param=None):
    assert status == expected, body
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "code", "param"}
    if code:
        assert body["error"]["code"] == code
    if param:
        assert body["error"]["param"] == param


# -- POST /credits/purchase ------------------------------------------------------------------


def test_purchase_creates_a_checkout_session_as_stripe_would_receive_it(stripe):
    from llmcredits.services.payments import stripe_idempotency_key

    status, _, body = purchase({"amount": "25.50", **OK_URLS}, key="buy-1")
    assert status == 201, body
    assert set(body) == {"checkout_url", "session_id"}
    session = stripe.sessions[body["session_id"]]
    assert body["checkout_url"] == session["url"]
    [sent] = stripe.requests
    assert sent.path == "/v1/checkout/sessions"
    assert sent.api_key == SK
    assert sent.idempotency_key == stripe_idempotency_key("alice", "buy-1")
    form = sent.form
    assert form["mode"] == "payment"
    assert form["line_items[0][price_data][unit_amount]"] == "2550"  # cents, exactly
    assert form["line_items[0][price_data][currency]"] == "usd"
    assert form["line_items[0][quantity]"] == "1"
    assert form["client_reference_id"] == "alice"
    assert form["success_url"] == OK_URLS["success_url"]
    assert form["cancel_url"] == OK_URLS["cancel_url"]
    assert sent.prefixed("metadata") == {"llmcredits_user_id": "alice",
                                         "llmcredits_credits": "25.50"}
    assert form["payment_intent_data[metadata][llmcredits_user_id]"] == "alice"
    assert session["amount_total"] == 2550 and session["metadata"]["llmcredits_user_id"] == "alice"
    pending = record(f"purchase:{body['session_id']}", "alice")
    assert pending["status"] == "pending" and pending["amount"] == Decimal("25.50")
    assert balance("alice") == "0.000000"  # nothing credited before Stripe says paid


def test_purchase_retry_with_the_same_key_returns_the_same_session(stripe):
    first = purchase({"amount": "25", **OK_URLS}, key="buy-1")
    second = purchase({"amount": "25", **OK_URLS}, key="buy-1")
    assert first[0] == second[0] == 201
    assert second[2] == first[2] and second[1].get("Idempotent-Replayed") == "true"
    assert len(stripe.sessions) == 1
    assert len({r.idempotency_key for r in stripe.requests}) == 1


def test_same_key_with_another_amount_is_409(stripe):
    purchase({"amount": "25", **OK_URLS}, key="buy-1")
    status, _, body = purchase({"amount": "30", **OK_URLS}, key="buy-1")
    assert_openai_error(status, body, 409, "idempotency_conflict", "Idempotency-Key")
    assert len(stripe.sessions) == 1


def test_idempotency_keys_are_scoped_to_the_caller(stripe):
    a = purchase({"amount": "25", **OK_URLS}, key="same", sub="alice")
    b = purchase({"amount": "25", **OK_URLS}, key="same", sub="bob")
    assert a[0] == b[0] == 201 and a[2]["session_id"] != b[2]["session_id"]


def test_without_a_key_each_request_is_a_new_session(stripe):
    purchase({"amount": "25", **OK_URLS})
    purchase({"amount": "25", **OK_URLS})
    keys = [r.idempotency_key for r in stripe.requests]
    assert len(stripe.sessions) == 2 and all(keys) and keys[0] != keys[1]


@pytest.mark.parametrize("amount", ["abc", "0", "-5", "10.001", "1000.01", "4.99", "1e400",
                                    "NaN", "", " ", "0.00", True, None, "25,00"])
def test_bad_amounts_are_400_and_nothing_reaches_stripe(stripe, amount):
    status, _, body = purchase({"amount": amount, **OK_URLS}, key="k")
    assert_openai_error(status, body, 400, param="amount")
    assert stripe.requests == []


@pytest.mark.parametrize("amount", ["5", "5.00", "1000", "999.99", "12.3"])
def test_amounts_within_the_bounds_are_accepted(stripe, amount):
    status, _, body = purchase({"amount": amount, **OK_URLS})
    assert status == 201, body
    cents = int(Decimal(amount) * 100)
    assert stripe.requests[-1].form["line_items[0][price_data][unit_amount]"] == str(cents)


def test_bounds_are_configurable(stripe, monkeypatch):
    reconfigure(monkeypatch, PURCHASE_MIN_USD="1", PURCHASE_MAX_USD="50")
    assert purchase({"amount": "1.00", **OK_URLS})[0] == 201
    status, _, body = purchase({"amount": "50.01", **OK_URLS})
    assert_openai_error(status, body, 400, "amount_out_of_range", "amount")
    assert "1" in body["error"]["message"] and "50" in body["error"]["message"]


BAD_URLS = [
    "https://evil.example.com/billing",
    "http://localhost.evil.com/ok",
    "http://localhost@evil.com/ok",
    "http://user:pw@localhost/ok",
    "http://evil.com/?next=http://localhost",
    "//localhost/ok",
    "localhost/ok",
    "javascript:alert(1)",
    "ftp://localhost/ok",
    "https://localhost/ok",  # scheme differs from the allow-listed http://localhost
    "http://localhost\\@evil.com/",
    "http://localhost:99999/",
    "http://127.0.0.1.nip.io/",
    "http://local host/",
    "http://localhost/\nSet-Cookie:x",
]


@pytest.mark.parametrize("url", BAD_URLS)
def test_url_allow_list_refuses_lookalikes(url):
    from llmcredits.services.payments import PurchaseConfig, url_allowed

    allowed = PurchaseConfig.from_env({}).allowed_urls
    assert not url_allowed(url, allowed)
    assert url_allowed("http://localhost:3000/billing?x={CHECKOUT_SESSION_ID}", allowed)


@pytest.mark.parametrize("field", ["success_url", "cancel_url"])
def test_urls_off_the_allow_list_are_400(stripe, field):
    for url in ("https://evil.example.com/billing", "http://localhost@evil.com/ok"):
        status, _, body = purchase({"amount": "25", **{**OK_URLS, field: url}})
        assert_openai_error(status, body, 400, "url_not_allowed", field)
    assert stripe.requests == []


def test_allow_list_entries_are_origins_or_path_prefixes(stripe, monkeypatch):
    reconfigure(monkeypatch, CHECKOUT_URL_ALLOWLIST=
                "https://app.example.com/billing, https://shop.example.com:8443")
    ok = {"success_url": "https://APP.example.com/billing/done?x=1",
          "cancel_url": "https://shop.example.com:8443/anything"}
    assert purchase({"amount": "25", **ok})[0] == 201
    for url in ("https://app.example.com/billing-evil", "https://app.example.com/other",
                "http://app.example.com/billing", "https://shop.example.com/anything",
                "http://localhost:3000/"):
        status, _, body = purchase({"amount": "25", **{**ok, "cancel_url": url}})
        assert_openai_error(status, body, 400, "url_not_allowed", "cancel_url")


def test_misconfigured_allow_list_fails_loudly():
    from llmcredits.services.payments import PurchaseConfig

    with pytest.raises(ValueError):
        PurchaseConfig.from_env({"CHECKOUT_URL_ALLOWLIST": "app.example.com"})
    with pytest.raises(ValueError):
        PurchaseConfig.from_env({"PURCHASE_MIN_USD": "10", "PURCHASE_MAX_USD": "5"})
    with pytest.raises(ValueError):
        PurchaseConfig.from_env({"PURCHASE_MIN_USD": "0.001"})
    cfg = PurchaseConfig.from_env({"CHECKOUT_URL_ALLOWLIST": ""})
    assert cfg.allowed_urls == ()  # explicitly empty: no return URL is allowed


def test_unknown_fields_and_missing_token(stripe):
    status, _, body = purchase({"amount": "25", **OK_URLS, "currency": "eur"})
    assert_openai_error(status, body, 400)
    status, _, body = purchase({"amount": "25", **OK_URLS}, sub=None)
    assert_openai_error(status, body, 401)
    assert stripe.requests == []


def test_stripe_outage_is_502_and_records_nothing(stripe):
    stripe.fail_with = (500, {"error": {"type": "api_error", "message": "boom"}})
    status, _, body = purchase({"amount": "25", **OK_URLS}, key="k")
    assert_openai_error(status, body, 502, "payment_provider_error")
    stripe.fail_with = None
    status, _, body = purchase({"amount": "25", **OK_URLS}, key="k")
    assert status == 201, body


def test_the_secret_key_never_reaches_logs_or_responses(stripe, capsys):
    purchase({"amount": "25", **OK_URLS}, key="k")
    stripe.fail_with = (401, {"error": {"type": "invalid_request_error",
                                        "message": f"Invalid API Key provided: {SK}"}})
    status, _, body = purchase({"amount": "26", **OK_URLS}, key="k2")
    assert status == 502
    out = capsys.readouterr()
    assert SK not in out.out + out.err + json.dumps(body)


# -- POST /stripe/webhook: purchases ---------------------------------------------------------


def test_completed_paid_session_credits_once(stripe):
    session = paid_session(cents=2500)
    evt = event("checkout.session.completed", session)
    status, _, body = deliver(evt)
    assert status == 200 and body["outcome"] == "credited", body
    assert body == {"received": True, "event_id": evt["id"],
                    "type": "checkout.session.completed", "outcome": "credited"}
    assert balance("alice") == "25.000000"
    status, _, body = deliver(evt)  # Stripe redelivers
    assert status == 200 and body["outcome"] == "duplicate"
    assert balance("alice") == "25.000000"
    [entry] = history("alice")
    assert entry["type"] == "purchase" and entry["amount"] == "25.000000"
    assert entry["metadata"] == {"stripe_event": evt["id"], "checkout_session": session["id"],
                                 "payment_intent": session["payment_intent"]}
    assert record(f"purchase:{session['id']}", "alice")["status"] == "credited"


def test_completed_and_async_succeeded_for_one_session_credit_once(stripe):
    session = paid_session(cents=1234)
    assert deliver(event("checkout.session.completed", session))[2]["outcome"] == "credited"
    _, _, body = deliver(event("checkout.session.async_payment_succeeded", session))
    assert body["outcome"] == "duplicate"
    assert balance("alice") == "12.340000"
    assert len(history("alice")) == 1


def test_async_payment_credits_only_when_it_succeeds(stripe):
    session = paid_session(cents=5000, payment_status="unpaid")
    _, _, body = deliver(event("checkout.session.completed", session))
    assert body["outcome"] == "awaiting_payment"
    assert balance("alice") == "0.000000"
    assert record(f"purchase:{session['id']}", "alice")["status"] == "awaiting_payment"
    paid = {**session, "payment_status": "paid", "status": "complete"}
    _, _, body = deliver(event("checkout.session.async_payment_succeeded", paid))
    assert body["outcome"] == "credited" and balance("alice") == "50.000000"
    # A late redelivery of the first event does not regress the purchase's status.
    deliver(event("checkout.session.completed", session))
    assert record(f"purchase:{session['id']}", "alice")["status"] == "credited"


def test_async_payment_failure_marks_the_purchase_failed(stripe):
    status, _, body = purchase({"amount": "40", **OK_URLS}, key="k")
    assert status == 201, body
    session = {**stripe.sessions[body["session_id"]], "status": "complete"}
    deliver(event("checkout.session.completed", session))  # unpaid: awaiting
    _, _, out = deliver(event("checkout.session.async_payment_failed", session))
    assert out["outcome"] == "payment_failed"
    assert balance("alice") == "0.000000"
    assert record(f"purchase:{session['id']}", "alice")["status"] == "failed"


def test_the_session_created_by_purchase_is_credited_by_its_webhook(stripe):
    _, _, body = purchase({"amount": "25.00", **OK_URLS}, key="k")
    session = {**stripe.sessions[body["session_id"]], "payment_status": "paid",
               "status": "complete", "payment_intent": "pi_test_roundtrip"}
    assert deliver(event("checkout.session.completed", session))[2]["outcome"] == "credited"
    assert balance("alice") == "25.000000"
    assert record(f"purchase:{session['id']}", "alice")["status"] == "credited"


def test_a_base64_encoded_body_is_verified_on_its_bytes(stripe):
    evt = event("checkout.session.completed", paid_session(cents=700))
    status, _, body = deliver(evt, base64_body=True)
    assert status == 200 and body["outcome"] == "credited"
    assert balance("alice") == "7.000000"


@pytest.mark.parametrize("evt_session", [
    {"metadata": {}, "client_reference_id": None},  # not ours
    {"currency": "eur"},
    {"amount_total": 0},
    {"mode": "subscription"},
])
def test_sessions_that_are_not_llmcredits_purchases_are_ignored(stripe, evt_session):
    session = {**paid_session(cents=2500), **evt_session}
    status, _, body = deliver(event("checkout.session.completed", session))
    assert status == 200 and body["outcome"] == "ignored"
    assert balance("alice") == "0.000000"


def test_client_reference_id_alone_identifies_the_buyer(stripe):
    session = {**paid_session(user="carol", cents=900), "metadata": {}}
    assert deliver(event("checkout.session.completed", session))[2]["outcome"] == "credited"
    assert balance("carol") == "9.000000"


def test_other_event_types_get_200(stripe):
    evt = event("payment_intent.succeeded", {"id": "pi_x", "object": "payment_intent"})
    status, _, body = deliver(evt)
    assert status == 200 and body["outcome"] == "ignored"


# -- signatures ------------------------------------------------------------------------------


def _signature_cases():
    now = int(time.time())
    return {
        "wrong secret": {"secret": "whsec_someone_else"},
        "older than 5 minutes": {"timestamp": now - 301},
        "much older": {"timestamp": now - 86400},
        "missing header": {"signature": None},
        "empty header": {"signature": ""},
        "garbage header": {"signature": "nonsense"},
        "no v1 scheme": {"signature": f"t={now},v0=abcdef"},
        "bad timestamp": {"signature": "t=soon,v1=abcdef"},
    }


@pytest.mark.parametrize("case", list(_signature_cases()))
def test_bad_signatures_are_400_and_credit_nothing(stripe, case, capsys):
    kwargs = _signature_cases()[case]
    status, _, body = deliver(event("checkout.session.completed", paid_session()), **kwargs)
    assert_openai_error(status, body, 400, "invalid_signature", "Stripe-Signature")
    assert balance("alice") == "0.000000"
    out = capsys.readouterr()
    assert WHSEC not in out.out + out.err + json.dumps(body)


def test_a_tampered_body_is_400(stripe):
    evt = event("checkout.session.completed", paid_session(cents=500))
    body = payload(evt)
    signature = sign(body, WHSEC)
    tampered = body.replace('"amount_total": 500', '"amount_total": 50000')
    assert tampered != body
    status, _, out = invoke("stripe_webhook", webhook_request(tampered, signature))
    assert_openai_error(status, out, 400, "invalid_signature")
    # Re-serialising the same event also breaks the signature: the raw body is what counts.
    compact = json.dumps(evt, separators=(",", ":"))
    status, _, out = invoke("stripe_webhook", webhook_request(compact, signature))
    assert status == 400
    assert balance("alice") == "0.000000"


def test_one_of_several_signatures_may_match_as_during_secret_rotation(stripe):
    evt = event("checkout.session.completed", paid_session(cents=800))
    body = payload(evt)
    old = sign(body, "whsec_old_rotated_out")
    new = sign(body, WHSEC)
    header = f"{old},{new.split(',')[1]}"
    status, _, out = invoke("stripe_webhook", webhook_request(body, header))
    assert status == 200 and out["outcome"] == "credited"


def test_an_unconfigured_webhook_secret_is_a_server_error_not_a_client_one(stripe, monkeypatch):
    monkeypatch.delenv("STRIPE_WEBHOOK_SECRET")
    reconfigure(monkeypatch)
    status, _, body = deliver(event("checkout.session.completed", paid_session()))
    # A clear 503 (Stripe retries once the secret is configured), not a generic 500.
    assert_openai_error(status, body, 503, "payments_not_configured")
    assert body["error"]["type"] == "server_error"
    assert "STRIPE_WEBHOOK_SECRET" in body["error"]["message"]
    assert balance("alice") == "0.000000"


def test_an_unconfigured_secret_key_is_a_clear_503(stripe, monkeypatch):
    monkeypatch.delenv("STRIPE_SECRET_KEY")
    reconfigure(monkeypatch)
    status, _, body = purchase({"amount": "25", **OK_URLS}, key="k")
    assert_openai_error(status, body, 503, "payments_not_configured")
    assert body["error"]["type"] == "server_error"
    assert "STRIPE_SECRET_KEY" in body["error"]["message"]
    assert stripe.requests == []


def test_an_unreadable_ssm_secret_is_a_clear_503_without_details(stripe, monkeypatch):
    """In Lambda the key comes from SSM: a parameter that is missing or not readable is
    a deployment error (503 naming the setting), and its error text is not echoed."""
    from aws_lambda_powertools.utilities import parameters

    def missing(name, **_):
        raise parameters.exceptions.GetParameterError(f"ParameterNotFound: {name}")

    monkeypatch.delenv("STRIPE_SECRET_KEY")
    monkeypatch.setenv("STRIPE_SECRET_KEY_PARAM", "/llmcredits/nope")
    monkeypatch.setattr(parameters, "get_parameter", missing)
    reconfigure(monkeypatch)
    status, _, body = purchase({"amount": "25", **OK_URLS}, key="k")
    assert_openai_error(status, body, 503, "payments_not_configured")
    assert "STRIPE_SECRET_KEY" in body["error"]["message"]
    assert "ParameterNotFound" not in body["error"]["message"]


def test_our_signing_matches_the_stripe_library():
    import stripe as stripe_lib

    body = payload(event("ping", {"id": "x"}))
    parsed = stripe_lib.Webhook.construct_event(body, sign(body, WHSEC), WHSEC)
    assert parsed["type"] == "ping"


def test_a_signed_payload_that_is_not_an_event_is_400(stripe):
    body = json.dumps({"hello": "world"})
    status, _, out = invoke("stripe_webhook", webhook_request(body, sign(body, WHSEC)))
    assert_openai_error(status, out, 400, "invalid_event")
    body = "[1, 2]"
    status, _, out = invoke("stripe_webhook", webhook_request(body, sign(body, WHSEC)))
    assert status == 400


# -- refunds and disputes ---------------------------------------------------------------------


def bought(user="alice", cents=2500):
    session = paid_session(user=user, cents=cents)
    assert deliver(event("checkout.session.completed", session))[2]["outcome"] == "credited"
    return session


def test_refund_lowers_the_balance_once_with_an_entry_linked_to_the_purchase(stripe):
    session = bought(cents=2500)
    pi = session["payment_intent"]
    refund = event("charge.refunded",
                   charge(payment_intent=pi, amount=2500, amount_refunded=1000))
    status, _, body = deliver(refund)
    assert status == 200 and body["outcome"] == "refunded"
    assert balance("alice") == "15.000000"
    status, _, body = deliver(refund)  # second delivery of the same refund
    assert status == 200 and body["outcome"] == "duplicate"
    assert balance("alice") == "15.000000"
    entries = history("alice")
    assert [e["type"] for e in entries] == ["refund", "purchase"]
    refund_entry, purchase_entry = entries
    assert refund_entry["amount"] == "-10.000000" and refund_entry["balance_after"] == "15.000000"
    assert refund_entry["metadata"]["checkout_session"] == session["id"]
    assert refund_entry["metadata"]["checkout_session"] == \
        purchase_entry["metadata"]["checkout_session"]
    assert refund_entry["metadata"]["payment_intent"] == pi
    assert refund_entry["metadata"]["stripe_event"] == refund["id"]


def test_cumulative_refunds_claw_back_only_the_new_amount_in_any_order(stripe):
    session = bought(cents=5000)
    pi = session["payment_intent"]
    ch = charge(payment_intent=pi, amount=5000, amount_refunded=0)
    first = event("charge.refunded", {**ch, "amount_refunded": 1000})
    second = event("charge.refunded", {**ch, "amount_refunded": 3000})
    deliver(second)  # delivered before the first
    assert balance("alice") == "20.000000"
    assert deliver(first)[2]["outcome"] == "duplicate"  # its total was already covered
    assert balance("alice") == "20.000000"
    deliver(event("charge.refunded", {**ch, "amount_refunded": 5000}))
    assert balance("alice") == "0.000000"
    refunds = [e for e in history("alice") if e["type"] == "refund"]
    assert sorted(e["amount"] for e in refunds) == ["-20.000000", "-30.000000"]


def test_a_refund_can_make_the_balance_negative_and_marks_the_account(stripe):
    from llmcredits import bootstrap

    session = bought(cents=2500)
    bootstrap.ledger_service().debit_usage("alice", Decimal(20), model="m")
    deliver(event("charge.refunded", charge(payment_intent=session["payment_intent"],
                                            amount=2500, amount_refunded=2500)))
    assert balance("alice") == "-20.000000"
    flag = record("negative-balance", "alice")
    assert flag["status"] == "negative" and flag["balance"] == Decimal(-20)
    bought(cents=3000)  # a later purchase brings it back
    assert balance("alice") == "10.000000"
    assert record("negative-balance", "alice")["status"] == "resolved"


def test_a_refund_before_its_purchase_is_credited_is_retried_later(stripe):
    session = paid_session(cents=2500)
    refund = event("charge.refunded", charge(payment_intent=session["payment_intent"],
                                             amount=2500, amount_refunded=500))
    status, _, body = deliver(refund)
    assert_openai_error(status, body, 503, "retry_later")
    assert deliver(event("checkout.session.completed", session))[2]["outcome"] == "credited"
    assert deliver(refund)[2]["outcome"] == "refunded"  # Stripe's retry
    assert balance("alice") == "20.000000"


def test_refund_of_a_charge_without_payment_intent_is_ignored(stripe):
    ch = {**charge(payment_intent="pi_x", amount=100, amount_refunded=100),
          "payment_intent": None}
    assert deliver(event("charge.refunded", ch))[2]["outcome"] == "ignored"


def test_dispute_claws_back_the_disputed_amount_once(stripe):
    session = bought(cents=2500)
    dp = dispute(payment_intent=session["payment_intent"], amount=2500)
    evt = event("charge.dispute.created", dp)
    status, _, body = deliver(evt)
    assert status == 200 and body["outcome"] == "disputed"
    assert balance("alice") == "0.000000"
    assert deliver(evt)[2]["outcome"] == "duplicate"
    # The same dispute in another event (e.g. resent by Stripe support) changes nothing.
    assert deliver(event("charge.dispute.created", dp))[2]["outcome"] == "duplicate"
    entries = history("alice")
    assert [e["type"] for e in entries] == ["chargeback", "purchase"]
    assert entries[0]["amount"] == "-25.000000"
    assert entries[0]["metadata"]["dispute"] == dp["id"]
    assert entries[0]["metadata"]["checkout_session"] == session["id"]


def test_refund_then_dispute_of_the_rest(stripe):
    session = bought(cents=2500)
    pi = session["payment_intent"]
    deliver(event("charge.refunded", charge(payment_intent=pi, amount=2500,
                                            amount_refunded=1000)))
    deliver(event("charge.dispute.created", dispute(payment_intent=pi, amount=1500)))
    assert balance("alice") == "0.000000"
    state = payment_state(pi)
    assert (state.refunded_cents, state.disputed_cents, state.clawed_back_cents) == (
        1000, 1500, 2500)


def payment_state(pi):
    from llmcredits import bootstrap

    return bootstrap.payments_service().payment_state(pi)


def dispute_event(type_, dp, status):
    return event(type_, {**dp, "status": status})


# -- refunds plus disputes never claw back more than the charge (invariant 3) -----------------


def test_a_purchase_refunded_then_disputed_claws_back_the_charge_once(stripe):
    pi = bought(cents=2500)["payment_intent"]
    refund = event("charge.refunded", charge(payment_intent=pi, amount=2500,
                                             amount_refunded=2500))
    dp = dispute(payment_intent=pi, amount=2500)
    assert deliver(refund)[2]["outcome"] == "refunded"
    status, _, body = deliver(event("charge.dispute.created", dp))
    assert status == 200 and body["outcome"] == "covered"  # already clawed back
    for evt in (refund, event("charge.dispute.created", dp),
                dispute_event("charge.dispute.funds_withdrawn", dp, "needs_response")):
        deliver(evt)  # redeliveries and the funds_withdrawn that follows a dispute
    assert balance("alice") == "0.000000"  # not -25
    assert [e["type"] for e in history("alice")] == ["refund", "purchase"]
    assert payment_state(pi).clawed_back_cents == 2500


def test_a_purchase_disputed_then_refunded_claws_back_the_charge_once(stripe):
    pi = bought(cents=2500)["payment_intent"]
    assert deliver(event("charge.dispute.created",
                         dispute(payment_intent=pi, amount=2500)))[2]["outcome"] == "disputed"
    refund = event("charge.refunded", charge(payment_intent=pi, amount=2500,
                                             amount_refunded=2500))
    assert deliver(refund)[2]["outcome"] == "covered"
    assert balance("alice") == "0.000000"
    assert [e["type"] for e in history("alice")] == ["chargeback", "purchase"]


def test_partial_refunds_and_a_dispute_add_up_to_at_most_the_charge(stripe):
    pi = bought(cents=2500)["payment_intent"]
    ch = charge(payment_intent=pi, amount=2500, amount_refunded=0)
    deliver(event("charge.refunded", {**ch, "amount_refunded": 500}))
    deliver(event("charge.refunded", {**ch, "amount_refunded": 1000}))
    assert balance("alice") == "15.000000"
    dp = dispute(payment_intent=pi, amount=2500)  # disputes the full charge anyway
    _, _, body = deliver(event("charge.dispute.created", dp))
    assert body["outcome"] == "disputed"
    assert balance("alice") == "0.000000"
    [chargeback] = [e for e in history("alice") if e["type"] == "chargeback"]
    assert chargeback["amount"] == "-15.000000"
    assert chargeback["metadata"]["clawed_back_total"] == "25.000000"
    # The dispute is won: only what the dispute took comes back (the refunds stay out).
    _, _, body = deliver(dispute_event("charge.dispute.closed", dp, "won"))
    assert body["outcome"] == "reinstated"
    assert balance("alice") == "15.000000"


def test_a_won_dispute_gives_the_chargeback_back_once_however_events_arrive(stripe):
    pi = bought(cents=2500)["payment_intent"]
    dp = dispute(payment_intent=pi, amount=2500)
    deliver(event("charge.dispute.created", dp))
    assert balance("alice") == "0.000000"
    reinstated = dispute_event("charge.dispute.funds_reinstated", dp, "won")
    won = dispute_event("charge.dispute.closed", dp, "won")
    outcomes = [deliver(e)[2]["outcome"] for e in
                (reinstated, won, reinstated, won, event("charge.dispute.created", dp))]
    assert outcomes == ["reinstated", "duplicate", "duplicate", "duplicate", "duplicate"]
    assert balance("alice") == "25.000000"
    entries = history("alice")
    assert [e["type"] for e in entries] == ["reinstatement", "chargeback", "purchase"]
    assert entries[0]["amount"] == "25.000000" and entries[0]["balance_after"] == "25.000000"
    assert entries[0]["metadata"]["dispute"] == dp["id"]


def test_a_dispute_won_before_its_creation_is_seen_never_claws_back(stripe):
    pi = bought(cents=2500)["payment_intent"]
    dp = dispute(payment_intent=pi, amount=2500)
    assert deliver(dispute_event("charge.dispute.closed", dp, "won"))[2]["outcome"] == "covered"
    assert deliver(event("charge.dispute.created", dp))[2]["outcome"] == "duplicate"
    assert balance("alice") == "25.000000"
    assert [e["type"] for e in history("alice")] == ["purchase"]


def test_a_lost_dispute_keeps_the_chargeback(stripe):
    pi = bought(cents=2500)["payment_intent"]
    dp = dispute(payment_intent=pi, amount=2500)
    deliver(event("charge.dispute.created", dp))
    assert deliver(dispute_event("charge.dispute.closed", dp, "lost"))[2]["outcome"] == "covered"
    assert deliver(dispute_event("charge.dispute.closed", dp, "lost"))[2]["outcome"] == \
        "duplicate"
    assert balance("alice") == "0.000000"


def test_an_inquiry_withdraws_nothing_until_it_becomes_a_chargeback(stripe):
    pi = bought(cents=2500)["payment_intent"]
    dp = dispute(payment_intent=pi, amount=2500)
    inquiry = dispute_event("charge.dispute.created", dp, "warning_needs_response")
    assert deliver(inquiry)[2]["outcome"] == "covered"
    assert balance("alice") == "25.000000"
    withdrawn = dispute_event("charge.dispute.funds_withdrawn", dp, "needs_response")
    assert deliver(withdrawn)[2]["outcome"] == "disputed"
    assert balance("alice") == "0.000000"


def test_a_dispute_won_after_a_full_refund_gives_nothing_back(stripe):
    pi = bought(cents=2500)["payment_intent"]
    dp = dispute(payment_intent=pi, amount=2500)
    deliver(event("charge.dispute.created", dp))
    deliver(event("charge.refunded", charge(payment_intent=pi, amount=2500,
                                            amount_refunded=2500)))
    assert deliver(dispute_event("charge.dispute.closed", dp, "won"))[2]["outcome"] == "covered"
    assert balance("alice") == "0.000000"  # the refund's money is gone either way


# -- only payments this service started are credited -----------------------------------------


def capture_metrics(monkeypatch, capsys, deliver_it):
    """Deliver with metrics enabled; the metric names of the invocation's EMF document."""
    from llmcredits.http.api import metrics

    capsys.readouterr()
    metrics.clear_metrics()
    monkeypatch.delenv("POWERTOOLS_METRICS_DISABLED", raising=False)
    try:
        result = deliver_it()
    finally:
        monkeypatch.setenv("POWERTOOLS_METRICS_DISABLED", "true")
    names = set()
    for line in capsys.readouterr().out.splitlines():
        try:
            doc = json.loads(line)
        except ValueError:
            continue
        if isinstance(doc, dict) and "_aws" in doc:
            for directive in doc["_aws"]["CloudWatchMetrics"]:
                names.update(m["Name"] for m in directive["Metrics"])
    return result, names


def test_a_payment_link_session_naming_a_user_is_acknowledged_and_not_credited(
    stripe, monkeypatch, capsys
):
    session = foreign_session(user="alice", cents=2500, metadata={})  # client_reference_id
    evt = event("checkout.session.completed", session)
    (status, _, body), names = capture_metrics(monkeypatch, capsys, lambda: deliver(evt))
    assert status == 200 and body["outcome"] == "unknown_payment_ignored"
    assert "UnknownPaymentIgnored" in names
    assert balance("alice") == "0.000000" and history("alice") == []
    assert record(f"checkout-session:{session['id']}", "alice") is None
    assert record(f"purchase:{session['id']}", "alice") is None


@pytest.mark.parametrize("event_type", ["checkout.session.completed",
                                        "checkout.session.async_payment_succeeded"])
def test_a_session_with_our_metadata_but_no_purchase_record_is_not_credited(stripe, event_type):
    session = foreign_session(user="alice", cents=2500)  # forged llmcredits metadata
    _, _, body = deliver(event(event_type, session))
    assert body["outcome"] == "unknown_payment_ignored"
    assert balance("alice") == "0.000000"


def test_an_unknown_unpaid_session_leaves_no_purchase_record_to_credit_later(stripe):
    session = foreign_session(user="alice", cents=2500, payment_status="unpaid")
    assert deliver(event("checkout.session.completed", session))[2]["outcome"] == \
        "unknown_payment_ignored"
    assert record(f"purchase:{session['id']}", "alice") is None
    paid = {**session, "payment_status": "paid"}
    assert deliver(event("checkout.session.async_payment_succeeded", paid))[2]["outcome"] == \
        "unknown_payment_ignored"
    assert balance("alice") == "0.000000"


def test_a_session_whose_amount_or_user_differs_from_the_purchase_is_not_credited(stripe):
    ours = paid_session(user="alice", cents=2500)
    more = {**ours, "amount_total": 50000, "amount_subtotal": 50000}
    assert deliver(event("checkout.session.completed", more))[2]["outcome"] == \
        "unknown_payment_ignored"
    other_user = {**ours, "metadata": {"llmcredits_user_id": "mallory"},
                  "client_reference_id": "mallory"}
    assert deliver(event("checkout.session.completed", other_user))[2]["outcome"] == \
        "unknown_payment_ignored"
    assert balance("alice") == "0.000000" and balance("mallory") == "0.000000"
    assert deliver(event("checkout.session.completed", ours))[2]["outcome"] == "credited"
    assert balance("alice") == "25.000000"


# -- refunds and disputes of charges we never credited ----------------------------------------


@pytest.mark.parametrize("make", [
    lambda pi: event("charge.refunded", charge(payment_intent=pi, amount=2500,
                                               amount_refunded=2500)),
    lambda pi: event("charge.dispute.created", dispute(payment_intent=pi, amount=2500)),
])
def test_an_unknown_charge_is_retried_for_an_hour_then_acknowledged(
    stripe, monkeypatch, capsys, make
):
    evt = make("pi_test_not_ours")
    status, _, body = deliver(evt)
    assert_openai_error(status, body, 503, "retry_later")  # the purchase may be late
    evt["created"] = int(time.time()) - 3590  # 10 s of margin for a slow machine
    assert deliver(evt)[0] == 503
    evt["created"] = int(time.time()) - 3601
    (status, _, body), names = capture_metrics(monkeypatch, capsys, lambda: deliver(evt))
    assert status == 200 and body["outcome"] == "unknown_charge_ignored"
    assert "UnknownChargeEventIgnored" in names


def test_sample_events_are_servable(stripe):
    """What tests/unit/test_sample_events.py needs for these two functions."""
    from tests.fakes.stripe_api import sample_ready
    from tests.support import ROOT

    for name in ("credits_purchase_post", "stripe_webhook"):
        evt = json.loads((ROOT / "events" / f"{name}.json").read_text())
        with sample_ready(name, evt) as ready:
            status, _, body = invoke(name, ready)
        assert 200 <= status < 300, (name, body)
