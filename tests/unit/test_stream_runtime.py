"""The Lambda Runtime API streaming contract (llmcredits.lambda_streaming), against a
loopback emulation of the Runtime API: /invocation/next, /response in streaming mode
(headers, the http-integration-response prelude, chunks as they are produced, error
trailers), /error; and the real chat function served by that loop (issue 12 item 1)."""

from __future__ import annotations

import base64
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from llmcredits import lambda_streaming
from llmcredits.lambda_streaming import RuntimeApi, StreamingResponse, serve

from tests.support import FUNCTIONS, event


class Posted:
    def __init__(self, path: str, headers: dict[str, str]) -> None:
        self.path = path
        self.headers = headers
        self.chunks: list[tuple[float, bytes]] = []  # (arrival time, bytes)
        self.trailers: dict[str, str] = {}
        self.body = b""
        self.complete = threading.Event()


class RuntimeApiEmulator:
    """Plays the Runtime API for one function: hands out queued events and records what
    the runtime posts back. ``hang_up_after``: close the response connection after that
    many chunks (the platform's stream ended: the client is gone)."""

    def __init__(self) -> None:
        self.events: list[tuple[str, Any]] = []
        self.posted: list[Posted] = []
        self.hang_up_after: int | None = None
        emulator = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                assert self.path == "/2018-06-01/runtime/invocation/next"
                request_id, payload = emulator.events.pop(0)
                data = json.dumps(payload).encode()
                self.send_response(200)
                self.send_header("Lambda-Runtime-Aws-Request-Id", request_id)
                self.send_header("Lambda-Runtime-Deadline-Ms",
                                 str(int(time.time() * 1000) + 60_000))
                self.send_header("Lambda-Runtime-Invoked-Function-Arn",
                                 "arn:aws:lambda:us-east-1:123456789012:function:chat")
                self.send_header("Lambda-Runtime-Trace-Id",
                                 "Root=1-5759e988-bd862e3fe1be46a994272793")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self) -> None:
                posted = Posted(self.path, {k.lower(): v for k, v in self.headers.items()})
                emulator.posted.append(posted)
                if posted.headers.get("transfer-encoding") == "chunked":
                    while True:
                        size = int(self.rfile.readline().strip() or b"0", 16)
                        if size == 0:
                            while (line := self.rfile.readline()) not in (b"\r\n", b""):
                                name, _, value = line.decode().partition(":")
                                posted.trailers[name.strip()] = value.strip()
                            break
                        posted.chunks.append((time.monotonic(), self.rfile.read(size)))
                        self.rfile.readline()
                        if emulator.hang_up_after == len(posted.chunks):
                            self.close_connection = True
                            posted.complete.set()
                            return
                else:
                    posted.body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                self.send_response(202)
                self.send_header("Content-Length", "0")
                self.end_headers()
                posted.complete.set()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.address = f"127.0.0.1:{self.server.server_address[1]}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def runtime_api() -> Iterator[RuntimeApiEmulator]:
    emulator = RuntimeApiEmulator()
    yield emulator
    emulator.close()


def run_once(emulator: RuntimeApiEmulator, handler: Any, payload: Any = None) -> Posted:
    emulator.events.append(("req-1", payload or {}))
    serve(RuntimeApi(emulator.address), handler, invocations=1)
    (posted,) = emulator.posted
    assert posted.complete.wait(5)
    return posted


def split(posted: Posted) -> tuple[dict[str, Any], bytes]:
    """The prelude (from the first chunk: it must hold it whole) and the body."""
    first = posted.chunks[0][1]
    meta, delimiter, rest = first.partition(b"\0" * 8)
    assert delimiter and rest == b"", "the prelude and its 8 NULs are the first chunk"
    return json.loads(meta), b"".join(c for _, c in posted.chunks[1:])


def test_a_stream_is_posted_in_streaming_mode_chunk_by_chunk(runtime_api):
    def pieces() -> Iterator[bytes]:
        yield b"data: one\n\n"
        time.sleep(0.3)
        yield b"data: two\n\n"
        time.sleep(0.3)
        yield b"data: [DONE]\n\n"

    posted = run_once(runtime_api, lambda event, context: StreamingResponse(
        200, {"Content-Type": "text/event-stream", "X-Request-Id": context.aws_request_id},
        pieces()))
    assert posted.path == "/2018-06-01/runtime/invocation/req-1/response"
    headers = posted.headers
    assert headers["lambda-runtime-function-response-mode"] == "streaming"
    assert headers["transfer-encoding"] == "chunked"
    assert headers["content-type"] == "application/vnd.awslambda.http-integration-response"
    assert headers["trailer"] == ("Lambda-Runtime-Function-Error-Type, "
                                  "Lambda-Runtime-Function-Error-Body")
    meta, body = split(posted)
    assert meta == {"statusCode": 200, "headers": {"Content-Type": "text/event-stream",
                                                   "X-Request-Id": "req-1"}}
    assert body == b"data: one\n\ndata: two\n\ndata: [DONE]\n\n"
    # Each piece went out when it was produced, not at the end.
    times = [t for t, _ in posted.chunks[1:]]
    assert times[1] - times[0] >= 0.25 and times[2] - times[1] >= 0.25
    assert posted.trailers == {}


def test_a_failure_after_the_prelude_ends_the_stream_with_error_trailers(runtime_api):
    closed = []

    def pieces() -> Iterator[bytes]:
        try:
            yield b"data: one\n\n"
            raise RuntimeError("broke midway")
        finally:
            closed.append(True)

    posted = run_once(runtime_api, lambda e, c: StreamingResponse(200, {}, pieces()))
    _, body = split(posted)
    assert body == b"data: one\n\n"
    assert posted.trailers["Lambda-Runtime-Function-Error-Type"] == "Function.RuntimeError"
    detail = json.loads(base64.b64decode(posted.trailers["Lambda-Runtime-Function-Error-Body"]))
    assert detail == {"errorType": "RuntimeError", "errorMessage": "broke midway"}
    assert closed == [True]


