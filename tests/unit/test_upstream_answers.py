"""What the upstream answered: the routed model or not, an error inside a 200, a stream
that fails partway (issue 10 items 7 and 9). The dal parses, the chat service asks."""

from __future__ import annotations

import json
from decimal import Decimal

import httpx
import pytest
from llmcredits.dal.upstream import STREAM_INTERRUPTED, LiteLLMUpstream, Usage
from llmcredits.domain.answer import answered_by_routed_model, ensure_routed_model
from llmcredits.domain.pricing import catalog
from llmcredits.errors import UpstreamError, UpstreamTimeout
from llmcredits.local.dev_upstream import WRONG_MODEL

from tests.support import FUNCTIONS, Context, event, invoke
from tests.unit.stack_fixture import module_stack
from tests.unit.test_chat_route import BALANCED, HELLO, account, chat, setup_user

stack, upstream = module_stack()


# ------------------------------------------------------------------ the answered model


@pytest.mark.parametrize(
    ("model_id", "answered", "same"),
    [
        ("openai/gpt-4o", "openai/gpt-4o", True),
        ("openai/gpt-4o", "gpt-4o", True),
        ("openai/gpt-4o", "gpt-4o-2024-08-06", True),
        ("openai/gpt-4o", "GPT-4o-2024-11-20", True),
        ("openai/gpt-4o", None, True),  # no model reported: no evidence of another
        ("openai/gpt-4o", "", True),
        ("openai/gpt-4o", "gpt-4o-mini", False),
        ("openai/gpt-4o", "gpt-4o-mini-2024-07-18", False),
        ("openai/gpt-4o-mini", "gpt-4o", False),
        ("openai/gpt-4o-mini", "gpt-4o-mini-2024-07-18", True),
        ("openai/gpt-4o", "azure/gpt-4o", False),  # another provider
        ("openai/gpt-4o", 42, False),
        (BALANCED, "meta-llama/Llama-3.3-70B-Instruct-Turbo", True),
        (BALANCED, "Llama-3.3-70B-Instruct-Turbo", True),
        (BALANCED, "together_ai/meta-llama/Llama-3.3-70B-Instruct-Turbo", True),
        (BALANCED, "meta-llama/Llama-3.1-405B-Instruct-Turbo", False),
        (BALANCED, "anthropic/claude-3-5-sonnet-20241022", False),
        ("anthropic/claude-3-5-sonnet-20241022", "claude-3-5-sonnet-20241022", True),
        ("anthropic/claude-3-5-sonnet-20241022", "claude-3-5-sonnet-latest", True),
        ("anthropic/claude-3-5-sonnet-20241022", "claude-3-5-haiku-20241022", False),
        ("openrouter/openai/gpt-4o", "openai/gpt-4o", True),
        ("openrouter/openai/gpt-4o", "openai/gpt-4o-mini", False),
        ("groq/llama-3.1-8b-instant", "llama-3.3-70b-versatile", False),
        ("groq/llama-3.1-8b-instant", WRONG_MODEL, False),
    ],
)
def test_answered_model_naming_rules(model_id, answered, same):
    route = catalog().resolve(model_id, None, "enterprise")
    assert answered_by_routed_model(route, answered) is same


def test_catalog_aliases_are_accepted():
    import dataclasses

    route = dataclasses.replace(catalog().resolve("openai/gpt-4o", None, "enterprise"),
                                answered_as=("chatgpt-4o-latest",))
    assert answered_by_routed_model(route, "ChatGPT-4o-latest")
    assert not answered_by_routed_model(route, "chatgpt-4o")


def test_a_mismatch_is_a_502_naming_both_models():
    route = catalog().resolve("groq/llama-3.1-8b-instant", None, "free")
    ensure_routed_model(route, ["groq/llama-3.1-8b-instant", "llama-3.1-8b-instant"])
    with pytest.raises(UpstreamError) as info:
        ensure_routed_model(route, ["llama-3.1-8b-instant", "openai/gpt-4o"])
    err = info.value
    assert err.status == 502 and err.code == "upstream_model_mismatch"
    assert "openai/gpt-4o" in err.message and "groq/llama-3.1-8b-instant" in err.message


def history(user):
    return invoke("credits_history_get", event("GET", "/api/v1/llm/credits/history",
                                               sub=user, query={"type": "usage"}))[2]["items"]


