"""Bad input through the local stack's HTTP server (what `make dev` serves): deep nesting
and non-finite numbers are a 400 in the OpenAI shape on several routes, never a 500."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

API = "/api/v1/llm"
DEEP = "[" * 5000 + "]" * 5000


@pytest.fixture(scope="module")
def http(stack: Any) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=stack.base_url + API, timeout=30) as client:
        yield client


@pytest.mark.parametrize(
    ("method", "path", "admin", "raw"),
    [
        ("POST", "/chat/completions", False, '{"model": "auto", "messages": ' + DEEP + "}"),
        ("POST", "/chat/completions", False,
         '{"model": "auto", "messages": [{"role": "user", "content": "hi"}], '
         '"max_tokens": Infinity}'),
        ("PUT", "/credits/monthly-cap", False, '{"monthly_cap": NaN}'),
        ("POST", "/admin/users/someone/credits", True, '{"amount": 1e999}'),
        ("POST", "/byok/keys", False, '{"provider": ' + DEEP + "}"),
    ],
)
def test_deep_or_non_finite_json_is_a_400(stack, http, method, path, admin, raw):
    token = stack.issue_token("e2e-bad-input", admin=admin)
    resp = http.request(method, path, content=raw, headers={
        "Authorization": f"Bearer {token}", "Content-Type": "application/json"})
    assert resp.status_code == 400, resp.text
    error = resp.json()["error"]
    assert set(error) == {"message", "type", "code", "param"}
    assert error["code"] in ("json_too_deep", "invalid_number")
