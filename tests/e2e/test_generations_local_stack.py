"""GET /generations/{request_id} through the local stack (what `make dev` serves): the
official openai SDK chats, then the charge is read back by the response's X-Request-Id,
with a login token and with an API key, through the real authorizer."""

from __future__ import annotations

import time
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import httpx
import openai
import pytest

API = "/api/v1/llm"
BALANCED = "together_ai/meta-llama/Llama-3.3-70B-Instruct-Turbo"
USER = "generations-e2e"
pytestmark = pytest.mark.filterwarnings("ignore:No application metrics:UserWarning")


@pytest.fixture(scope="module")
def http(stack: Any) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=stack.base_url + API, timeout=30) as client:
        yield client


def bearer(credential: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {credential}"}


@pytest.fixture(scope="module")
def login(stack: Any, http: httpx.Client) -> dict[str, str]:
    admin = bearer(stack.issue_token("ops", admin=True))
    user = bearer(stack.issue_token(USER))
    http.get("/credits", headers=user)
    http.patch(f"/admin/users/{USER}", json={"tier": "starter"}, headers=admin)
    http.post(f"/admin/users/{USER}/credits", json={"amount": "5"}, headers=admin)
    return user


def balance(http: httpx.Client, login: dict[str, str]) -> Decimal:
    return Decimal(http.get("/credits", headers=login).json()["balance"])


def committed(http: httpx.Client, request_id: str, headers: dict[str, str]) -> dict[str, Any]:
    """The generation once its charge is committed (a stream may settle just after the
    client has read [DONE]: ``pending`` until then)."""
    deadline = time.monotonic() + 10
    while True:
        resp = http.get(f"/generations/{request_id}", headers=headers)
        assert resp.status_code == 200, resp.text
        data: dict[str, Any] = resp.json()["data"]
        if data["status"] != "pending" or time.monotonic() > deadline:
            return data
        time.sleep(0.05)


def test_a_completion_is_read_back_by_its_request_id_with_a_token_and_a_key(
    stack: Any, http: httpx.Client, login: dict[str, str]
) -> None:
    created = http.post("/keys", headers=login, json={"name": "generations"}).json()
    client = openai.OpenAI(base_url=stack.base_url + API, api_key=created["key"],
                           max_retries=0)
    before = balance(http, login)
    raw = client.chat.completions.with_raw_response.create(
        model=BALANCED, messages=[{"role": "user", "content": "Hello, generations"}])
    completion = raw.parse()
    request_id = raw.headers["x-request-id"]

    data = committed(http, request_id, bearer(created["key"]))
    assert data["id"] == request_id and data["status"] == "settled"
    assert data["cost"] == raw.headers["x-credits-charged"]
    assert data["key_id"] == created["id"] and data["model"] == BALANCED
    assert completion.usage is not None
    assert (data["prompt_tokens"], data["completion_tokens"]) == (
        completion.usage.prompt_tokens, completion.usage.completion_tokens)
    assert balance(http, login) == before - Decimal(data["cost"])
    # the user's login token reads the same record
    assert http.get(f"/generations/{request_id}", headers=login).json()["data"] == data

    # another user: the same 404 as an id nobody has
    other = bearer(stack.issue_token("generations-e2e-other"))
    theirs = http.get(f"/generations/{request_id}", headers=other)
    nobody = http.get("/generations/00000000-0000-4000-8000-000000000000", headers=other)
    assert theirs.status_code == nobody.status_code == 404
    assert theirs.json() == nobody.json()
    assert theirs.json()["error"]["code"] == "generation_not_found"


def test_a_stream_that_fails_partway_reads_back_partial(
    stack: Any, http: httpx.Client, login: dict[str, str]
) -> None:
    client = openai.OpenAI(base_url=stack.base_url + API,
                           api_key=login["Authorization"].removeprefix("Bearer "),
                           max_retries=0)
    words = " ".join(f"word{i}" for i in range(40))
    fault = "[[dev-upstream-fault:stream-error]]"  # some chunks, then an error event
    before = balance(http, login)
    with client.chat.completions.with_streaming_response.create(
        model=BALANCED, stream=True,
        messages=[{"role": "user", "content": f"Repeat: {words} {fault}"}],
    ) as resp:
        request_id = resp.headers["x-request-id"]
        body = resp.read().decode()
    assert "upstream_stream_interrupted" in body and body.rstrip().endswith("data: [DONE]")
    data = committed(http, request_id, login)
    assert data["status"] == "partial"
    charged = Decimal(data["cost"])
    assert Decimal(0) < charged < Decimal(data["hold"])
    assert balance(http, login) == before - charged


def test_a_request_that_failed_upstream_is_404(
    stack: Any, http: httpx.Client, login: dict[str, str]
) -> None:
    resp = http.post("/chat/completions", headers=login, json={
        "model": BALANCED,
        "messages": [{"role": "user", "content": "[[dev-upstream-fault:500]]"}]})
    assert resp.status_code == 502
    request_id = resp.headers["x-amzn-requestid"]
    missing = http.get(f"/generations/{request_id}", headers=login)
    assert missing.status_code == 404, missing.text
