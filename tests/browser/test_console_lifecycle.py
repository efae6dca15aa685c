"""The console's credit lifecycle parts (DESIGN sections 2 and 7: lots in GET /credits,
GET/PUT /credits/alerts, GET/PUT /credits/auto-topup, POST /credits/payment-method) in
headless Chromium, against stand-ins of those routes served by Playwright's request
interception, so that what is the console's own job is checked whatever the backend
has: a 404 makes each part say "not available on this deployment" with no script error;
the forms send the contract's bodies (money as the typed strings); the signing secret is
shown once; the API's messages are shown as text. The round trips against the real
routes are in pending_lifecycle.py (collected once the lifecycle branches are merged)."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from llmcredits.local.server import LocalStack

from tests.browser.conftest import Watched, no_horizontal_scroll, screenshot, sign_in

pytestmark = pytest.mark.browser

API = "/api/v1/llm"
PAYLOAD = "<img src=x onerror=alert(1)>"
ALERTS = re.compile(r".*/api/v1/llm/credits/alerts(\?.*)?$")
AUTO_TOPUP = re.compile(r".*/api/v1/llm/credits/auto-topup(\?.*)?$")
PAYMENT_METHOD = re.compile(r".*/api/v1/llm/credits/payment-method(\?.*)?$")
CREDITS = re.compile(r".*/api/v1/llm/credits(\?.*)?$")


def fulfill_json(route: Any, status: int, doc: Any) -> None:
    route.fulfill(status=status, content_type="application/json", body=json.dumps(doc))


def api_error(route: Any, status: int, message: str, code: str, param: str | None = None) -> None:
    fulfill_json(route, status, {"error": {"message": message, "type": "invalid_request_error",
                                           "code": code, "param": param}})


def money(value: Any) -> Any:
    """The API's 6-place string for a money field it was sent (None stays None)."""
    return None if value is None else str(Decimal(value).quantize(Decimal("0.000001")))


def missing(route: Any) -> None:
    """What the gateway answers for a route the deployment does not have."""
    api_error(route, 404, "Not found.", "not_found")


class Recorder:
    """A stand-in route: answers with `respond(method, body)` and records each call."""

    def __init__(self, respond: Any) -> None:
        self.respond = respond
        self.calls: list[tuple[str, Any]] = []

    def __call__(self, route: Any) -> None:
        req = route.request
        assert req.headers.get("authorization", "").startswith("Bearer ")
        body = json.loads(req.post_data) if req.post_data else None
        self.calls.append((req.method, body))
        status, doc = self.respond(req.method, body)
        fulfill_json(route, status, doc)


def test_each_lifecycle_part_says_not_available_on_a_404(
        page: Any, stack: LocalStack, watched: Watched):
    for path in ("/credits/alerts", "/credits/auto-topup"):
        watched.expect_failed_request(API + path)  # the 404s below, on purpose

    def credits_without_lots(route: Any) -> None:  # an API from before lots
        doc = route.fetch().json()
        doc.pop("lots", None)
        fulfill_json(route, 200, doc)

    page.route(CREDITS, credits_without_lots)
    page.route(ALERTS, missing)
    page.route(AUTO_TOPUP, missing)
    sign_in(page, "lifecycle-404")
    page.get_by_text("Credit lots are not available on this deployment.").wait_for()

    page.get_by_role("link", name="Alerts").click()
    page.get_by_text("Alerts are not available on this deployment.").wait_for()
    assert page.locator("#alerts-form").count() == 0
    page.get_by_role("link", name="Buy credits").click()
    page.get_by_text("Auto top-up is not available on this deployment.").wait_for()
    assert page.locator("#topup-form").count() == 0 and page.locator("#save-card").count() == 0
    page.get_by_label("Amount (USD)").wait_for()  # buying still works
    assert page.get_by_role("alert").count() == 0  # a note, not an error
    for name in ("Alerts", "Buy credits", "Dashboard"):
        page.set_viewport_size({"width": 375, "height": 900})
        page.get_by_role("link", name=name).click()
        page.locator(".unavailable").first.wait_for()
        assert no_horizontal_scroll(page), f"{name} scrolls sideways at 375 px"


def test_lots_show_the_api_strings_and_flag_an_expiry_within_a_week(
        page: Any, stack: LocalStack):
    soon = (datetime.now(UTC) + timedelta(days=2)).replace(microsecond=0)
    later = soon + timedelta(days=60)
    lots = [
        {"amount": "10.000000", "remaining": "3.000000", "source": "bonus",
         "expires_at": soon.isoformat().replace("+00:00", "Z")},
        {"amount": "5.000000", "remaining": "5.000000", "source": PAYLOAD,
         "expires_at": later.isoformat().replace("+00:00", "Z")},
        {"amount": "25.000000", "remaining": "25.000000", "source": "purchase", "expires_at": None},
    ]

    def credits_with_lots(route: Any) -> None:
        doc = route.fetch().json()
        fulfill_json(route, 200, {**doc, "lots": lots})

    page.route(CREDITS, credits_with_lots)
    sign_in(page, "lifecycle-lots")
    panel = page.locator("section", has=page.get_by_role("heading", name="Credit lots"))
    rows = panel.locator("tbody tr")
    rows.nth(2).wait_for()
    cells = [rows.nth(i).locator("td").all_inner_texts() for i in range(3)]
    assert cells[0][:3] == ["bonus", "10.000000", "3.000000"]
    assert cells[0][3] == f"{soon.strftime('%Y-%m-%d %H:%M')} UTC (within 7 days)"
    assert cells[1][0] == PAYLOAD and "within" not in cells[1][3]  # the source is text
    assert cells[2] == ["purchase", "25.000000", "25.000000", "never"]
    assert page.locator("main img").count() == 0
    screenshot(page, "dashboard-lots")


