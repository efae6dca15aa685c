"""Friendly edges (issue 15 item 4): X-Max-Tokens-Clipped, "did you mean" for unknown
models, and each model's context window in GET /models."""

from __future__ import annotations

import pytest
from llmcredits.domain.pricing import MAX_TOKENS_CLIPPED_HEADER, catalog

from tests.support import event, invoke, response_headers
from tests.unit.stack_fixture import module_stack
from tests.unit.test_chat_route import BALANCED, HELLO, chat, setup_user
from tests.unit.test_upstream_answers import stream_chat

stack, upstream = module_stack()


@pytest.mark.parametrize(
    ("limits", "sent", "header"),
    [
        ({"max_tokens": 1_000_000}, 4000, "1000000"),
        ({"max_completion_tokens": 4001}, 4000, "4001"),
        ({"max_tokens": 9223372036854775807}, 4000, "9223372036854775807"),
        ({"max_tokens": 4000}, 4000, None),
        ({"max_tokens": 12}, 12, None),
        ({}, 4000, None),  # nothing asked, nothing clipped
    ],
)
def test_a_clipped_max_tokens_is_reported_in_a_header(upstream, limits, sent, header):
    user = f"clip-{sent}-{header}"
    setup_user(user)
    status, headers, body = chat(user, {"model": BALANCED, "messages": HELLO, **limits})
    assert status == 200, body
    assert upstream.requests[-1].body["max_tokens"] == sent
    assert headers.get(MAX_TOKENS_CLIPPED_HEADER) == header


def test_a_streamed_answer_reports_the_clip_too(upstream):
    setup_user("clip-stream")
    resp, _ = stream_chat("clip-stream", {"model": BALANCED, "messages": HELLO,
                                          "max_tokens": 5000})
    assert resp["statusCode"] == 200
    assert response_headers(resp)[MAX_TOKENS_CLIPPED_HEADER] == "5000"


def test_clip_headers_in_pricing():
    eco = catalog().resolve("auto", "eco", "free")
    assert catalog().clip_headers(2001, eco) == {"X-Max-Tokens-Clipped": "2001"}
    assert catalog().clip_headers(2000, eco) == {}
    assert catalog().clip_headers(None, eco) == {}


@pytest.mark.parametrize(
    ("asked", "suggested"),
    [
        ("gpt-4o", "openai/gpt-4o"),
        ("GPT-4o-mini", "openai/gpt-4o-mini"),
        ("openai/gpt4o", "openai/gpt-4o"),
        ("claude-3-5-sonnet-20241022", "anthropic/claude-3-5-sonnet-20241022"),
        ("anthropic/claude-3.5-sonnet", "openrouter/anthropic/claude-3.5-sonnet"),
        ("groq/llama-3.1-8b", "groq/llama-3.1-8b-instant"),
    ],
)
def test_an_unknown_model_suggests_the_closest_catalog_ids(upstream, asked, suggested):
    status, _, body = chat("nobody", {"model": asked, "messages": HELLO})
    assert status == 400 and body["error"]["code"] == "model_not_found"
    assert repr(suggested) in body["error"]["message"].split("Did you mean", 1)[1]
    assert body["error"]["param"] == "model"
    assert upstream.requests == []


def test_no_suggestion_when_nothing_is_close(upstream):
    status, _, body = chat("nobody", {"model": "zzzz-unknown", "messages": HELLO})
    assert status == 400 and "Did you mean" not in body["error"]["message"]
    assert "GET /api/v1/llm/models" in body["error"]["message"]


def test_suggestions_are_catalog_ids_at_most_three():
    close = catalog().suggest_models("llama")
    assert len(close) <= 3 and all(c in catalog().models for c in close)
    assert catalog().suggest_models("") == []


def test_models_show_their_context_window(stack):
    status, _, body = invoke("models_get", event("GET", "/api/v1/llm/models", sub="cw"))
    assert status == 200
    for item in body["data"]:
        assert item["context_window"] == catalog().models[item["id"]].context_window > 0
