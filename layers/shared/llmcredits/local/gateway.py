"""The REST API emulation: routing, the Lambda authorizer with its cache, gateway
responses, and the v1 proxy event and response.

As API Gateway does for a REST API:

* A path or method no route declares is ``MISSING_AUTHENTICATION_TOKEN`` (the template
  turns it into a 404); the authorizer is never asked.
* A route with an authorizer and no identity header is ``UNAUTHORIZED`` (401) without
  invoking it. Otherwise the authorizer function is invoked with a REQUEST event (its
  answer cached per header value for ``ReauthorizeEvery`` seconds); the exception
  "Unauthorized" is a 401, any other failure ``AUTHORIZER_FAILURE``; the returned policy
  is evaluated against the request's ``methodArn``: not allowed → ``ACCESS_DENIED`` (403).
* Gateway responses are rendered from the template's ``GatewayResponses`` (status,
  headers, body template), else API Gateway's defaults.
"""

from __future__ import annotations

import base64
import fnmatch
import json
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, unquote

from llmcredits import lambda_streaming
from llmcredits.local.template import LOCAL_ACCOUNT_ID, LambdaAuthorizerDef, Route, Template
from llmcredits.units import Seconds

#: REST API request payload limit (10 MB): larger bodies get 413 without invoking.
MAX_REQUEST_BODY_BYTES = 10 * 1024 * 1024
#: Lambda synchronous response payload limit (6 MB): larger responses become 502.
MAX_RESPONSE_BYTES = 6 * 1024 * 1024
LOCAL_API_ID = "local"
LOCAL_STAGE = "local"

_TEXT_TYPES = ("json", "xml", "javascript", "x-www-form-urlencoded", "graphql", "yaml", "csv")

#: API Gateway's own status and message of the gateway responses the emulation gives.
DEFAULT_RESPONSES: dict[str, tuple[int, str]] = {
    "MISSING_AUTHENTICATION_TOKEN": (403, "Missing Authentication Token"),
    "UNAUTHORIZED": (401, "Unauthorized"),
    "ACCESS_DENIED": (403, "User is not authorized to access this resource"),
    "AUTHORIZER_FAILURE": (500, "Authorizer error"),
    "AUTHORIZER_CONFIGURATION_ERROR": (500, "Authorizer configuration error"),
    "REQUEST_TOO_LARGE": (413, "Request Too Long"),
    "INTEGRATION_FAILURE": (502, "Internal server error"),
}
_FAMILY_DEFAULT = {4: "DEFAULT_4XX", 5: "DEFAULT_5XX"}


# ----------------------------------------------------------------------- routing


@dataclass
class CompiledRoute:
    route: Route
    segments: list[str]
    greedy: bool

    def match(self, path: str) -> dict[str, str] | None:
        parts = path.split("/")
        params: dict[str, str] = {}
        segs = self.segments
        if not self.greedy and len(parts) == len(segs) + 1 and parts[-1] == "":
            parts.pop()  # REST APIs route /a/b/ to the /a/b resource
        if len(parts) < len(segs) if self.greedy else len(parts) != len(segs):
            return None
        for i, seg in enumerate(segs):
            if seg.startswith("{") and seg.endswith("+}"):
                rest = "/".join(parts[i:])
                if not rest:
                    return None
                params[seg[1:-2]] = unquote(rest)
                return params
            if seg.startswith("{") and seg.endswith("}"):
                if not parts[i]:
                    return None
                params[seg[1:-1]] = unquote(parts[i])
            elif seg != parts[i]:
                return None
        return params

    @property
    def specificity(self) -> tuple[int, int, int]:
        literal = sum(1 for s in self.segments if not s.startswith("{"))
        return (0 if self.greedy else 1, literal, len(self.segments))


class Router:
    """Matches requests to routes with API Gateway's precedence (most specific wins)."""

    def __init__(self, routes: list[Route]) -> None:
        compiled = [CompiledRoute(r, r.path.split("/"), r.path.rstrip("}").endswith("+"))
                    for r in routes]
        self.routes = sorted(compiled, key=lambda c: c.specificity, reverse=True)

    def match(self, method: str, path: str) -> tuple[Route, dict[str, str]] | None:
        by_path = [(cr, p) for cr in self.routes if (p := cr.match(path)) is not None]
        for want_any in (False, True):
            for cr, params in by_path:
                if (cr.route.method == "ANY") == want_any and (
                    want_any or cr.route.method == method
                ):
                    return cr.route, params
        return None

    def has_path(self, path: str) -> bool:
        return any(cr.match(path) is not None for cr in self.routes)


# ------------------------------------------------------------- event / response


