"""PENDING until the lifecycle branches (lots, alerts, topup) are merged: the console's
lots, alerts and auto top-up against the local stack's real routes (DESIGN sections 2
and 7). Not collected under this name (pytest collects test_*.py); the lead enables it
by renaming it to tests/browser/test_console_lifecycle_api.py after the merge. What the
console does with each answer (404, bodies, secret once) is checked without the backend
in test_console_lifecycle.py.

In headless Chromium: lots of two admin grants (one expiring within the week) shown as
the API's strings; alerts set in the page, the signing secret shown once and never
again; a card saved through the dev Stripe stand-in's setup-mode Checkout and auto
top-up switched on; each read back through the API; no errors in the browser console."""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from llmcredits.local.server import LocalStack

from tests.browser.conftest import screenshot, sign_in

pytestmark = pytest.mark.browser

API = "/api/v1/llm"


def api(stack: LocalStack, sub: str, admin: bool = False) -> httpx.Client:
    return httpx.Client(base_url=stack.base_url + API, timeout=30,
                        headers={"Authorization": f"Bearer {stack.issue_token(sub, admin=admin)}"})


def user() -> str:
    return f"life-{uuid.uuid4().hex[:8]}"


def grant(stack: LocalStack, sub: str, amount: str, expires_at: str | None = None) -> None:
    body: dict[str, Any] = {"amount": amount, "type": "bonus", "reason": "lots"}
    if expires_at:
        body["expires_at"] = expires_at
    with api(stack, sub, admin=True) as admin:
        resp = admin.post(f"/admin/users/{sub}/credits", json=body)
        assert resp.status_code in (200, 201), resp.text


def test_lots_are_shown_as_the_api_returns_them(page: Any, stack: LocalStack):
    sub = user()
    soon = (datetime.now(UTC) + timedelta(days=3)).replace(microsecond=0)
    grant(stack, sub, "10.00", soon.isoformat().replace("+00:00", "Z"))
    grant(stack, sub, "5.00")
    with api(stack, sub) as client:
        lots = client.get("/credits").json()["lots"]
    assert len(lots) == 2
    sign_in(page, sub)
    panel = page.locator("section", has=page.get_by_role("heading", name="Credit lots"))
    rows = panel.locator("tbody tr")
    rows.nth(1).wait_for()
    assert rows.count() == len(lots)
    for i, lot in enumerate(lots):  # the API's order (spent first) and strings
        cells = rows.nth(i).locator("td").all_inner_texts()
        assert cells[:3] == [lot["source"], lot["amount"], lot["remaining"]]
    expiring = panel.locator("tbody tr", has_text="10.000000").locator("td").nth(3)
    assert expiring.inner_text().endswith("(within 7 days)")
    lasting = panel.locator("tbody tr", has_text="5.000000").locator("td").nth(3)
    assert lasting.inner_text() == "never"
    assert page.locator("#balance").inner_text() == "15.000000"
    screenshot(page, "dashboard-lots")


def test_alerts_are_saved_and_the_signing_secret_is_shown_once(page: Any, stack: LocalStack):
    sub = user()
    hook = f"{stack.base_url}/hooks/{sub}"  # http to loopback: allowed locally
    sign_in(page, sub)
    page.get_by_role("link", name="Alerts").click()
    page.get_by_label("Low balance below (credits)").fill("5.00")
    page.get_by_label("Monthly cap thresholds (% of cap)").fill("80, 100")
    page.get_by_label("Webhook URL (optional)").fill(hook)
    page.get_by_role("button", name="Save alerts").click()
    page.get_by_text("Alert settings saved.").wait_for()
    secret = page.locator("#webhook-secret").inner_text()
    assert secret.startswith("whsec_") and len(secret) >= 24
    assert page.get_by_label("Low balance below (credits)").input_value() == "5.000000"
    with api(stack, sub) as client:
        saved = client.get("/credits/alerts")
    assert saved.status_code == 200
    doc = saved.json()
    assert (doc["low_balance"], doc["cap_percent"], doc["webhook_url"]) == (
        "5.000000", [80, 100], hook)
    assert secret not in saved.text  # shown once: the GET never carries it
    screenshot(page, "alerts")
    page.get_by_role("button", name="Done").click()
    page.reload()
    page.get_by_label("Webhook URL (optional)").wait_for()
    assert page.get_by_label("Webhook URL (optional)").input_value() == hook
    assert secret not in page.content()
    assert "A signing secret is set" in page.locator("#alert-secret-state").inner_text()
    page.get_by_label("Make a new signing secret").check()
    page.get_by_role("button", name="Save alerts").click()
    page.locator("#webhook-secret").wait_for()
    rotated = page.locator("#webhook-secret").inner_text()
    assert rotated.startswith("whsec_") and rotated != secret
    page.get_by_role("button", name="Done").click()

    page.get_by_label("Low balance below (credits)").fill("")
    page.get_by_label("Monthly cap thresholds (% of cap)").fill("")
    page.get_by_label("Webhook URL (optional)").fill("")
    page.get_by_role("button", name="Save alerts").click()
    page.get_by_text("Alert settings saved.").wait_for()
    with api(stack, sub) as client:
        doc = client.get("/credits/alerts").json()
    assert (doc["low_balance"], doc["cap_percent"], doc["webhook_url"]) == (None, [], None)


def test_a_card_is_saved_and_auto_top_up_switched_on(page: Any, stack: LocalStack):
    sub = user()
    sign_in(page, sub)
    page.get_by_role("link", name="Buy credits").click()
    page.get_by_role("button", name="Save a card for auto top-up").click()
    # The stand-in completes the setup-mode session, sends its webhook, redirects back.
    page.wait_for_url(re.compile(r".*/console/#/buy$"))
    page.locator("#notice").filter(has_text="Card saved").wait_for()
    page.locator("#topup-card").filter(has_text="Saved card:").wait_for()
    page.get_by_role("button", name="Replace the saved card").wait_for()
    page.get_by_label("Top up automatically").check()
    page.get_by_label("When available credits fall below").fill("5.00")
    page.get_by_label("Buy (USD)").fill("10.00")
    page.get_by_label("At most per month (USD)").fill("50.00")
    page.get_by_role("button", name="Save auto top-up").click()
    page.get_by_text("Auto top-up on: 10.000000 when available falls below 5.000000.").wait_for()
    with api(stack, sub) as client:
        doc = client.get("/credits/auto-topup").json()
    assert (doc["enabled"], doc["threshold"], doc["amount"], doc["monthly_limit"]) == (
        True, "5.000000", "10.000000", "50.000000")
    screenshot(page, "buy")
    page.reload()
    page.get_by_label("Top up automatically").wait_for()
    assert page.get_by_label("Top up automatically").is_checked()
    assert page.get_by_label("Buy (USD)").input_value() == "10.000000"
