"""Errors in the OpenAI shape: {"error": {"message", "type", "code", "param"}}."""

from __future__ import annotations

from typing import Any


class ApiError(Exception):
    """An error a client can act on; rendered as the OpenAI error body."""

    status = 400
    type = "invalid_request_error"
    code = "invalid_request"

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        self.param = param
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return error_body(self.message, self.type, self.code, self.param)


def error_body(message: str, type_: str, code: str | None, param: str | None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "code": code, "param": param}}


class InvalidRequest(ApiError):
    status = 400


class Unauthorized(ApiError):
    status = 401
    type = "authentication_error"
    code = "invalid_token"


class PaymentRequired(ApiError):
    status = 402
    type = "billing_error"
    code = "insufficient_credits"


class InsufficientCredits(PaymentRequired):
    code = "insufficient_credits"


class MonthlyCapReached(PaymentRequired):
    code = "monthly_cap_reached"


class KeyLimitReached(PaymentRequired):
    """The API key's own spending limit (per its reset window) is used up."""

    code = "key_limit_reached"


class Forbidden(ApiError):
    status = 403
    type = "permission_error"
    code = "forbidden"


class NotFound(ApiError):
    status = 404
    type = "not_found_error"
    code = "not_found"


class IdempotencyConflict(ApiError):
    status = 409
    type = "conflict_error"
    code = "idempotency_conflict"


class PayloadTooLarge(ApiError):
    status = 413
    code = "request_too_large"


class RateLimited(ApiError):
    status = 429
    type = "rate_limit_error"
    code = "rate_limited"


class UpstreamError(ApiError):
    """The LLM upstream failed; nothing was charged."""

    status = 502
    type = "upstream_error"
    code = "upstream_error"


class UpstreamTimeout(ApiError):
    status = 504
    type = "upstream_error"
    code = "upstream_timeout"


class NotConfigured(ApiError):
    """A deployment setting is missing: the operator's problem, not the client's."""

    status = 503
    type = "server_error"
    code = "not_configured"


class ContentionTimeout(ApiError):
    """Too many concurrent writers on one account; safe to retry (nothing was written)."""

    status = 503
    type = "server_error"
    code = "contention"
