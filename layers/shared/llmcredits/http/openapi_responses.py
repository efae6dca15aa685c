"""Reusable OpenAPI ``responses`` for the route decorators.

Every error the API answers has the OpenAI shape ``{"error": {"message", "type", "code",
"param"}}`` (``ErrorResponse``). API Gateway itself answers some statuses before a
function runs (401 from the Lambda authorizer, 403 for a route the credential may not
call, 413 over its 10 MB limit) through the template's gateway responses, in the same
shape; those statuses document ``GatewayOrApiError``, which also accepts the bare
``{"message"}`` of an API Gateway default (models in :mod:`llmcredits.http.openapi_models`).

A decorator combines :func:`ok` / :func:`created` / :func:`no_content` with
:func:`errors`::

    @app.get(path, responses={**ok("The account"), **errors(401, 403, 404)})

Powertools uses a route's ``responses`` only for the OpenAPI document (and builds a
validator for each of their models on the route's first request), so the helpers return
``{}`` unless the document is being generated (:func:`documenting`, entered by
``openapi_doc.build_document``): at cold start no function creates the documentation
models nor pays for them on its first request.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from llmcredits.models import MONEY_SCHEMA

if TYPE_CHECKING:
    from aws_lambda_powertools.event_handler.openapi.types import OpenAPIResponse

JSON = "application/json"
EVENT_STREAM = "text/event-stream"

_documenting = False


@contextmanager
def documenting() -> Iterator[None]:
    """Routes declared inside carry their OpenAPI ``responses`` (document generation)."""
    global _documenting
    previous, _documenting = _documenting, True
    try:
        yield
    finally:
        _documenting = previous


CHAT_STREAM_DESCRIPTION = (
    "With `stream: true`: the complete server-sent event stream, returned at once (HTTP "
    "API buffers responses). Each event is `data: <chat.completion.chunk JSON>`; the last "
    "chunk carries `usage` with `cost`; the stream ends with `data: [DONE]`."
)
#: One server-sent event of the stream (as OpenAPI 3.1 tools read an event-stream schema).
CHAT_STREAM_EVENT: dict[str, Any] = {
    "type": "object",
    "description": CHAT_STREAM_DESCRIPTION,
    "required": ["data"],
    "properties": {
        "data": {
            "type": "string",
            "description": "A chat.completion.chunk as JSON, or `[DONE]` (the last event)",
        },
        "event": {"type": "string"},
        "id": {"type": "string"},
        "retry": {"type": "integer"},
    },
}
CHAT_STREAM_EXAMPLE = (
    'data: {"id":"req-1","object":"chat.completion.chunk","created":1760000000,'
    '"model":"m","choices":[{"index":0,"delta":{"content":"Hi"},"finish_reason":null}]}\n\n'
    'data: {"id":"req-1","object":"chat.completion.chunk","created":1760000000,'
    '"model":"m","choices":[],"usage":{"prompt_tokens":9,"completion_tokens":1,'
    '"total_tokens":10,"cost":0.000012}}\n\n'
    "data: [DONE]\n\n"
)


# ------------------------------------------------------------- stripe webhook

STRIPE_SIGNATURE_PARAMETER: dict[str, Any] = {
    "name": "Stripe-Signature",
    "in": "header",
    "required": True,
    "description": "Stripe's signature of the raw body: `t=<unix time>,v1=<hex HMAC-SHA256>`",
    "schema": {"type": "string", "examples": ["t=1760000000,v1=5257a869e7ecebeda32affa62cdca3fa51"
                                              "cad7e77a0e56ff536d0ce8e108d8bd"]},
}
STRIPE_EVENT_BODY: dict[str, Any] = {
    "required": True,
    "description": "A Stripe event, exactly as Stripe sent it (checkout.session.completed, "
    "checkout.session.async_payment_succeeded/failed, charge.refunded, "
    "charge.dispute.created, ...; others are acknowledged and ignored)",
    "content": {JSON: {"schema": {
        "type": "object",
        "required": ["id", "object", "type", "data"],
        "properties": {
            "id": {"type": "string", "examples": ["evt_1"]},
            "object": {"type": "string", "const": "event"},
            "type": {"type": "string", "examples": ["checkout.session.completed"]},
            "data": {"type": "object", "required": ["object"],
                     "properties": {"object": {"type": "object"}}},
        },
    }}},
}


# -------------------------------------------------------------------- headers


def _money_header(description: str, required: bool = True) -> dict[str, Any]:
    return {"description": description, "required": required,
            "schema": {k: v for k, v in MONEY_SCHEMA.items() if k != "description"}}


CREDIT_HEADERS: dict[str, Any] = {
    "X-Credits-Charged": _money_header("Credits charged for this request"),
    "X-Credits-Remaining": _money_header("The balance after the charge"),
    "X-Request-Id": {"description": "The request id (also in the ledger entry)",
                     "schema": {"type": "string"}},
}
#: A streamed answer's headers go out before its charge is known: the charge headers are
#: on non-streamed answers only (a stream's charge is in its usage chunk, when asked for,
#: and in the ledger).
CHAT_HEADERS: dict[str, Any] = {
    "X-Credits-Charged": _money_header("Credits charged for this request (non-streamed "
                                       "answers)", required=False),
    "X-Credits-Remaining": _money_header("The balance after the charge (non-streamed "
                                         "answers)", required=False),
    "X-Request-Id": {"description": "The request id: the `id` of the completion and of "
                                    "every stream chunk", "schema": {"type": "string"}},
}
REPLAY_HEADERS: dict[str, Any] = {
    "Idempotent-Replayed": {
        "description": "`true` when this is the stored first result of the Idempotency-Key",
        "schema": {"type": "string", "enum": ["true"]},
    },
}
RETRY_AFTER: dict[str, Any] = {
    "Retry-After": {"description": "Seconds to wait before retrying",
                    "schema": {"type": "string", "pattern": r"^\d+$"}},
}


# ------------------------------------------------------------------- successes


def ok(description: str = "Success", model: Any = None,
       headers: dict[str, Any] | None = None) -> dict[int, OpenAPIResponse]:
    """200; without ``model`` the schema comes from the handler's return annotation."""
    if not _documenting:
        return {}
    return {200: _success(description, model, headers)}


