"""The local stack: API Gateway HTTP API + Lambda emulation for ``make dev``.

* A threaded HTTP server routes requests by the template's HttpApi events, runs the
  JWT authorizer emulation, builds the exact HTTP API payload v2.0 event, invokes
  the function's ``lambda_handler`` in-process and maps the v2 response back.
* Background workers feed the table's DynamoDB stream to functions with a
  ``DynamoDB`` event (filter criteria, batch size, partial batch responses), and
  invoke functions with ``Schedule``/``ScheduleV2`` ``rate(...)`` events.
* AWS is embedded (moto, see :mod:`llmcredits.local.embedded`), or DynamoDB Local
  when ``DYNAMODB_ENDPOINT`` is set.

Python API::

    with LocalStack("template.yaml", port=0) as stack:
        httpx.get(stack.base_url + "/api/v1/llm/health")
"""

from __future__ import annotations

import base64
import contextlib
import importlib.util
import json
import logging
import os
import sys
import threading
import time
import traceback
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal, InvalidOperation
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, unquote

from llmcredits.local import oidc_login
from llmcredits.local.authorizer import AuthError, JwtAuthority
from llmcredits.local.embedded import (
    MOTO_DYNAMODB_LOCK,
    EmbeddedAws,
    dynamodb_client,
    region,
    streams_client,
)
from llmcredits.local.template import (
    LOCAL_ACCOUNT_ID,
    LOCAL_JWT_AUDIENCE,
    LOCAL_JWT_ISSUER,
    FunctionDef,
    Route,
    ScheduleEvent,
    StreamEvent,
    Template,
    Unresolvable,
    rate_seconds,
)
from llmcredits.units import Seconds

log = logging.getLogger("llmcredits.local")

#: HTTP API request payload limit (10 MB): larger bodies get 413 without invoking.
MAX_REQUEST_BODY_BYTES = 10 * 1024 * 1024
#: Lambda synchronous response payload limit (6 MB): larger responses become 500.
MAX_RESPONSE_BYTES = 6 * 1024 * 1024
#: Variables naming an SSM parameter (``<SECRET>_PARAM``): not exported locally.
SSM_NAME_SUFFIX = "_PARAM"
#: Master key of the built-in dev upstream when ``LITELLM_MASTER_KEY`` is not set.
DEV_UPSTREAM_MASTER_KEY = "sk-llmcredits-dev"
#: Public, fake "secrets" of the built-in dev Stripe stand-in (when STRIPE_SECRET_KEY is unset).
DEV_STRIPE_SECRET_KEY = "sk_test_dev_local"  # noqa: S105 - not a secret
DEV_STRIPE_WEBHOOK_SECRET = "whsec_dev_local"  # noqa: S105 - not a secret
STRIPE_WEBHOOK_PATH = "/api/v1/llm/stripe/webhook"
#: Env var that scales schedule periods (e.g. "0.01" runs rate(1 minute) every 0.6 s).
SCHEDULE_SCALE_ENV = "LLMCREDITS_LOCAL_SCHEDULE_SCALE"
DEFAULT_PORT = 3000
LOCAL_API_ID = "local"

_TEXT_TYPES = ("json", "xml", "javascript", "x-www-form-urlencoded", "graphql", "yaml", "csv")


# ------------------------------------------------------------------ JSON helpers


def dumps_exact(value: Any) -> str:
    """JSON without floats for Decimals: a Decimal becomes its exact number literal."""
    if isinstance(value, Decimal):
        if not value.is_finite():
            raise TypeError(f"cannot encode {value!r} as JSON")
        return str(value)
    if isinstance(value, dict):
        return (
            "{"
            + ", ".join(json.dumps(str(k)) + ": " + dumps_exact(v) for k, v in value.items())
            + "}"
        )
    if isinstance(value, list | tuple):
        return "[" + ", ".join(dumps_exact(v) for v in value) + "]"
    return json.dumps(value)


def gateway_error_body(
    status: int, message: str, err_type: str, code: str, detail: str | None = None
) -> bytes:
    """API Gateway's ``{"message"}`` plus our OpenAI-shaped ``error`` object."""
    body = {
        "message": message,
        "error": {"message": detail or message, "type": err_type, "code": code, "param": None},
    }
    return json.dumps(body).encode()


# --------------------------------------------------------------------- functions


class LambdaContext:
    """The parts of the Lambda context object that handlers use."""

    def __init__(self, fn: FunctionDef, function_name: str, region_name: str) -> None:
        self.function_name = function_name
        self.function_version = "$LATEST"
        self.memory_limit_in_mb = fn.memory_size
        self.invoked_function_arn = (
            f"arn:aws:lambda:{region_name}:{LOCAL_ACCOUNT_ID}:function:{function_name}"
        )
        self.aws_request_id = str(uuid.uuid4())
        self.log_group_name = f"/aws/lambda/{function_name}"
        self.log_stream_name = time.strftime("%Y/%m/%d") + "/[$LATEST]" + uuid.uuid4().hex
        self.identity = None
        self.client_context = None
        self._deadline = time.monotonic() + fn.timeout

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int((self._deadline - time.monotonic()) * 1000))