def stream_chat(user, body):
    from llmcredits.openapi_doc import import_handler

    evt = event("POST", "/api/v1/llm/chat/completions", body={**body, "stream": True},
                sub=user)
    resp = import_handler(FUNCTIONS / "chat_completions" / "app.py").lambda_handler(
        evt, Context())
    events = [line[6:] for line in (resp["body"] or "").split("\n\n")
              if line.startswith("data: ")]
    return resp, events


def assert_released_and_free(user):
    acct = account(user)
    assert acct["balance"] == "10.000000" and acct["held"] == "0.000000"
    assert history(user) == []


@pytest.mark.parametrize("streamed", [False, True])
def test_an_answer_from_another_model_is_502_and_the_hold_released(upstream, streamed):
    user = f"wm-{streamed}"
    setup_user(user)
    upstream.inject("wrong-model")
    body = {"model": BALANCED, "messages": HELLO}
    if streamed:
        resp, _ = stream_chat(user, body)
        status, parsed = resp["statusCode"], json.loads(resp["body"])
    else:
        status, _, parsed = chat(user, body)
    assert status == 502, parsed
    assert parsed["error"]["code"] == "upstream_model_mismatch"
    assert WRONG_MODEL in parsed["error"]["message"]
    assert len(upstream.requests) == 1
    assert_released_and_free(user)


# ------------------------------------------------------------------ errors inside a 200


@pytest.mark.parametrize("streamed", [False, True])
def test_an_error_inside_a_200_is_502_and_nothing_is_charged(upstream, streamed):
    user = f"e200-{streamed}"
    setup_user(user)
    upstream.inject("error-in-200")
    body = {"model": BALANCED, "messages": HELLO}
    if streamed:
        resp, _ = stream_chat(user, body)
        status, parsed = resp["statusCode"], json.loads(resp["body"])
    else:
        status, _, parsed = chat(user, body)
    assert status == 502, parsed
    assert parsed["error"]["type"] == "upstream_error"
    assert "Injected" not in parsed["error"]["message"]  # the provider's text is not passed
    assert_released_and_free(user)


def test_a_non_streamed_answer_cut_off_is_502_and_nothing_is_charged(upstream):
    setup_user("cut-json")
    upstream.inject("stream-cut")
    status, _, parsed = chat("cut-json", {"model": BALANCED, "messages": HELLO})
    assert status == 502, parsed
    assert_released_and_free("cut-json")


# ------------------------------------------------------------------ partial streams


LONG = [{"role": "user", "content": "Please repeat these words back to me in order: "
         + " ".join(f"word{i}" for i in range(40))}]


@pytest.mark.parametrize("fault", ["stream-error", "stream-cut"])
def test_a_stream_that_fails_partway_is_charged_for_what_was_delivered(upstream, fault):
    user = f"partial-{fault}"
    setup_user(user)
    upstream.inject(fault)
    resp, events = stream_chat(user, {"model": BALANCED, "messages": LONG})
    assert resp["statusCode"] == 200, resp["body"]
    chunks = [json.loads(e) for e in events if e != "[DONE]"]
    delivered = "".join(c["choices"][0]["delta"].get("content", "")
                        for c in chunks if c.get("choices"))
    assert delivered.startswith("[dev upstream]") and "word39" not in delivered
    errors = [c["error"] for c in chunks if "error" in c]
    assert len(errors) == 1 and errors[0]["code"] == STREAM_INTERRUPTED
    assert "Injected" not in errors[0]["message"]  # our event, never the provider's text
    # Charged: the prompt bound plus the delivered bytes, never above the hold.
    route = catalog().resolve(BALANCED, None, "starter")
    messages = [{"role": "user", "content": LONG[0]["content"]}]
    prompt_bound = catalog().prompt_bound(route, messages)
    expected = catalog().charge(route, None, "starter", prompt_bound,
                                len(delivered.encode()))
    hold = catalog().charge(route, None, "starter", prompt_bound, route.max_tokens)
    # A stream's headers go out before its charge is known (issue 12): the ledger says it.
    (entry,) = history(user)
    charged = Decimal(entry["cost"])
    assert charged == expected and 0 < charged < hold
    assert entry["metadata"]["partial"] is True
    assert entry["metadata"]["completion_tokens"] == len(delivered.encode())
    acct = account(user)
    assert acct["held"] == "0.000000"
    assert Decimal(acct["balance"]) == Decimal(10) - charged


