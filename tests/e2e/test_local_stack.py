"""A new user's first hour against the local stack, over real HTTP (issue 2 and 3 must-shows).

Uses the official `openai` SDK unchanged for chat and models.
"""

from __future__ import annotations

import json
from decimal import Decimal

import httpx
import openai
import pytest
from llmcredits.domain.pricing import catalog

API = "/api/v1/llm"
BALANCED = "together_ai/meta-llama/Llama-3.3-70B-Instruct-Turbo"


@pytest.fixture(scope="module")
def http(stack):
    with httpx.Client(base_url=stack.base_url + API, timeout=30) as client:
        yield client


def bearer(stack, sub, admin=False):
    return {"Authorization": f"Bearer {stack.issue_token(sub, admin=admin)}"}


def assert_openai_error(resp, status):
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert set(body["error"]) >= {"message", "type", "code", "param"}, body


def test_health_needs_no_token(http):
    resp = http.get("/health")
    assert resp.status_code == 200 and resp.json()["status"] == "ok"
    doc = http.get("/openapi.json").json()
    assert "/api/v1/llm/chat/completions" in doc["paths"]


def test_new_user_grant_history_and_errors(stack, http):
    user, admin = bearer(stack, "newbie"), bearer(stack, "ops", admin=True)
    resp = http.get("/credits", headers=user)
    assert resp.status_code == 200
    assert resp.json()["balance"] == "0.000000" and resp.json()["tier"] == "free"

    grant = {"amount": "10", "type": "bonus", "reason": "welcome"}
    headers = {**admin, "Idempotency-Key": "welcome-newbie"}
    first = http.post("/admin/users/newbie/credits", json=grant, headers=headers)
    again = http.post("/admin/users/newbie/credits", json=grant, headers=headers)
    assert first.status_code == 201 and again.status_code == 201
    assert again.json() == first.json()
    assert http.get("/credits", headers=user).json()["balance"] == "10.000000"
    items = http.get("/credits/history", headers=user).json()["items"]
    assert [i["type"] for i in items] == ["bonus"]

    assert_openai_error(http.get("/credits"), 401)
    assert_openai_error(http.get("/credits", headers={"Authorization": "Bearer nope"}), 401)
    assert_openai_error(http.post("/admin/users/newbie/credits", json=grant, headers=user), 403)
    assert_openai_error(http.get("/admin/users/newbie", headers=user), 403)
    for bad in ({"amount": "-5"}, {"amount": "ten"}, {"amount": "5", "type": "gift"}):
        assert_openai_error(http.post("/admin/users/newbie/credits", json=bad, headers=admin), 400)
    raw = http.post("/admin/users/newbie/credits", content=b'{"amount": ',
                    headers={**admin, "Content-Type": "application/json"})
    assert_openai_error(raw, 400)
    assert http.get("/credits", headers=user).json()["balance"] == "10.000000"


@pytest.fixture(scope="module")
def sdk_user(stack, http):
    admin = bearer(stack, "ops", admin=True)
    http.get("/credits", headers=bearer(stack, "sdk-user"))
    http.patch("/admin/users/sdk-user", json={"tier": "starter"}, headers=admin)
    http.post("/admin/users/sdk-user/credits", json={"amount": "5"}, headers=admin)
    return openai.OpenAI(base_url=stack.base_url + API,
                         api_key=stack.issue_token("sdk-user"), max_retries=0)


def test_openai_sdk_completion_is_charged_by_the_formula(sdk_user):
    raw = sdk_user.chat.completions.with_raw_response.create(
        model=BALANCED, messages=[{"role": "user", "content": "Hello from the SDK"}])
    completion = raw.parse()
    assert completion.choices[0].message.content
    usage = completion.usage
    route = catalog().resolve(BALANCED, None, "starter")
    expected = catalog().charge(route, None, "starter", usage.prompt_tokens,
                                usage.completion_tokens)
    assert raw.headers["x-credits-charged"] == f"{expected:.6f}"
    body = json.loads(raw.http_response.text, parse_float=Decimal)
    assert body["usage"]["cost"] == expected
    before = Decimal(raw.headers["x-credits-remaining"])

    second = sdk_user.chat.completions.with_raw_response.create(
        model="auto", messages=[{"role": "user", "content": "again"}], max_tokens=8)
    assert Decimal(second.headers["x-credits-remaining"]) == before - Decimal(
        second.headers["x-credits-charged"])


def test_openai_sdk_stream(sdk_user):
    # Issue 12: the usage chunk comes only when asked (it was always sent).
    stream = sdk_user.chat.completions.create(
        model=BALANCED, messages=[{"role": "user", "content": "stream please"}], stream=True,
        stream_options={"include_usage": True})
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text.startswith("[dev upstream]")
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0


def test_openai_sdk_models_list(sdk_user):
    models = sdk_user.models.list()
    ids = {m.id for m in models}
    assert BALANCED in ids and "openai/gpt-4o" in ids


def test_payment_and_tier_errors_over_http(stack, http, sdk_user):
    broke = openai.OpenAI(base_url=stack.base_url + API,
                          api_key=stack.issue_token("broke"), max_retries=0)
    admin = bearer(stack, "ops", admin=True)
    http.get("/credits", headers=bearer(stack, "broke"))
    http.patch("/admin/users/broke", json={"tier": "starter"}, headers=admin)
    with pytest.raises(openai.APIStatusError) as err:
        broke.chat.completions.create(model=BALANCED, messages=[{"role": "user", "content": "x"}])
    assert err.value.status_code == 402
    assert err.value.body["code"] == "insufficient_credits"
    with pytest.raises(openai.PermissionDeniedError):
        sdk_user.chat.completions.create(model="openai/gpt-4o",
                                         messages=[{"role": "user", "content": "x"}])
    with pytest.raises(openai.BadRequestError):
        sdk_user.chat.completions.create(model=BALANCED, messages=[], max_tokens=-1)
