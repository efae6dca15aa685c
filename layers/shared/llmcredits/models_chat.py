"""The OpenAI chat completion request, as far as metering needs to understand it.

Unknown OpenAI parameters pass through to the upstream untouched; fields that would
let a caller redirect or re-credential the upstream are refused.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import ConfigDict, Field, field_validator, model_validator

from llmcredits.models import ApiModel

# Accepted by LiteLLM from clients, but they would let a caller pick the upstream's
# endpoint or credentials (BYOK keys are added by us, never taken from the body).
FORBIDDEN_FIELDS = frozenset(
    {"api_key", "api_base", "base_url", "api_version", "organization", "mock_response",
     "litellm_params", "user_config", "custom_llm_provider"}
)
MAX_CHOICES = 8


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
    model_config = ConfigDict(extra="allow")

    model: str = Field(min_length=1, max_length=256, description='A catalog id or "auto"')
    messages: list[ChatMessage] = Field(min_length=1, max_length=4096)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    n: int = Field(default=1, ge=1, le=MAX_CHOICES)
    stream: bool = False
    stream_options: dict[str, Any] | None = None
    power_level: Literal["eco", "balanced", "precision"] | None = None

    @model_validator(mode="before")
    @classmethod
    def _no_upstream_overrides(cls, data: Any) -> Any:
        if isinstance(data, dict):
            bad = sorted(FORBIDDEN_FIELDS & data.keys())
            if bad:
                raise ValueError(f"field(s) not allowed: {', '.join(bad)}")
        return data

    @field_validator("max_tokens", "max_completion_tokens", "n", mode="before")
    @classmethod
    def _integers_only(cls, value: Any) -> Any:
        # JSON numbers arrive as Decimal; 10.5 tokens is not a count.
        if value is None or (isinstance(value, int) and not isinstance(value, bool)):
            return value
        if hasattr(value, "as_integer_ratio") and value == int(value):
            return int(value)
        raise ValueError("must be an integer")

    def requested_max_tokens(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens

    def passthrough(self) -> dict[str, Any]:
        """The body for the upstream, before we set model and token limits."""
        return self.model_dump(mode="python", exclude_none=True, exclude={"power_level"})
