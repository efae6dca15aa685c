"""The stream the client gets (issue 12 items 5 and 6): ``n > 1`` and tool-call deltas
passed through untouched but for ``id``; a settle that cannot commit yet is said in the
usage chunk (a header can't say it once the body started) and applied once later."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import httpx
from llmcredits import bootstrap
from llmcredits.dal.upstream import LiteLLMUpstream
from llmcredits.domain.pricing import catalog
from llmcredits.models_chat import ChatCompletionRequest
from llmcredits.services.chat import ChatService

from tests.unit.test_chat_route import BALANCED, account, setup_user, usage_cost
from tests.unit.test_ledger_faults import faults  # noqa: F401 - the fixture
from tests.unit.test_ledger_faults import service as ledger_at

ROUTE = catalog().resolve(BALANCED, None, "starter")
CALL = {"index": 0, "id": "call_1", "type": "function",
        "function": {"name": "lookup", "arguments": ""}}


def chunk(choices: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    return {"id": "chatcmpl-up", "object": "chat.completion.chunk", "created": 1,
            "model": ROUTE.upstream_model, "choices": choices, **extra}


UPSTREAM = [
    chunk([{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None},
           {"index": 1, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]),
    chunk([{"index": 0, "delta": {"content": "Hel"}, "finish_reason": None}]),
    chunk([{"index": 1, "delta": {"tool_calls": [CALL]}, "finish_reason": None}]),
    chunk([{"index": 1, "delta": {"tool_calls": [{"index": 0, "function": {
        "arguments": '{"q":"ü"}'}}]}, "finish_reason": None}]),
    chunk([{"index": 0, "delta": {}, "finish_reason": "stop"},
           {"index": 1, "delta": {}, "finish_reason": "tool_calls"}]),
    chunk([], usage={"prompt_tokens": 20, "completion_tokens": 9, "total_tokens": 29}),
]


def service() -> ChatService:
    def body() -> Iterator[bytes]:
        for c in UPSTREAM:
            yield f"data: {json.dumps(c)}\n\n".encode()
        yield b"data: [DONE]\n\n"

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, headers={"content-type": "text/event-stream"},
                              content=body())

    upstream = LiteLLMUpstream("http://upstream.test", None,
                               client=httpx.Client(transport=httpx.MockTransport(handler)))
    return ChatService(bootstrap.ledger_service(), catalog(), upstream)


def request(**extra: Any) -> ChatCompletionRequest:
    return ChatCompletionRequest.model_validate({
        "model": BALANCED, "stream": True, "n": 2,
        "messages": [{"role": "user", "content": "Look it up"}],
        "tools": [{"type": "function", "function": {"name": "lookup", "parameters": {
            "type": "object", "properties": {"q": {"type": "string"}}}}}], **extra})


def events(stream: Iterator[str]) -> list[Any]:
    text = "".join(stream)
    return [json.loads(e[6:]) if e[6:] != "[DONE]" else "[DONE]"
            for e in text.split("\n\n") if e.startswith("data: ")]


def test_n_choices_and_tool_call_deltas_pass_through(upstream):
    setup_user("tools")
    result = service().complete("tools", request(), power_level_header=None,
                                request_id="req-tools")
    assert result.stream is not None and result.headers["X-Request-Id"] == "req-tools"
    got = events(result.stream)
    assert got[-1] == "[DONE]"
    # Every chunk with choices, as the upstream sent it, with our id; no usage chunk.
    assert got[:-1] == [{**c, "id": "req-tools"} for c in UPSTREAM[:-1]]
    assert Decimal(usage_cost("tools")) == catalog().charge(ROUTE, None, "starter", 20, 9)


def test_a_pending_settle_is_said_in_the_usage_chunk_and_applied_once(upstream, faults):  # noqa: F811
    setup_user("later")
    result = service().complete("later", request(stream_options={"include_usage": True}),
                                power_level_header=None, request_id="req-later")
    assert result.stream is not None
    faults.update(fail=100, match="HOLD#")  # the reserve is done; the settle can't commit
    got = events(result.stream)
    usage = got[-2]["usage"]
    expected = catalog().charge(ROUTE, None, "starter", 20, 9)
    assert got[-2]["choices"] == [] and usage["settlement"] == "pending"
    assert Decimal(str(usage["cost"])) == expected
    faults.update(fail=0)
    later = datetime.now(UTC) + timedelta(seconds=90)
    worker, _ = ledger_at(clock=lambda: later)  # the settle worker's next run
    assert worker.apply_pending_settlements(20).applied == 1
    assert worker.apply_pending_settlements(20).applied == 0
    assert Decimal(usage_cost("later")) == expected
    assert account("later")["held"] == "0.000000"
    assert Decimal(account("later")["balance"]) == Decimal(10) - expected