def test_alerts_are_saved_and_the_signing_secret_is_shown_once(
        page: Any, stack: LocalStack, watched: Watched):
    watched.expect_failed_request(f"{API}/credits/alerts")  # the 400 below, on purpose
    secrets = iter(["whsec_" + "k" * 32, "whsec_" + "r" * 32])
    saved: dict[str, Any] = {"low_balance": None, "cap_percent": [80, 100], "webhook_url": None,
                             "webhook_secret_set": False}
    refuse = {"next": False}

    def respond(method: str, body: Any) -> tuple[int, Any]:
        if method == "GET":
            return 200, saved
        assert method == "PUT"
        if refuse["next"]:
            return 400, {"error": {"message": f"webhook_url {PAYLOAD} must be https.",
                                   "type": "invalid_request_error", "code": "invalid_request",
                                   "param": "webhook_url"}}
        # As the alerts API: a secret is made (and returned, once) with the first
        # webhook_url or on rotate_secret; other answers carry webhook_secret null.
        made = body.get("webhook_url") and (body.get("rotate_secret", False)
                                            or not saved["webhook_secret_set"])
        saved.update({k: v for k, v in body.items() if k != "rotate_secret"},
                     low_balance=money(body["low_balance"]))
        saved["webhook_secret_set"] = saved["webhook_secret_set"] or bool(made)
        return 200, {**saved, "webhook_secret": next(secrets) if made else None}

    fake = Recorder(respond)
    page.route(ALERTS, fake)
    sign_in(page, "lifecycle-alerts")
    page.get_by_role("link", name="Alerts").click()
    assert page.get_by_label("Monthly cap thresholds (% of cap)").input_value() == "80, 100"
    assert page.get_by_label("Low balance below (credits)").input_value() == ""

    page.get_by_label("Low balance below (credits)").fill("5.00")
    page.get_by_label("Monthly cap thresholds (% of cap)").fill("50,80, 100")
    page.get_by_label("Webhook URL (optional)").fill("https://example.com/hooks")
    page.get_by_role("button", name="Save alerts").click()
    page.get_by_text("Alert settings saved.").wait_for()
    assert fake.calls[-1] == ("PUT", {"low_balance": "5.00", "cap_percent": [50, 80, 100],
                                      "webhook_url": "https://example.com/hooks"})
    assert page.get_by_label("Low balance below (credits)").input_value() == "5.000000"
    secret = page.locator("#webhook-secret").inner_text()
    assert secret == "whsec_" + "k" * 32
    page.get_by_role("button", name="Copy").click()
    page.get_by_text("Copied.").wait_for()
    assert page.evaluate("navigator.clipboard.readText()") == secret
    screenshot(page, "alerts")
    page.get_by_role("button", name="Done").click()
    assert secret not in page.content()
    page.reload()  # GET answers without the secret: it is not shown again
    page.get_by_label("Low balance below (credits)").wait_for()
    assert secret not in page.content()
    assert "A signing secret is set" in page.locator("#alert-secret-state").inner_text()
    page.get_by_role("button", name="Save alerts").click()  # a save that makes none
    page.get_by_text("Alert settings saved.").wait_for()
    assert page.locator("#webhook-secret").count() == 0
    page.get_by_label("Make a new signing secret").check()
    page.get_by_role("button", name="Save alerts").click()
    page.locator("#webhook-secret").wait_for()
    assert page.locator("#webhook-secret").inner_text() == "whsec_" + "r" * 32
    assert fake.calls[-1][1]["rotate_secret"] is True
    assert "rotate_secret" not in fake.calls[-2][1]  # sent only when ticked
    assert not page.get_by_label("Make a new signing secret").is_checked()
    page.get_by_role("button", name="Done").click()

    calls = len(fake.calls)
    page.get_by_label("Monthly cap thresholds (% of cap)").fill("eighty")
    page.get_by_role("button", name="Save alerts").click()
    page.get_by_role("alert").filter(has_text="whole percentages").wait_for()
    assert len(fake.calls) == calls  # refused here, nothing sent

    page.get_by_label("Monthly cap thresholds (% of cap)").fill("")
    page.get_by_label("Low balance below (credits)").fill("")
    refuse["next"] = True
    page.get_by_role("button", name="Save alerts").click()
    page.get_by_role("alert").filter(has_text="must be https").wait_for()
    assert page.get_by_role("alert").inner_text() == f"webhook_url {PAYLOAD} must be https."
    assert fake.calls[-1] == ("PUT", {"low_balance": None, "cap_percent": [],
                                      "webhook_url": "https://example.com/hooks"})
    assert page.locator("main img").count() == 0