# ------------------------------------------------------------------ the dal, precisely


def sse(*events) -> list[bytes]:
    return [f"data: {json.dumps(e) if not isinstance(e, str) else e}\n\n".encode()
            for e in events]


def chunk(content=None, model="m", usage=None, **delta):
    out = {"id": "c", "object": "chat.completion.chunk", "model": model,
           "choices": [{"index": 0, "delta": ({"content": content} if content is not None
                                              else {}) | delta, "finish_reason": None}]}
    if usage is not None:
        out["usage"] = usage
        out["choices"] = []
    return out


def upstream_with(parts, then: Exception | None = None) -> LiteLLMUpstream:
    def body():
        yield from parts
        if then is not None:
            raise then

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, headers={"content-type": "text/event-stream"},
                              content=body())

    return LiteLLMUpstream("http://upstream.test", None,
                           client=httpx.Client(transport=httpx.MockTransport(handler)))


def complete(up):
    return up.complete({"model": "m", "messages": HELLO, "stream": True}, {})


def test_a_complete_stream_is_not_partial():
    reply = complete(upstream_with(sse(chunk(role="assistant", content=""), chunk("héllo"),
                                       chunk(usage={"prompt_tokens": 7,
                                                    "completion_tokens": 2}), "[DONE]")))
    assert not reply.partial and reply.failure is None
    assert reply.usage == Usage(7, 2) and reply.billable_usage(100, 50) == Usage(7, 2)
    assert reply.models == ["m"] and reply.delivered_bytes == len("héllo".encode())


def test_a_complete_stream_without_usage_leaves_the_charge_to_the_service():
    reply = complete(upstream_with(sse(chunk("hi"), "[DONE]")))
    assert reply.billable_usage(100, 50) is None  # the service charges its hold


@pytest.mark.parametrize("then", [httpx.RemoteProtocolError("peer closed"),
                                  httpx.ReadTimeout("slow"), None])
def test_a_stream_lost_after_content_is_partial(then):
    reply = complete(upstream_with(sse(chunk("hé"), chunk("llo")), then))
    assert reply.partial
    expected_error = UpstreamTimeout if isinstance(then, httpx.TimeoutException) \
        else UpstreamError
    assert isinstance(reply.failure, expected_error)
    assert reply.chunks[-1]["error"]["code"] == STREAM_INTERRUPTED
    assert reply.billable_usage(100, 50) == Usage(100, 6)
    assert reply.billable_usage(100, 4) == Usage(100, 4)  # never above the bound


def test_reported_usage_wins_over_the_estimate():
    reply = complete(upstream_with(sse(
        chunk("hello"), chunk(usage={"prompt_tokens": 9, "completion_tokens": 1})),
        httpx.ReadError("lost")))
    assert reply.partial and reply.billable_usage(100, 50) == Usage(9, 1)


def test_tool_call_and_reasoning_text_count_as_delivered():
    call = {"index": 0, "id": "t", "type": "function",
            "function": {"name": "get", "arguments": '{"q":"ü"}'}}
    reply = complete(upstream_with(sse(chunk(tool_calls=[call]),
                                       chunk(reasoning_content="think")),
                                   httpx.ReadError("lost")))
    assert reply.delivered_bytes == len("get") + len('{"q":"ü"}'.encode()) + len("think")


@pytest.mark.parametrize(
    ("parts", "then"),
    [
        (sse({"error": {"message": "boom"}}), None),  # an error first: nothing delivered
        (sse(chunk(role="assistant", content="")), httpx.ReadError("lost")),  # role only
        (sse(chunk(role="assistant", content="")), None),  # ended without [DONE]
        ([b"data: {not json\n\n"], None),
        ([b'data: {"a": NaN}\n\n'], None),
    ],
    ids=["error-first", "role-only-then-lost", "no-done", "garbage", "nan"],
)
def test_a_stream_that_fails_before_any_content_raises(parts, then):
    with pytest.raises(UpstreamError):
        complete(upstream_with(parts, then))


def test_an_error_event_after_content_ends_the_stream_partial():
    reply = complete(upstream_with(sse(chunk("abc"), {"error": {"message": "sk-secret"}},
                                       chunk("never"), "[DONE]")))
    assert reply.partial and reply.delivered_bytes == 3
    assert "sk-secret" not in json.dumps(reply.chunks)
