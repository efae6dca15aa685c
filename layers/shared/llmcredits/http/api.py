"""One resolver per function, all configured the same way.

- JSON bodies decode numbers as Decimal (never float).
- Every error, including validation, is the OpenAI shape; bad input is a 4xx.
- Logger (correlation id = API Gateway request id), Metrics and Tracer wrap the handler.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from functools import partial
from typing import Any

from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.event_handler import APIGatewayHttpResolver, Response
from aws_lambda_powertools.event_handler.openapi.exceptions import RequestValidationError
from aws_lambda_powertools.logging import correlation_paths
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.typing import LambdaContext

from llmcredits.errors import ApiError, Forbidden, PayloadTooLarge, Unauthorized, error_body

API_PREFIX = "/api/v1/llm"
ADMIN_SCOPE = "llmcredits/admin"
JSON = "application/json"
DEFAULT_MAX_BODY_BYTES = 64 * 1024

logger = Logger(service="llmcredits")
tracer = Tracer(service="llmcredits")
metrics = Metrics(namespace="llmcredits", service="llmcredits")


def dumps(value: Any) -> str:
    """JSON out; a Decimal here is a bug upstream of us (money leaves as strings)."""
    return json.dumps(value, separators=(",", ":"), default=_no_decimal)


def _no_decimal(value: Any) -> Any:
    if isinstance(value, Decimal):
        raise TypeError("Decimal reached the JSON encoder; format money as a string first")
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def json_response(status: int, body: Any, headers: dict[str, str] | None = None) -> Response:
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


def make_app() -> APIGatewayHttpResolver:
    app = APIGatewayHttpResolver(
        enable_validation=True,
        # A response that breaks its model is our bug: 500, never a client 4xx.
        response_validation_error_http_code=500,
        serializer=dumps,
        json_body_deserializer=partial(json.loads, parse_float=Decimal),
    )

    @app.exception_handler(ApiError)
    def _api_error(err: ApiError) -> Response:
        if err.status == 402:
            metrics.add_metric(name="PaymentRequired", unit=MetricUnit.Count, value=1)
        return error_response(err)

    @app.exception_handler(RequestValidationError)
    def _invalid(err: RequestValidationError) -> Response:
        message, param = validation_message(list(err.errors()))
        return json_response(400, error_body(message, "invalid_request_error", "invalid_request",
                                             param))

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
    user_id: str
    scopes: frozenset[str]

    @property
    def is_admin(self) -> bool:
        return ADMIN_SCOPE in self.scopes


def caller(app: APIGatewayHttpResolver) -> Caller:
    """The authenticated caller, from the claims API Gateway's JWT authorizer verified."""
    authorizer = app.current_event.request_context.authorizer
    claims = authorizer.jwt_claim if authorizer else {}
    sub = claims.get("sub")
    if not sub:
        raise Unauthorized("A bearer token with a subject is required.")
    scopes: set[str] = set((authorizer.jwt_scopes if authorizer else None) or [])
    for claim in ("scope", "scp"):
        value = claims.get(claim)
        if isinstance(value, str):
            scopes.update(value.strip("[]").replace(",", " ").split())
        elif isinstance(value, list):
            scopes.update(str(v) for v in value)
    return Caller(user_id=str(sub), scopes=frozenset(scopes))


def admin(app: APIGatewayHttpResolver) -> Caller:
    """Admin routes are scope-checked by API Gateway too; this is defence in depth."""
    who = caller(app)
    if not who.is_admin:
        raise Forbidden(f"This route needs the {ADMIN_SCOPE} scope.", code="not_admin")
    return who


def header(app: APIGatewayHttpResolver, name: str) -> str | None:
    headers = app.current_event.headers or {}
    return headers.get(name.lower()) or headers.get(name)


def entry_point(
    app: APIGatewayHttpResolver, *, max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
) -> Callable[[dict[str, Any], LambdaContext], dict[str, Any]]:
    """The Lambda handler for ``app``, with logging, metrics and tracing."""

    @logger.inject_lambda_context(correlation_id_path=correlation_paths.API_GATEWAY_HTTP)
    @tracer.capture_lambda_handler
    @metrics.log_metrics(raise_on_empty_metrics=False)
    def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
        body = event.get("body") or ""
        # base64 bodies are 4/3 of their size; either way, refuse before parsing.
        size = len(body) * 3 // 4 if event.get("isBase64Encoded") else len(body.encode())
        if size > max_body_bytes:
            err = PayloadTooLarge(f"The request body is over {max_body_bytes} bytes.")
            return {
                "statusCode": err.status,
                "headers": {"Content-Type": JSON},
                "body": dumps(err.body()),
                "isBase64Encoded": False,
            }
        return app.resolve(event, context)

    return handler