def created(description: str, model: Any,
            headers: dict[str, Any] | None = None) -> dict[int, OpenAPIResponse]:
    """201 with ``model`` as the JSON body."""
    if not _documenting:
        return {}
    return {201: _success(description, model, headers)}


def no_content(description: str = "Done; no body") -> dict[int, OpenAPIResponse]:
    if not _documenting:
        return {}
    # An empty content map: without one Powertools documents the return annotation.
    return {204: {"description": description, "content": {}}}


def _success(description: str, model: Any, headers: dict[str, Any] | None) -> OpenAPIResponse:
    response: OpenAPIResponse = {"description": description}
    if model is not None:
        response["content"] = {JSON: {"model": model}}
    if headers:
        response["headers"] = headers
    return response


def chat_completion_ok() -> dict[int, OpenAPIResponse]:
    """200 of POST /chat/completions: JSON, or the event stream with ``stream``."""
    if not _documenting:
        return {}
    from llmcredits.http.openapi_models import ChatCompletion

    return {200: {
        "description": "The completion and what it cost. JSON, or with `stream: true` a "
        "`text/event-stream` sent chunk by chunk (the usage chunk, with `cost`, only with "
        "`stream_options.include_usage`).",
        "headers": CHAT_HEADERS,
        "content": {
            JSON: {"model": ChatCompletion},
            EVENT_STREAM: {
                "schema": CHAT_STREAM_EVENT,
                "examples": {"stream": {"value": CHAT_STREAM_EXAMPLE}},
            },
        },
    }}


# ---------------------------------------------------------------------- errors

#: Statuses API Gateway may answer itself (``{"message"}``) on every route.
GATEWAY_STATUSES = frozenset({401, 413})
#: The 403 of a route that only login tokens may call (``require_jwt``).
JWT_ONLY = (403, "API keys may not call this route (`jwt_required`)")

ERROR_DESCRIPTIONS: dict[int, str] = {
    400: "Invalid input: a malformed body, parameter or header (`invalid_request_error`)",
    401: "No bearer credential, or one that is not valid: a login token with a bad signature, "
    "expired, not yet valid, of another issuer or audience, or an unknown, revoked or "
    "expired API key (`invalid_token`, answered by the Lambda authorizer).",
    402: "`insufficient_credits` (the balance minus holds cannot cover the request's upper "
    "bound) or `monthly_cap_reached`; nothing was sent upstream",
    403: "Not allowed (`permission_error`)",
    404: "Not found (`not_found_error`)",
    409: "`idempotency_conflict`: this Idempotency-Key was used with a different request",
    413: "`request_too_large`: the body is over this route's limit (64 KiB; 1 MB for chat "
    "completions and the Stripe webhook); API Gateway's own limit is 10 MB",
    429: "`rate_limited`: over the tier's requests per minute (or the provider is rate "
    "limiting); retry after `Retry-After` seconds. Nothing was charged.",
    500: "Internal error (`server_error`); retry with the same Idempotency-Key",
    502: "The model provider failed or sent an unusable answer (`upstream_error`); the "
    "hold was released, nothing was charged",
    503: "The account or payment is busy with concurrent writes (`contention`) or the "
    "event must wait for an earlier one; nothing was written, retry",
    504: "The model provider did not answer in time (`upstream_timeout`); nothing was "
    "charged",
}

ADMIN_403 = (
    "The credential is an API key, or a login token without the `llmcredits/admin` scope. "
    "The authorizer's policy leaves admin routes out (`forbidden`); the function checks "
    "again (`not_admin`)."
)


def errors(
    *statuses: int | tuple[int, str], gateway: frozenset[int] = GATEWAY_STATUSES
) -> dict[int, OpenAPIResponse]:
    """Error responses for ``statuses``; a ``(status, description)`` overrides the text.

    Statuses in ``gateway`` document API Gateway's ``{"message"}`` body as well."""
    if not _documenting:
        return {}
    from llmcredits.http.openapi_models import ErrorResponse, GatewayOrApiError

    out: dict[int, OpenAPIResponse] = {}
    for item in statuses:
        status, description = item if isinstance(item, tuple) else (item,
                                                                    ERROR_DESCRIPTIONS[item])
        model = GatewayOrApiError if status in gateway else ErrorResponse
        response: OpenAPIResponse = {"description": description,
                                     "content": {JSON: {"model": model}}}
        if status == 429:
            response["headers"] = RETRY_AFTER
        out[status] = response
    return out


def admin_errors(*statuses: int | tuple[int, str]) -> dict[int, OpenAPIResponse]:
    """:func:`errors` of an admin route: 401 and 403 (scope) also from API Gateway."""
    return errors(*sorted([*statuses, (403, ADMIN_403)],
                          key=lambda s: s[0] if isinstance(s, tuple) else s),
                  gateway=GATEWAY_STATUSES | {403})