def _is_text(content_type: str) -> bool:
    ct = content_type.lower()
    return ct.startswith("text/") or any(t in ct for t in _TEXT_TYPES)


def _headers(header_items: list[tuple[str, str]]) -> tuple[dict[str, str], dict[str, list[str]]]:
    single: dict[str, str] = {}
    multi: dict[str, list[str]] = {}
    for name, value in header_items:
        single[name] = value  # API Gateway keeps the client's casing; the last value wins
        multi.setdefault(name, []).append(value)
    return single, multi


def _query(raw_query: str) -> tuple[dict[str, str] | None, dict[str, list[str]] | None]:
    if not raw_query:
        return None, None
    single: dict[str, str] = {}
    multi: dict[str, list[str]] = {}
    for k, v in parse_qsl(raw_query, keep_blank_values=True):
        single[k] = v
        multi.setdefault(k, []).append(v)
    return single, multi


def method_arn(region: str, method: str, path: str) -> str:
    api = f"arn:aws:execute-api:{region}:{LOCAL_ACCOUNT_ID}:{LOCAL_API_ID}"
    return f"{api}/{LOCAL_STAGE}/{method}{path}"


def request_context(*, method: str, raw_path: str, route: Route, source_ip: str,
                    request_id: str, domain_name: str, user_agent: str, protocol: str,
                    now: Seconds) -> dict[str, Any]:
    return {
        "accountId": LOCAL_ACCOUNT_ID,
        "apiId": LOCAL_API_ID,
        "domainName": domain_name,
        "domainPrefix": domain_name.split(".")[0].split(":")[0],
        "extendedRequestId": request_id,
        "httpMethod": method,
        "identity": {"sourceIp": source_ip, "userAgent": user_agent},
        "path": f"/{LOCAL_STAGE}{raw_path}",
        "protocol": protocol,
        "requestId": request_id,
        "requestTime": time.strftime("%d/%b/%Y:%H:%M:%S +0000", time.gmtime(now)),
        "requestTimeEpoch": int(now * 1000),
        "resourceId": route.function_id,
        "resourcePath": route.path,
        "stage": LOCAL_STAGE,
    }


def build_rest_event(
    *,
    method: str,
    raw_path: str,
    raw_query: str,
    header_items: list[tuple[str, str]],
    body: bytes,
    route: Route,
    path_params: Mapping[str, str],
    source_ip: str,
    request_id: str,
    domain_name: str,
    protocol: str = "HTTP/1.1",
    authorizer: Mapping[str, Any] | None = None,
    now: Seconds | None = None,
) -> dict[str, Any]:
    """The REST API Lambda proxy integration (v1) event."""
    now = time.time() if now is None else now
    headers, multi_headers = _headers(header_items)
    query, multi_query = _query(raw_query)
    lower = {k.lower(): v for k, v in headers.items()}
    ctx = request_context(method=method, raw_path=raw_path, route=route, source_ip=source_ip,
                          request_id=request_id, domain_name=domain_name,
                          user_agent=lower.get("user-agent", ""), protocol=protocol, now=now)
    if authorizer is not None:
        ctx["authorizer"] = dict(authorizer)
    event: dict[str, Any] = {
        "resource": route.path,
        "path": raw_path,
        "httpMethod": method,
        "headers": headers,
        "multiValueHeaders": multi_headers,
        "queryStringParameters": query,
        "multiValueQueryStringParameters": multi_query,
        "pathParameters": dict(path_params) or None,
        "stageVariables": None,
        "requestContext": ctx,
        "body": None,
        "isBase64Encoded": False,
    }
    if body:
        content_type = lower.get("content-type", "")
        text: str | None = None
        if not content_type or _is_text(content_type):
            try:
                text = body.decode("utf-8")
            except UnicodeDecodeError:
                text = None
        if text is not None:
            event["body"] = text
        else:
            event["body"] = base64.b64encode(body).decode("ascii")
            event["isBase64Encoded"] = True
    return event


@dataclass
class HttpResponse:
    status: int
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""
    #: A streamed body (chunked transfer, each chunk written and flushed as it comes):
    #: the path a response-streaming function takes. ``body`` is ignored when set.
    chunks: Iterator[bytes] | None = None


class MalformedProxyResponse(ValueError):
    """What API Gateway calls "Malformed Lambda proxy response" (a 502)."""


