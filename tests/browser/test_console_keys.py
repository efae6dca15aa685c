"""The API keys page in headless Chromium against the local stack's real /keys API
(DESIGN section 2): create a key with a limit, power levels and an HTML name, copy the
secret once, use it with the openai SDK, see its usage on the keys page and in the usage
page's chart and by-key breakdown, disable and enable it, rotate it with a grace period,
revoke it (the SDK then gets 401); the API's own messages shown; no script runs and no
errors in the browser console (the page fixture fails the test on either)."""

from __future__ import annotations

import re
import uuid
from typing import Any

import httpx
import openai
import pytest
from llmcredits.local.server import LocalStack

from tests.browser.conftest import Watched, no_horizontal_scroll, screenshot, sign_in

pytestmark = pytest.mark.browser

API = "/api/v1/llm"
PAYLOAD = "<img src=x onerror=alert(1)>"
SECRET_SHAPE = re.compile(r"llmc-[A-Za-z0-9_-]{43,}")


def api(stack: LocalStack, sub: str, admin: bool = False) -> httpx.Client:
    return httpx.Client(base_url=stack.base_url + API, timeout=30,
                        headers={"Authorization": f"Bearer {stack.issue_token(sub, admin=admin)}"})


def funded_user(stack: LocalStack) -> str:
    """A starter-tier account with 5 credits: its chat requests have a price."""
    sub = f"keys-{uuid.uuid4().hex[:8]}"
    with api(stack, sub, admin=True) as admin:
        assert admin.patch(f"/admin/users/{sub}", json={"tier": "starter"}).status_code == 200
        resp = admin.post(f"/admin/users/{sub}/credits",
                          json={"amount": "5", "type": "bonus", "reason": "keys"})
        assert resp.status_code in (200, 201), resp.text
    return sub


def sdk(stack: LocalStack, secret: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=stack.base_url + API, api_key=secret, max_retries=0)


def chat(stack: LocalStack, secret: str, level: str = "balanced") -> Any:
    return sdk(stack, secret).chat.completions.create(
        model="auto", messages=[{"role": "user", "content": "hi from a key"}],
        extra_body={"power_level": level})


def confirm(page: Any, name: str) -> None:
    """The two clicks of a confirm button (the first only arms it)."""
    button = page.get_by_role("button", name=name)
    button.click()
    button.click()


