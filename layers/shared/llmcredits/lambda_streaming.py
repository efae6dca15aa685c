"""Response streaming from Python on Lambda: the Runtime API's streaming mode.

The managed python3.13 runtime has no streaming handlers, so the chat function runs
this loop instead of the runtime's own (``AWS_LAMBDA_EXEC_WRAPPER`` points at
``functions/chat_completions/stream_runtime``, which ``exec``s ``python -m
llmcredits.lambda_streaming``). It speaks the Runtime API as the managed runtime does
(``/runtime/invocation/next``, ``/response``, ``/error``, ``/init/error``) and posts each
response in streaming mode:

* request headers ``Lambda-Runtime-Function-Response-Mode: streaming``,
  ``Transfer-Encoding: chunked``, ``Content-Type:
  application/vnd.awslambda.http-integration-response`` and ``Trailer`` naming the two
  error trailers;
* the body: the JSON prelude ``{"statusCode", "headers", "multiValueHeaders"}``, 8 NUL
  bytes, then the response body, each piece in its own chunk as the handler yields it;
* a failure after the prelude went out ends the body with the trailers
  ``Lambda-Runtime-Function-Error-Type`` and ``Lambda-Runtime-Function-Error-Body``
  (base64 of ``{"errorType","errorMessage"}``); before it, ``/error`` as usual.

API Gateway (REST API, ``responseTransferMode: STREAM``) forwards the prelude as the
status and headers and the rest as the body, chunk by chunk. The same encoding is what
the local stack's gateway decodes (``llmcredits.local``), so one code path serves both.

A handler returns either a v1 proxy dict (sent as prelude + body at once) or a
:class:`StreamingResponse` whose ``body`` is an iterator of bytes. When writing to the
Runtime API fails (the platform closed the stream: the client is gone), the body
iterator is closed, so a generator sees ``GeneratorExit`` and can stop its upstream.

Standard library only: this module is the process's first import.
"""

from __future__ import annotations

import base64
import http.client
import importlib
import itertools
import json
import os
import sys
import time
import traceback
from collections.abc import Callable, Generator, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

PRELUDE_CONTENT_TYPE = "application/vnd.awslambda.http-integration-response"
DELIMITER = b"\0" * 8
#: API Gateway reads the prelude from the first 16 KB of the stream.
MAX_PRELUDE_BYTES = 16 * 1024
ERROR_TYPE_TRAILER = "Lambda-Runtime-Function-Error-Type"
ERROR_BODY_TRAILER = "Lambda-Runtime-Function-Error-Body"
RUNTIME_API_VERSION = "2018-06-01"


@dataclass
class StreamingResponse:
    """A response whose body goes out piece by piece (``body`` yields bytes)."""

    status_code: int
    headers: dict[str, str] = field(default_factory=dict)
    body: Iterable[bytes] = ()

    def close(self) -> None:
        close = getattr(self.body, "close", None)
        if callable(close):
            close()


def prelude(status_code: int, headers: dict[str, str] | None = None,
            multi_value_headers: dict[str, list[str]] | None = None) -> bytes:
    """The http-integration-response metadata and its delimiter."""
    meta: dict[str, Any] = {"statusCode": status_code, "headers": dict(headers or {})}
    if multi_value_headers:
        meta["multiValueHeaders"] = multi_value_headers
    data = json.dumps(meta, separators=(",", ":")).encode()
    if len(data) + len(DELIMITER) > MAX_PRELUDE_BYTES:
        raise ValueError("response headers over the 16 KB prelude limit")
    return data + DELIMITER


def encode(result: Any) -> Generator[bytes, None, None]:
    """A handler's result as the http-integration-response byte stream: the prelude,
    then the body. A proxy dict's body goes out in one piece."""
    if isinstance(result, StreamingResponse):
        yield prelude(result.status_code, result.headers)
        yield from result.body
        return
    if not (isinstance(result, dict) and "statusCode" in result):
        raise TypeError("the handler's answer is neither a proxy response nor a stream")
    multi = {str(k): [str(v) for v in (vs if isinstance(vs, list) else [vs])]
             for k, vs in (result.get("multiValueHeaders") or {}).items()}
    headers = {str(k): str(v) for k, v in (result.get("headers") or {}).items()}
    yield prelude(int(result["statusCode"]), headers, multi)
    body = result.get("body")
    if body:
        yield base64.b64decode(body) if result.get("isBase64Encoded") else str(body).encode()