def map_lambda_response(result: Any) -> HttpResponse:
    """Map a handler's return value to HTTP as the REST API proxy integration does."""
    if not (isinstance(result, dict) and "statusCode" in result):
        raise MalformedProxyResponse("the function's answer has no statusCode")
    status = int(result["statusCode"])
    if not 100 <= status <= 599:
        raise MalformedProxyResponse(f"invalid statusCode {status}")
    headers: list[tuple[str, str]] = []
    seen: set[str] = set()
    for name, value in (result.get("headers") or {}).items():
        headers.append((str(name), str(value)))
        seen.add(str(name).lower())
    for name, values in (result.get("multiValueHeaders") or {}).items():
        if str(name).lower() in seen:
            continue
        for value in values if isinstance(values, list) else [values]:
            headers.append((str(name), str(value)))
    body = result.get("body")
    if body is None:
        data = b""
    elif not isinstance(body, str):
        raise MalformedProxyResponse("body must be a string")
    elif result.get("isBase64Encoded"):
        data = base64.b64decode(body)
    else:
        data = body.encode("utf-8")
    return HttpResponse(status, headers, data)


def map_streamed_response(stream: Iterator[bytes]) -> HttpResponse:
    """A response-streaming integration's answer (``responseTransferMode: STREAM``): the
    prelude gives status and headers, the rest is the body, passed on chunk by chunk
    (no buffering, no 6 MB or 29 s limit)."""
    try:
        meta, body = lambda_streaming.decode(stream)
    except lambda_streaming.PreludeError as exc:
        raise MalformedProxyResponse(str(exc)) from exc
    status = int(meta["statusCode"])
    if not 100 <= status <= 599:
        raise MalformedProxyResponse(f"invalid statusCode {status}")
    headers = [(str(k), str(v)) for k, v in (meta.get("headers") or {}).items()]
    seen = {name.lower() for name, _ in headers}
    for name, values in (meta.get("multiValueHeaders") or {}).items():
        if str(name).lower() not in seen:
            headers += [(str(name), str(v)) for v in (values if isinstance(values, list)
                                                        else [values])]
    return HttpResponse(status, headers, chunks=body)


# -------------------------------------------------------------- gateway responses


