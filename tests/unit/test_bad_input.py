"""Bad input is a 400 in the OpenAI error shape, always (issue 10 item 7).

Through the real handlers on moto: non-finite and out-of-range numbers, deep nesting,
LiteLLM router controls and unknown fields. Nothing goes upstream, nothing is charged,
and what is forwarded is JSON with finite, exact numbers.
"""

from __future__ import annotations

import json

import pytest
from llmcredits import jsonexact
from llmcredits.models_chat import LITELLM_CONTROLS, PRICED_PARAMETERS

from tests.support import event, invoke
from tests.unit.stack_fixture import module_stack
from tests.unit.test_chat_route import BALANCED, HELLO, account, chat, setup_user

HELLO_JSON = json.dumps(HELLO)
stack, upstream = module_stack()


@pytest.fixture(scope="module", autouse=True)
def _account(stack):
    setup_user(USER)


USER = "bad-input"


def raw_chat(fragment: str) -> str:
    """A chat body with ``fragment`` (raw JSON members) after model and messages."""
    return f'{{"model": "{BALANCED}", "messages": {HELLO_JSON}, {fragment}}}'


def assert_openai_400(status, body, param=None):
    assert status == 400, body
    assert set(body["error"]) == {"message", "type", "code", "param"}
    assert body["error"]["type"] == "invalid_request_error"
    if param is not None:
        assert body["error"]["param"] == param, body
        assert param in body["error"]["message"]


@pytest.mark.parametrize(
    ("fragment", "param"),
    [
        ('"max_tokens": Infinity', "max_tokens"),
        ('"max_tokens": -Infinity', "max_tokens"),
        ('"max_tokens": 1e999', "max_tokens"),
        ('"max_tokens": NaN', "max_tokens"),
        ('"temperature": NaN', "temperature"),
        ('"temperature": 1e-400', "temperature"),
        ('"n": 100000000000000000000000000000', "n"),
        ('"seed": 9223372036854775808', "seed"),
        ('"max_completion_tokens": 99999999999999999999', "max_completion_tokens"),
        ('"logit_bias": {"50256": -Infinity}', "logit_bias.50256"),
        ('"tools": [{"type": "function", "function": {"name": "f", "x": NaN}}]',
         "tools.0.function.x"),
        ('"user": "u", "top_p": Infinity', "top_p"),
    ],
)
def test_non_finite_or_out_of_range_numbers_are_400_naming_the_field(upstream, fragment,
                                                                     param):
    status, _, body = chat(USER, None, raw=raw_chat(fragment))
    assert_openai_400(status, body, param)
    assert body["error"]["code"] == "invalid_number"
    assert upstream.requests == []
    assert account(USER)["balance"] == "10.000000"


def test_a_number_inside_a_message_is_named_by_its_path(upstream):
    raw = (f'{{"model": "{BALANCED}", "messages": [{{"role": "user", "content": '
           '[{"type": "text", "text": "hi", "weight": NaN}]}]}')
    status, _, body = chat(USER, None, raw=raw)
    assert_openai_400(status, body, "messages.0.content.0.weight")
    assert upstream.requests == []


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"temperature": 2.5}, "temperature"),
        ({"temperature": -0.1}, "temperature"),
        ({"temperature": "hot"}, "temperature"),
        ({"temperature": True}, "temperature"),
        ({"top_p": 1.5}, "top_p"),
        ({"frequency_penalty": -3}, "frequency_penalty"),
        ({"presence_penalty": 2.01}, "presence_penalty"),
        ({"top_logprobs": 21}, "top_logprobs"),
        ({"logit_bias": {"1": 101}}, "logit_bias.1"),
        ({"max_tokens": 9223372036854775807 + 0.5}, "max_tokens"),
        ({"stop": ["a"] * 17}, "stop"),
        ({"n": 9}, "n"),
        ({"stream_options": {"include_usage": True, "litellm_x": 1}},
         "stream_options.litellm_x"),
        ({"reasoning_effort": "maximum"}, "reasoning_effort"),
    ],
)
def test_out_of_range_parameters_are_400_naming_the_field(upstream, body, param):
    status, _, resp = chat(USER, {"model": BALANCED, "messages": HELLO, **body})
    assert_openai_400(status, resp)
    assert resp["error"]["param"] == param
    assert upstream.requests == []


