"""Alerts on the local stack (issue 13 must-show), on the embedded store and DynamoDB Local.

16 concurrent chat requests through the REST API take ``available`` below
``low_balance``; the stack's stream worker feeds the table's stream to the
AccountEventsFunction as Lambda's event source mapping would (filter, batches, partial
failures). Exactly one ``balance.low`` reaches a loopback receiver, with a valid
signature; a credit back over the threshold sends ``balance.recovered``.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal

import httpx
import pytest
from llmcredits import webhooks
from llmcredits.local.server import LocalStack

from tests.support import ROOT
from tests.webhook_receiver import Receiver

API = "/api/v1/llm"
MODEL = "together_ai/meta-llama/Llama-3.3-70B-Instruct-Turbo"
CONCURRENT = 16


@pytest.fixture(params=["embedded", "dynamodb_local"])
def alerts_stack(request: pytest.FixtureRequest) -> Iterator[LocalStack]:
    overrides: dict[str, str] = {}
    if request.param == "dynamodb_local":
        overrides["DYNAMODB_ENDPOINT"] = request.getfixturevalue("dynamodb_local_endpoint")
    with LocalStack(ROOT / "template.yaml", port=0, env_overrides=overrides,
                    stack_name=f"alerts-e2e-{uuid.uuid4().hex[:8]}",
                    stream_poll_interval=0.05) as stack:
        yield stack


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


def test_concurrent_chats_crossing_low_balance_send_one_signed_alert(alerts_stack, receiver):
    stack = alerts_stack
    assert any(w.event.function_id == "AccountEventsFunction" for w in stack.stream_workers())
    user = f"alerts-{uuid.uuid4().hex[:6]}"
    auth = {"Authorization": f"Bearer {stack.issue_token(user)}"}
    admin = {"Authorization": f"Bearer {stack.issue_token('ops', admin=True)}"}
    chat = {"model": MODEL, "max_tokens": 40,
            "messages": [{"role": "user", "content": "concurrent alert request"}]}
    with httpx.Client(base_url=stack.base_url + API, timeout=60) as http:
        assert http.get("/credits", headers=auth).status_code == 200
        assert http.patch(f"/admin/users/{user}", json={"tier": "starter"},
                          headers=admin).status_code == 200
        assert http.post(f"/admin/users/{user}/credits", json={"amount": "1"},
                         headers=admin).status_code == 201
        warm = http.post("/chat/completions", json=chat, headers=auth)
        assert warm.status_code == 200, warm.text
        cost = Decimal(warm.headers["x-credits-charged"])
        balance = Decimal(http.get("/credits", headers=auth).json()["balance"])
        assert cost > 0
        # Half-way through the 16 requests' charges.
        low = balance - cost * (CONCURRENT // 2) - cost / 2
        put = http.put("/credits/alerts", headers=auth, json={
            "low_balance": f"{low:.6f}", "webhook_url": receiver.url})
        assert put.status_code == 200, put.text
        secret = put.json()["webhook_secret"]

        def one(_: int) -> int:
            return http.post("/chat/completions", json=chat, headers=auth).status_code

        with ThreadPoolExecutor(CONCURRENT) as pool:
            assert list(pool.map(one, range(CONCURRENT))) == [200] * CONCURRENT
        final = http.get("/credits", headers=auth).json()
        assert Decimal(final["available"]) < low
        assert stack.drain_streams(20)
        assert receiver.wait_for(1, 10)
        time.sleep(1)  # anything else would have come by now
        assert stack.drain_streams(20)
        events = receiver.events(secret)
        assert [e["type"] for e in events] == ["balance.low"], events
        assert events[0]["user_id"] == user
        assert events[0]["data"]["low_balance"] == f"{low:.6f}"

        # Money in, back over the threshold: recovered, signed the same way.
        assert http.post(f"/admin/users/{user}/credits", json={"amount": "5"},
                         headers=admin).status_code == 201
        assert stack.drain_streams(20)
        assert receiver.wait_for(2, 10)
        got = receiver.events(secret)
        assert [e["type"] for e in got] == ["balance.low", "balance.recovered"]
        assert len({e["id"] for e in got}) == 2
        # The header is what a receiver checks, byte for byte.
        headers, body = receiver.requests[1]
        assert webhooks.verify(body, headers["llmcredits-signature"], secret)["type"] == \
            "balance.recovered"