class PreludeError(ValueError):
    """The stream does not start with a valid prelude (API Gateway answers 502)."""


def decode(stream: Iterable[bytes]) -> tuple[dict[str, Any], Iterator[bytes]]:
    """Split an http-integration-response stream into its metadata and body chunks
    (the body iterator passes on each chunk as it arrives)."""
    chunks = iter(stream)
    head = b""
    while DELIMITER not in head:
        if len(head) > MAX_PRELUDE_BYTES:
            raise PreludeError("no prelude delimiter within the first 16 KB")
        try:
            head += next(chunks)
        except StopIteration:
            raise PreludeError("the stream ended before the prelude delimiter") from None
    meta_bytes, _, rest = head.partition(DELIMITER)
    try:
        meta = json.loads(meta_bytes)
    except ValueError as exc:
        raise PreludeError("the prelude is not JSON") from exc
    if not isinstance(meta, dict) or not isinstance(meta.get("statusCode"), int):
        raise PreludeError("the prelude has no statusCode")

    def body() -> Iterator[bytes]:
        try:
            if rest:
                yield rest
            yield from chunks
        finally:
            close = getattr(chunks, "close", None)
            if callable(close):
                close()

    return meta, body()


def error_trailers(exc: BaseException) -> dict[str, str]:
    body = json.dumps({"errorType": type(exc).__name__, "errorMessage": str(exc)[:1000]})
    return {ERROR_TYPE_TRAILER: f"Function.{type(exc).__name__}",
            ERROR_BODY_TRAILER: base64.b64encode(body.encode()).decode()}


# ------------------------------------------------------------------ the runtime loop


class RuntimeContext:
    """The Lambda context object, from the ``/invocation/next`` headers."""

    def __init__(self, headers: http.client.HTTPMessage) -> None:
        self.aws_request_id = headers.get("Lambda-Runtime-Aws-Request-Id", "")
        self.invoked_function_arn = headers.get("Lambda-Runtime-Invoked-Function-Arn", "")
        self._deadline_ms = int(headers.get("Lambda-Runtime-Deadline-Ms") or 0)
        self.function_name = os.environ.get("AWS_LAMBDA_FUNCTION_NAME", "")
        self.function_version = os.environ.get("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST")
        self.memory_limit_in_mb = int(os.environ.get("AWS_LAMBDA_FUNCTION_MEMORY_SIZE") or 0)
        self.log_group_name = os.environ.get("AWS_LAMBDA_LOG_GROUP_NAME", "")
        self.log_stream_name = os.environ.get("AWS_LAMBDA_LOG_STREAM_NAME", "")
        self.identity = None
        self.client_context = None

    def get_remaining_time_in_millis(self) -> int:
        return max(0, self._deadline_ms - int(time.time() * 1000))