# The controls the issue names, and a sample of LiteLLM's documented request-level params.
ROUTER_CONTROLS = [
    ("fallbacks", ["openai/gpt-4o"]),
    ("num_retries", 3),
    ("mock_response", "free precision answer"),
    ("context_window_fallback_dict", {BALANCED: "openai/gpt-4o"}),
    ("api_base", "http://evil.test"),
    ("base_url", "http://evil.test"),
    ("api_key", "sk-steal"),
    ("api_version", "2024-01-01"),
    ("model_list", [{"model_name": "x", "litellm_params": {"model": "openai/gpt-4o"}}]),
    ("router_settings", {"routing_strategy": "cost-based"}),
    ("custom_llm_provider", "openai"),
    ("caching", True),
    ("cache", {"no-cache": True}),
    ("max_retries", 5),
    ("timeout", 600),
    ("litellm_params", {"api_base": "http://evil.test"}),
    ("litellm_call_id", "abc"),
    ("litellm_trace_id", "abc"),
    ("litellm_anything_new", 1),
    ("input_cost_per_token", 0),
    ("output_cost_per_token", 0),
    ("tags", ["free"]),
    ("user_config", {"model_list": []}),
    ("mock_testing_fallbacks", True),
    ("extra_headers", {"X-Evil": "1"}),
    ("guardrails", []),
    ("organization", "org-x"),
]


@pytest.mark.parametrize(("field", "value"), ROUTER_CONTROLS)
def test_litellm_router_controls_are_400_naming_the_field(upstream, field, value):
    status, _, body = chat(USER, {"model": BALANCED, "messages": HELLO, field: value})
    assert_openai_400(status, body, field)
    assert body["error"]["code"] == "parameter_not_allowed"
    assert "LiteLLM" in body["error"]["message"]
    assert upstream.requests == []
    assert account(USER)["balance"] == "10.000000"


@pytest.mark.parametrize(
    ("metadata", "param", "code"),
    [
        ({"tags": "precision"}, "metadata.tags", "parameter_not_allowed"),
        ({"model_group": "openai/gpt-4o"}, "metadata.model_group", "parameter_not_allowed"),
        ({"user_api_key_team_id": "t"}, "metadata.user_api_key_team_id",
         "parameter_not_allowed"),
        ({"litellm_anything": "x"}, "metadata.litellm_anything", "parameter_not_allowed"),
        ({"tags": ["precision"]}, "metadata.tags", "parameter_not_allowed"),
        ({"k": 1}, "metadata", "invalid_request"),
        ({f"k{i}": "v" for i in range(17)}, "metadata", "invalid_request"),
        ({"k": "v" * 513}, "metadata", "invalid_request"),
        ("tags", "metadata", "invalid_request"),
    ],
)
def test_metadata_routing_keys_are_400_naming_the_key(upstream, metadata, param, code):
    status, _, body = chat(USER, {"model": BALANCED, "messages": HELLO, "metadata": metadata})
    assert_openai_400(status, body)
    assert (body["error"]["param"], body["error"]["code"]) == (param, code)
    assert upstream.requests == []


def test_openai_metadata_is_accepted_and_never_forwarded(upstream):
    setup_user("meta")
    status, _, body = chat("meta", {"model": BALANCED, "messages": HELLO,
                                    "metadata": {"project": "alpha", "run": "7"}})
    assert status == 200, body
    assert "metadata" not in upstream.requests[-1].body


def test_the_controls_list_covers_litellms_documented_params():
    # LiteLLM's SDK list (all_litellm_params) and the proxy's request-body extensions.
    documented = {"tags", "caching", "mock_response", "api_key", "api_version",
                  "api_base", "force_timeout", "custom_llm_provider", "fallbacks", "azure",
                  "headers", "model_list", "num_retries", "context_window_fallback_dict",
                  "retry_policy", "request_timeout", "rpm", "tpm", "input_cost_per_token",
                  "output_cost_per_token", "model_info", "base_model", "stream_timeout",
                  "max_retries", "max_fallbacks", "max_budget", "budget_duration",
                  "cooldown_time", "cache_key", "ttl", "no-log", "user_config",
                  "litellm_params", "router_settings", "timeout", "prompt_id",
                  "prompt_variables", "guardrails", "mock_testing_fallbacks"}
    assert documented <= LITELLM_CONTROLS


@pytest.mark.parametrize("field", sorted(PRICED_PARAMETERS))
def test_parameters_that_change_the_price_are_400(upstream, field):
    status, _, body = chat(USER, {"model": BALANCED, "messages": HELLO, field: "x"})
    assert_openai_400(status, body, field)
    assert body["error"]["code"] == "parameter_not_allowed"
    assert upstream.requests == []


