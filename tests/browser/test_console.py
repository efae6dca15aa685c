"""The console in headless Chromium against the local stack: sign-in (authorization code
+ PKCE at the local issuer's login page), balance, a purchase through the dev Stripe
stand-in, BYOK keys, the streaming playground and its cost, untrusted text shown as
text, the security headers, and screenshots at 1280 and 375 px."""

from __future__ import annotations

import re
import uuid
from typing import Any

import httpx
import pytest
from llmcredits.local.server import LocalStack

from tests.browser.conftest import Watched, no_horizontal_scroll, screenshot, sign_in

pytestmark = pytest.mark.browser

API = "/api/v1/llm"
PAYLOAD = "<img src=x onerror=alert(1)>"


def user() -> str:
    return f"web-{uuid.uuid4().hex[:8]}"


def api(stack: LocalStack, sub: str, admin: bool = False) -> httpx.Client:
    return httpx.Client(base_url=stack.base_url + API, timeout=30,
                        headers={"Authorization": f"Bearer {stack.issue_token(sub, admin=admin)}"})


def test_sign_in_shows_a_new_balance_then_buying_25_shows_25(page: Any, stack: LocalStack):
    sub = user()
    sign_in(page, sub)
    assert page.locator("#balance").inner_text() == "0.000000"
    assert page.locator("#available").inner_text() == "0.000000"
    assert page.locator("#held").inner_text() == "0.000000"
    assert page.locator("#user").inner_text() == sub
    # The token is this tab's only: sessionStorage, never localStorage.
    assert page.evaluate("localStorage.length") == 0
    assert page.evaluate("sessionStorage.getItem('llmcredits.token')").count(".") == 2
    assert "code=" not in page.url and "state=" not in page.url
    screenshot(page, "dashboard-new")

    page.get_by_role("link", name="Buy credits").click()
    page.get_by_label("Amount (USD)").fill("25.00")
    page.get_by_role("button", name="Continue to payment").click()
    # The stand-in "pays", delivers the signed webhook, then redirects to success_url.
    page.wait_for_url(re.compile(r".*/console/#/dashboard$"))
    page.locator("#balance").filter(has_text="25.000000").wait_for()
    assert page.locator("#balance").inner_text() == "25.000000"
    assert "Payment received" in page.locator("#notice").inner_text()
    assert "checkout=" not in page.url
    screenshot(page, "dashboard")
    with api(stack, sub) as client:
        assert client.get("/credits").json()["balance"] == "25.000000"


def test_monthly_cap_is_set_and_removed(page: Any, stack: LocalStack, watched: Watched):
    watched.expect_failed_request(f"{API}/credits/monthly-cap")  # the -3 below: a 400
    sub = user()
    sign_in(page, sub)
    page.get_by_label("Monthly spending cap (credits)").fill("12.5")
    page.get_by_role("button", name="Save cap").click()
    page.locator("#monthly-cap").filter(has_text="12.500000").wait_for()
    with api(stack, sub) as client:
        assert client.get("/credits").json()["monthly_cap"] == "12.500000"
    page.get_by_label("Monthly spending cap (credits)").fill("-3")
    page.get_by_role("button", name="Save cap").click()
    assert page.get_by_role("alert").inner_text()  # the API's own message, shown
    page.get_by_role("button", name="Remove cap").click()
    page.locator("#monthly-cap").filter(has_text="none").wait_for()


def test_byok_key_is_added_masked_toggled_and_deleted(page: Any, stack: LocalStack):
    sub = user()
    secret = "sk-ant-api03-" + "Q" * 24 + "wxyz"
    sign_in(page, sub)
    page.get_by_role("link", name="Provider keys").click()
    page.get_by_label("Provider", exact=True).fill("anthropic")
    page.get_by_label("API key").fill(secret)
    page.get_by_role("button", name="Save key").click()
    row = page.locator("tr", has_text="anthropic")
    row.wait_for()
    assert "wxyz" in row.inner_text() and secret not in page.content()
    toggle = page.locator("#byok-enabled-anthropic")
    assert toggle.is_checked()
    toggle.uncheck()
    page.get_by_text("anthropic key disabled.").wait_for()
    with api(stack, sub) as client:
        assert client.get("/byok/keys").json()["keys"][0]["enabled"] is False
    delete = page.get_by_role("button", name="Delete anthropic key")
    delete.click()
    delete.click()  # the second click confirms
    page.get_by_text("No provider keys.").wait_for()
    with api(stack, sub) as client:
        assert client.get("/byok/keys").json()["keys"] == []


