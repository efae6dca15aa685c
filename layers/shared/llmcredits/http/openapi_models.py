"""Response bodies that only the OpenAPI document describes: handlers never build them.

Imported by :mod:`llmcredits.http.openapi_responses` only while the document is generated
(``openapi_doc.build_document``), so no function creates these classes at cold start nor
builds their validators on its first request (Powertools makes a TypeAdapter for every
model in a route's ``responses``).
"""

from __future__ import annotations

from decimal import Decimal
from typing import Annotated, Literal

from pydantic import ConfigDict, Field, RootModel, WithJsonSchema

from llmcredits.models import ApiModel

# ------------------------------------------------------------------ error bodies


class ErrorDetail(ApiModel):
    message: str = Field(description="What went wrong, for a human")
    type: str = Field(
        description="invalid_request_error, authentication_error, billing_error, "
        "permission_error, not_found_error, conflict_error, rate_limit_error, "
        "upstream_error or server_error",
        examples=["invalid_request_error"],
    )
    code: str | None = Field(
        description="Machine-readable reason, e.g. invalid_request, insufficient_credits, "
        "monthly_cap_reached, rate_limited, idempotency_conflict, request_too_large",
        examples=["insufficient_credits"],
    )
    param: str | None = Field(description="The offending parameter, when there is one")


class ErrorResponse(ApiModel):
    """The OpenAI error shape, used by every error this API answers."""

    error: ErrorDetail


class GatewayError(ApiModel):
    """API Gateway's own answer (before any function runs): ``{"message": ...}``.

    The local stack adds the OpenAI ``error`` object next to ``message``."""

    message: str = Field(examples=["Unauthorized"])
    error: ErrorDetail | None = None


class GatewayOrApiError(RootModel[ErrorResponse | GatewayError]):
    """Either API Gateway's ``{"message"}`` or the API's OpenAI-shaped error."""

    model_config = ConfigDict(defer_build=True)  # as ApiModel (a RootModel cannot share it)


# ------------------------------------------------------- chat completion bodies

CostNumber = Annotated[
    Decimal,
    WithJsonSchema({
        "type": "number",
        "minimum": 0,
        "description": "Credits charged for this request (exact decimal, up to 6 places; "
        "the same amount as the X-Credits-Charged header)",
        "examples": [0.000123],
    }),
]


class CompletionUsage(ApiModel):
    model_config = ConfigDict(extra="allow")

    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    total_tokens: int | None = None
    cost: CostNumber


class CompletionMessage(ApiModel):
    model_config = ConfigDict(extra="allow")

    role: str = Field(examples=["assistant"])
    content: str | None = None


class CompletionChoice(ApiModel):
    model_config = ConfigDict(extra="allow")

    index: int
    message: CompletionMessage
    finish_reason: str | None = Field(default=None, examples=["stop"])


class ChatCompletion(ApiModel):
    """The upstream's OpenAI chat completion, passed through, plus ``usage.cost``."""

    model_config = ConfigDict(extra="allow")

    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: CompletionUsage