class FunctionRegistry:
    """Runs functions as Lambda does: one request at a time per execution environment.

    Each environment is a separate import of the handler module (its own module
    globals, e.g. a Powertools resolver holding ``current_event``), created lazily
    (a cold start) when every existing environment of that function is busy.
    """

    _import_lock = threading.RLock()

    def __init__(self, template: Template, stack_name: str) -> None:
        self.template = template
        self.stack_name = stack_name
        self.defs = template.functions()
        self._idle: dict[str, list[Callable[[Any, Any], Any]]] = {}
        self._created: dict[str, int] = {}
        self._lock = threading.Lock()

    def function_name(self, function_id: str) -> str:
        fn = self.defs[function_id]
        return fn.function_name or f"{self.stack_name}-{function_id}"

    def environments(self, function_id: str) -> int:
        """How many execution environments (cold starts) the function has had."""
        with self._lock:
            return self._created.get(function_id, 0)

    def _checkout(self, function_id: str) -> Callable[[Any, Any], Any]:
        with self._lock:
            idle = self._idle.setdefault(function_id, [])
            if idle:
                return idle.pop()
            instance = self._created.get(function_id, 0)
            self._created[function_id] = instance + 1
        try:
            with self._import_lock:
                return self._load(self.defs[function_id], instance)
        except BaseException:
            with self._lock:
                self._created[function_id] -= 1
            raise

    def _checkin(self, function_id: str, handler: Callable[[Any, Any], Any]) -> None:
        with self._lock:
            self._idle.setdefault(function_id, []).append(handler)

    def _load(self, fn: FunctionDef, instance: int = 0) -> Callable[[Any, Any], Any]:
        code_dir = (self.template.root / fn.code_uri).resolve()
        module_path, _, attr = fn.handler.rpartition(".")
        file_path = code_dir / (module_path.replace(".", "/") + ".py")
        if not file_path.is_file():
            raise FileNotFoundError(f"{fn.logical_id}: handler file {file_path} not found")
        unique = f"_llmcredits_local_fn_{fn.logical_id}_{module_path.replace('.', '_')}_{instance}"
        before = set(sys.modules)
        sys.path.insert(0, str(code_dir))
        try:
            spec = importlib.util.spec_from_file_location(unique, file_path)
            if spec is None or spec.loader is None:
                raise ImportError(f"cannot import {file_path}")
            module = importlib.util.module_from_spec(spec)
            sys.modules[unique] = module
            try:
                spec.loader.exec_module(module)
            except BaseException:
                sys.modules.pop(unique, None)
                raise
        finally:
            with contextlib.suppress(ValueError):
                sys.path.remove(str(code_dir))
            # Sibling modules of this function (e.g. functions/x/models.py) must not
            # shadow another function's modules of the same name.
            for name in set(sys.modules) - before:
                mod_file = getattr(sys.modules.get(name), "__file__", None)
                if (
                    name != unique
                    and name.split(".")[0] != "llmcredits"  # the shared layer stays shared
                    and mod_file
                    and Path(mod_file).resolve().is_relative_to(code_dir)
                ):
                    sys.modules.pop(name, None)
        handler = getattr(module, attr, None)
        if not callable(handler):
            raise AttributeError(f"{file_path} has no callable {attr!r}")
        return handler

    def invoke(self, function_id: str, event: Any) -> Any:
        fn = self.defs[function_id]
        handler = self._checkout(function_id)
        context = LambdaContext(fn, self.function_name(function_id), region())
        started = time.monotonic()
        try:
            return handler(event, context)
        finally:
            self._checkin(function_id, handler)
            elapsed = time.monotonic() - started
            if elapsed > fn.timeout:
                log.warning(
                    "%s ran %.1fs, over its Timeout of %ss (Lambda would have stopped it)",
                    function_id,
                    elapsed,
                    fn.timeout,
                )


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
        if self.greedy:
            if len(parts) < len(segs):
                return None
        elif len(parts) != len(segs):
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
        self.default: list[Route] = [r for r in routes if r.path == "$default"]
        compiled = [
            CompiledRoute(r, r.path.split("/"), r.path.rstrip("}").endswith("+"))
            for r in routes
            if r.path != "$default"
        ]
        self.routes = sorted(compiled, key=lambda c: c.specificity, reverse=True)

    def match(self, method: str, path: str) -> tuple[Route, dict[str, str]] | None:
        by_path: list[tuple[CompiledRoute, dict[str, str]]] = []
        for cr in self.routes:
            params = cr.match(path)
            if params is not None:
                by_path.append((cr, params))
        for want_any in (False, True):
            for cr, params in by_path:
                if (cr.route.method == "ANY") == want_any and (
                    want_any or cr.route.method == method
                ):
                    return cr.route, params
        if self.default:
            return self.default[0], {}
        return None


# ------------------------------------------------------------- event / response


def _is_text(content_type: str) -> bool:
    ct = content_type.lower()
    return ct.startswith("text/") or any(t in ct for t in _TEXT_TYPES)


def build_http_event(
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
    auth: Any = None,
    now: Seconds | None = None,
) -> dict[str, Any]:
    """The API Gateway HTTP API payload format 2.0 event."""
    now = time.time() if now is None else now
    headers: dict[str, str] = {}
    cookies: list[str] = []
    for name, value in header_items:
        key = name.lower()
        if key == "cookie":
            cookies.extend(c.strip() for c in value.split(";") if c.strip())
            continue
        headers[key] = f"{headers[key]},{value}" if key in headers else value
    headers.setdefault("x-forwarded-for", source_ip)
    headers.setdefault("x-forwarded-proto", "http")
    event: dict[str, Any] = {
        "version": "2.0",
        "routeKey": route.route_key,
        "rawPath": raw_path,
        "rawQueryString": raw_query,
    }
    if cookies:
        event["cookies"] = cookies
    event["headers"] = headers
    if raw_query:
        qs: dict[str, str] = {}
        for k, v in parse_qsl(raw_query, keep_blank_values=True):
            qs[k] = f"{qs[k]},{v}" if k in qs else v
        event["queryStringParameters"] = qs
    epoch_ms = int(now * 1000)
    request_context: dict[str, Any] = {
        "accountId": LOCAL_ACCOUNT_ID,
        "apiId": LOCAL_API_ID,
        "domainName": domain_name,
        "domainPrefix": domain_name.split(".")[0].split(":")[0],
        "http": {
            "method": method,
            "path": raw_path,
            "protocol": protocol,
            "sourceIp": source_ip,
            "userAgent": headers.get("user-agent", ""),
        },
        "requestId": request_id,
        "routeKey": route.route_key,
        "stage": "$default",
        "time": time.strftime("%d/%b/%Y:%H:%M:%S +0000", time.gmtime(now)),
        "timeEpoch": epoch_ms,
    }
    if auth is not None:
        request_context["authorizer"] = {"jwt": {"claims": auth.claims, "scopes": auth.scopes}}
    event["requestContext"] = request_context
    if path_params:
        event["pathParameters"] = dict(path_params)
    if body:
        content_type = headers.get("content-type", "")
        text: str | None = None
        if not content_type or _is_text(content_type):
            try:
                text = body.decode("utf-8")
            except UnicodeDecodeError:
                text = None
        if text is not None:
            event["body"] = text
            event["isBase64Encoded"] = False
        else:
            event["body"] = base64.b64encode(body).decode("ascii")
            event["isBase64Encoded"] = True
    else:
        event["isBase64Encoded"] = False
    return event