def test_auto_topup_is_saved_and_a_card_is_saved_through_checkout(
        page: Any, stack: LocalStack):
    settings: dict[str, Any] = {"enabled": False, "threshold": None, "amount": None,
                                "monthly_limit": None, "payment_method": None, "month": "2026-12",
                                "month_topped_up": "0.000000", "in_flight": False,
                                "consecutive_failures": 0}

    def topup(method: str, body: Any) -> tuple[int, Any]:
        if method == "PUT":
            settings.update({k: v if k == "enabled" else money(v) for k, v in body.items()})
        return 200, settings

    def card(method: str, body: Any) -> tuple[int, Any]:
        assert method == "POST"  # Stripe "saves" a card (one decline since) and sends back
        settings.update(payment_method={"brand": "visa", "last4": "4242"}, consecutive_failures=1)
        return 201, {"checkout_url": body["success_url"]}

    topups, cards = Recorder(topup), Recorder(card)
    page.route(AUTO_TOPUP, topups)
    page.route(PAYMENT_METHOD, cards)
    sign_in(page, "lifecycle-topup")
    page.get_by_role("link", name="Buy credits").click()
    enabled = page.get_by_label("Top up automatically")
    enabled.wait_for()
    assert not enabled.is_checked()
    assert page.locator("#topup-card").inner_text() == "No card saved yet."
    assert page.locator("#topup-state").inner_text() == "Topped up in 2026-12: 0.000000."
    enabled.check()
    page.get_by_label("When available credits fall below").fill("5.00")
    page.get_by_label("Buy (USD)").fill("25.00")
    page.get_by_label("At most per month (USD)").fill("100.00")
    page.get_by_role("button", name="Save auto top-up").click()
    page.get_by_text("Auto top-up on: 25.000000 when available falls below 5.000000.").wait_for()
    assert topups.calls[-1] == ("PUT", {"enabled": True, "threshold": "5.00", "amount": "25.00",
                                        "monthly_limit": "100.00"})
    assert page.get_by_label("Buy (USD)").input_value() == "25.000000"
    assert page.locator("#topup-state").inner_text() == (
        "Topped up in 2026-12: 0.000000 of at most 100.000000.")
    screenshot(page, "buy")

    page.get_by_role("button", name="Save a card for auto top-up").click()
    page.locator("#notice").filter(has_text="Card saved").wait_for()
    assert cards.calls[-1][0] == "POST"
    body = cards.calls[-1][1]
    assert body["success_url"].endswith("/console/?setup=success#/buy")
    assert body["cancel_url"].endswith("/console/?setup=cancel#/buy")
    assert "setup=" not in page.url
    page.get_by_label("Top up automatically").wait_for()
    assert page.get_by_label("Top up automatically").is_checked()  # read back on return
    assert page.locator("#topup-card").inner_text() == "Saved card: visa ending 4242."
    page.get_by_role("button", name="Replace the saved card").wait_for()
    assert "1 failed top-up(s) in a row" in page.locator("#topup-state").inner_text()

    page.get_by_label("Top up automatically").uncheck()
    page.get_by_role("button", name="Save auto top-up").click()
    page.get_by_text("Auto top-up is off.").wait_for()
    assert topups.calls[-1][1]["enabled"] is False


def test_a_purchase_receipt_is_a_link_and_only_for_an_http_url(page: Any, stack: LocalStack):
    receipt = "https://pay.stripe.com/receipts/payment/abc123"
    entry = {"created_at": "2026-12-01T12:00:00Z", "amount": "25.000000",
             "balance_after": "25.000000", "provider": None, "model": None, "tokens": None,
             "cost": None, "key_id": None, "request_id": None}
    items = [
        {**entry, "id": "e2", "type": "purchase", "metadata": {"receipt_url": receipt}},
        {**entry, "id": "e1", "type": "purchase",
         "metadata": {"receipt_url": "javascript:alert(1)", "reason": PAYLOAD}},
    ]
    page.route(re.compile(r".*/api/v1/llm/credits/history(\?.*)?$"),
               lambda route: fulfill_json(route, 200, {"items": items, "next_cursor": None}))
    sign_in(page, "lifecycle-receipts")
    page.get_by_role("link", name="History").click()
    rows = page.locator("tbody tr")
    rows.nth(1).wait_for()
    link = rows.nth(0).get_by_role("link", name="Receipt")
    assert link.get_attribute("href") == receipt
    assert link.get_attribute("rel") == "noopener noreferrer"
    assert rows.nth(1).get_by_role("link").count() == 0  # no javascript: link
    assert rows.nth(1).locator("td").nth(6).inner_text() == PAYLOAD
