"""The hold is a true upper bound (issue 10 item 9): the prompt bound is never above the
model's context window, non-text parts are bounded by it (not 2,048 tokens a part), and
tools, functions and response formats are counted."""

from __future__ import annotations

import base64
from decimal import Decimal

import pytest
from llmcredits import bootstrap
from llmcredits.dal.upstream import UpstreamReply, Usage
from llmcredits.domain.pricing import TOOLS_OVERHEAD_TOKENS, catalog, prompt_token_bound
from llmcredits.models_chat import ChatCompletionRequest
from llmcredits.services.chat import ChatService

from tests.support import event, invoke
from tests.unit.stack_fixture import module_stack
from tests.unit.test_chat_route import setup_user

stack, upstream = module_stack()

# gpt-4o-mini prices images as 2,833 tokens plus 5,667 a 512-px tile; a high-detail
# 768x2048 image is 8 tiles: 48,169 prompt tokens for one image (OpenAI's published
# rule), far above the old 2,048-a-part bound.
MINI_HIGH_DETAIL_IMAGE_TOKENS = 2833 + 8 * 5667
PNG = "data:image/png;base64," + base64.b64encode(b"\x89PNG\r\n\x1a\n" + b"\0" * 64).decode()

IMAGE = {"type": "image_url", "image_url": {"url": PNG, "detail": "high"}}
PDF = {"type": "file", "file": {"filename": "report.pdf",
                                "file_data": "data:application/pdf;base64,JVBERi0xLjc="}}
AUDIO = {"type": "input_audio", "input_audio": {"data": "UklGRg==", "format": "wav"}}
UNKNOWN = {"type": "document", "source": {"type": "base64", "data": "JVBERi0="}}


def user_message(*parts):
    return {"role": "user", "content": [{"type": "text", "text": "What is in here?"}, *parts]}


@pytest.mark.parametrize("part", [IMAGE, PDF, AUDIO, UNKNOWN],
                         ids=["image", "pdf", "audio", "unknown-type"])
@pytest.mark.parametrize("model_id", ["openai/gpt-4o-mini", "anthropic/claude-3-5-sonnet-20241022",
                                      "groq/llama-3.1-8b-instant"])
def test_a_non_text_part_makes_the_prompt_bound_the_context_window(part, model_id):
    route = catalog().resolve(model_id, None, "enterprise")
    window = catalog().models[model_id].context_window
    assert catalog().prompt_bound(route, [user_message(part)]) == window
    # two parts, or a part plus a long text: still the window (nothing can exceed it)
    assert catalog().prompt_bound(route, [user_message(part, part),
                                          {"role": "user", "content": "x" * 10**6}]) == window


def test_a_high_detail_image_on_gpt_4o_mini_is_within_the_hold():
    route = catalog().resolve("openai/gpt-4o-mini", None, "professional")
    messages = [user_message(IMAGE)]
    hold = catalog().hold_amount(route, "professional", messages, 300)
    used_prompt = MINI_HIGH_DETAIL_IMAGE_TOKENS + 100
    assert catalog().charge(route, None, "professional", used_prompt, 300) <= hold
    # the old per-part bound would not have covered it
    old_bound = prompt_token_bound([{"role": "user", "content": "What is in here?"}]) + 2048
    assert catalog().charge(route, None, "professional", old_bound, 300) < catalog().charge(
        route, None, "professional", used_prompt, 300)


def test_a_pdf_of_a_hundred_pages_on_claude_is_within_the_hold():
    route = catalog().resolve("anthropic/claude-3-5-sonnet-20241022", None, "enterprise")
    hold = catalog().hold_amount(route, "enterprise", [user_message(PDF)], 1000)
    pages = 100 * 1_500  # Anthropic: ~1,500-3,000 tokens a page (text plus page image)
    assert catalog().charge(route, None, "enterprise", pages, 1000) <= hold


def test_the_text_bound_is_never_above_the_context_window():
    qwen = catalog().resolve("together_ai/Qwen/Qwen2.5-72B-Instruct-Turbo", None, "starter")
    big = [{"role": "user", "content": "word " * 200_000}]
    assert prompt_token_bound(big) > 32768
    assert catalog().prompt_bound(qwen, big) == 32768
    small = [{"role": "user", "content": "hi"}]
    assert catalog().prompt_bound(qwen, small) == prompt_token_bound(small)


def test_without_a_context_window_a_non_text_part_has_no_bound():
    with pytest.raises(ValueError, match="context window"):
        prompt_token_bound([user_message(IMAGE)])
    # text parts, tool calls and tool definitions are not "non-text"
    assert prompt_token_bound([{"role": "assistant", "content": None, "tool_calls": [
        {"id": "c", "type": "function", "function": {"name": "f", "arguments": "{}"}}]}])