class GatewayResponses:
    """The template's GatewayResponses, rendered as API Gateway renders them."""

    def __init__(self, specs: Mapping[str, Any], resolve: Callable[[Any], Any]) -> None:
        self.specs = {str(k): v for k, v in specs.items() if isinstance(v, dict)}
        self.resolve = resolve

    def render(self, response_type: str, message: str | None = None) -> HttpResponse:
        status, default_message = DEFAULT_RESPONSES.get(response_type, (500, "Internal error"))
        message = message or default_message
        spec = self.specs.get(response_type) or self.specs.get(_FAMILY_DEFAULT[status // 100])
        if spec is None:
            return HttpResponse(status, [("content-type", "application/json")],
                                json.dumps({"message": message}).encode())
        status = int(self.resolve(spec.get("StatusCode", status)))
        headers = [("content-type", "application/json")]
        params = (spec.get("ResponseParameters") or {}).get("Headers") or {}
        for name, value in params.items():
            headers.append((str(name), str(self.resolve(value)).strip("'")))
        body_template = (spec.get("ResponseTemplates") or {}).get("application/json")
        if body_template is None:
            body = json.dumps({"message": message})
        else:
            body = (str(body_template)
                    .replace("$context.error.messageString", json.dumps(message))
                    .replace("$context.error.message", message)
                    .replace("$context.error.responseType", response_type))
        return HttpResponse(status, headers, body.encode())


# --------------------------------------------------------------------- authorizer


class Refused(Exception):
    """The gateway answers ``response_type`` instead of invoking the function."""

    def __init__(self, response_type: str) -> None:
        super().__init__(response_type)
        self.response_type = response_type


def policy_allows(policy: Any, arn: str) -> bool:
    """IAM evaluation of an authorizer's policy for execute-api:Invoke on ``arn``:
    an explicit Deny wins, else some Allow must match (``*`` and ``?`` wildcards)."""
    statements = policy.get("Statement") if isinstance(policy, dict) else None
    if isinstance(statements, dict):
        statements = [statements]
    allowed = False
    for stmt in statements or []:
        actions = stmt.get("Action", [])
        actions = [actions] if isinstance(actions, str) else actions
        if not any(fnmatch.fnmatchcase("execute-api:Invoke", a) for a in actions):
            continue
        resources = stmt.get("Resource", [])
        resources = [resources] if isinstance(resources, str) else resources
        if not any(fnmatch.fnmatchcase(arn, r.replace("[", "[[]")) for r in resources):
            continue
        if stmt.get("Effect") == "Deny":
            return False
        allowed = allowed or stmt.get("Effect") == "Allow"
    return allowed


@dataclass
class _CachedAnswer:
    answer: dict[str, Any]
    expires: Seconds


class LambdaAuthorizer:
    """A REQUEST authorizer: the real function, invoked as API Gateway invokes it, its
    answer cached per identity-source value for the template's TTL."""

    def __init__(self, spec: LambdaAuthorizerDef, ttl: int,
                 invoke: Callable[[str, Any], Any]) -> None:
        self.spec = spec
        self.ttl = ttl
        self.invoke = invoke
        self.invocations = 0
        self._cache: dict[tuple[str, ...], _CachedAnswer] = {}
        self._lock = threading.Lock()

    def identity(self, headers: Mapping[str, str]) -> tuple[str, ...] | None:
        lower = {k.lower(): v for k, v in headers.items()}
        values = [lower.get(h.lower()) for h in self.spec.identity_headers]
        if any(not v for v in values):
            return None
        return tuple(str(v) for v in values)

    def answer(self, event: dict[str, Any]) -> dict[str, Any]:
        key = self.identity(event.get("headers") or {})
        if key is None:
            raise Refused("UNAUTHORIZED")  # no identity source: not invoked
        now = time.monotonic()
        with self._lock:
            cached = self._cache.get(key)
            if cached is not None and cached.expires > now:
                return cached.answer
        self.invocations += 1
        try:
            answer = self.invoke(self.spec.function_id, event)
        except Exception as exc:
            raise Refused("UNAUTHORIZED" if str(exc) == "Unauthorized"
                          else "AUTHORIZER_FAILURE") from None
        if not (isinstance(answer, dict) and answer.get("principalId")
                and isinstance(answer.get("policyDocument"), dict)):
            raise Refused("AUTHORIZER_CONFIGURATION_ERROR")
        if self.ttl > 0:
            with self._lock:
                self._cache[key] = _CachedAnswer(answer, now + self.ttl)
        return answer

    def clear(self) -> None:
        with self._lock:
            self._cache.clear()


def authorizer_request_event(rest_event: Mapping[str, Any], arn: str) -> dict[str, Any]:
    """The REQUEST authorizer event: the request as the function would get it, plus
    ``type`` and ``methodArn``, without a body."""
    event = {k: v for k, v in rest_event.items() if k not in ("body", "isBase64Encoded")}
    return {"type": "REQUEST", "methodArn": arn, **event}


def authorizer_context(answer: Mapping[str, Any], latency_ms: int) -> dict[str, Any]:
    """``requestContext.authorizer`` of the function's event: the context (values as
    strings, as API Gateway passes them), principalId and the latency."""
    context: dict[str, Any] = {}
    for key, value in (answer.get("context") or {}).items():
        if isinstance(value, bool):
            context[key] = "true" if value else "false"
        elif value is not None:
            context[key] = str(value)
    context["principalId"] = str(answer["principalId"])
    context["integrationLatency"] = latency_ms
    return context


class RestApi:
    """One REST API of the template: its routes, authorizers and gateway responses."""

    def __init__(self, template: Template, resolve: Callable[[Any], Any],
                 invoke: Callable[[str, Any], Any], region: str) -> None:
        self.router = Router(template.routes())
        self.region = region
        self.responses = GatewayResponses(template.gateway_responses(), resolve)
        self.authorizers = {
            name: LambdaAuthorizer(spec, int(resolve(spec.ttl)), invoke)
            for name, spec in template.lambda_authorizers().items()
        }
        cors = template.rest_api().get("Cors")
        self.cors_headers: list[tuple[str, str]] = []
        if isinstance(cors, dict):
            for prop, header in (("AllowOrigin", "Access-Control-Allow-Origin"),
                                 ("AllowMethods", "Access-Control-Allow-Methods"),
                                 ("AllowHeaders", "Access-Control-Allow-Headers"),
                                 ("MaxAge", "Access-Control-Max-Age")):
                if prop in cors:
                    self.cors_headers.append((header, str(resolve(cors[prop])).strip("'")))

    def preflight(self, path: str) -> HttpResponse | None:
        """The mock OPTIONS method SAM adds to every path when the API has Cors."""
        if not self.cors_headers or not self.router.has_path(path):
            return None
        return HttpResponse(200, [("content-type", "application/json"), *self.cors_headers],
                            b"{}")

    def authorize(self, route: Route, event: dict[str, Any]) -> dict[str, Any] | None:
        """The function's ``requestContext.authorizer``, or :class:`Refused`."""
        if route.authorizer is None:
            return None
        authorizer = self.authorizers.get(route.authorizer)
        if authorizer is None:
            raise Refused("AUTHORIZER_CONFIGURATION_ERROR")
        arn = method_arn(self.region, event["httpMethod"], event["path"])
        started = time.monotonic()
        answer = authorizer.answer(authorizer_request_event(event, arn))
        if not policy_allows(answer["policyDocument"], arn):
            raise Refused("ACCESS_DENIED")
        return authorizer_context(answer, int((time.monotonic() - started) * 1000))
