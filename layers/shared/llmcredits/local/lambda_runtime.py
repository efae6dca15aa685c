"""The Lambda runtime emulation: execution environments, each a separate import of a
function's handler, one request at a time each, with a Lambda-like context object."""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llmcredits import lambda_streaming
from llmcredits.local.embedded import (
    region,
)
from llmcredits.local.template import (
    LOCAL_ACCOUNT_ID,
    FunctionDef,
    Template,
)

if TYPE_CHECKING:
    pass

log = logging.getLogger("llmcredits.local")


class _PerThread:
    """A data descriptor whose value is per thread (see isolate_resolver_state)."""

    def __init__(self, name: str, state: threading.local) -> None:
        self._name = name
        self._state = state

    def __get__(self, obj: object, owner: type | None = None) -> Any:
        try:
            return getattr(self._state, self._name)
        except AttributeError:
            raise AttributeError(self._name) from None

    def __set__(self, obj: object, value: Any) -> None:
        setattr(self._state, self._name, value)


def isolate_resolver_state() -> None:
    """Make Powertools' per-request router state per thread.

    The REST resolver keeps the request on the class (``BaseRouter.current_event =
    ...``, and ``lambda_context``): right in Lambda, one invocation per process, but this
    runtime runs concurrent invocations in threads of one process, where a request read
    another's event (its request id, body, authorizer context: found when request ids
    became hold ids). A metaclass descriptor catches the class-level writes and reads, a
    class-dict descriptor the instance reads; both keep the value per thread."""
    from aws_lambda_powertools.event_handler import api_gateway

    base: Any = api_gateway.BaseRouter
    if getattr(base, "_llmcredits_state_per_thread", False):
        return
    state = threading.local()
    names = ("current_event", "lambda_context")
    for name in names:
        setattr(base, name, _PerThread(name, state))  # still the plain metaclass: class dict
    base.__class__ = type("PerThreadRouterMeta", (type(base),),
                          {name: _PerThread(name, state) for name in names})
    base._llmcredits_state_per_thread = True


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
    globals), created lazily (a cold start) when every existing environment of that
    function is busy; state Powertools keeps per process is made per thread
    (:func:`isolate_resolver_state`).
    """

    _import_lock = threading.RLock()

    def __init__(self, template: Template, stack_name: str) -> None:
        self.template = template
        self.stack_name = stack_name
        self.defs = template.functions()
        isolate_resolver_state()
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

    def invoke_streaming(self, function_id: str, event: Any) -> Iterator[bytes]:
        """Invoke as API Gateway's response-streaming integration does: the handler's
        answer as the http-integration-response byte stream (prelude, 8 NULs, body) that
        ``llmcredits.lambda_streaming`` posts to the Runtime API in AWS, each piece as
        the handler yields it. The environment stays busy until the stream ends."""
        fn = self.defs[function_id]
        handler = self._checkout(function_id)
        context = LambdaContext(fn, self.function_name(function_id), region())
        started = time.monotonic()
        try:
            result = handler(event, context)
        except BaseException:
            self._checkin(function_id, handler)
            raise

        def pieces() -> Iterator[bytes]:
            encoded = lambda_streaming.encode(result)
            try:
                yield from encoded
            finally:
                encoded.close()
                if isinstance(result, lambda_streaming.StreamingResponse):
                    result.close()  # the client left: the handler's generator is closed
                self._checkin(function_id, handler)
                elapsed = time.monotonic() - started
                if elapsed > fn.timeout:
                    log.warning("%s streamed %.1fs, over its Timeout of %ss", function_id,
                                elapsed, fn.timeout)

        return pieces()

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
