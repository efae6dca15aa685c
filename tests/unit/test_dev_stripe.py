"""The dev Stripe stand-in (llmcredits.local.dev_stripe): Stripe's Checkout API as the
real stripe client drives it, idempotency, and pay/refund delivering events signed so
that the stripe library and our own webhook verification accept them."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
from llmcredits.local.dev_stripe import DevStripe

SK = "sk_test_dev_unit"
WHSEC = "whsec_dev_unit"

FORM = {
    "mode": "payment",
    "line_items[0][price_data][currency]": "usd",
    "line_items[0][price_data][unit_amount]": "2500",
    "line_items[0][price_data][product_data][name]": "25.00 llmcredits",
    "line_items[0][quantity]": "1",
    "success_url": "http://localhost:3000/ok?session={CHECKOUT_SESSION_ID}",
    "cancel_url": "http://localhost:3000/billing",
    "client_reference_id": "alice",
    "metadata[llmcredits_user_id]": "alice",
    "metadata[llmcredits_credits]": "25.00",
}


class Receiver:
    """A webhook endpoint that records raw deliveries and answers ``status``."""

    def __init__(self, status: int = 200) -> None:
        self.status = status
        self.received: list[tuple[dict[str, str], str]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers["Content-Length"])).decode()
                receiver.received.append(({k.lower(): v for k, v in self.headers.items()}, raw))
                data = json.dumps({"received": True, "outcome": "credited"}).encode()
                self.send_response(receiver.status)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05},
                         daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/api/v1/llm/stripe/webhook"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver():
    r = Receiver()
    yield r
    r.close()


@pytest.fixture
def dev(receiver):
    with DevStripe(receiver.url, WHSEC, SK) as stripe:
        yield stripe


def create(stripe: DevStripe, form: dict[str, str] = FORM, key: str | None = "idem-1",
           api_key: str = SK) -> httpx.Response:
    headers = {"Authorization": f"Bearer {api_key}"}
    if key:
        headers["Idempotency-Key"] = key
    return httpx.post(stripe.url + "/v1/checkout/sessions", data=form, headers=headers)


def test_lifecycle_and_url():
    stripe = DevStripe(None, WHSEC, SK)
    with pytest.raises(RuntimeError):
        _ = stripe.url
    with stripe:
        assert stripe.url.startswith("http://127.0.0.1:")
        assert httpx.get(stripe.url + "/nope").status_code == 404
    with pytest.raises(RuntimeError):
        _ = stripe.url


def test_create_session_is_a_realistic_open_session_paid_on_our_pay_page(dev):
    resp = create(dev)
    assert resp.status_code == 200, resp.text
    assert resp.headers["X-Dev-Stripe"] == "true"
    session = resp.json()
    assert session["id"].startswith("cs_test_") and session["object"] == "checkout.session"
    assert session["url"] == f"{dev.url}/pay/{session['id']}"
    assert (session["status"], session["payment_status"]) == ("open", "unpaid")
    assert session["payment_intent"] is None
    assert session["amount_total"] == 2500 and session["currency"] == "usd"
    assert session["client_reference_id"] == "alice"
    assert session["metadata"] == {"llmcredits_user_id": "alice", "llmcredits_credits": "25.00"}
    assert dev.sessions[session["id"]] == session
    [req] = dev.requests
    assert req.api_key == SK and req.idempotency_key == "idem-1"
    assert req.form == FORM and req.prefixed("metadata")["llmcredits_user_id"] == "alice"
    fetched = httpx.get(f"{dev.url}/v1/checkout/sessions/{session['id']}",
                        headers={"Authorization": f"Bearer {SK}"})
    assert fetched.json() == session


def test_idempotency_same_params_replay_different_params_400(dev):
    first = create(dev)
    again = create(dev)
    assert again.status_code == 200 and again.json() == first.json()
    assert again.headers["Idempotent-Replayed"] == "true"
    other = create(dev, {**FORM, "line_items[0][price_data][unit_amount]": "3000"})
    assert other.status_code == 400
    assert other.json()["error"]["type"] == "idempotency_error"
    assert create(dev, key="idem-2").json()["id"] != first.json()["id"]
    assert create(dev, key=None).json()["id"] != first.json()["id"]
    assert len(dev.sessions) == 3


def test_validation_errors_are_not_saved_under_the_key(dev):
    bad = create(dev, {**FORM, "line_items[0][price_data][unit_amount]": "49"})
    assert bad.status_code == 400 and bad.json()["error"]["type"] == "invalid_request_error"
    assert create(dev).status_code == 200  # same key, now valid: Stripe saved nothing
    missing = create(dev, {k: v for k, v in FORM.items() if k != "success_url"}, key="x")
    assert missing.json()["error"]["param"] == "success_url"


def test_api_key_is_required_and_checked(dev):
    assert create(dev, api_key="sk_test_wrong").status_code == 401
    assert httpx.post(dev.url + "/v1/checkout/sessions", data=FORM).status_code == 401
    assert dev.sessions == {}


def test_the_real_stripe_client_through_our_adapter(dev):
    from llmcredits.dal.stripe_checkout import StripeCheckout
    from llmcredits.services.payments import CheckoutIdempotencyMismatch, CheckoutRequest

    adapter = StripeCheckout(api_key=lambda: SK, webhook_secret=lambda: WHSEC,
                             api_base=dev.url)
    request = CheckoutRequest(user_id="alice", amount_cents=1234, currency="usd",
                              product_name="12.34 llmcredits", success_url=FORM["success_url"],
                              cancel_url=FORM["cancel_url"],
                              metadata={"llmcredits_user_id": "alice"}, idempotency_key="k1")
    first = adapter.create_checkout_session(request)
    assert first.url == dev.pay_url(first.id)
    assert adapter.create_checkout_session(request) == first
    with pytest.raises(CheckoutIdempotencyMismatch):
        adapter.create_checkout_session(
            CheckoutRequest(**{**request.__dict__, "amount_cents": 999}))
    assert dev.requests[0].form["payment_intent_data[metadata][llmcredits_user_id]"] == "alice"


def test_pay_delivers_a_signed_event_our_webhook_verification_accepts(dev, receiver):
    import stripe as stripe_lib
    from llmcredits.dal.stripe_checkout import StripeCheckout

    session = create(dev).json()
    resp = httpx.get(session["url"], follow_redirects=False)
    assert resp.status_code == 303
    assert resp.headers["Location"] == f"http://localhost:3000/ok?session={session['id']}"
    [(headers, raw)] = receiver.received
    assert headers["content-type"].startswith("application/json")
    assert headers["user-agent"].startswith("Stripe/")
    adapter = StripeCheckout(api_key=lambda: SK, webhook_secret=lambda: WHSEC)
    evt = adapter.verify_webhook(raw, headers["stripe-signature"])
    assert stripe_lib.Webhook.construct_event(raw, headers["stripe-signature"], WHSEC)
    assert evt["type"] == "checkout.session.completed"
    paid = evt["data"]["object"]
    assert paid["id"] == session["id"] and paid["payment_status"] == "paid"
    assert paid["status"] == "complete" and paid["payment_intent"].startswith("pi_test_")
    assert paid["amount_total"] == 2500 and paid["metadata"] == session["metadata"]
    assert dev.sessions[session["id"]]["payment_status"] == "paid"
    [delivery] = dev.deliveries
    assert delivery.ok and delivery.outcome == "credited" and delivery.event_id == evt["id"]
    # A wrong secret does not verify.
    from llmcredits.services.payments import InvalidWebhook

    with pytest.raises(InvalidWebhook):
        StripeCheckout(api_key=lambda: SK, webhook_secret=lambda: "whsec_other"
                       ).verify_webhook(raw, headers["stripe-signature"])


def test_paying_again_redelivers_the_same_event_and_charges_nothing(dev, receiver):
    session = create(dev).json()
    first, _ = dev.pay(session["id"])
    resp = httpx.post(dev.pay_url(session["id"]), follow_redirects=False)
    assert resp.status_code == 303 and resp.json()["webhook"]["status"] == 200
    again = dev.sessions[session["id"]]
    assert again["payment_intent"] == first["payment_intent"]
    ids = [json.loads(raw)["id"] for _, raw in receiver.received]
    assert len(ids) == 2 and ids[0] == ids[1]
    assert len(dev.events) == 1


def test_refunds_are_cumulative_and_bounded(dev, receiver):
    session = create(dev).json()
    dev.pay(session["id"])
    resp = httpx.post(f"{dev.url}/refund/{session['id']}?amount=1000")
    assert resp.status_code == 200, resp.text
    assert resp.json()["refund"]["amount"] == 1000
    resp = httpx.post(f"{dev.url}/refund/{session['id']}?amount=2000")
    assert resp.status_code == 400 and resp.json()["error"]["code"] == "amount_too_large"
    # Stripe's API form, by payment intent: the rest.
    pi = dev.sessions[session["id"]]["payment_intent"]
    resp = httpx.post(dev.url + "/v1/refunds", data={"payment_intent": pi},
                      headers={"Authorization": f"Bearer {SK}"})
    assert resp.status_code == 200 and resp.json()["amount"] == 1500
    charges = [json.loads(raw)["data"]["object"] for _, raw in receiver.received[1:]]
    assert [c["amount_refunded"] for c in charges] == [1000, 2500]
    assert {c["payment_intent"] for c in charges} == {pi}
    assert len({c["id"] for c in charges}) == 1 and charges[-1]["refunded"] is True
    assert httpx.post(f"{dev.url}/refund/{session['id']}").status_code == 400


def test_refund_of_an_unpaid_or_unknown_session_is_refused(dev):
    session = create(dev).json()
    assert httpx.post(f"{dev.url}/refund/{session['id']}").status_code == 400
    assert httpx.post(f"{dev.url}/refund/cs_test_nope").status_code == 404
    assert httpx.get(f"{dev.url}/pay/cs_test_nope").status_code == 404
    assert dev.deliveries == []


def test_an_unreachable_webhook_is_recorded_and_the_buyer_still_redirected():
    with DevStripe("http://127.0.0.1:9/webhook", WHSEC, SK) as dev:
        session = create(dev).json()
        resp = httpx.get(session["url"], follow_redirects=False)
        assert resp.status_code == 303
        [delivery] = dev.deliveries
        assert delivery.status is None and delivery.error and not delivery.ok


def test_without_a_webhook_url_events_are_only_recorded():
    with DevStripe(None, WHSEC, None) as dev:  # api_key None: any sk_ key
        session = create(dev, api_key="sk_test_anything").json()
        _, delivery = dev.pay(session["id"])
        assert delivery is None and dev.deliveries == []
        assert [e["type"] for e in dev.events] == ["checkout.session.completed"]


def test_fail_with_simulates_an_outage(dev):
    dev.fail_with = (500, {"error": {"type": "api_error", "message": "boom"}})
    assert create(dev).status_code == 500
    dev.fail_with = None
    assert create(dev).status_code == 200


def test_a_dispute_is_opened_and_closed_with_the_events_stripe_sends(dev, receiver):
    session = create(dev).json()
    assert httpx.post(f"{dev.url}/dispute/{session['id']}").status_code == 400  # unpaid
    dev.pay(session["id"])
    resp = httpx.post(f"{dev.url}/dispute/{session['id']}")
    assert resp.status_code == 200, resp.text
    dp = resp.json()["dispute"]
    pi = dev.sessions[session["id"]]["payment_intent"]
    assert (dp["amount"], dp["payment_intent"], dp["status"]) == (2500, pi, "needs_response")
    resp = httpx.post(f"{dev.url}/dispute/{session['id']}/close?status=won")
    assert resp.status_code == 200 and [w["status"] for w in resp.json()["webhooks"]] == [200,
                                                                                         200]
    events = [json.loads(raw) for _, raw in receiver.received[1:]]
    assert [e["type"] for e in events] == ["charge.dispute.created", "charge.dispute.closed",
                                           "charge.dispute.funds_reinstated"]
    assert {e["data"]["object"]["id"] for e in events} == {dp["id"]}
    assert [e["data"]["object"]["status"] for e in events] == ["needs_response", "won", "won"]
    assert httpx.post(f"{dev.url}/dispute/{session['id']}/close?status=maybe").status_code == 400
    assert httpx.post(f"{dev.url}/dispute/cs_test_nope").status_code == 404