def test_tools_functions_and_response_formats_are_counted():
    base = {"model": "openai/gpt-4o", "messages": [{"role": "user", "content": "hi"}]}
    schema = {"type": "object", "properties": {f"field_{i}": {"type": "string"}
                                               for i in range(50)}}
    extras = {
        "tools": [{"type": "function", "function": {"name": "lookup", "parameters": schema}}],
        "tool_choice": {"type": "function", "function": {"name": "lookup"}},
        "functions": [{"name": "legacy", "parameters": schema}],
        "function_call": "auto",
        "response_format": {"type": "json_schema", "json_schema": {"name": "r",
                                                                  "schema": schema}},
    }
    route = catalog().resolve("openai/gpt-4o", None, "enterprise")
    plain = ChatCompletionRequest.model_validate(base)
    messages = [m.model_dump(exclude_none=True) for m in plain.messages]
    without = catalog().prompt_bound(route, messages, extra=plain.prompt_extras() or None)
    for name, value in extras.items():
        request = ChatCompletionRequest.model_validate({**base, name: value})
        assert set(request.prompt_extras()) == {name}
        counted = catalog().prompt_bound(route, messages, extra=request.prompt_extras())
        assert counted >= without + TOOLS_OVERHEAD_TOKENS + len(str(value)) // 2, name


class ReportingUpstream:
    """Answers with the usage a provider reports for a large image prompt; records what
    the account held while the request was in flight."""

    def __init__(self, user: str, prompt_tokens: int):
        self.user, self.prompt_tokens, self.held = user, prompt_tokens, None

    def complete(self, payload, headers):
        self.held = bootstrap.ledger_service().account(self.user).held
        body = {"id": "x", "object": "chat.completion", "model": payload["model"],
                "choices": [{"index": 0, "finish_reason": "stop",
                             "message": {"role": "assistant", "content": "A chart."}}],
                "usage": {"prompt_tokens": self.prompt_tokens, "completion_tokens": 3}}
        return UpstreamReply(body=body, usage=Usage(self.prompt_tokens, 3),
                             models=[payload["model"]])


@pytest.mark.parametrize("prompt_tokens", [MINI_HIGH_DETAIL_IMAGE_TOKENS, 128000])
def test_the_service_holds_the_window_and_charges_a_big_image_in_full(stack, prompt_tokens):
    user = f"img-{prompt_tokens}"
    setup_user(user, amount="10", tier="professional")
    up = ReportingUpstream(user, prompt_tokens)
    service = ChatService(bootstrap.ledger_service(), catalog(), up)
    request = ChatCompletionRequest.model_validate({
        "model": "openai/gpt-4o-mini", "messages": [user_message(IMAGE)], "max_tokens": 50})
    result = service.complete(user, request, power_level_header=None, request_id=user)
    route = catalog().resolve("openai/gpt-4o-mini", None, "professional")
    assert up.held == catalog().charge(route, None, "professional", 128000, 50)
    expected = catalog().charge(route, None, "professional", prompt_tokens, 3)
    assert Decimal(result.headers["X-Credits-Charged"]) == expected  # in full, not capped
    items = invoke("credits_history_get", event("GET", "/api/v1/llm/credits/history",
                                                sub=user, query={"type": "usage"}))[2]["items"]
    assert "capped_at_hold" not in items[0]["metadata"]
    assert items[0]["metadata"]["prompt_tokens"] == prompt_tokens


def test_the_service_counts_tools_and_response_format_in_the_hold(stack):
    user = "tools-hold"
    setup_user(user, amount="10", tier="professional")
    up = ReportingUpstream(user, 10)
    service = ChatService(bootstrap.ledger_service(), catalog(), up)
    tools = [{"type": "function", "function": {"name": "lookup", "description": "d" * 4000,
                                               "parameters": {"type": "object"}}}]
    body = {"model": "openai/gpt-4o", "messages": [{"role": "user", "content": "hi"}],
            "max_tokens": 10, "n": 2, "tools": tools,
            "response_format": {"type": "json_object"}}
    request = ChatCompletionRequest.model_validate(body)
    service.complete(user, request, power_level_header=None, request_id=user)
    route = catalog().resolve("openai/gpt-4o", None, "professional")
    messages = [{"role": "user", "content": "hi"}]
    bound = catalog().prompt_bound(route, messages, extra={
        "tools": tools, "response_format": {"type": "json_object"}})
    assert bound > prompt_token_bound(messages) + 4000
    assert up.held == catalog().charge(route, None, "professional", bound, 2 * 10)