def test_create_copy_use_see_usage_rotate_and_revoke_a_key(page: Any, stack: LocalStack):
    sub = funded_user(stack)
    sign_in(page, sub)
    page.get_by_role("link", name="API keys").click()
    page.get_by_text("No API keys yet.").wait_for()
    page.get_by_label("Name").fill(PAYLOAD)
    page.get_by_label("Spending limit (credits)").fill("1.00")
    page.get_by_label("Limit resets").select_option("monthly")
    page.get_by_label("balanced").check()
    page.get_by_role("button", name="Create key").click()

    shown = page.locator("#new-key-secret")
    shown.wait_for()
    secret = shown.inner_text()
    assert SECRET_SHAPE.fullmatch(secret)
    page.get_by_role("button", name="Copy").click()
    page.get_by_text("Copied.").wait_for()
    assert page.evaluate("navigator.clipboard.readText()") == secret

    row = page.locator("tbody tr", has_text=PAYLOAD)
    row.wait_for()  # the HTML name is text in its cell, not an element
    assert page.locator("main img").count() == 0
    cells = row.locator("td").all_inner_texts()
    assert cells[0] == PAYLOAD and cells[2] == "1.000000" and cells[3] == "monthly"
    assert "balanced" in cells[7] and secret not in row.inner_text()
    with api(stack, sub) as client:
        (record,) = client.get("/keys").json()["keys"]
    assert (record["limit"], record["limit_reset"], record["power_levels"]) == (
        "1.000000", "monthly", ["balanced"])  # what the form sent, as strings
    screenshot(page, "keys-created")
    page.get_by_role("button", name="Done").click()
    assert secret not in page.content()  # shown once: gone from the page

    assert chat(stack, secret).choices[0].message.content
    with pytest.raises(openai.PermissionDeniedError):  # the key's power levels bind
        chat(stack, secret, level="eco")
    assert stack.drain_streams(20)

    page.reload()
    row = page.locator("tbody tr", has_text=PAYLOAD)
    row.wait_for()
    cells = row.locator("td").all_inner_texts()
    used, remaining = cells[4], cells[5]
    assert used != "0.000000" and re.fullmatch(r"\d+\.\d{6}", used)
    with api(stack, sub) as client:
        (record,) = client.get("/keys").json()["keys"]
    assert (used, remaining) == (record["usage"], record["limit_remaining"])
    assert remaining != "1.000000" and cells[8] != "never"  # last used: just now
    screenshot(page, "keys")

    page.get_by_role("link", name="Usage").click()
    page.locator("svg.chart").wait_for()
    by_key = page.locator("section", has=page.get_by_role("heading", name="By API key"))
    key_row = by_key.locator("tbody tr", has_text=PAYLOAD)
    key_row.wait_for()
    assert key_row.locator("td").nth(3).inner_text() == used  # the key's cost, exact
    share = key_row.locator("svg.share rect.bar")
    assert float(share.get_attribute("width") or 0) > 0  # the by-key chart's bar
    today = page.locator("svg.chart rect.bar").nth(6)
    assert float(today.get_attribute("height") or 0) > 0
    assert page.locator("main img").count() == 0
    screenshot(page, "usage")
    page.set_viewport_size({"width": 375, "height": 900})
    assert no_horizontal_scroll(page)
    page.set_viewport_size({"width": 1280, "height": 900})

    page.get_by_role("link", name="API keys").click()
    page.get_by_role("link", name=f"History of key {PAYLOAD}").click()
    with api(stack, sub) as client:
        mine = client.get("/credits/history", params={"key_id": record["id"]}).json()["items"]
    assert [e["type"] for e in mine] == ["usage"]  # the one chat the key paid for
    rows = page.locator("tbody tr")
    rows.first.wait_for()
    assert rows.count() == 1 and f"key {PAYLOAD}" in rows.first.inner_text()
    assert rows.first.locator("td").nth(2).inner_text() == mine[0]["amount"]
    assert page.locator("#history-key option:checked").inner_text() == PAYLOAD
    page.get_by_label("API key").select_option("")  # all entries: the bonus too
    page.locator("tbody tr", has_text="bonus").wait_for()
    assert page.locator("main img").count() == 0

    page.get_by_role("link", name="API keys").click()
    page.get_by_role("button", name=f"Disable key {PAYLOAD}").click()
    page.get_by_role("button", name=f"Enable key {PAYLOAD}").wait_for()
    with pytest.raises(openai.AuthenticationError):  # disabled binds on the next chat
        chat(stack, secret)
    page.get_by_role("button", name=f"Enable key {PAYLOAD}").click()
    page.get_by_role("button", name=f"Disable key {PAYLOAD}").wait_for()
    assert chat(stack, secret).choices[0].message.content

    page.get_by_label("On rotation, the old secret keeps working for").select_option("3600")
    confirm(page, f"Rotate key {PAYLOAD}")
    page.locator("#new-key-secret").wait_for()
    rotated = page.locator("#new-key-secret").inner_text()
    assert rotated != secret and SECRET_SHAPE.fullmatch(rotated)
    assert chat(stack, rotated).choices[0].message.content
    assert chat(stack, secret).choices[0].message.content  # the hour of grace
    page.get_by_role("button", name="Done").click()

    confirm(page, f"Revoke key {PAYLOAD}")
    page.get_by_text("No API keys yet.").wait_for()
    for old in (rotated, secret):
        with pytest.raises(openai.AuthenticationError):
            chat(stack, old)
    assert page.locator("main img").count() == 0


def test_a_rotation_without_grace_stops_the_old_secret(page: Any, stack: LocalStack):
    sub = funded_user(stack)
    sign_in(page, sub)
    page.get_by_role("link", name="API keys").click()
    page.get_by_label("Name").fill("ci")
    page.get_by_role("button", name="Create key").click()
    secret = page.locator("#new-key-secret").inner_text()
    page.locator("tbody tr", has_text="ci").wait_for()
    page.get_by_label("On rotation, the old secret keeps working for").select_option("0")
    rotate = page.get_by_role("button", name="Rotate key ci")
    rotate.click()
    assert chat(stack, secret).choices[0].message.content  # one click only arms it
    rotate.click()
    page.locator("#new-key-secret").filter(has_not_text=secret).wait_for()
    with pytest.raises(openai.AuthenticationError):
        chat(stack, secret)


def test_a_refused_key_shows_the_api_message(page: Any, stack: LocalStack, watched: Watched):
    watched.expect_failed_request(f"{API}/keys")  # the 400 below, on purpose
    sub = funded_user(stack)
    with api(stack, sub) as client:
        refused = client.post("/keys", json={"name": PAYLOAD, "limit": "-1"})
    assert refused.status_code == 400
    sign_in(page, sub)
    page.get_by_role("link", name="API keys").click()
    page.get_by_text("No API keys yet.").wait_for()
    page.get_by_label("Name").fill(PAYLOAD)
    page.get_by_label("Spending limit (credits)").fill("-1")
    page.get_by_role("button", name="Create key").click()
    alert = page.get_by_role("alert")
    alert.wait_for()
    assert alert.inner_text() == refused.json()["error"]["message"]
    assert page.locator("#new-key-secret").count() == 0
    page.get_by_text("No API keys yet.").wait_for()
