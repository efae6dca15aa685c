"""Chat emits its EMF metrics (integer micro-credits, never a float from money) and its
log lines carry the API Gateway request id as correlation id."""

from __future__ import annotations

import io
import json
import logging
from decimal import Decimal
from typing import Any

from llmcredits.http.api import logger, metrics, micro_credits

from tests.support import event, invoke

BALANCED = "together_ai/meta-llama/Llama-3.3-70B-Instruct-Turbo"
HELLO = [{"role": "user", "content": "Say hello to the metering layer, please."}]
ADMIN = {"sub": "ops", "scopes": ["llmcredits/admin"]}


def setup_user(user: str, amount: str) -> None:
    invoke("credits_get", event("GET", "/api/v1/llm/credits", sub=user))
    invoke("admin_user_patch", event("PATCH", f"/api/v1/llm/admin/users/{user}",
                                     path_params={"user_id": user}, body={"tier": "starter"},
                                     **ADMIN))
    if Decimal(amount) > 0:
        invoke("admin_user_credits_post", event(
            "POST", f"/api/v1/llm/admin/users/{user}/credits", body={"amount": amount},
            path_params={"user_id": user}, **ADMIN))


def chat_with_metrics(monkeypatch, capsys, user: str) -> tuple[int, dict, dict[str, Any]]:
    """One chat request with metrics enabled; its single EMF document from stdout."""
    capsys.readouterr()
    # With metrics disabled (conftest) Powertools never flushes, so earlier tests' metrics
    # are still in the shared set: start this invocation from an empty one.
    metrics.clear_metrics()
    monkeypatch.delenv("POWERTOOLS_METRICS_DISABLED", raising=False)
    status, headers, _ = invoke("chat_completions", event(
        "POST", "/api/v1/llm/chat/completions", body={"model": BALANCED, "messages": HELLO},
        sub=user))
    monkeypatch.setenv("POWERTOOLS_METRICS_DISABLED", "true")
    docs = []
    for line in capsys.readouterr().out.splitlines():
        try:
            doc = json.loads(line)
        except ValueError:
            continue
        if isinstance(doc, dict) and "_aws" in doc:
            docs.append(doc)
    assert len(docs) == 1, docs
    return status, headers, docs[0]


def metric_units(doc: dict[str, Any]) -> dict[str, str]:
    (directive,) = doc["_aws"]["CloudWatchMetrics"]
    assert directive["Namespace"] == "llmcredits"
    return {m["Name"]: m["Unit"] for m in directive["Metrics"]}


def values(doc: dict[str, Any], name: str) -> list[float]:
    value = doc[name]
    return value if isinstance(value, list) else [value]


def test_a_charged_completion_emits_credits_requests_holds_and_latency(
    upstream, monkeypatch, capsys
):
    setup_user("obs-ann", "10")
    status, headers, doc = chat_with_metrics(monkeypatch, capsys, "obs-ann")
    assert status == 200
    units = metric_units(doc)
    assert units == {
        "ChatRequests": "Count", "ChatCompletions": "Count", "HoldsReserved": "Count",
        "HoldsSettled": "Count", "CreditsChargedMicros": "Count",
        "UpstreamLatency": "Milliseconds",
    }
    assert doc["_aws"]["CloudWatchMetrics"][0]["Dimensions"] == [["service"]]
    assert doc["service"] == "llmcredits"
    charged = Decimal(headers["X-Credits-Charged"])
    assert charged > 0
    # exactly the charge in micro-credits: an integer count (EMF carries it as a JSON
    # number, a whole one, exact as a double up to 2**53), never a float of money
    assert values(doc, "CreditsChargedMicros") == [int(charged * 1_000_000)]
    assert all(float(v).is_integer() for v in values(doc, "CreditsChargedMicros"))
    assert values(doc, "ChatRequests") == values(doc, "ChatCompletions") == [1]
    assert values(doc, "HoldsReserved") == values(doc, "HoldsSettled") == [1]
    assert values(doc, "UpstreamLatency")[0] >= 0


def test_a_402_is_counted_in_total_and_by_code(upstream, monkeypatch, capsys):
    setup_user("obs-bob", "0")
    status, _, doc = chat_with_metrics(monkeypatch, capsys, "obs-bob")
    assert status == 402
    units = metric_units(doc)
    assert set(units) == {"ChatRequests", "PaymentRequired"}  # no hold was reserved
    assert values(doc, "PaymentRequired") == [1]
    assert doc["_aws"]["CloudWatchMetrics"][0]["Dimensions"] == [["service"], ["service", "code"]]
    assert doc["code"] == "insufficient_credits"


def test_an_upstream_failure_counts_a_released_hold(upstream, monkeypatch, capsys):
    setup_user("obs-cat", "10")
    upstream.inject("500")
    status, _, doc = chat_with_metrics(monkeypatch, capsys, "obs-cat")
    assert status == 502
    assert set(metric_units(doc)) == {"ChatRequests", "HoldsReserved", "HoldsReleased",
                                      "UpstreamFailures"}
    assert values(doc, "HoldsReserved") == values(doc, "HoldsReleased") == [1]


def test_micro_credits_is_exact_and_integer():
    assert micro_credits(Decimal("0.000001")) == 1
    assert micro_credits(Decimal("12.500000")) == 12_500_000
    assert micro_credits(Decimal("0")) == 0
    assert type(micro_credits(Decimal("3.141593"))) is int


def test_log_lines_carry_the_request_id_as_correlation_id(upstream, monkeypatch):
    setup_user("obs-dan", "10")
    buf = io.StringIO()
    handler = logger.registered_handler
    assert isinstance(handler, logging.StreamHandler)
    old = handler.setStream(buf)
    try:
        evt = event("POST", "/api/v1/llm/chat/completions",
                    body={"model": BALANCED, "messages": HELLO},
                    headers={"Authorization": "Bearer eyJhbGciOi.eyJzdWIiOiJkYW4i.c2ln"},
                    sub="obs-dan")
        status, _, _ = invoke("chat_completions", evt)
    finally:
        handler.setStream(old)
    assert status == 200
    records = [json.loads(line) for line in buf.getvalue().splitlines() if line.strip()]
    (done,) = [r for r in records if r["message"] == "chat completion"]
    assert done["correlation_id"] == evt["requestContext"]["requestId"]
    assert done["service"] == "llmcredits" and done["level"] == "INFO"
    assert done["upstream_ms"] >= 0 and Decimal(done["charged"]) > 0
    assert "eyJzdWIiOiJkYW4i" not in buf.getvalue()