def test_an_unknown_field_is_400_unsupported_parameter(upstream):
    status, _, body = chat(USER, {"model": BALANCED, "messages": HELLO, "temprature": 0.5})
    assert_openai_400(status, body, "temprature")
    assert body["error"]["code"] == "unsupported_parameter"
    assert upstream.requests == []


def test_what_is_forwarded_is_json_with_exact_finite_numbers(upstream):
    params = {"temperature": 0.7, "top_p": 1, "frequency_penalty": -0.5,
              "presence_penalty": 0.25, "seed": 2**63 - 1, "stop": ["\n\n"],
              "logit_bias": {"50256": -100}, "user": "end-user-1", "logprobs": True,
              "top_logprobs": 2, "reasoning_effort": "low", "parallel_tool_calls": False,
              "tools": [{"type": "function", "function": {"name": "f", "parameters": {
                  "type": "object", "properties": {"x": {"type": "number", "maximum": 1.5}}}}}],
              "tool_choice": "auto", "response_format": {"type": "text"}}
    setup_user("sam")  # its own account: this one is charged
    status, _, body = chat("sam", {"model": BALANCED, "messages": HELLO, **params})
    assert status == 200, body
    sent = upstream.requests[-1].body  # decoded by the dev upstream's strict jsonexact
    for name, value in params.items():
        assert sent[name] == jsonexact.loads(json.dumps(value)), name
    assert str(sent["temperature"]) == "0.7"  # the literal, never a float's repr
    assert "power_level" not in sent


# ------------------------------------------------------------------ every route


DEEP = "[" * 5000 + "]" * 5000
ADMIN = {"sub": "ops", "scopes": ["llmcredits/admin"]}
ROUTES = [
    ("chat_completions", "POST", "/api/v1/llm/chat/completions", {}, "model"),
    ("admin_user_credits_post", "POST", "/api/v1/llm/admin/users/u1/credits",
     {"path_params": {"user_id": "u1"}, **ADMIN}, "amount"),
    ("admin_user_patch", "PATCH", "/api/v1/llm/admin/users/u1",
     {"path_params": {"user_id": "u1"}, **ADMIN}, "monthly_cap"),
    ("credits_monthly_cap_put", "PUT", "/api/v1/llm/credits/monthly-cap", {}, "monthly_cap"),
    ("credits_purchase_post", "POST", "/api/v1/llm/credits/purchase", {}, "amount"),
    ("byok_keys_post", "POST", "/api/v1/llm/byok/keys", {}, "provider"),
]


@pytest.mark.parametrize(("function", "method", "path", "extra", "field"), ROUTES)
@pytest.mark.parametrize(
    ("raw", "code", "param"),
    [
        ('{"%s": ' + DEEP + "}", "json_too_deep", None),
        ("[" * 65 + "]" * 65, "json_too_deep", None),
        ('{"%s": NaN}', "invalid_number", "%s"),
        ('{"%s": Infinity}', "invalid_number", "%s"),
        ('{"%s": -Infinity}', "invalid_number", "%s"),
        ('{"%s": 1e999}', "invalid_number", "%s"),
        ('{"%s": 123456789012345678901234567890}', "invalid_number", "%s"),
    ],
    ids=["deep-5000", "deep-65", "nan", "inf", "-inf", "1e999", "huge-int"],
)
def test_every_route_refuses_deep_or_non_finite_json_with_a_400(
        stack, function, method, path, extra, field, raw, code, param):
    raw = raw.replace("%s", field)
    evt = event(method, path, raw_body=raw, sub=extra.get("sub", "user-1"),
                scopes=extra.get("scopes"), path_params=extra.get("path_params"))
    status, _, body = invoke(function, evt)
    assert_openai_400(status, body, param.replace("%s", field) if param else None)
    assert body["error"]["code"] == code
    if param is None:
        assert body["error"]["param"] is None


def test_valid_bodies_still_pass_on_those_routes(stack):
    # The strict decoder is not stricter than JSON: a grant with ordinary numbers works.
    invoke("credits_get", event("GET", "/api/v1/llm/credits", sub="u2"))
    status, _, body = invoke("admin_user_credits_post", event(
        "POST", "/api/v1/llm/admin/users/u2/credits", path_params={"user_id": "u2"},
        raw_body='{"amount": "2.50", "type": "bonus", "reason": "[nested] {text}"}', **ADMIN))
    assert status in (200, 201), body


def test_the_published_schema_says_unknown_fields_are_refused():
    from llmcredits.models_chat import ChatCompletionRequest

    assert ChatCompletionRequest.model_json_schema()["additionalProperties"] is False