def test_a_failure_before_any_byte_is_an_invocation_error(runtime_api):
    def handler(event: Any, context: Any) -> Any:
        raise ValueError("no answer")

    posted = run_once(runtime_api, handler)
    assert posted.path == "/2018-06-01/runtime/invocation/req-1/error"
    assert posted.headers["lambda-runtime-function-error-type"] == "Function.ValueError"
    assert json.loads(posted.body)["errorMessage"] == "no answer"


def test_a_proxy_answer_is_sent_as_prelude_and_body(runtime_api):
    posted = run_once(runtime_api, lambda e, c: {
        "statusCode": 402, "headers": {"Content-Type": "application/json"},
        "multiValueHeaders": {"X-Request-Id": ["req-1"]}, "body": '{"error":{}}'})
    meta, body = split(posted)
    assert meta == {"statusCode": 402, "headers": {"Content-Type": "application/json"},
                    "multiValueHeaders": {"X-Request-Id": ["req-1"]}}
    assert body == b'{"error":{}}'
    # what the local gateway reads back is the same answer
    decoded, rest = lambda_streaming.decode(c for _, c in posted.chunks)
    assert decoded == meta and b"".join(rest) == body


def test_the_platform_closing_the_stream_closes_the_generator(runtime_api):
    closed = []

    def pieces() -> Iterator[bytes]:
        try:
            for i in range(200):
                yield b"x" * 1024 + str(i).encode()
                time.sleep(0.01)
        finally:
            closed.append(True)

    runtime_api.hang_up_after = 2
    run_once(runtime_api, lambda e, c: StreamingResponse(200, {}, pieces()))
    assert closed == [True]


# ------------------------------------------------------ the chat function, for real


def chat_stream_handler() -> Any:
    from llmcredits.openapi_doc import import_handler

    return import_handler(FUNCTIONS / "chat_completions" / "app.py").stream_handler


def paced_event(user: str, pace: str, **extra: Any) -> dict[str, Any]:
    from tests.unit.test_chat_route import BALANCED

    return event("POST", "/api/v1/llm/chat/completions", sub=user, body={
        "model": BALANCED, "stream": True, **extra,
        "messages": [{"role": "user", "content": f"Count [[dev-upstream-pace:{pace}]]"}]})


def test_the_chat_function_streams_through_the_runtime_loop(upstream, runtime_api):
    from tests.unit.test_chat_route import account, setup_user

    setup_user("rt")
    posted = run_once(runtime_api, chat_stream_handler(), paced_event("rt", "5,200"))
    meta, body = split(posted)
    assert meta["statusCode"] == 200
    assert meta["headers"]["Content-Type"] == "text/event-stream"
    assert meta["headers"]["X-Request-Id"]
    events = [e[6:] for e in body.decode().split("\n\n") if e.startswith("data: ")]
    assert events[-1] == "[DONE]"
    text = "".join(json.loads(e)["choices"][0]["delta"].get("content", "")
                   for e in events[:-1])
    assert text == "t1 t2 t3 t4 t5 "
    # The tokens reached the Runtime API as the upstream produced them (200 ms apart).
    content_times = [t for t, c in posted.chunks if b'"content":"t' in c]
    assert len(content_times) == 5 and content_times[-1] - content_times[0] >= 0.6
    assert account("rt")["held"] == "0.000000"


def test_an_error_before_the_first_byte_keeps_its_status_through_the_runtime(upstream,
                                                                              runtime_api):
    from tests.unit.test_chat_route import setup_user

    setup_user("rt402", amount="0")
    posted = run_once(runtime_api, chat_stream_handler(), paced_event("rt402", "5,10"))
    meta, body = split(posted)
    assert meta["statusCode"] == 402
    assert json.loads(body)["error"]["code"] == "insufficient_credits"


def test_the_exec_wrapper_runs_the_loop_for_the_configured_handler(runtime_api, tmp_path):
    """functions/chat_completions/stream_runtime as Lambda starts it (the managed
    runtime's command as arguments, ignored), with a handler from LAMBDA_TASK_ROOT."""
    import os
    import subprocess
    import sys

    from tests.support import ROOT

    (tmp_path / "fn.py").write_text(
        "from llmcredits.lambda_streaming import StreamingResponse\n"
        "def handler(event, context):\n"
        "    return StreamingResponse(200, {'X-Id': context.aws_request_id},\n"
        "                             iter([b'hello ', event['name'].encode()]))\n")
    runtime_api.events.append(("req-9", {"name": "wrapper"}))
    env = {**os.environ, "AWS_LAMBDA_RUNTIME_API": runtime_api.address, "_HANDLER": "fn.handler",
           "LAMBDA_TASK_ROOT": str(tmp_path), "LAMBDA_PYTHON": sys.executable,
           "PYTHONPATH": str(ROOT / "layers" / "shared")}
    proc = subprocess.Popen([str(FUNCTIONS / "chat_completions" / "stream_runtime"),
                             "/var/runtime/bootstrap"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 20
        while not runtime_api.posted and time.monotonic() < deadline:
            time.sleep(0.05)
        (posted,) = runtime_api.posted
        assert posted.complete.wait(10)
    finally:
        proc.kill()
        proc.wait()
    assert posted.path == "/2018-06-01/runtime/invocation/req-9/response", posted.body
    assert posted.headers["lambda-runtime-function-response-mode"] == "streaming"
    meta, body = split(posted)
    assert meta == {"statusCode": 200, "headers": {"X-Id": "req-9"}}
    assert body == b"hello wrapper"
