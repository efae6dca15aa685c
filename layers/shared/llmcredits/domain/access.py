"""Which principal may call which route: the one table the authorizer's policy, the
OpenAPI security and the template test read.

API Gateway caches the authorizer's policy per credential and reuses it for every route,
so the policy lists every route the principal may call (never only the requested one).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Any

from llmcredits.domain.principal import KIND_API_KEY, Principal

API_PREFIX = "/api/v1/llm"


class Audience(Enum):
    PUBLIC = "public"  # no authorizer at all
    KEY_OR_JWT = "key_or_jwt"  # API keys and login tokens
    JWT = "jwt"  # login tokens only (a leaked key cannot mint keys or spend a card)
    ADMIN = "admin"  # login tokens with the admin scope


@dataclass(frozen=True)
class RouteAccess:
    method: str
    path: str  # full path, path parameters as {name}
    audience: Audience


def _routes(*rows: tuple[str, str, Audience]) -> tuple[RouteAccess, ...]:
    return tuple(RouteAccess(m, API_PREFIX + p, a) for m, p, a in rows)


P, K, J, A = Audience.PUBLIC, Audience.KEY_OR_JWT, Audience.JWT, Audience.ADMIN

#: DESIGN section 2. Routes built on other branches are listed too, so the policy a
#: cached credential carries is right when they land.
ROUTES: tuple[RouteAccess, ...] = (*_routes(
    ("GET", "/health", P),
    ("GET", "/openapi.json", P),
    ("POST", "/stripe/webhook", P),
    ("POST", "/chat/completions", K),
    ("GET", "/models", K),
    ("GET", "/generations/{request_id}", K),
    ("GET", "/credits", K),
    ("GET", "/credits/history", K),
    ("GET", "/usage", K),
    ("GET", "/key", K),
    ("PUT", "/credits/monthly-cap", J),
    ("POST", "/credits/purchase", J),
    ("POST", "/credits/payment-method", J),
    ("GET", "/credits/auto-topup", J),
    ("PUT", "/credits/auto-topup", J),
    ("GET", "/credits/alerts", J),
    ("PUT", "/credits/alerts", J),
    ("POST", "/keys", J),
    ("GET", "/keys", J),
    ("GET", "/keys/{id}", J),
    ("PATCH", "/keys/{id}", J),
    ("DELETE", "/keys/{id}", J),
    ("POST", "/keys/{id}/rotate", J),
    ("POST", "/byok/keys", J),
    ("GET", "/byok/keys", J),
    ("PATCH", "/byok/keys/{provider}", J),
    ("DELETE", "/byok/keys/{provider}", J),
    ("GET", "/admin/users/{user_id}", A),
    ("POST", "/admin/users/{user_id}/credits", A),
    ("PATCH", "/admin/users/{user_id}", A),
),
    # The console's static files (a web page beside the API, not under its prefix).
    RouteAccess("GET", "/console", P),
    RouteAccess("GET", "/console/{proxy+}", P),
)


def may_call(principal: Principal, audience: Audience) -> bool:
    if audience in (Audience.PUBLIC, Audience.KEY_OR_JWT):
        return True
    if principal.kind == KIND_API_KEY:
        return False
    return audience is Audience.JWT or principal.is_admin


def allowed_routes(principal: Principal) -> list[RouteAccess]:
    return [r for r in ROUTES if r.audience is not Audience.PUBLIC
            and may_call(principal, r.audience)]


def resource_arn(api_stage_arn: str, route: RouteAccess) -> str:
    """The execute-api ARN of ``route``: a path parameter matches one segment's value
    through ``*`` (IAM wildcards also cross ``/``; no route of the same method lies
    below a parameter, which tests/unit/test_authorizer.py checks)."""
    segments = ["*" if s.startswith("{") else s for s in route.path.split("/")]
    return f"{api_stage_arn}/{route.method}{'/'.join(segments)}"


def api_stage_arn(method_arn: str) -> str:
    """``arn:aws:execute-api:region:account:api-id/stage`` of a request's methodArn
    (``.../stage/METHOD/path``)."""
    parts = method_arn.split("/", 2)
    if len(parts) < 3 or not parts[1] or not parts[0].startswith("arn:"):
        raise ValueError(f"not an execute-api method ARN: {method_arn!r}")
    return f"{parts[0]}/{parts[1]}"


def policy_document(principal: Principal, method_arn: str) -> dict[str, Any]:
    stage_arn = api_stage_arn(method_arn)
    return {
        "Version": "2012-10-17",
        "Statement": [{
            "Action": "execute-api:Invoke",
            "Effect": "Allow",
            "Resource": [resource_arn(stage_arn, r) for r in allowed_routes(principal)],
        }],
    }


def authorizer_context(principal: Principal) -> dict[str, str]:
    """What the functions read through ``llmcredits.http.api.caller`` (strings only:
    API Gateway drops other types)."""
    return {"user_id": principal.user_id, "kind": principal.kind,
            "key_id": principal.key_id or "", "scopes": " ".join(sorted(principal.scopes))}
