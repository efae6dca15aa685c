"""Buying credits on the local stack (what `make dev` serves), end to end over HTTP.

The stack starts the dev Stripe stand-in (no STRIPE_SECRET_KEY is set): POST
/credits/purchase opens a Checkout Session on it, visiting the session's checkout_url
pays it and delivers a signed checkout.session.completed to the API's own
/stripe/webhook before redirecting to success_url; a refund on the stand-in delivers
charge.refunded. Balances are checked to the exact cent.
"""

from __future__ import annotations

import uuid
from decimal import Decimal

import httpx
import pytest
from llmcredits.local.server import LocalStack

API = "/api/v1/llm"
SUCCESS = "http://localhost/ok"
CANCEL = "http://localhost/cancel"


@pytest.fixture(scope="module")
def http(stack: LocalStack):
    with httpx.Client(base_url=stack.base_url + API, timeout=30) as client:
        yield client


def bearer(stack: LocalStack, sub: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {stack.issue_token(sub)}"}


def balance(stack: LocalStack, http: httpx.Client, sub: str) -> Decimal:
    resp = http.get("/credits", headers=bearer(stack, sub))
    assert resp.status_code == 200, resp.text
    return Decimal(resp.json()["balance"])


def entries(stack: LocalStack, http: httpx.Client, sub: str, type_: str) -> list[dict]:
    resp = http.get("/credits/history", headers=bearer(stack, sub))
    assert resp.status_code == 200, resp.text
    return [e for e in resp.json()["items"] if e["type"] == type_]


def test_without_stripe_a_purchase_is_a_clear_503():
    """No stand-in and no key (a misconfigured deployment): 503 naming the setting, never
    a generic 500. First in this module, before the module's stack starts."""
    from tests.support import ROOT

    with LocalStack(ROOT / "template.yaml", port=0, dev_stripe=False, workers=False,
                    env_overrides={"STRIPE_SECRET_KEY": "", "STRIPE_WEBHOOK_SECRET": ""}
                    ) as bare, httpx.Client(base_url=bare.base_url + API, timeout=30) as http:
        assert bare.dev_stripe is None
        resp = http.post("/credits/purchase", headers=bearer(bare, "nobody"),
                         json={"amount": "10", "success_url": SUCCESS, "cancel_url": CANCEL})
        assert resp.status_code == 503, resp.text
        error = resp.json()["error"]
        assert (error["type"], error["code"]) == ("server_error", "payments_not_configured")
        assert "STRIPE_SECRET_KEY" in error["message"]
        resp = http.post("/stripe/webhook", content=b"{}", headers={"Stripe-Signature": "x"})
        assert resp.status_code == 503 and "STRIPE_WEBHOOK_SECRET" in resp.text


def test_the_stack_serves_the_dev_stripe_stand_in(stack: LocalStack):
    import os

    assert stack.dev_stripe is not None
    assert os.environ["STRIPE_API_BASE"] == stack.dev_stripe.url
    assert stack.dev_stripe.webhook_url == f"{stack.base_url}{API}/stripe/webhook"


def test_purchase_pay_repay_and_refund(stack: LocalStack, http: httpx.Client):
    user = f"buyer-{uuid.uuid4().hex[:8]}"
    before = balance(stack, http, user)

    resp = http.post("/credits/purchase", headers=bearer(stack, user),
                     json={"amount": "12.34", "success_url": SUCCESS, "cancel_url": CANCEL})
    assert resp.status_code == 201, resp.text
    checkout_url, session_id = resp.json()["checkout_url"], resp.json()["session_id"]
    assert checkout_url.startswith(stack.dev_stripe.url + "/pay/")
    assert balance(stack, http, user) == before  # nothing until Stripe says paid

    paid = httpx.get(checkout_url, follow_redirects=False)
    assert paid.status_code == 303 and paid.headers["location"] == SUCCESS
    assert paid.json()["webhook"]["outcome"] == "credited", paid.text
    assert balance(stack, http, user) == before + Decimal("12.34")
    [purchase] = entries(stack, http, user, "purchase")
    assert Decimal(purchase["amount"]) == Decimal("12.34")
    assert purchase["metadata"]["checkout_session"] == session_id

    again = httpx.get(checkout_url, follow_redirects=False)  # pays nothing twice
    assert again.status_code == 303 and again.json()["webhook"]["outcome"] == "duplicate"
    assert balance(stack, http, user) == before + Decimal("12.34")
    assert len(entries(stack, http, user, "purchase")) == 1

    refund = httpx.post(f"{stack.dev_stripe.url}/refund/{session_id}?amount=234")
    assert refund.status_code == 200, refund.text
    assert refund.json()["webhook"]["outcome"] == "refunded"
    assert balance(stack, http, user) == before + Decimal("10.00")
    [refunded] = entries(stack, http, user, "refund")
    assert Decimal(refunded["amount"]) == Decimal("-2.34")
    assert refunded["metadata"]["checkout_session"] == session_id


def test_purchase_without_a_token_is_401(stack: LocalStack, http: httpx.Client):
    sent = len(stack.dev_stripe.requests)
    resp = http.post("/credits/purchase",
                     json={"amount": "10", "success_url": SUCCESS, "cancel_url": CANCEL})
    assert resp.status_code == 401
    assert len(stack.dev_stripe.requests) == sent


def test_purchase_with_sub_cent_amount_is_400(stack: LocalStack, http: httpx.Client):
    sent = len(stack.dev_stripe.requests)
    resp = http.post("/credits/purchase", headers=bearer(stack, "sub-cent"),
                     json={"amount": "10.001", "success_url": SUCCESS, "cancel_url": CANCEL})
    assert resp.status_code == 400, resp.text
    assert resp.json()["error"]["param"] == "amount"
    assert len(stack.dev_stripe.requests) == sent


def bought(stack: LocalStack, http: httpx.Client, user: str, amount: str) -> str:
    resp = http.post("/credits/purchase", headers=bearer(stack, user),
                     json={"amount": amount, "success_url": SUCCESS, "cancel_url": CANCEL})
    assert resp.status_code == 201, resp.text
    paid = httpx.get(resp.json()["checkout_url"], follow_redirects=False)
    assert paid.json()["webhook"]["outcome"] == "credited", paid.text
    return resp.json()["session_id"]


def test_refund_then_dispute_of_one_purchase_takes_it_back_once(stack, http):
    user = f"disputer-{uuid.uuid4().hex[:8]}"
    session_id = bought(stack, http, user, "25.00")
    refund = httpx.post(f"{stack.dev_stripe.url}/refund/{session_id}")
    assert refund.json()["webhook"]["outcome"] == "refunded", refund.text
    disputed = httpx.post(f"{stack.dev_stripe.url}/dispute/{session_id}")
    assert disputed.json()["webhook"]["outcome"] == "covered", disputed.text
    assert balance(stack, http, user) == Decimal(0)  # not -25


def test_a_won_dispute_gives_the_purchase_back_once(stack, http):
    user = f"winner-{uuid.uuid4().hex[:8]}"
    session_id = bought(stack, http, user, "25.00")
    disputed = httpx.post(f"{stack.dev_stripe.url}/dispute/{session_id}")
    assert disputed.json()["webhook"]["outcome"] == "disputed", disputed.text
    assert balance(stack, http, user) == Decimal(0)
    closed = httpx.post(f"{stack.dev_stripe.url}/dispute/{session_id}/close?status=won")
    assert [w["outcome"] for w in closed.json()["webhooks"]] == ["reinstated", "duplicate"]
    httpx.post(f"{stack.dev_stripe.url}/dispute/{session_id}/close?status=won")  # again
    assert balance(stack, http, user) == Decimal(25)
    assert len(entries(stack, http, user, "reinstatement")) == 1