def test_playground_streams_a_reply_and_shows_its_exact_cost(page: Any, stack: LocalStack):
    sub = user()
    with api(stack, sub, admin=True) as admin:  # a paying tier: the reply has a price
        assert admin.patch(f"/admin/users/{sub}", json={"tier": "starter"}).status_code == 200
        resp = admin.post(f"/admin/users/{sub}/credits",
                          json={"amount": "5", "type": "bonus", "reason": "playground"})
        assert resp.status_code in (200, 201), resp.text
    sign_in(page, sub)
    page.get_by_role("link", name="Playground").click()
    page.locator("#pg-level").select_option("balanced")
    page.get_by_label("Message").fill("Hello from the browser")
    page.get_by_role("button", name="Send").click()
    page.locator("#pg-cost").wait_for()
    assert page.locator("#pg-reply").inner_text().startswith("[dev upstream]")
    shown = page.locator("#pg-cost").inner_text()
    with api(stack, sub) as client:
        usage = client.get("/credits/history", params={"type": "usage"}).json()["items"][0]
    assert shown == f"Cost: {usage['cost']} credits"
    assert re.fullmatch(r"Cost: \d+\.\d{6} credits", shown) and usage["cost"] != "0.000000"
    screenshot(page, "playground")


def test_usage_page_charts_days_and_models(page: Any, stack: LocalStack):
    sub = user()
    with api(stack, sub, admin=True) as admin:  # a paying tier, so the chart has heights
        assert admin.patch(f"/admin/users/{sub}", json={"tier": "starter"}).status_code == 200
        resp = admin.post(f"/admin/users/{sub}/credits",
                          json={"amount": "5", "type": "bonus", "reason": "usage"})
        assert resp.status_code in (200, 201), resp.text
    with api(stack, sub) as client:
        for _ in range(2):
            resp = client.post("/chat/completions", json={
                "model": "auto", "power_level": "balanced",
                "messages": [{"role": "user", "content": "count me"}]})
            assert resp.status_code == 200, resp.text
        model = resp.json()["model"]
    assert stack.drain_streams(20)
    sign_in(page, sub)
    page.get_by_role("link", name="Usage").click()
    page.locator("svg.chart").wait_for()
    assert page.locator("svg.chart rect.bar").count() == 7
    assert page.locator("#usage-requests").inner_text() == "2"
    with api(stack, sub) as client:
        report = client.get("/usage", params={"days": 7}).json()
    assert report["totals"]["cost"] != "0.000000"
    assert page.locator("#usage-cost").inner_text() == report["totals"]["cost"]
    today = page.locator("svg.chart rect.bar").nth(6)
    assert float(today.get_attribute("height") or 0) > 0
    assert today.locator("title").text_content() == (
        f"{report['by_day'][-1]['date']}: {report['by_day'][-1]['cost']} credits")
    assert page.locator("tr", has_text=model).count() >= 1
    page.get_by_role("button", name="30 days").click()
    page.locator("svg.chart rect.bar").nth(29).wait_for(state="attached")
    assert page.locator("svg.chart rect.bar").count() == 30
    page.get_by_role("button", name="7 days").click()
    page.locator("svg.chart rect.bar").nth(6).wait_for(state="attached")
    screenshot(page, "usage")
    page.set_viewport_size({"width": 375, "height": 900})
    assert no_horizontal_scroll(page)


def test_history_pages_with_a_cursor_and_filters_by_type(page: Any, stack: LocalStack):
    sub = user()
    with api(stack, sub, admin=True) as admin:
        for i in range(27):
            resp = admin.post(f"/admin/users/{sub}/credits",
                              json={"amount": "1", "type": "bonus", "reason": f"grant {i}"})
            assert resp.status_code in (200, 201), resp.text
        resp = admin.post(f"/admin/users/{sub}/credits",
                          json={"amount": "2", "type": "refund", "reason": "sorry"})
        assert resp.status_code in (200, 201), resp.text
    sign_in(page, sub)
    page.get_by_role("link", name="History").click()
    rows = page.locator("tbody tr")
    rows.nth(24).wait_for()
    assert rows.count() == 25
    page.get_by_role("button", name="Load more").click()
    rows.nth(27).wait_for()
    assert rows.count() == 28 and page.get_by_role("button", name="Load more").is_hidden()
    page.get_by_label("Type").select_option("refund")
    page.locator("tbody tr", has_text="sorry").wait_for()
    assert rows.count() == 1


