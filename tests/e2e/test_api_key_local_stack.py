"""A real API key end to end through the local stack: created with POST /keys (a login
JWT), authenticated by the real Lambda authorizer (ApiKeysService), used with the official
`openai` SDK, charged on the key's usage; revoked -> 401; a key may not manage keys."""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import httpx
import openai
import pytest

API = "/api/v1/llm"
BALANCED = "together_ai/meta-llama/Llama-3.3-70B-Instruct-Turbo"
USER = "key-e2e-user"
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


def create_key(http: httpx.Client, login: dict[str, str], name: str) -> dict[str, Any]:
    resp = http.post("/keys", headers=login, json={"name": name, "limit": "2"})
    assert resp.status_code == 201, resp.text
    return dict(resp.json())


def test_a_key_from_post_keys_completes_streams_and_lists_models_with_the_sdk(
    stack: Any, http: httpx.Client, login: dict[str, str]
) -> None:
    created = create_key(http, login, "sdk")
    secret = created["key"]
    client = openai.OpenAI(base_url=stack.base_url + API, api_key=secret, max_retries=0)

    raw = client.chat.completions.with_raw_response.create(
        model=BALANCED, messages=[{"role": "user", "content": "Hello with a key"}])
    assert raw.parse().choices[0].message.content
    charged = Decimal(raw.headers["x-credits-charged"])
    assert charged > 0

    # Issue 12: the usage chunk comes only when asked (it was always sent).
    stream = client.chat.completions.create(
        model=BALANCED, messages=[{"role": "user", "content": "stream"}], stream=True,
        stream_options={"include_usage": True})
    chunks = list(stream)
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0
    assert BALANCED in {m.id for m in client.models.list()}

    mine = http.get(f"/keys/{created['id']}", headers=login).json()
    assert Decimal(mine["usage"]) > charged  # the completion and the stream
    assert Decimal(mine["limit_remaining"]) == Decimal(2) - Decimal(mine["usage"])
    history = http.get("/credits/history", headers=login,
                       params={"key_id": created["id"]}).json()["items"]
    assert len(history) == 2 and all(i["key_id"] == created["id"] for i in history)
    assert Decimal(mine["usage"]) == -sum(Decimal(i["amount"]) for i in history)


def test_a_revoked_key_is_401_and_a_key_may_not_create_keys(
    stack: Any, http: httpx.Client, login: dict[str, str]
) -> None:
    created = create_key(http, login, "short-lived")
    key = bearer(created["key"])
    assert http.get("/key", headers=key).status_code == 200
    denied = http.post("/keys", headers=key, json={"name": "from a key"})
    assert denied.status_code == 403, denied.text
    assert http.delete(f"/keys/{created['id']}", headers=login).status_code in (200, 204)
    client = openai.OpenAI(base_url=stack.base_url + API, api_key=created["key"], max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        client.chat.completions.create(model=BALANCED,
                                       messages=[{"role": "user", "content": "x"}])