class RuntimeApi:
    """The Runtime API at ``host:port`` (``AWS_LAMBDA_RUNTIME_API``)."""

    def __init__(self, address: str) -> None:
        self.address = address
        self._base = f"/{RUNTIME_API_VERSION}/runtime"

    def _connection(self) -> http.client.HTTPConnection:
        return http.client.HTTPConnection(self.address, timeout=None)

    def next(self) -> tuple[Any, RuntimeContext]:
        conn = self._connection()
        try:
            conn.request("GET", f"{self._base}/invocation/next")
            resp = conn.getresponse()
            body = resp.read()
            if resp.status != 200:
                raise RuntimeError(f"/invocation/next answered {resp.status}")
            trace = resp.headers.get("Lambda-Runtime-Trace-Id")
            if trace:
                os.environ["_X_AMZN_TRACE_ID"] = trace
            else:
                os.environ.pop("_X_AMZN_TRACE_ID", None)
            return json.loads(body or b"null"), RuntimeContext(resp.headers)
        finally:
            conn.close()

    def _post_json(self, path: str, payload: Any, error_type: str) -> None:
        conn = self._connection()
        try:
            conn.request("POST", f"{self._base}{path}", body=json.dumps(payload),
                         headers={"Content-Type": "application/json",
                                  "Lambda-Runtime-Function-Error-Type": error_type})
            conn.getresponse().read()
        finally:
            conn.close()

    def init_error(self, exc: BaseException) -> None:
        self._post_json("/init/error", error_payload(exc), f"Runtime.{type(exc).__name__}")

    def invocation_error(self, request_id: str, exc: BaseException) -> None:
        self._post_json(f"/invocation/{request_id}/error", error_payload(exc),
                        f"Function.{type(exc).__name__}")

    def stream_response(self, request_id: str, result: Any) -> None:
        """Post ``result`` in streaming mode, each piece as its own chunk."""
        pieces = encode(result)
        try:
            first = next(pieces)  # the prelude: a failure here is still an /error
        except Exception as exc:
            traceback.print_exc()
            _close(pieces, result)
            self.invocation_error(request_id, exc)
            return
        conn = self._connection()
        try:
            conn.putrequest("POST", f"{self._base}/invocation/{request_id}/response",
                            skip_accept_encoding=True)
            conn.putheader("Content-Type", PRELUDE_CONTENT_TYPE)
            conn.putheader("Lambda-Runtime-Function-Response-Mode", "streaming")
            conn.putheader("Transfer-Encoding", "chunked")
            conn.putheader("Trailer", f"{ERROR_TYPE_TRAILER}, {ERROR_BODY_TRAILER}")
            conn.endheaders()
            trailers: dict[str, str] = {}
            try:
                for piece in itertools.chain((first,), pieces):
                    if piece:
                        conn.send(b"%x\r\n%s\r\n" % (len(piece), piece))
            except OSError:
                # The platform closed the stream (the client is gone): stop producing.
                _close(pieces, result)
                return
            except Exception as exc:  # mid-stream: the status is out, report in trailers
                traceback.print_exc()
                trailers = error_trailers(exc)
                _close(pieces, result)
            conn.send(b"0\r\n" + b"".join(f"{k}: {v}\r\n".encode() for k, v in trailers.items())
                      + b"\r\n")
            conn.getresponse().read()
        finally:
            conn.close()


def _close(pieces: Iterator[bytes], result: Any) -> None:
    close = getattr(pieces, "close", None)
    if callable(close):
        close()
    if isinstance(result, StreamingResponse):
        result.close()


def error_payload(exc: BaseException) -> dict[str, Any]:
    return {"errorMessage": str(exc)[:1000], "errorType": type(exc).__name__,
            "stackTrace": traceback.format_tb(exc.__traceback__)}


def load_handler(spec: str, task_root: str) -> Callable[[Any, Any], Any]:
    """``module.attr`` (``_HANDLER``) imported from ``task_root``."""
    if task_root not in sys.path:
        sys.path.insert(0, task_root)
    module_name, _, attr = spec.rpartition(".")
    handler = getattr(importlib.import_module(module_name), attr)
    if not callable(handler):
        raise TypeError(f"{spec} is not callable")
    return handler


def serve(api: RuntimeApi, handler: Callable[[Any, Any], Any], *,
          invocations: int | None = None) -> None:
    """Invoke ``handler`` for each event (``invocations``: stop after that many; tests)."""
    served = 0
    while invocations is None or served < invocations:
        event, context = api.next()
        served += 1
        try:
            result = handler(event, context)
        except Exception as exc:
            traceback.print_exc()
            api.invocation_error(context.aws_request_id, exc)
            continue
        api.stream_response(context.aws_request_id, result)


def main() -> None:
    api = RuntimeApi(os.environ["AWS_LAMBDA_RUNTIME_API"])
    try:
        handler = load_handler(os.environ["_HANDLER"],
                               os.environ.get("LAMBDA_TASK_ROOT", "/var/task"))
    except Exception as exc:
        traceback.print_exc()
        api.init_error(exc)
        sys.exit(1)
    serve(api, handler)


if __name__ == "__main__":
    # ``python -m`` runs this file as ``__main__``; handlers import
    # ``llmcredits.lambda_streaming``. Run that module's loop, so that both see one
    # StreamingResponse class (else a handler's stream is not recognised).
    importlib.import_module("llmcredits.lambda_streaming").main()