@dataclass
class HttpResponse:
    status: int
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""


def map_lambda_response(result: Any) -> HttpResponse:
    """Map a handler's return value to HTTP as the HTTP API (payload 2.0) does."""
    if not (isinstance(result, dict) and "statusCode" in result):
        # "Plain" response: any JSON value is the body of a 200 application/json.
        return HttpResponse(
            200, [("content-type", "application/json")], dumps_exact(result).encode()
        )
    status = int(result["statusCode"])
    if not 100 <= status <= 599:
        raise ValueError(f"invalid statusCode {status}")
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
    for cookie in result.get("cookies") or []:
        headers.append(("set-cookie", str(cookie)))
    body = result.get("body")
    if body is None:
        data = b""
    elif result.get("isBase64Encoded"):
        data = base64.b64decode(str(body))
    elif isinstance(body, str):
        data = body.encode("utf-8")
    else:
        data = dumps_exact(body).encode()
    return HttpResponse(status, headers, data)


# -------------------------------------------------------------------- HTTP server


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body go out in separate writes: without TCP_NODELAY, Nagle plus the
    # client's delayed ACK adds ~40 ms to every keep-alive response.
    disable_nagle_algorithm = True
    server_version = "llmcredits-local"
    stack: LocalStack  # set on the subclass made by LocalStack

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        pass

    def log_message(self, format: str, *args: Any) -> None:
        sys.stderr.write("local-api: " + (format % args) + "\n")

    def do_GET(self) -> None:
        self._handle()

    do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = do_GET

    def _read_body(self) -> bytes | None:
        """The request body, or None when it exceeds the HTTP API limit."""
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            chunks: list[bytes] = []
            total = 0
            while True:
                size_line = self.rfile.readline(1024).split(b";")[0].strip()
                size = int(size_line or b"0", 16)
                if size == 0:
                    while self.rfile.readline(1024) not in (b"\r\n", b"\n", b""):
                        pass
                    break
                total += size
                if total > MAX_REQUEST_BODY_BYTES:
                    self.close_connection = True
                    return None
                chunks.append(self.rfile.read(size))
                self.rfile.readline(1024)
            return b"".join(chunks)
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_REQUEST_BODY_BYTES:
            self.close_connection = True
            return None
        return self.rfile.read(length) if length > 0 else b""

    def _send(self, resp: HttpResponse, request_id: str) -> None:
        self.send_response(resp.status)
        skip = {"content-length", "transfer-encoding", "connection", "date", "server"}
        for name, value in resp.headers:
            if name.lower() not in skip:
                self.send_header(name, value)
        self.send_header("apigw-requestid", request_id)
        self.send_header("Content-Length", str(len(resp.body)))
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD" and resp.body:
            self.wfile.write(resp.body)

    def _handle(self) -> None:
        started = time.monotonic()
        stack = self.stack
        request_id = base64.b64encode(os.urandom(10)).decode("ascii")
        raw_path, _, raw_query = self.path.partition("?")
        function_id = "-"
        try:
            resp, function_id = stack.handle_request(
                method=self.command,
                raw_path=raw_path,
                raw_query=raw_query,
                header_items=list(self.headers.items()),
                read_body=self._read_body,
                source_ip=self.client_address[0],
                request_id=request_id,
                protocol=self.request_version,
            )
        except Exception:
            traceback.print_exc(file=sys.stderr)
            resp = HttpResponse(
                500, [("content-type", "application/json")], b'{"message":"Internal Server Error"}'
            )
        # One access line per request, written before the response is sent.
        sys.stderr.write(
            f"{self.client_address[0]} - [{time.strftime('%d/%b/%Y %H:%M:%S')}] "
            f'"{self.command} {self.path} {self.request_version}" '
            f"{resp.status} {len(resp.body)} "
            f"{(time.monotonic() - started) * 1000:.1f}ms {function_id} {request_id}\n"
        )
        self._send(resp, request_id)


# ------------------------------------------------------------ stream processing


def _to_decimal(value: Any) -> Decimal | None:
    if isinstance(value, bool):
        return None
    try:
        return Decimal(str(value))
    except (InvalidOperation, ValueError):
        return None


def _match_value(cond: Any, value: Any) -> bool:
    if isinstance(cond, dict):
        if "prefix" in cond:
            return isinstance(value, str) and value.startswith(str(cond["prefix"]))
        if "suffix" in cond:
            return isinstance(value, str) and value.endswith(str(cond["suffix"]))
        if "equals-ignore-case" in cond:
            return (
                isinstance(value, str) and value.lower() == str(cond["equals-ignore-case"]).lower()
            )
        if "anything-but" in cond:
            but = cond["anything-but"]
            if isinstance(but, dict):
                return not _match_value(but, value)
            buts = but if isinstance(but, list) else [but]
            return not any(_match_value(b, value) for b in buts)
        if "numeric" in cond:
            number = _to_decimal(value)
            if number is None:
                return False
            ops = cond["numeric"]
            for op, bound in zip(ops[::2], ops[1::2], strict=False):
                limit = _to_decimal(bound)
                if limit is None:
                    return False
                ok = {
                    "=": number == limit,
                    "<": number < limit,
                    "<=": number <= limit,
                    ">": number > limit,
                    ">=": number >= limit,
                }.get(op, False)
                if not ok:
                    return False
            return True
        return False
    if cond is None:
        return value is None
    if isinstance(cond, bool):
        return value is cond
    if isinstance(cond, int | Decimal | Seconds):
        a, b = _to_decimal(cond), _to_decimal(value)
        return a is not None and b is not None and a == b
    return isinstance(value, str) and value == cond


