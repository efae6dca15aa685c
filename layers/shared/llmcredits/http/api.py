"""One resolver per function, all configured the same way.

- JSON bodies decode numbers as Decimal (never float).
- Every error, including validation, is the OpenAI shape; bad input is a 4xx.
- Logger (correlation id = API Gateway request id), Metrics and Tracer wrap the handler.
- The Logger's formatter scrubs credentials from every line (``log_scrub``).
- Metrics are EMF (namespace ``llmcredits``, dimension ``service``); money is emitted
  as integer micro-credits, never as a float computed from a Decimal.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from aws_lambda_powertools import Logger, Metrics
from aws_lambda_powertools.logging import correlation_paths
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.typing import LambdaContext

from llmcredits import jsonexact
from llmcredits.domain.principal import ADMIN_SCOPE, KIND_API_KEY, KIND_JWT
from llmcredits.errors import (
    ApiError,
    Forbidden,
    InvalidRequest,
    PayloadTooLarge,
    Unauthorized,
    error_body,
)
from llmcredits.http.log_scrub import ScrubbingFormatter
from llmcredits.http.tracing import SampledTracer
from llmcredits.money import quantize

if TYPE_CHECKING:
    # Imported where used: the scheduled and stream functions import this module for
    # logger/metrics/tracer only and never load the HTTP resolver (cold start).
    from aws_lambda_powertools.event_handler import APIGatewayRestResolver, Response

API_PREFIX = "/api/v1/llm"
JSON = "application/json"
DEFAULT_MAX_BODY_BYTES = 64 * 1024

SERVICE = "llmcredits"
MICRO = 1_000_000

logger = Logger(service=SERVICE, logger_formatter=ScrubbingFormatter())
# Powertools' Tracer, built on the first sampled invocation (the X-Ray SDK is not imported
# at init: http/tracing.py). It patches only botocore: X-Ray's default patches (and so
# imports) every library it knows. The outbound HTTP clients are patched where they are
# created (bootstrap), so only the functions that use them pay.
tracer = SampledTracer(service=SERVICE, patch_modules=("botocore",))
metrics = Metrics(namespace="llmcredits", service=SERVICE)


def micro_credits(amount: Decimal) -> int:
    """``amount`` in integer micro-credits, for metrics.

    EMF values are JSON numbers that CloudWatch stores as doubles; emitting an integer
    count of micro-credits means no float is ever computed from money here, and the
    conversion is exact (amounts are quantized to 6 places, 1 micro-credit)."""
    return int(quantize(amount) * MICRO)


def record_chat_completion(cost: Decimal, upstream_ms: int) -> None:
    """A settled chat completion: a hold was reserved, then settled for ``cost``."""
    metrics.add_metric(name="ChatCompletions", unit=MetricUnit.Count, value=1)
    metrics.add_metric(name="HoldsReserved", unit=MetricUnit.Count, value=1)
    metrics.add_metric(name="HoldsSettled", unit=MetricUnit.Count, value=1)
    metrics.add_metric(name="CreditsChargedMicros", unit=MetricUnit.Count,
                       value=micro_credits(cost))
    metrics.add_metric(name="UpstreamLatency", unit=MetricUnit.Milliseconds, value=upstream_ms)


def record_chat_failure(err: ApiError) -> None:
    """A chat request that failed with ``err``. Upstream failures (codes ``upstream_*``:
    502, 504, and the provider's own 4xx/429) come after the hold was reserved, and the
    service released it (nothing charged); every other error comes before any hold."""
    if err.code.startswith("upstream_"):
        metrics.add_metric(name="HoldsReserved", unit=MetricUnit.Count, value=1)
        metrics.add_metric(name="HoldsReleased", unit=MetricUnit.Count, value=1)
        metrics.add_metric(name="UpstreamFailures", unit=MetricUnit.Count, value=1)


def dumps(value: Any) -> str:
    """JSON out; a Decimal here is a bug upstream of us (money leaves as strings)."""
    return json.dumps(value, separators=(",", ":"), default=_no_decimal)


def _no_decimal(value: Any) -> Any:
    if isinstance(value, Decimal):
        raise TypeError("Decimal reached the JSON encoder; format money as a string first")
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def json_response(status: int, body: Any, headers: dict[str, str] | None = None) -> Response:
    from aws_lambda_powertools.event_handler import Response

    return Response(status_code=status, content_type=JSON, body=body, headers=headers)


def error_response(err: ApiError) -> Response:
    return json_response(err.status, err.body(), err.headers)


def validation_message(errors: list[dict[str, Any]]) -> tuple[str, str | None]:
    """A readable message and the offending parameter from pydantic errors."""
    if not errors:
        return "Invalid request.", None
    first = errors[0]
    if first.get("type") == "json_invalid":
        return "The request body is not valid JSON.", None
    loc = [str(part) for part in first.get("loc", ()) if part not in ("body", "query", "path")]
    param = ".".join(loc) or None
    msg = str(first.get("msg", "invalid"))
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, ") :]
    text = f"{param}: {msg}" if param else msg
    if len(errors) > 1:
        text += f" (and {len(errors) - 1} more problem{'s' if len(errors) > 2 else ''})"
    return text, param


def _cors() -> Any:
    """A REST proxy integration adds no CORS headers: the resolver does, for the one
    origin the template allows (API Gateway answers the preflights)."""
    from aws_lambda_powertools.event_handler import CORSConfig

    origin = os.environ.get("CORS_ALLOWED_ORIGINS")
    if not origin:
        return None
    return CORSConfig(allow_origin=origin, allow_headers=["Idempotency-Key", "X-Power-Level"],
                      expose_headers=["X-Credits-Charged", "X-Credits-Remaining", "Retry-After",
                                      "X-Request-Id"], max_age=600)


def make_app() -> APIGatewayRestResolver:
    from aws_lambda_powertools.event_handler import APIGatewayRestResolver
    from aws_lambda_powertools.event_handler.openapi.exceptions import (
        RequestUnsupportedContentType,
        RequestValidationError,
    )

    app = APIGatewayRestResolver(
        cors=_cors(),
        enable_validation=True,
        # A response that breaks its model is our bug: 500, never a client 4xx.
        response_validation_error_http_code=500,
        serializer=dumps,
        # [input] Strict decoding (jsonexact): NaN/Infinity, out-of-range numbers and
        # nesting deeper than jsonexact.MAX_DEPTH are a 400 naming the field, on every route.
        json_body_deserializer=jsonexact.loads_request,
    )

    @app.exception_handler(ApiError)
    def _api_error(err: ApiError) -> Response:
        if err.status == 402:
            metrics.add_metric(name="PaymentRequired", unit=MetricUnit.Count, value=1)
            # A second dimension set: the total stays under [service], the breakdown
            # (insufficient_credits, monthly_cap_reached) is under [service, code].
            metrics.add_dimensions(service=SERVICE, code=err.code)
        return error_response(err)

    @app.exception_handler(RequestValidationError)
    def _invalid(err: RequestValidationError) -> Response:
        message, param = validation_message(list(err.errors()))
        return json_response(400, error_body(message, "invalid_request_error", "invalid_request",
                                             param))

    @app.exception_handler(RequestUnsupportedContentType)
    def _not_json(_: RequestUnsupportedContentType) -> Response:
        # Powertools raises this for a body that is not JSON (nor a form); bad input: 400.
        return json_response(400, error_body("The request body must be JSON (Content-Type: "
                                             "application/json).", "invalid_request_error",
                                             "unsupported_content_type", None))

    @app.exception_handler(Exception)
    def _unexpected(err: Exception) -> Response:
        # A bug or an AWS outage, never bad input. Log it; tell the client nothing internal.
        logger.exception("unhandled error")
        metrics.add_metric(name="UnhandledError", unit=MetricUnit.Count, value=1)
        return json_response(
            500, error_body("Internal error; nothing was charged twice, retry with the same "
                            "Idempotency-Key.", "server_error", "internal_error", None)
        )

    @app.not_found
    def _not_found(_: Exception) -> Response:
        return json_response(
            404, error_body("Unknown route.", "invalid_request_error", "route_not_found", None)
        )

    return app


@dataclass(frozen=True)
class Caller:
    """Who is calling: a login token (``kind`` "jwt") or one of our API keys ("api_key")."""

    user_id: str
    scopes: frozenset[str]
    kind: str = KIND_JWT
    key_id: str | None = None

    @property
    def is_admin(self) -> bool:
        return self.kind == KIND_JWT and ADMIN_SCOPE in self.scopes


def _split_scopes(value: Any) -> set[str]:
    if isinstance(value, str):
        return set(value.strip("[]").replace(",", " ").split())
    if isinstance(value, list):
        return {str(v) for v in value}
    return set()


def caller(app: APIGatewayRestResolver) -> Caller:
    """The authenticated caller, from the REST API's Lambda authorizer context
    (``requestContext.authorizer``: user_id, kind, key_id, scopes; values are strings)."""
    authorizer = app.current_event.request_context.authorizer
    context = authorizer.get_context() if authorizer else {}
    user_id = context.get("user_id")
    if not user_id:
        raise Unauthorized("A bearer token or API key is required.")
    kind = str(context.get("kind") or KIND_JWT)
    if kind not in (KIND_JWT, KIND_API_KEY):
        raise Unauthorized("Unknown credential kind.")
    return Caller(
        user_id=str(user_id),
        scopes=frozenset(_split_scopes(context.get("scopes") or "")),
        kind=kind,
        key_id=str(context["key_id"]) if context.get("key_id") else None,
    )


def require_jwt(app: APIGatewayRestResolver) -> Caller:
    """Routes that only a login token may use (keys, BYOK, purchases, caps, alerts, admin):
    the authorizer's policy already denies them to API keys; this is defence in depth."""
    who = caller(app)
    if who.kind != KIND_JWT:
        raise Forbidden("This route needs a login token (JWT); API keys may not call it.",
                        code="jwt_required")
    return who


def admin(app: APIGatewayRestResolver) -> Caller:
    """Admin routes are left out of the authorizer's policy for callers without the
    admin scope; this is defence in depth."""
    who = require_jwt(app)
    if not who.is_admin:
        raise Forbidden(f"This route needs the {ADMIN_SCOPE} scope.", code="not_admin")
    return who


def header(app: APIGatewayRestResolver, name: str) -> str | None:
    headers = app.current_event.headers or {}
    return headers.get(name.lower()) or headers.get(name)


def _unreadable_body(event: dict[str, Any]) -> ApiError | None:
    """A 400 for a body that cannot be JSON, before Powertools fails on it with a 500:
    another declared media type (Powertools would parse forms and multipart), or bytes
    that are not UTF-8 (API Gateway passes those base64-encoded)."""
    headers = {str(k).lower(): v for k, v in (event.get("headers") or {}).items()}
    media_type = str(headers.get("content-type") or "").split(";")[0].strip().lower()
    method = str(event.get("httpMethod") or "")
    body = event.get("body") or ""
    if media_type and (body or method in ("POST", "PUT", "PATCH")) and not (
        media_type == JSON or media_type.endswith("+json")
    ):
        return InvalidRequest("The request body must be JSON (Content-Type: "
                              "application/json).", code="unsupported_content_type")
    if body and event.get("isBase64Encoded"):
        try:
            base64.b64decode(body, validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            return InvalidRequest("The request body is not valid JSON (not UTF-8 text).")
    return None


def entry_point(
    app: APIGatewayRestResolver, *, max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
) -> Callable[[dict[str, Any], LambdaContext], dict[str, Any]]:
    """The Lambda handler for ``app``, with logging, metrics and tracing."""

    @logger.inject_lambda_context(correlation_id_path=correlation_paths.API_GATEWAY_REST)
    @tracer.capture_lambda_handler
    @metrics.log_metrics(raise_on_empty_metrics=False)
    def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
        body = event.get("body") or ""
        # base64 bodies are 4/3 of their size; either way, refuse before parsing.
        size = len(body) * 3 // 4 if event.get("isBase64Encoded") else len(body.encode())
        err: ApiError | None = None
        if size > max_body_bytes:
            err = PayloadTooLarge(f"The request body is over {max_body_bytes} bytes.")
        else:
            err = _unreadable_body(event)
        if err is not None:
            return {
                "statusCode": err.status,
                "headers": {"Content-Type": JSON},
                "body": dumps(err.body()),
                "isBase64Encoded": False,
            }
        return app.resolve(event, context)

    return handler
