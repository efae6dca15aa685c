"""The OpenAI chat completion request, as far as metering needs to understand it.

An **allow-list**: the body may carry the OpenAI chat-completion parameters below (plus
our ``power_level``) and nothing else. Everything we forward to the LiteLLM proxy is a
field we know, typed and range-checked, so nothing a caller sends can choose the
upstream's model, endpoint, credentials, retries or price behind the catalog's back.
A LiteLLM control (:data:`LITELLM_CONTROLS`) or a parameter that would change what a
request costs (:data:`PRICED_PARAMETERS`) is refused with a 400 that names it and says
why; any other unknown field is refused as unsupported.

Numbers: JSON numbers arrive as Decimal (``jsonexact``), are range-checked here and are
forwarded as exact decimal literals, never through a float.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Annotated, Any, Literal

from pydantic import (
    BeforeValidator,
    ConfigDict,
    Field,
    WithJsonSchema,
    model_validator,
)

from llmcredits.errors import InvalidRequest
from llmcredits.models import ApiModel

MAX_CHOICES = 8
MAX_STOP_SEQUENCES = 16
INT64_MAX = 2**63 - 1

#: LiteLLM's request-level controls (its SDK's ``all_litellm_params``, the proxy's
#: request-body and metadata extensions and its documented client-side routing
#: parameters). Each one would let a caller redirect, re-credential, retry, re-price,
#: cache or mock the upstream call: routing is ours (catalog, power level, tier, BYOK).
#: With the allow-list they are refused anyway; listing them gives a precise message.
LITELLM_CONTROLS = frozenset({
    # endpoint, credentials, provider
    "api_key", "api_base", "base_url", "api_version", "api_type", "organization",
    "custom_llm_provider", "azure", "azure_ad_token", "azure_ad_token_provider",
    "azure_username", "azure_password", "azure_scope", "tenant_id", "client_id",
    "client_secret", "aws_access_key_id", "aws_secret_access_key", "aws_session_token",
    "aws_region_name", "vertex_project", "vertex_location", "vertex_credentials",
    "region_name", "allowed_model_region", "litellm_credential_name", "use_litellm_proxy",
    "headers", "extra_headers", "provider_specific_header", "user_config",
    "configurable_clientside_auth_params",
    # routing, retries, timeouts
    "fallbacks", "context_window_fallback_dict", "content_policy_fallbacks",
    "num_retries", "max_retries", "retry_policy", "retry_strategy", "max_fallbacks",
    "fallback_depth", "model_list", "router_settings", "timeout", "request_timeout",
    "stream_timeout", "force_timeout", "cooldown_time", "fastest_response", "weight",
    "rpm", "tpm", "max_parallel_requests", "model_info", "base_model", "model_group",
    "deployment", "tags", "litellm_params", "litellm_settings", "litellm_metadata",
    "model_file_id_mapping",
    # prices and budgets
    "input_cost_per_token", "output_cost_per_token", "input_cost_per_second",
    "output_cost_per_second", "max_budget", "budget_duration", "spend_logs_metadata",
    # mocks and test triggers
    "mock_response", "mock_tool_calls", "mock_timeout", "mock_testing_fallbacks",
    "mock_testing_context_fallbacks", "mock_testing_content_policy_fallbacks",
    "mock_testing_rate_limit_error", "mock_delay",
    # caching
    "caching", "cache", "cache_key", "preset_cache_key", "caching_groups", "ttl",
    "no-log", "no_log",
    # prompt management, guardrails, callbacks, templates
    "prompt_id", "prompt_variables", "prompt_version", "prompt_label", "guardrails",
    "disable_fallbacks", "cache_control_injection_points", "knowledge_bases",
    "vector_store_ids", "callbacks", "success_callback", "failure_callback",
    "logger_fn", "verbose", "turn_off_message_logging", "roles", "final_prompt_value",
    "bos_token", "eos_token", "initial_prompt_value", "supports_system_message",
    "ensure_alternating_roles", "user_continue_message", "assistant_continue_message",
    "merge_reasoning_content_in_choices", "allowed_openai_params", "drop_params",
    "additional_drop_params", "complete_response", "text_completion", "acompletion",
    "use_in_pass_through", "proxy_server_request", "id", "client", "use_client",
})
#: Any field named ``litellm_*`` (litellm_call_id, litellm_trace_id, litellm_session_id,
#: litellm_logging_obj, litellm_disabled_callbacks, ...) is a LiteLLM control too.
LITELLM_PREFIX = "litellm_"

#: ``metadata`` is OpenAI's (string pairs for stored completions) and LiteLLM's (tag
#: routing, model groups, budgets, callbacks). OpenAI-shaped metadata is accepted but
#: never forwarded (without ``store``, refused below, OpenAI does nothing with it), so
#: none of it can route; keys LiteLLM reads are refused so the caller is not misled.
METADATA_MAX_PAIRS, METADATA_KEY_CHARS, METADATA_VALUE_CHARS = 16, 64, 512
LITELLM_METADATA_KEYS = frozenset({
    "tags", "model_group", "deployment", "model_info", "api_base", "caching_groups",
    "headers", "endpoint", "fallbacks", "disable_fallbacks", "guardrails",
    "spend_logs_metadata", "requester_metadata", "trace_id", "generation_name",
    "session_id", "prompt_id", "mock_response", "team_id", "end_user_id",
})
LITELLM_METADATA_PREFIXES = (LITELLM_PREFIX, "user_api_key")

#: OpenAI parameters that change what a request costs in ways the catalog does not price
#: (or that break the hold's bound); refused until the catalog prices them.
PRICED_PARAMETERS = {
    "audio": "audio output is priced per audio token, which the catalog does not price",
    "modalities": "only text output is priced (audio output is not)",
    "prediction": "rejected predicted tokens are billed beyond the max_tokens bound",
    "web_search_options": "web search is billed per call, which the catalog does not price",
    "service_tier": "service tiers (flex, priority) change the provider's price",
    "store": "stored completions would be kept in the platform's provider account",
    "thinking": "provider-specific; use reasoning_effort (bounded by max_tokens)",
}

#: Request fields the upstream renders into the prompt besides the messages: counted in
#: the hold's prompt bound (pricing.prompt_token_bound's ``extra``).
PROMPT_FIELDS = ("tools", "functions", "tool_choice", "function_call", "response_format")
STREAM_OPTIONS = frozenset({"include_usage", "include_obfuscation"})


def _number(value: Any) -> Any:
    # A JSON number only (Decimal or int from jsonexact): no bool, no numeric string.
    if isinstance(value, bool) or not isinstance(value, int | Decimal):
        raise ValueError("must be a number")
    return value


def _integer(value: Any) -> Any:
    # JSON numbers arrive as Decimal; 10.5 tokens is not a count, 10.0 is 10.
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, Decimal) and value.is_finite() and value == value.to_integral_value():
        return int(value)
    raise ValueError("must be an integer")


def _stop(value: Any) -> Any:
    # One check (not a str | list union) so that an error names "stop", not "stop.str".
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        if len(value) > MAX_STOP_SEQUENCES:
            raise ValueError(f"at most {MAX_STOP_SEQUENCES} stop sequences")
        return value
    raise ValueError("must be a string or a list of strings")


def _metadata(value: Any) -> Any:
    if value is None:
        return value
    if not isinstance(value, dict) or len(value) > METADATA_MAX_PAIRS:
        raise ValueError(f"must be an object of at most {METADATA_MAX_PAIRS} string pairs")
    for key, item in value.items():
        if key in LITELLM_METADATA_KEYS or str(key).startswith(LITELLM_METADATA_PREFIXES):
            raise InvalidRequest(
                f"metadata.{key} is a LiteLLM routing/budget key and may not be set: this "
                "service chooses the model and provider itself.",
                param=f"metadata.{key}", code="parameter_not_allowed")
        if len(str(key)) > METADATA_KEY_CHARS or not isinstance(item, str) or len(
                item) > METADATA_VALUE_CHARS:
            raise ValueError(f"keys of at most {METADATA_KEY_CHARS} characters and string "
                             f"values of at most {METADATA_VALUE_CHARS}")
    return value


def _number_schema(low: int, high: int) -> WithJsonSchema:
    # Documented as the plain JSON number it is (pydantic would also offer a string).
    return WithJsonSchema({"type": "number", "minimum": low, "maximum": high})


# JSON numbers kept as Decimal, and integers (10.0 is 10; 10.5 is refused), in range.
Temperature = Annotated[Decimal, Field(ge=0, le=2), BeforeValidator(_number),
                        _number_schema(0, 2)]
Probability = Annotated[Decimal, Field(ge=0, le=1), BeforeValidator(_number),
                        _number_schema(0, 1)]
Penalty = Annotated[Decimal, Field(ge=-2, le=2), BeforeValidator(_number),
                    _number_schema(-2, 2)]
Bias = Annotated[Decimal, Field(ge=-100, le=100), BeforeValidator(_number),
                 _number_schema(-100, 100)]
TokenCount = Annotated[int, Field(ge=1, le=INT64_MAX), BeforeValidator(_integer)]
Choices = Annotated[int, Field(ge=1, le=MAX_CHOICES), BeforeValidator(_integer)]
Int64 = Annotated[int, Field(ge=-(2**63), le=INT64_MAX), BeforeValidator(_integer)]
TopLogprobs = Annotated[int, Field(ge=0, le=20), BeforeValidator(_integer)]


class ChatMessage(ApiModel):
    model_config = ConfigDict(extra="allow")

    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[dict[str, Any]] | None = None
    name: str | None = Field(default=None, max_length=256)

    @model_validator(mode="after")
    def _has_content(self) -> ChatMessage:
        extra = self.model_extra or {}
        if self.content is None and not (extra.get("tool_calls") or extra.get("function_call")):
            raise ValueError("a message needs content (or tool_calls)")
        return self


class ChatCompletionRequest(ApiModel):
    # Unknown fields are refused by _allow_listed (with a message); "forbid" backs it up.
    model_config = ConfigDict(extra="forbid")

    model: str = Field(min_length=1, max_length=256, description='A catalog id or "auto"')
    messages: list[ChatMessage] = Field(min_length=1, max_length=4096)
    power_level: Literal["eco", "balanced", "precision"] | None = Field(
        default=None, description="Ours (also the X-Power-Level header); not forwarded")
    max_tokens: TokenCount | None = None
    max_completion_tokens: TokenCount | None = None
    n: Choices = 1
    stream: bool = False
    stream_options: dict[str, bool] | None = None
    temperature: Temperature | None = None
    top_p: Probability | None = None
    frequency_penalty: Penalty | None = None
    presence_penalty: Penalty | None = None
    seed: Int64 | None = None
    stop: Annotated[str | list[str] | None, BeforeValidator(_stop)] = None
    logit_bias: dict[str, Bias] | None = Field(default=None, max_length=1024)
    logprobs: bool | None = None
    top_logprobs: TopLogprobs | None = None
    user: str | None = Field(default=None, max_length=512)
    tools: list[dict[str, Any]] | None = Field(default=None, max_length=128)
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    functions: list[dict[str, Any]] | None = Field(default=None, max_length=128)
    function_call: str | dict[str, Any] | None = None
    response_format: dict[str, Any] | None = None
    reasoning_effort: Literal["none", "minimal", "low", "medium", "high"] | None = None
    verbosity: Literal["low", "medium", "high"] | None = None
    metadata: Annotated[dict[str, str] | None, BeforeValidator(_metadata)] = Field(
        default=None, description="OpenAI-shaped string pairs; accepted, not forwarded")
    prompt_cache_key: str | None = Field(default=None, max_length=512)
    safety_identifier: str | None = Field(default=None, max_length=512)

    @model_validator(mode="before")
    @classmethod
    def _allow_listed(cls, data: Any) -> Any:
        if isinstance(data, dict):
            refuse_unknown_fields(data, frozenset(cls.model_fields))
            options = data.get("stream_options")
            if isinstance(options, dict):
                bad = sorted(str(k) for k in options if k not in STREAM_OPTIONS)
                if bad:
                    raise InvalidRequest(
                        f"Unsupported stream option {bad[0]!r}; use "
                        f"{' or '.join(sorted(STREAM_OPTIONS))}.",
                        param=f"stream_options.{bad[0]}", code="unsupported_parameter")
        return data

    def requested_max_tokens(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens

    def prompt_extras(self) -> dict[str, Any]:
        """The fields besides ``messages`` the upstream renders into the prompt."""
        return {f: getattr(self, f) for f in PROMPT_FIELDS if getattr(self, f) is not None}

    def passthrough(self) -> dict[str, Any]:
        """The body for the upstream, before we set model and token limits."""
        return self.model_dump(mode="python", exclude_none=True,
                               exclude={"power_level", "metadata"})


def refuse_unknown_fields(body: dict[str, Any], allowed: frozenset[str]) -> None:
    """A 400 naming the first field of ``body`` (in sorted order) not in ``allowed``.

    Raised as InvalidRequest, not ValueError: pydantic lets other exceptions through
    unchanged, so the client sees our message with ``param`` set to the field.
    """
    unknown = sorted(str(k) for k in body if k not in allowed)
    if not unknown:
        return
    name = unknown[0]
    more = f" (and {len(unknown) - 1} more: {', '.join(unknown[1:4])})" if len(unknown) > 1 \
        else ""
    if name in LITELLM_CONTROLS or name.startswith(LITELLM_PREFIX):
        raise InvalidRequest(
            f"{name!r} is a LiteLLM routing/credential control and may not be set: this "
            f"service chooses the model, provider, credentials and retries itself{more}.",
            param=name, code="parameter_not_allowed")
    if name in PRICED_PARAMETERS:
        raise InvalidRequest(
            f"{name!r} is not supported: {PRICED_PARAMETERS[name]}{more}.",
            param=name, code="parameter_not_allowed")
    raise InvalidRequest(
        f"Unsupported parameter {name!r}{more}. The OpenAI chat completion parameters "
        "are accepted (GET /api/v1/llm/openapi.json lists them).",
        param=name, code="unsupported_parameter")