_MISSING = object()


def filter_matches(pattern: Mapping[str, Any], record: Any) -> bool:
    """Lambda event filtering (EventBridge pattern syntax) of one record."""
    if not isinstance(record, dict):
        return False
    for key, cond in pattern.items():
        value = record.get(key, _MISSING)
        if isinstance(cond, dict) and not ({"exists"} & set(cond)):
            if not isinstance(value, dict) or not filter_matches(cond, value):
                return False
            continue
        conds = cond if isinstance(cond, list) else [cond]
        values = value if isinstance(value, list) else [value]
        ok = False
        for c in conds:
            if isinstance(c, dict) and "exists" in c:
                present = value is not _MISSING and not isinstance(value, dict)
                if bool(c["exists"]) == present:
                    ok = True
                    break
                continue
            if value is _MISSING:
                continue
            if any(_match_value(c, v) for v in values):
                ok = True
                break
        if not ok:
            return False
    return True


def _lambda_attr(value: Any) -> Any:
    """Attribute values as Lambda delivers them (binary as base64 text)."""
    if isinstance(value, dict):
        return {k: _lambda_attr(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_lambda_attr(v) for v in value]
    if isinstance(value, bytes | bytearray):
        return base64.b64encode(bytes(value)).decode("ascii")
    return value


def lambda_stream_record(
    record: Mapping[str, Any], stream_arn: str, region_name: str
) -> dict[str, Any]:
    """A dynamodbstreams GetRecords record in Lambda's DynamoDB event shape."""
    ddb = dict(record.get("dynamodb") or {})
    created = ddb.get("ApproximateCreationDateTime")
    if isinstance(created, datetime):
        ddb["ApproximateCreationDateTime"] = int(created.timestamp())
    for key in ("Keys", "NewImage", "OldImage"):
        if key in ddb:
            ddb[key] = _lambda_attr(ddb[key])
    out = {
        "eventID": record.get("eventID") or uuid.uuid4().hex,
        "eventName": record.get("eventName"),
        "eventVersion": record.get("eventVersion", "1.1"),
        "eventSource": "aws:dynamodb",
        "awsRegion": record.get("awsRegion") or region_name,
        "dynamodb": ddb,
        "eventSourceARN": stream_arn,
    }
    if "userIdentity" in record:
        out["userIdentity"] = record["userIdentity"]
    return out


def read_stream(
    streams_client: Any,
    stream_arn: str,
    region_name: str,
    patterns: Sequence[Mapping[str, Any]] = (),
) -> list[dict[str, Any]]:
    """Every record of a table's stream so far, in Lambda's event shape, kept when it
    matches any of ``patterns`` (an event source mapping's FilterCriteria; none = all).
    For tests and benchmarks that feed a stream function by hand."""
    records: list[dict[str, Any]] = []
    shards = streams_client.describe_stream(StreamArn=stream_arn)["StreamDescription"]["Shards"]
    for shard in shards:
        iterator = streams_client.get_shard_iterator(
            StreamArn=stream_arn, ShardId=shard["ShardId"], ShardIteratorType="TRIM_HORIZON"
        )["ShardIterator"]
        while iterator:
            resp = streams_client.get_records(ShardIterator=iterator, Limit=1000)
            if not resp["Records"]:
                break
            records.extend(lambda_stream_record(r, stream_arn, region_name)
                           for r in resp["Records"])
            iterator = resp.get("NextShardIterator")
    return [r for r in records if not patterns or any(filter_matches(p, r) for p in patterns)]


class _Worker(threading.Thread):
    def __init__(self, name: str) -> None:
        super().__init__(name=name, daemon=True)
        self.stop_event = threading.Event()

    def stop(self) -> None:
        self.stop_event.set()


@dataclass
class _Shard:
    shard_id: str
    iterator: str | None = None
    last_seq: str | None = None
    closed: bool = False
    pending: list[dict[str, Any]] = field(default_factory=list)
    failures: int = 0
    retry_at: Seconds = 0.0


class StreamWorker(_Worker):
    """Polls a table's stream and invokes a function as Lambda's event source mapping does."""

    def __init__(
        self,
        stack: LocalStack,
        event: StreamEvent,
        stream_arn: str,
        endpoint: str | None,
        poll_interval: Seconds = 0.1,
    ) -> None:
        super().__init__(f"stream-{event.function_id}-{event.event_name}")
        self.stack = stack
        self.event = event
        self.stream_arn = stream_arn
        self.endpoint = endpoint
        self.embedded = not endpoint
        self.poll_interval = poll_interval
        self.shards: dict[str, _Shard] = {}
        self.cycles = 0
        self.idle_cycle = -1  # last cycle that found nothing new and nothing pending
        self.cond = threading.Condition()
        self._first_describe = True
        self._client = streams_client(endpoint)

    # -- polling -----------------------------------------------------------
    def run(self) -> None:
        while not self.stop_event.is_set():
            try:
                got = self.poll_once()
            except Exception:
                log.exception("stream worker %s: poll failed", self.name)
                got = False
            busy = got or any(s.pending for s in self.shards.values())
            with self.cond:
                self.cycles += 1
                if not busy:
                    self.idle_cycle = self.cycles
                self.cond.notify_all()
            if not busy or any(s.retry_at > time.monotonic() for s in self.shards.values()):
                self.stop_event.wait(self.poll_interval)

    def _discover_shards(self) -> None:
        desc = self._client.describe_stream(StreamArn=self.stream_arn)["StreamDescription"]
        for shard in desc.get("Shards", []):
            sid = shard["ShardId"]
            if sid in self.shards:
                continue
            state = _Shard(sid)
            if (
                self.embedded
                or self.event.starting_position == "TRIM_HORIZON"
                or not self._first_describe
            ):
                position = "TRIM_HORIZON"
            else:
                position = "LATEST"
            if not self.embedded:
                state.iterator = self._client.get_shard_iterator(
                    StreamArn=self.stream_arn, ShardId=sid, ShardIteratorType=position
                )["ShardIterator"]
            self.shards[sid] = state
        self._first_describe = False

    def _fetch(self, shard: _Shard) -> list[dict[str, Any]]:
        if self.embedded:
            # moto replaces a table object (and its stream shard) when a transaction
            # is cancelled, so take a fresh iterator from the last sequence number.
            kwargs: dict[str, Any] = {"StreamArn": self.stream_arn, "ShardId": shard.shard_id}
            if shard.last_seq is None:
                kwargs["ShardIteratorType"] = "TRIM_HORIZON"
            else:
                kwargs["ShardIteratorType"] = "AFTER_SEQUENCE_NUMBER"
                kwargs["SequenceNumber"] = shard.last_seq
            iterator = self._client.get_shard_iterator(**kwargs)["ShardIterator"]
            resp = self._client.get_records(ShardIterator=iterator, Limit=1000)
            self._forget_moto_iterators(iterator, resp.get("NextShardIterator"))
            return list(resp.get("Records", []))
        if shard.iterator is None:
            shard.closed = True
            return []
        try:
            resp = self._client.get_records(ShardIterator=shard.iterator, Limit=1000)
        except self._client.exceptions.ExpiredIteratorException:
            kwargs = {"StreamArn": self.stream_arn, "ShardId": shard.shard_id}
            if shard.last_seq:
                kwargs.update(
                    ShardIteratorType="AFTER_SEQUENCE_NUMBER", SequenceNumber=shard.last_seq
                )
            else:
                kwargs.update(ShardIteratorType="TRIM_HORIZON")
            shard.iterator = self._client.get_shard_iterator(**kwargs)["ShardIterator"]
            resp = self._client.get_records(ShardIterator=shard.iterator, Limit=1000)
        shard.iterator = resp.get("NextShardIterator")
        return list(resp.get("Records", []))

    @staticmethod
    def _forget_moto_iterators(*arns: str | None) -> None:
        try:
            from moto.dynamodbstreams.models import dynamodbstreams_backends

            backend = dynamodbstreams_backends[LOCAL_ACCOUNT_ID][region()]
        except Exception:
            return
        with MOTO_DYNAMODB_LOCK:
            for arn in arns:
                if arn:
                    backend.shard_iterators.pop(arn, None)

    def poll_once(self) -> bool:
        """One polling cycle; True when new records were fetched."""
        self._discover_shards()
        got = False
        for shard in list(self.shards.values()):
            if shard.closed and not shard.pending:
                continue
            if not shard.closed and len(shard.pending) < self.event.batch_size:
                records = self._fetch(shard)
                if records:
                    got = True
                    shard.last_seq = str(records[-1]["dynamodb"]["SequenceNumber"])
                for raw in records:
                    rec = lambda_stream_record(raw, self.stream_arn, region())
                    if not self.event.filters or any(
                        filter_matches(p, rec) for p in self.event.filters
                    ):
                        shard.pending.append(rec)
            self._deliver(shard)
        return got

    # -- delivery ------------------------------------------------------------
    def _deliver(self, shard: _Shard) -> None:
        while shard.pending and not self.stop_event.is_set():
            if shard.retry_at > time.monotonic():
                return
            batch = shard.pending[: self.event.batch_size]
            try:
                result = self.stack.functions.invoke(self.event.function_id, {"Records": batch})
            except Exception:
                log.error(
                    "stream worker %s: invocation failed (batch of %d)\n%s",
                    self.name,
                    len(batch),
                    traceback.format_exc(),
                )
                self._retry(shard, batch, 0)
                continue
            failed_index = self._failed_index(batch, result)
            if failed_index is None:
                del shard.pending[: len(batch)]
                shard.failures = 0
                shard.retry_at = 0.0
            else:
                self._retry(shard, batch, failed_index)

    def _failed_index(self, batch: list[dict[str, Any]], result: Any) -> int | None:
        if not isinstance(result, dict) or not result.get("batchItemFailures"):
            return None
        if not self.event.report_batch_item_failures:
            log.warning(
                "%s returned batchItemFailures but its event has no "
                "FunctionResponseTypes: [ReportBatchItemFailures]; Lambda ignores them",
                self.event.function_id,
            )
            return None
        seqs = [r["dynamodb"]["SequenceNumber"] for r in batch]
        indexes: list[int] = []
        for failure in result["batchItemFailures"]:
            ident = failure.get("itemIdentifier") if isinstance(failure, dict) else None
            if not ident or ident not in seqs:
                return 0  # invalid identifier: the whole batch failed
            indexes.append(seqs.index(ident))
        return min(indexes)

    def _retry(self, shard: _Shard, batch: list[dict[str, Any]], failed_index: int) -> None:
        del shard.pending[:failed_index]
        shard.failures += 1
        limit = self.event.maximum_retry_attempts
        if limit >= 0 and shard.failures > limit:
            log.error(
                "stream worker %s: dropping %d record(s) after %d retries",
                self.name,
                len(batch) - failed_index,
                limit,
            )
            del shard.pending[: len(batch) - failed_index]
            shard.failures = 0
            return
        shard.retry_at = time.monotonic() + min(0.05 * (2 ** (shard.failures - 1)), 2.0)

    def wait_idle(self, timeout: Seconds) -> bool:
        """Wait until a full poll cycle, started after this call, found nothing to do."""
        deadline = time.monotonic() + timeout
        with self.cond:
            target = self.cycles + 2
            while self.idle_cycle < target:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not self.is_alive():
                    return False
                self.cond.wait(remaining)
        return True


def scheduled_event(rule_name: str, region_name: str) -> dict[str, Any]:
    """The EventBridge "Scheduled Event" Lambda receives from a rate() rule."""
    return {
        "version": "0",
        "id": str(uuid.uuid4()),
        "detail-type": "Scheduled Event",
        "source": "aws.events",
        "account": LOCAL_ACCOUNT_ID,
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "region": region_name,
        "resources": [f"arn:aws:events:{region_name}:{LOCAL_ACCOUNT_ID}:rule/{rule_name}"],
        "detail": {},
    }


class ScheduleWorker(_Worker):
    """Invokes a function every rate(...) period (scaled), as EventBridge would."""

    def __init__(self, stack: LocalStack, event: ScheduleEvent, period: Seconds) -> None:
        super().__init__(f"schedule-{event.function_id}-{event.event_name}")
        self.stack = stack
        self.event = event
        self.period = period
        self.invocations = 0

    def run(self) -> None:
        while not self.stop_event.wait(self.period):
            self.fire()

    def fire(self) -> Any:
        ev = self.event
        payload = (
            ev.input
            if ev.input is not None
            else scheduled_event(
                f"{self.stack.stack_name}-{ev.function_id}{ev.event_name}", region()
            )
        )
        try:
            return self.stack.functions.invoke(ev.function_id, payload)
        except Exception:
            log.error("scheduled %s failed\n%s", ev.function_id, traceback.format_exc())
            return None
        finally:
            self.invocations += 1


# -------------------------------------------------------------------- the stack


def _reset_layer_caches() -> None:
    """Drop the layer's cached clients (built from env that start/stop changes)."""
    try:
        from llmcredits import bootstrap
    except ImportError:
        return
    reset = getattr(bootstrap, "reset", None)
    if callable(reset):
        reset()


def _default_template() -> Path:
    from llmcredits.local.authorizer import REPO_ROOT

    return REPO_ROOT / "template.yaml"


class LocalStack:
    """Embedded AWS + HTTP API emulation + stream/schedule workers, in this process.

    Environment: template variables (Globals + function, intrinsics resolved to local
    values) are exported unless already set in ``os.environ`` (variables that name
    local resources, like ``TABLE_NAME``, always are; ``*_PARAM`` SSM names never
    are); ``env_overrides`` are applied last and win. ``os.environ`` is restored by
    :meth:`stop`. When a function uses ``LITELLM_PROXY_URL`` and it is not set, the
    deterministic dev upstream is started and ``LITELLM_PROXY_URL``/``LITELLM_MASTER_KEY``
    point at it (``dev_upstream=False`` disables this). Likewise, when a function uses a
    Stripe secret and ``STRIPE_SECRET_KEY`` is not set, the dev Stripe stand-in
    (``stack.dev_stripe``) is started, delivering its webhooks to this API, and
    ``STRIPE_API_BASE``/``STRIPE_SECRET_KEY``/``STRIPE_WEBHOOK_SECRET`` point at it
    (``dev_stripe=False`` disables this).
    """

    def __init__(
        self,
        template_path: str | Path | None = None,
        *,
        host: str = "127.0.0.1",
        port: int | None = None,
        env_overrides: Mapping[str, str] | None = None,
        workers: bool = True,
        schedule_scale: Seconds | None = None,
        stream_poll_interval: Seconds = 0.1,
        authority: JwtAuthority | None = None,
        stack_name: str = "llmcredits-local",
        dev_upstream: bool = True,
        dev_stripe: bool = True,
    ) -> None:
        self.template = Template(template_path or _default_template())
        self.host = host
        self.port = int(os.environ.get("PORT") or DEFAULT_PORT) if port is None else port
        self.env_overrides = dict(env_overrides or {})
        self.enable_workers = workers
        self.schedule_scale = schedule_scale
        self.stream_poll_interval = stream_poll_interval
        self.stack_name = stack_name
        self._authority_override = authority
        self.authorities: dict[str, JwtAuthority] = {}
        self.functions = FunctionRegistry(self.template, stack_name)
        self.router = Router(self.template.routes())
        self.embedded: EmbeddedAws | None = None
        self.workers: list[_Worker] = []
        self._server: ThreadingHTTPServer | None = None
        self._server_thread: threading.Thread | None = None
        self._saved_env: dict[str, str] | None = None
        self._stop_requested = threading.Event()
        self.dev_upstream_enabled = dev_upstream
        self.dev_upstream: Any = None
        self.dev_stripe_enabled = dev_stripe
        self.dev_stripe: Any = None

    # -- lifecycle --------------------------------------------------------------
    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def authority(self) -> JwtAuthority:
        """The authority of the API's (first) JWT authorizer."""
        return (
            next(iter(self.authorities.values())) if self.authorities else self._make_authority({})
        )

    def issue_token(self, sub: str, admin: bool = False, ttl: int = 3600) -> str:
        return self.authority.issue_token(sub, admin=admin, ttl=ttl)

    def __enter__(self) -> LocalStack:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> LocalStack:
        self._saved_env = dict(os.environ)
        try:
            endpoint = self.env_overrides.get(
                "DYNAMODB_ENDPOINT", os.environ.get("DYNAMODB_ENDPOINT")
            )
            os.environ.update(self.env_overrides)
            os.environ.setdefault("AWS_SAM_LOCAL", "true")
            self.embedded = EmbeddedAws(
                self.template, dynamodb_endpoint=endpoint or None, stack_name=self.stack_name
            )
            self.embedded.start()
            self._apply_environment()
            _reset_layer_caches()
            self._setup_authorizers()
            if self.dev_upstream_enabled:
                self._start_dev_upstream()
            if self.dev_stripe_enabled:
                self._start_dev_stripe()
            self._start_server()
            if self.dev_stripe is not None:  # the API's port is known now
                host = "127.0.0.1" if self.host in ("", "0.0.0.0", "::") else self.host  # noqa: S104
                self.dev_stripe.webhook_url = f"http://{host}:{self.port}{STRIPE_WEBHOOK_PATH}"
            if self.enable_workers:
                self._start_workers()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        for worker in self.workers:
            worker.stop()
        for worker in self.workers:
            worker.join(timeout=5)
        self.workers = []
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._server_thread is not None:
            self._server_thread.join(timeout=5)
            self._server_thread = None
        if self.dev_upstream is not None:
            self.dev_upstream.stop()
            self.dev_upstream = None
        if self.dev_stripe is not None:
            self.dev_stripe.stop()
            self.dev_stripe = None
        if self.embedded is not None:
            self.embedded.stop()
            self.embedded = None
        if self._saved_env is not None:
            os.environ.clear()
            os.environ.update(self._saved_env)
            self._saved_env = None
            _reset_layer_caches()

    def serve_forever(self) -> None:
        """Block until :meth:`request_stop` or Ctrl-C (the caller then calls :meth:`stop`)."""
        try:
            while self._server_thread is not None and self._server_thread.is_alive():
                if self._stop_requested.wait(0.5):
                    break
        except KeyboardInterrupt:
            pass

    def request_stop(self) -> None:
        """Make :meth:`serve_forever` return (safe from a signal handler)."""
        self._stop_requested.set()

    # -- setup -------------------------------------------------------------------
    def _apply_environment(self) -> None:
        assert self.embedded is not None
        resources = self.embedded.resources
        with_res = self.template.resolver(resources, region=region())
        without_res = self.template.resolver({}, region=region())
        values: dict[str, str] = {}
        for fn in self.functions.defs.values():
            for key, raw in fn.environment.items():
                if key.endswith(SSM_NAME_SUFFIX):
                    # In Lambda a secret comes from SSM by this name; locally it comes
                    # from the plain variable (e.g. LITELLM_MASTER_KEY), never from SSM.
                    log.info("%s: %s (an SSM parameter name) not set locally", fn.logical_id, key)
                    continue
                try:
                    value = with_res.resolve(raw)
                except Unresolvable as exc:
                    log.info("%s: env %s not set locally (%s)", fn.logical_id, key, exc)
                    continue
                try:
                    without_res.resolve(raw)
                    from_resource = False
                except Unresolvable:
                    from_resource = True
                text = (
                    ""
                    if value is None
                    else (value if isinstance(value, str) else json.dumps(value))
                )
                if key in values and values[key] != text:
                    log.warning("env %s differs between functions; using %r", key, values[key])
                    continue
                values[key] = text
                if from_resource or key not in os.environ:
                    os.environ[key] = text
        os.environ.update(self.embedded.env)
        os.environ.update(self.env_overrides)

    def _start_dev_upstream(self) -> None:
        """Serve the deterministic dev upstream unless LITELLM_PROXY_URL is set."""
        wanted = any("LITELLM_PROXY_URL" in fn.environment for fn in self.functions.defs.values())
        if not wanted or os.environ.get("LITELLM_PROXY_URL"):
            return
        from llmcredits.local.dev_upstream import DevUpstream

        master_key = os.environ.get("LITELLM_MASTER_KEY") or DEV_UPSTREAM_MASTER_KEY
        self.dev_upstream = DevUpstream(master_key=master_key).start()
        os.environ["LITELLM_PROXY_URL"] = self.dev_upstream.url
        os.environ["LITELLM_MASTER_KEY"] = master_key
        log.info("dev upstream (deterministic, not a model) on %s", self.dev_upstream.url)

    def _start_dev_stripe(self) -> None:
        """Serve the dev Stripe stand-in unless STRIPE_SECRET_KEY is set (real test keys)."""
        wanted = any(
            key in fn.environment
            for fn in self.functions.defs.values()
            for key in ("STRIPE_SECRET_KEY_PARAM", "STRIPE_WEBHOOK_SECRET_PARAM")
        )
        if not wanted or os.environ.get("STRIPE_SECRET_KEY"):
            return
        from llmcredits.local.dev_stripe import DevStripe

        webhook_secret = os.environ.get("STRIPE_WEBHOOK_SECRET") or DEV_STRIPE_WEBHOOK_SECRET
        # The webhook URL is set once the API server has its port (see start()).
        self.dev_stripe = DevStripe(None, webhook_secret, DEV_STRIPE_SECRET_KEY).start()
        os.environ["STRIPE_API_BASE"] = self.dev_stripe.url
        os.environ["STRIPE_SECRET_KEY"] = DEV_STRIPE_SECRET_KEY
        os.environ["STRIPE_WEBHOOK_SECRET"] = webhook_secret
        log.info("dev Stripe (development stand-in, no money moves) on %s", self.dev_stripe.url)

    def _make_authority(self, config: Mapping[str, Any]) -> JwtAuthority:
        if self._authority_override is not None:
            return self._authority_override
        resolver = self.template.resolver(
            self.embedded.resources if self.embedded else {}, region=region()
        )
        try:
            issuer = str(resolver.resolve(config.get("issuer", LOCAL_JWT_ISSUER)))
            audience = resolver.resolve(config.get("audience", [LOCAL_JWT_AUDIENCE]))
        except Unresolvable:
            issuer, audience = LOCAL_JWT_ISSUER, [LOCAL_JWT_AUDIENCE]
        auds = [str(a) for a in audience] if isinstance(audience, list) else [str(audience)]
        return JwtAuthority(issuer=issuer, audience=auds)

    def _setup_authorizers(self) -> None:
        for res in self.template.resources_of_type("AWS::Serverless::HttpApi").values():
            auth = (res.get("Properties") or {}).get("Auth") or {}
            for name, spec in (auth.get("Authorizers") or {}).items():
                if isinstance(spec, dict) and "JwtConfiguration" in spec:
                    self.authorities.setdefault(
                        name, self._make_authority(spec["JwtConfiguration"])
                    )

    def _start_server(self) -> None:
        handler_cls = type("LocalApiHandler", (_Handler,), {"stack": self})
        server = ThreadingHTTPServer((self.host, self.port), handler_cls)
        server.daemon_threads = True
        self._server = server
        self.port = server.server_address[1]
        self._server_thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.1},
            name="local-api",
            daemon=True,
        )
        self._server_thread.start()

    def _start_workers(self) -> None:
        assert self.embedded is not None
        for ev in self.template.stream_events():
            if not ev.enabled:
                continue
            res = self.embedded.resources.get(ev.table_id or "")
            stream_arn = res.attrs.get("StreamArn") if res else None
            if not stream_arn:
                log.warning(
                    "%s: no stream for %s; stream event not run", ev.function_id, ev.table_id
                )
                continue
            worker = StreamWorker(
                self, ev, stream_arn, self.embedded.dynamodb_endpoint, self.stream_poll_interval
            )
            worker.start()
            self.workers.append(worker)
        scale = self.schedule_scale
        if scale is None:
            scale = Seconds(os.environ.get(SCHEDULE_SCALE_ENV) or 1)
        for sev in self.template.schedule_events():
            if not sev.enabled:
                continue
            seconds = rate_seconds(sev.expression)
            if seconds is None:
                log.warning(
                    "%s: schedule %r not supported locally (only rate())",
                    sev.function_id,
                    sev.expression,
                )
                continue
            sworker = ScheduleWorker(self, sev, seconds * scale)
            sworker.start()
            self.workers.append(sworker)

    # -- helpers for tests and tools ------------------------------------------
    def invoke(self, function_id: str, event: Any) -> Any:
        """Invoke a function directly (as ``aws lambda invoke`` would)."""
        return self.functions.invoke(function_id, event)

    def stream_workers(self) -> list[StreamWorker]:
        return [w for w in self.workers if isinstance(w, StreamWorker)]

    def schedule_workers(self) -> list[ScheduleWorker]:
        return [w for w in self.workers if isinstance(w, ScheduleWorker)]

    def drain_streams(self, timeout: Seconds = 10.0) -> bool:
        """Wait until every stream worker has delivered all records written so far."""
        deadline = time.monotonic() + timeout
        return all(
            w.wait_idle(max(0.0, deadline - time.monotonic())) for w in self.stream_workers()
        )

    def dynamodb_client(self) -> Any:
        return dynamodb_client(self.embedded.dynamodb_endpoint if self.embedded else None)

    # -- request handling ------------------------------------------------------
    def handle_request(
        self,
        *,
        method: str,
        raw_path: str,
        raw_query: str,
        header_items: list[tuple[str, str]],
        read_body: Callable[[], bytes | None],
        source_ip: str,
        request_id: str,
        protocol: str = "HTTP/1.1",
    ) -> tuple[HttpResponse, str]:
        """Route, authorize, invoke and map one request: (response, function id or "-")."""
        json_headers = [("content-type", "application/json")]
        if oidc_login.handles(raw_path):  # the local issuer's login page (console sign-in)
            return HttpResponse(*oidc_login.respond(self, method, raw_path, raw_query,
                                                    header_items, read_body())), "oidc-login"
        matched = self.router.match(method, raw_path)
        if matched is None:
            read_body()
            return (
                HttpResponse(
                    404,
                    json_headers,
                    gateway_error_body(
                        404,
                        "Not Found",
                        "invalid_request_error",
                        "route_not_found",
                        f"No route for {method} {raw_path}",
                    ),
                ),
                "-",
            )
        route, params = matched
        body = read_body()
        if body is None:
            return (
                HttpResponse(
                    413,
                    json_headers,
                    gateway_error_body(
                        413,
                        "Request Entity Too Large",
                        "invalid_request_error",
                        "request_too_large",
                        f"Request body exceeds {MAX_REQUEST_BODY_BYTES} bytes",
                    ),
                ),
                route.function_id,
            )
        auth = None
        if route.authorizer is not None:
            authority = self.authorities.get(route.authorizer) or self.authority
            header = next((v for k, v in header_items if k.lower() == "authorization"), None)
            try:
                auth = authority.authorize(header, route.scopes)
            except AuthError as exc:
                if exc.status == 403:
                    return (
                        HttpResponse(
                            403,
                            json_headers,
                            gateway_error_body(
                                403, "Forbidden", "permission_error", exc.code, exc.message
                            ),
                        ),
                        route.function_id,
                    )
                challenge = f'Bearer error="{exc.code}" error_description="{exc.message}"'
                return (
                    HttpResponse(
                        401,
                        [*json_headers, ("www-authenticate", challenge)],
                        gateway_error_body(
                            401, "Unauthorized", "authentication_error", exc.code, exc.message
                        ),
                    ),
                    route.function_id,
                )
        host = next((v for k, v in header_items if k.lower() == "host"), f"{self.host}:{self.port}")
        event = build_http_event(
            method=method,
            raw_path=raw_path,
            raw_query=raw_query,
            header_items=header_items,
            body=body,
            route=route,
            path_params=params,
            source_ip=source_ip,
            request_id=request_id,
            domain_name=host,
            protocol=protocol,
            auth=auth,
        )
        internal_error = HttpResponse(500, json_headers, b'{"message":"Internal Server Error"}')
        try:
            result = self.functions.invoke(route.function_id, event)
            resp = map_lambda_response(result)
        except Exception:
            sys.stderr.write(
                f"[{route.function_id}] {request_id} unhandled error:\n{traceback.format_exc()}"
            )
            return internal_error, route.function_id
        if len(resp.body) > MAX_RESPONSE_BYTES:
            sys.stderr.write(f"[{route.function_id}] response over the Lambda payload limit\n")
            return internal_error, route.function_id
        return resp, route.function_id


@contextlib.contextmanager
def local_stack(template_path: str | Path | None = None, **kwargs: Any) -> Iterator[LocalStack]:
    """``with local_stack(...) as stack:`` — same as ``with LocalStack(...)``."""
    stack = LocalStack(template_path, **kwargs)
    with stack:
        yield stack


__all__ = [
    "MAX_REQUEST_BODY_BYTES",
    "MAX_RESPONSE_BYTES",
    "FunctionRegistry",
    "LambdaContext",
    "LocalStack",
    "Router",
    "ScheduleWorker",
    "StreamWorker",
    "build_http_event",
    "dumps_exact",
    "filter_matches",
    "gateway_error_body",
    "lambda_stream_record",
    "local_stack",
    "map_lambda_response",
]
