"""POST /chat/completions through the real handler, on moto, against the dev upstream."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from llmcredits import bootstrap
from llmcredits.domain.pricing import catalog

from tests.support import event, invoke, response_headers

BALANCED = "together_ai/meta-llama/Llama-3.3-70B-Instruct-Turbo"
PRECISION = "openai/gpt-4o"
ADMIN = {"sub": "ops", "scopes": ["llmcredits/admin"]}
HELLO = [{"role": "user", "content": "Say hello to the metering layer, please."}]


def chat(user, body, headers=None, raw=None):
    return invoke("chat_completions", event(
        "POST", "/api/v1/llm/chat/completions", body=None if raw else body, raw_body=raw,
        headers=headers, sub=user))


def setup_user(user, amount="10", tier="starter", cap=None):
    invoke("credits_get", event("GET", "/api/v1/llm/credits", sub=user))
    patch = {"tier": tier} if cap is None else {"tier": tier, "monthly_cap": cap}
    invoke("admin_user_patch", event("PATCH", f"/api/v1/llm/admin/users/{user}",
                                     path_params={"user_id": user}, body=patch, **ADMIN))
    if Decimal(amount) > 0:
        invoke("admin_user_credits_post", event(
            "POST", f"/api/v1/llm/admin/users/{user}/credits", body={"amount": amount},
            path_params={"user_id": user}, **ADMIN))


def account(user):
    return invoke("credits_get", event("GET", "/api/v1/llm/credits", sub=user))[2]


def test_completion_is_charged_exactly_by_the_formula(upstream):
    setup_user("ann")
    status, headers, body = chat("ann", {"model": BALANCED, "messages": HELLO})
    assert status == 200, body
    usage = body["usage"]
    route = catalog().resolve(BALANCED, None, "starter")
    expected = catalog().charge(route, None, "starter", usage["prompt_tokens"],
                                usage["completion_tokens"])
    assert expected > 0
    assert headers["X-Credits-Charged"] == f"{expected:.6f}"
    assert Decimal(str(usage["cost"])) == expected
    assert headers["X-Credits-Remaining"] == f"{Decimal(10) - expected:.6f}"
    acct = account("ann")
    assert acct["balance"] == headers["X-Credits-Remaining"] and acct["held"] == "0.000000"
    # the upstream got the catalog's upstream model, clipped max_tokens, our master key
    sent = upstream.requests[-1]
    assert sent.body["model"] == route.upstream_model and sent.body["max_tokens"] == 4000
    assert sent.headers["authorization"] == "Bearer sk-master"
    # a second request: remaining falls by exactly what was charged
    status, h2, _ = chat("ann", {"model": "auto", "messages": HELLO, "max_tokens": 5})
    assert status == 200
    assert Decimal(h2["X-Credits-Remaining"]) == (
        Decimal(headers["X-Credits-Remaining"]) - Decimal(h2["X-Credits-Charged"]))
    hist = invoke("credits_history_get", event("GET", "/api/v1/llm/credits/history",
                                               sub="ann", query={"type": "usage"}))[2]
    assert len(hist["items"]) == 2
    entry = hist["items"][1]
    assert entry["provider"] == "together" and entry["model"] == BALANCED
    assert entry["cost"] == headers["X-Credits-Charged"]
    assert entry["metadata"]["prompt_tokens"] == usage["prompt_tokens"]


def stream_events(user, body):
    from llmcredits.openapi_doc import import_handler

    from tests.support import FUNCTIONS, Context
    evt = event("POST", "/api/v1/llm/chat/completions", body={**body, "stream": True}, sub=user)
    resp = import_handler(FUNCTIONS / "chat_completions" / "app.py").lambda_handler(evt, Context())
    events = [line[6:] for line in resp["body"].split("\n\n") if line.startswith("data: ")]
    return resp, events


def usage_cost(user):
    entry = invoke("credits_history_get", event("GET", "/api/v1/llm/credits/history",
                                                sub=user, query={"type": "usage"}))[2]["items"][0]
    return entry["cost"]


# Issue 12 (migrated): the usage chunk was forced on every stream (it broke the SDK's
# ``chunk.choices[0]`` loop); now it comes only with stream_options.include_usage.
def test_stream_without_include_usage_has_no_usage_chunk(upstream):
    setup_user("ben")
    resp, events = stream_events("ben", {"model": BALANCED, "messages": HELLO})
    assert resp["statusCode"] == 200
    assert response_headers(resp)["Content-Type"] == "text/event-stream"
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert all(c["choices"] and "usage" not in c for c in chunks)  # chunk.choices[0] works
    request_id = resp["headers"]["X-Request-Id"]
    assert {c["id"] for c in chunks} == {request_id}
    assert {c["object"] for c in chunks} == {"chat.completion.chunk"}
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks)
    assert text.startswith("[dev upstream]")
    # the upstream is always asked for usage: the settle is exact
    assert upstream.requests[-1].body["stream_options"] == {"include_usage": True}
    assert Decimal(usage_cost("ben")) > 0


def test_stream_with_include_usage_ends_with_usage_and_cost(upstream):
    setup_user("bea")
    resp, events = stream_events("bea", {"model": BALANCED, "messages": HELLO,
                                         "stream_options": {"include_usage": True}})
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    *content, last = chunks
    assert last["choices"] == [] and last["id"] == resp["headers"]["X-Request-Id"]
    assert all(c["choices"] and c["usage"] is None for c in content)
    usage = last["usage"]
    route = catalog().resolve(BALANCED, None, "starter")
    expected = catalog().charge(route, None, "starter", usage["prompt_tokens"],
                                usage["completion_tokens"])
    assert f"{Decimal(str(usage['cost'])):.6f}" == f"{expected:.6f}" == usage_cost("bea")
    assert account("bea")["balance"] == f"{Decimal(10) - expected:.6f}"
    assert account("bea")["held"] == "0.000000"


def test_insufficient_credits_is_402_and_nothing_goes_upstream(upstream):
    setup_user("cat", amount="0")
    status, _, body = chat("cat", {"model": BALANCED, "messages": HELLO})
    assert status == 402 and body["error"]["code"] == "insufficient_credits"
    assert upstream.requests == []
    assert account("cat")["held"] == "0.000000"


def test_monthly_cap_is_402(upstream):
    setup_user("dan", amount="10", cap="0.000001")
    status, _, body = chat("dan", {"model": BALANCED, "messages": HELLO})
    assert status == 402 and body["error"]["code"] == "monthly_cap_reached"
    assert upstream.requests == []


def test_model_above_tier_is_403(upstream):
    setup_user("eve", tier="free")
    status, _, body = chat("eve", {"model": PRECISION, "messages": HELLO})
    assert status == 403 and body["error"]["code"] == "model_not_allowed_for_tier"
    status, _, body = chat("eve", {"model": "auto", "messages": HELLO},
                           headers={"X-Power-Level": "balanced"})
    assert status == 403
    assert upstream.requests == []


def test_free_tier_eleventh_request_in_a_minute_is_429(upstream):
    setup_user("fay", amount="0", tier="free")
    if datetime.now(UTC).second > 50:  # keep all eleven requests inside one minute
        time.sleep(61 - datetime.now(UTC).second)
    for _ in range(10):
        status, headers, body = chat("fay", {"model": "auto", "messages": HELLO})
        assert status == 200, body
        assert headers["X-Credits-Charged"] == "0.000000"  # eco on free: platform absorbs
    status, headers, body = chat("fay", {"model": "auto", "messages": HELLO})
    assert status == 429 and body["error"]["code"] == "rate_limited"
    assert 1 <= int(headers["Retry-After"]) <= 60
    assert len(upstream.requests) == 10


@pytest.mark.parametrize(
    "body",
    [
        {"model": BALANCED, "messages": []},
        {"model": BALANCED, "messages": "hi"},
        {"model": BALANCED, "messages": [{"role": "wizard", "content": "x"}]},
        {"model": BALANCED, "messages": [{"role": "user"}]},
        {"model": "no-such-model", "messages": HELLO},
        {"model": BALANCED, "messages": HELLO, "max_tokens": -1},
        {"model": BALANCED, "messages": HELLO, "max_tokens": 0},
        {"model": BALANCED, "messages": HELLO, "max_tokens": 10.5},
        {"model": BALANCED, "messages": HELLO, "max_tokens": "ten"},
        {"model": BALANCED, "messages": HELLO, "power_level": "turbo"},
        {"model": BALANCED, "messages": HELLO, "power_level": "eco"},
        {"model": BALANCED, "messages": HELLO, "api_key": "sk-steal"},
        {"model": BALANCED, "messages": HELLO, "api_base": "http://evil"},
        {"model": BALANCED, "messages": HELLO, "n": 100},
        {"messages": HELLO},
    ],
)
def test_invalid_requests_are_400_and_free(upstream, body):
    setup_user("gus")
    status, _, resp = chat("gus", body)
    assert status == 400, resp
    assert set(resp["error"]) == {"message", "type", "code", "param"}
    assert upstream.requests == []
    assert account("gus")["balance"] == "10.000000"


def test_malformed_json_and_bad_power_header_are_400(upstream):
    setup_user("hal")
    assert chat("hal", None, raw='{"model": ')[0] == 400
    status, _, _ = chat("hal", {"model": "auto", "messages": HELLO},
                        headers={"X-Power-Level": "ludicrous"})
    assert status == 400
    assert upstream.requests == []


def test_oversized_body_is_413(upstream):
    setup_user("ida")
    big = [{"role": "user", "content": "x" * 1_100_000}]
    status, _, body = chat("ida", {"model": BALANCED, "messages": big})
    assert status == 413 and body["error"]["code"] == "request_too_large"


@pytest.mark.parametrize(("fault", "status"), [("500", 502), ("garbage", 502),
                                                ("timeout", 504), ("503", 502)])
def test_upstream_failure_releases_the_hold_and_charges_nothing(upstream, fault, status):
    setup_user("jon")
    upstream.inject(fault, delay=3 if fault == "timeout" else None)
    code, headers, body = chat("jon", {"model": BALANCED, "messages": HELLO})
    assert code == status, body
    assert "X-Credits-Charged" not in headers
    acct = account("jon")
    assert acct["balance"] == "10.000000" and acct["held"] == "0.000000"
    assert acct["available"] == "10.000000"
    hist = invoke("credits_history_get", event("GET", "/api/v1/llm/credits/history",
                                               sub="jon", query={"type": "usage"}))[2]
    assert hist["items"] == []


def test_upstream_without_usage_charges_at_most_the_hold(upstream):
    setup_user("kim")
    upstream.inject("no-usage")
    status, headers, _body = chat("kim", {"model": BALANCED, "messages": HELLO,
                                         "max_tokens": 10})
    assert status == 200
    charged = Decimal(headers["X-Credits-Charged"])
    assert 0 < charged < Decimal("0.01")
    assert account("kim")["held"] == "0.000000"


def test_sweeper_releases_a_hold_left_by_a_request_that_died(upstream):
    setup_user("lee")
    ledger = bootstrap.ledger_service()
    acct = ledger.account("lee")
    # A request reserved 2 credits 20 minutes ago and its Lambda died before settling
    # (issue 12: a streamed request may live 15 minutes, so the cutoff is 16; was 10/3).
    old = datetime.now(UTC) - timedelta(minutes=20)
    from llmcredits.services.ledger import LedgerService

    past = LedgerService(ledger._store, clock=lambda: old)
    past.reserve(acct, Decimal(2), rate_limit=None, request_id="died")
    fresh = ledger.reserve(ledger.account("lee"), Decimal(1), rate_limit=None,
                           request_id="alive")
    assert account("lee")["held"] == "3.000000"
    from llmcredits.openapi_doc import import_handler

    from tests.support import FUNCTIONS, Context

    sweeper = import_handler(FUNCTIONS / "hold_sweeper" / "app.py")
    assert sweeper.lambda_handler({}, Context()) == {"released": 1, "settled": 0}
    acct = account("lee")
    assert acct["held"] == "1.000000" and acct["balance"] == "10.000000"
    assert sweeper.lambda_handler({}, Context()) == {"released": 0, "settled": 0}
    ledger.release(fresh)
    assert account("lee")["held"] == "0.000000"


def test_missing_upstream_setting_is_a_clear_503(aws, monkeypatch):
    monkeypatch.delenv("LITELLM_PROXY_URL", raising=False)
    bootstrap.reset()
    setup_user("mia")
    status, _, body = chat("mia", {"model": BALANCED, "messages": HELLO})
    assert status == 503 and body["error"]["code"] == "not_configured"
    assert account("mia")["held"] == "0.000000"