def test_untrusted_text_is_shown_as_text_and_no_script_runs(
        page: Any, stack: LocalStack, watched: Watched):
    sub = user()
    with api(stack, sub, admin=True) as admin:
        resp = admin.post(f"/admin/users/{sub}/credits",
                          json={"amount": "1", "type": "bonus", "reason": PAYLOAD})
        assert resp.status_code in (200, 201), resp.text
    sign_in(page, sub)
    page.get_by_role("link", name="History").click()
    cell = page.locator("td", has_text=PAYLOAD)
    cell.wait_for()
    assert cell.inner_text() == PAYLOAD

    # A model id the API echoes back in its error message (a 400, on purpose).
    watched.expect_failed_request(f"{API}/chat/completions")
    page.get_by_role("link", name="Playground").click()
    page.get_by_label("Model", exact=True).fill(PAYLOAD)
    page.get_by_role("button", name="Send").click()
    alert = page.get_by_role("alert")
    alert.wait_for()
    assert PAYLOAD in alert.inner_text()
    page.wait_for_timeout(300)  # an onerror handler would have fired by now
    assert page.locator("main img").count() == 0
    assert watched.dialogs == []


def test_trusted_types_refuse_html_strings(page: Any, stack: LocalStack, watched: Watched):
    """The CSP's Trusted Types make any innerHTML of a string throw: the guard behind
    'untrusted text is rendered with textContent' holds for code we have not written yet."""
    sign_in(page, user())
    outcome = page.evaluate("""() => {
        const main = document.querySelector('main');
        try { main.innerHTML = '<img src=x onerror=alert(1)>'; return 'assigned'; }
        catch (e) { return e.name; } }""")
    assert outcome == "TypeError"
    # Chromium reports the refused assignment as a console error: expected here only.
    watched.errors[:] = [e for e in watched.errors if "TrustedHTML" not in e]


def test_a_callback_with_a_foreign_state_is_refused(page: Any, stack: LocalStack):
    """A code injected into the callback (login CSRF) is not exchanged: the state this
    tab stored before redirecting must come back."""
    page.goto("/console/?code=stolen&state=not-ours#/dashboard")
    page.get_by_role("alert").filter(has_text="does not match").wait_for()
    assert page.evaluate("sessionStorage.getItem('llmcredits.token')") is None
    assert "code=" not in page.url


def test_a_cancelled_checkout_says_nothing_was_charged(page: Any, stack: LocalStack):
    sign_in(page, user())
    page.goto("/console/?checkout=cancel#/buy")
    page.locator("#notice").filter(has_text="nothing was charged").wait_for()
    page.get_by_label("Amount (USD)").wait_for()
    assert "checkout=" not in page.url


def test_sign_out_forgets_the_token(page: Any, stack: LocalStack):
    sign_in(page, user())
    page.get_by_role("button", name="Sign out").click()
    page.get_by_role("button", name="Sign in").wait_for()
    assert page.evaluate("sessionStorage.length") == 0
    page.reload()
    page.get_by_role("button", name="Sign in").wait_for()


def test_keys_page_and_mobile_layout(page: Any, stack: LocalStack):
    sign_in(page, user())
    page.get_by_role("link", name="API keys").click()
    page.get_by_role("heading", name="Your keys").wait_for()
    page.get_by_text("No API keys yet.").wait_for()
    screenshot(page, "keys-empty")
    for name in ("Dashboard", "History", "Models", "Provider keys", "Buy credits"):
        page.set_viewport_size({"width": 375, "height": 900})
        page.get_by_role("link", name=name).click()
        page.get_by_role("heading", level=1).wait_for()
        page.wait_for_timeout(200)
        assert no_horizontal_scroll(page), f"{name} scrolls sideways at 375 px"


def test_keyboard_reaches_sign_in_and_the_login_form(page: Any, stack: LocalStack):
    page.goto("/console/")
    page.get_by_role("button", name="Sign in").wait_for()
    assert page.evaluate("document.activeElement.id") == "sign-in"
    page.keyboard.press("Enter")
    page.get_by_label("User name").wait_for()
    screenshot(page, "login")
    page.keyboard.type(user())  # the user name field has focus on arrival
    page.keyboard.press("Enter")
    page.locator("#balance").wait_for()


def test_console_is_served_with_a_strict_policy(stack: LocalStack):
    with httpx.Client(base_url=stack.base_url, timeout=30) as client:
        page = client.get("/console/")
        assert page.status_code == 200 and "text/html" in page.headers["content-type"]
        csp = page.headers["content-security-policy"]
        for directive in ("default-src 'self'", "script-src 'self'", "style-src 'self'",
                          "frame-ancestors 'none'", "object-src 'none'",
                          "require-trusted-types-for 'script'"):
            assert directive in csp
        assert "unsafe-inline" not in csp and "unsafe-eval" not in csp
        assert "<script>" not in page.text and " style=" not in page.text
        assert page.headers["x-content-type-options"] == "nosniff"
        assert page.headers["referrer-policy"] == "no-referrer"
        config = client.get("/console/config.json").json()
        assert config["authorization_endpoint"] == "/oidc/authorize"
        assert client.get("/console/js/main.js").headers["content-type"].startswith(
            "text/javascript")
        assert client.get("/console/../template.yaml").status_code == 404
        assert client.get("/console/nothing.js").status_code == 404
