"""The API keys page against a stand-in of DESIGN section 2's /keys contract, served by
Playwright's request interception (this branch has no /keys routes; the real round
trip is tests/browser/pending_keys.py, enabled after the apikeys merge). Checks what is
the console's own job: the secret shown once and copied, a key name of HTML shown as
text, limits as the API's strings, rotate and revoke sending the right calls."""

from __future__ import annotations

import json
import re
import secrets
from typing import Any

import pytest
from llmcredits.local.server import LocalStack

from tests.browser.conftest import Watched, screenshot, sign_in

pytestmark = pytest.mark.browser

PAYLOAD = "<img src=x onerror=alert(1)>"


class FakeKeysApi:
    """An in-memory /keys API in DESIGN's shapes; records every call it answers."""

    def __init__(self) -> None:
        self.keys: dict[str, dict[str, Any]] = {}
        self.calls: list[tuple[str, str, Any]] = []

    def handle(self, route: Any) -> None:
        req = route.request
        path = re.sub(r"^.*/api/v1/llm", "", req.url.split("?")[0])
        body = json.loads(req.post_data) if req.post_data else None
        self.calls.append((req.method, path, body))
        assert req.headers.get("authorization", "").startswith("Bearer ")
        parts = path.strip("/").split("/")
        if req.method == "GET" and parts == ["keys"]:
            return self._json(route, 200, {"keys": list(self.keys.values())})
        if req.method == "POST" and parts == ["keys"]:
            key_id = f"key_{secrets.token_hex(4)}"
            record = {"id": key_id, "name": body["name"], "masked_key": "llmc-…" + key_id[-4:],
                      "limit": "1.000000" if body.get("limit") else None,
                      "limit_reset": body.get("limit_reset", "never"), "usage": "0.000000",
                      "limit_remaining": "1.000000" if body.get("limit") else None,
                      "expires_at": body.get("expires_at"), "enabled": True,
                      "created_at": "2026-12-01T12:00:00Z", "last_used_at": None}
            self.keys[key_id] = record
            return self._json(route, 201, {"key": "llmc-" + secrets.token_urlsafe(32), **record})
        key_id = parts[1] if len(parts) > 1 else ""
        if key_id not in self.keys:
            return self._json(route, 404, {"error": {"message": "No such key.", "type":
                                                     "invalid_request_error", "code": "not_found",
                                                     "param": None}})
        if req.method == "PATCH":
            self.keys[key_id].update(body)
            return self._json(route, 200, self.keys[key_id])
        if req.method == "POST" and parts[2:] == ["rotate"]:
            return self._json(route, 201, {"key": "llmc-" + secrets.token_urlsafe(32),
                                           **self.keys[key_id]})
        if req.method == "DELETE":
            del self.keys[key_id]
            return route.fulfill(status=204, body="")
        raise AssertionError(f"unexpected {req.method} {path}")

    @staticmethod
    def _json(route: Any, status: int, doc: Any) -> None:
        route.fulfill(status=status, content_type="application/json", body=json.dumps(doc))


def test_keys_page_creates_copies_once_rotates_and_revokes(page: Any, stack: LocalStack):
    fake = FakeKeysApi()
    page.route(re.compile(r".*/api/v1/llm/keys(/.*)?(\?.*)?$"), fake.handle)
    sign_in(page, "keys-ui")
    page.get_by_role("link", name="API keys").click()
    page.get_by_text("No API keys yet.").wait_for()

    page.get_by_label("Name").fill(PAYLOAD)
    page.get_by_label("Spending limit (credits)").fill("1.00")
    page.get_by_label("Limit resets").select_option("monthly")
    page.get_by_label("balanced").check()
    page.get_by_role("button", name="Create key").click()
    secret = page.locator("#new-key-secret")
    secret.wait_for()
    value = secret.inner_text()
    assert value.startswith("llmc-")
    method, path, body = fake.calls[-2]  # the POST, then the list refresh
    assert (method, path) == ("POST", "/keys")
    assert body == {"name": PAYLOAD, "limit_reset": "monthly", "limit": "1.00",
                    "power_levels": ["balanced"]}  # the limit as typed: a string

    page.get_by_role("button", name="Copy").click()
    page.get_by_text("Copied.").wait_for()
    assert page.evaluate("navigator.clipboard.readText()") == value

    row = page.locator("tbody tr", has_text=PAYLOAD)
    row.wait_for()
    assert page.locator("main img").count() == 0
    cells = row.locator("td").all_inner_texts()
    assert cells[0] == PAYLOAD and cells[2] == "1.000000" and cells[3] == "monthly"
    screenshot(page, "keys-created")
    page.get_by_role("button", name="Done").click()
    assert value not in page.content()  # shown once

    page.get_by_label("On rotation, the old secret keeps working for").select_option("3600")
    rotate = page.get_by_role("button", name=f"Rotate key {PAYLOAD}")
    rotate.click()
    assert not any(c[1].endswith("/rotate") for c in fake.calls)  # one click only arms it
    rotate.click()
    page.locator("#new-key-secret").wait_for()
    rotated = page.locator("#new-key-secret").inner_text()
    assert rotated != value
    assert next(c for c in fake.calls if c[1].endswith("/rotate"))[2] == {"grace_seconds": 3600}

    page.get_by_role("button", name=f"Disable key {PAYLOAD}").click()
    page.get_by_role("button", name=f"Enable key {PAYLOAD}").wait_for()
    assert ("PATCH", f"/keys/{next(iter(fake.keys))}", {"enabled": False}) in fake.calls

    revoke = page.get_by_role("button", name=f"Revoke key {PAYLOAD}")
    revoke.click()
    revoke.click()
    page.get_by_text("No API keys yet.").wait_for()
    assert any(c[0] == "DELETE" for c in fake.calls) and fake.keys == {}


def test_a_key_error_shows_the_api_message(page: Any, stack: LocalStack, watched: Watched):
    watched.expect_failed_request("/api/v1/llm/keys")  # the 400 below, on purpose
    def refuse(route: Any) -> None:
        if route.request.method == "POST":
            return route.fulfill(status=400, content_type="application/json", body=json.dumps(
                {"error": {"message": f"Key name {PAYLOAD} is too fancy.", "type":
                           "invalid_request_error", "code": "invalid_request", "param": "name"}}))
        return route.fulfill(status=200, content_type="application/json", body='{"keys":[]}')

    page.route(re.compile(r".*/api/v1/llm/keys(\?.*)?$"), refuse)
    sign_in(page, "keys-ui-error")
    page.get_by_role("link", name="API keys").click()
    page.get_by_text("No API keys yet.").wait_for()
    page.get_by_label("Name").fill("x")
    page.get_by_role("button", name="Create key").click()
    alert = page.get_by_role("alert")
    alert.wait_for()
    assert alert.inner_text() == f"Key name {PAYLOAD} is too fancy."
