"""The local stack for ``make dev``: the REST API, Lambda and the AWS around them.

* :mod:`~llmcredits.local.http_server` serves HTTP; :mod:`~llmcredits.local.gateway`
  routes by the template's ``Api`` events, invokes the real Lambda authorizer (with its
  cache) and evaluates its policy, renders the template's gateway responses, and builds
  the REST API v1 proxy event; :mod:`~llmcredits.local.lambda_runtime` runs the function.
* :mod:`~llmcredits.local.issuer` is the local OIDC issuer (discovery document and JWKS
  on this port) that ``llmcredits token`` signs for.
* :mod:`~llmcredits.local.streams` and :mod:`~llmcredits.local.schedules` feed the
  table's stream and the template's ``rate()`` schedules to their functions.
* AWS is embedded (moto, see :mod:`llmcredits.local.embedded`), or DynamoDB Local
  when ``DYNAMODB_ENDPOINT`` is set.

Python API::

    with LocalStack("template.yaml", port=0) as stack:
        httpx.get(stack.base_url + "/api/v1/llm/health")
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import json
import logging
import os
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from llmcredits.local import gateway, issuer
from llmcredits.local.embedded import EmbeddedAws, dynamodb_client, region
from llmcredits.local.gateway import (
    MAX_RESPONSE_BYTES,
    HttpResponse,
    MalformedProxyResponse,
    Refused,
    RestApi,
    Router,
    build_rest_event,
)
from llmcredits.local.http_server import LocalHttpServer, RequestHandler
from llmcredits.local.issuer import JwtAuthority
from llmcredits.local.lambda_runtime import FunctionRegistry
from llmcredits.local.schedules import ScheduleWorker
from llmcredits.local.streams import StreamWorker, Worker
from llmcredits.local.template import (
    LOCAL_JWT_AUDIENCE,
    LOCAL_JWT_ISSUER,
    Template,
    Unresolvable,
    rate_seconds,
)
from llmcredits.units import Seconds

log = logging.getLogger("llmcredits.local")

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
#: The issuer's login pages (authorize + token endpoints), when that module exists.
LOGIN_MODULE = "llmcredits.local.oidc_login"


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
    from llmcredits.local.issuer import REPO_ROOT

    return REPO_ROOT / "template.yaml"


class LocalStack:
    """Embedded AWS + REST API emulation + stream/schedule workers, in this process.

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
        self.issuer = authority or JwtAuthority()
        self.functions = FunctionRegistry(self.template, stack_name)
        self.api: RestApi | None = None  # made at start (intrinsics need the resources)
        self.embedded: EmbeddedAws | None = None
        self.workers: list[Worker] = []
        self._server: LocalHttpServer | None = None
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
        """The local OIDC issuer's signing authority (tokens for tests and tools)."""
        return self.issuer

    def issue_token(self, sub: str, admin: bool = False, ttl: int = 3600) -> str:
        return self.issuer.issue_token(sub, admin=admin, ttl=ttl)

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
            if self.dev_upstream_enabled:
                self._start_dev_upstream()
            if self.dev_stripe_enabled:
                self._start_dev_stripe()
            self._start_server()
            self._start_gateway()
            if self.dev_stripe is not None:  # the API's port is known now
                self.dev_stripe.webhook_url = self.local_url + STRIPE_WEBHOOK_PATH
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

    def _start_gateway(self) -> None:
        """The REST API, and the authorizer pointed at this stack's OIDC issuer."""
        assert self.embedded is not None
        resolver = self.template.resolver(self.embedded.resources, region=region())
        try:
            issuer_id = str(resolver.resolve({"Ref": "JwtIssuer"}))
            audience = str(resolver.resolve({"Ref": "JwtAudience"}))
        except Unresolvable:
            issuer_id, audience = LOCAL_JWT_ISSUER, LOCAL_JWT_AUDIENCE
        if issuer_id != self.issuer.issuer or audience not in self.issuer.audiences:
            self.issuer = JwtAuthority(self.issuer.key_path, issuer=issuer_id,
                                       audience=[audience, *self.issuer.audiences])
        if importlib.util.find_spec(LOGIN_MODULE) is not None:
            importlib.import_module(LOGIN_MODULE)  # registers its paths with the issuer
        os.environ["OIDC_DISCOVERY_URL"] = self.local_url + issuer.DISCOVERY_PATH
        _reset_layer_caches()  # the authorizer's verifier reads OIDC_* once per container
        self.api = RestApi(self.template, resolver.resolve, self.functions.invoke, region())

    @property
    def router(self) -> Router:
        assert self.api is not None, "start() the stack first"
        return self.api.router

    @property
    def local_url(self) -> str:
        """This stack's URL as a client on this machine reaches it."""
        host = "127.0.0.1" if self.host in ("", "0.0.0.0", "::") else self.host  # noqa: S104
        return f"http://{host}:{self.port}"

    def _start_server(self) -> None:
        handler_cls = type("LocalApiHandler", (RequestHandler,), {"stack": self})
        server = LocalHttpServer((self.host, self.port), handler_cls)
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
        api = self.api
        assert api is not None, "start() the stack first"
        served = issuer.serve(self.issuer, self.local_url, method, raw_path, raw_query,
                              read_body)
        if served is not None:
            return HttpResponse(*served), "issuer"
        matched = api.router.match(method, raw_path)
        if matched is None:
            read_body()
            preflight = api.preflight(raw_path) if method == "OPTIONS" else None
            return preflight or api.responses.render("MISSING_AUTHENTICATION_TOKEN"), "-"
        route, params = matched
        body = read_body()
        if body is None:
            return api.responses.render("REQUEST_TOO_LARGE"), route.function_id
        host = next((v for k, v in header_items if k.lower() == "host"), f"{self.host}:{self.port}")
        event = build_rest_event(method=method, raw_path=raw_path, raw_query=raw_query,
                                 header_items=header_items, body=body, route=route,
                                 path_params=params, source_ip=source_ip,
                                 request_id=request_id, domain_name=host, protocol=protocol)
        try:
            context = api.authorize(route, event)
        except Refused as refused:
            return api.responses.render(refused.response_type), route.function_id
        if context is not None:
            event["requestContext"]["authorizer"] = context
        try:
            if route.streaming:  # ResponseTransferMode: RESPONSE_STREAM (the chat route)
                resp = gateway.map_streamed_response(
                    self.functions.invoke_streaming(route.function_id, event))
                return resp, route.function_id
            resp = gateway.map_lambda_response(self.functions.invoke(route.function_id, event))
        except MalformedProxyResponse as exc:
            sys.stderr.write(f"[{route.function_id}] {request_id} malformed response: {exc}\n")
            return api.responses.render("INTEGRATION_FAILURE"), route.function_id
        except Exception:
            sys.stderr.write(
                f"[{route.function_id}] {request_id} unhandled error:\n{traceback.format_exc()}"
            )
            return api.responses.render("INTEGRATION_FAILURE"), route.function_id
        if len(resp.body) > MAX_RESPONSE_BYTES:
            sys.stderr.write(f"[{route.function_id}] response over the Lambda payload limit\n")
            return api.responses.render("INTEGRATION_FAILURE"), route.function_id
        return resp, route.function_id


@contextlib.contextmanager
def local_stack(template_path: str | Path | None = None, **kwargs: Any) -> Iterator[LocalStack]:
    """``with local_stack(...) as stack:`` — same as ``with LocalStack(...)``."""
    stack = LocalStack(template_path, **kwargs)
    with stack:
        yield stack


__all__ = [
    "LocalStack",
    "local_stack",
]
