"""DEVELOPMENT STAND-IN for the LiteLLM proxy: a deterministic OpenAI-compatible upstream.

Not a model and not for production. ``make dev`` starts it when ``LITELLM_PROXY_URL`` is
not set, so the whole stack runs offline; tests use it to see exactly what the metered
chat endpoint sends upstream. Every response carries ``X-Dev-Upstream: true``.

Behaviour:

* ``POST /chat/completions`` and ``/v1/chat/completions``: the reply is
  ``"[dev upstream] "`` followed by the last user message, truncated to ``max_tokens``
  (or ``max_completion_tokens``) tokens (``finish_reason`` ``"length"`` then). ``usage``
  is counted with :func:`count_tokens`, a whitespace/punctuation tokenizer that never
  counts more tokens than UTF-8 bytes, plus :data:`MESSAGE_TOKENS` per message and
  :data:`REPLY_PRIMING_TOKENS` per prompt, so usage always stays within the pricing
  module's hold bound. ``stream: true`` answers ``text/event-stream``:
  ``chat.completion.chunk`` chunks, a usage chunk (empty ``choices``) when
  ``stream_options.include_usage`` is true, then ``data: [DONE]``.
* ``GET /models`` and ``/v1/models``: the catalog's upstream model names.
* With a master key, requests need ``Authorization: Bearer <master key>`` (else 401).
* A body ``api_key`` (LiteLLM's client-side key, used for BYOK) is accepted and recorded.
* Every request received (also rejected ones) is recorded in :attr:`DevUpstream.requests`.

Fault injection (tests): the header ``X-Dev-Upstream-Fault``, or :meth:`DevUpstream.inject`,
or the marker ``[[dev-upstream-fault:<fault>]]`` in the last user message (for black-box
tests through the API). Faults: an HTTP status such as ``500`` or ``429`` (an OpenAI-shaped
error with that status), ``timeout`` (answer only after ``X-Dev-Upstream-Delay`` seconds,
default ``timeout_delay``), ``garbage`` (200 with a non-JSON body), ``no-usage`` (200
without ``usage``), ``error-in-200`` (200 whose body, or first stream event, is an
OpenAI error object), ``wrong-model`` (a normal answer that reports another model:
:data:`WRONG_MODEL`), and for streams ``stream-error`` (some content, then
``data: {"error": ...}`` and the end) and ``stream-cut`` (some content, then the
connection closes without ``data: [DONE]``; a non-streamed answer is cut halfway).
``X-Dev-Upstream-Delay`` alone delays a normal answer.

Paced mode (benchmarks, long completions): ``[[dev-upstream-pace:N,G]]`` in the last
user message, or the header ``X-Dev-Upstream-Pace: N,G``, answers with N one-token
content chunks ``t1 t2 ...``, the first at once and each next G ms later (a
non-streamed answer comes whole after N*G ms; ``7,5000`` takes 35 s). A third number
K (``N,G,K``) fails the stream after K content chunks: an error event, or with the
``stream-cut`` fault a dropped connection. Each paced stream is recorded in
:attr:`DevUpstream.paced` (chunks sent; whether the reader went away first).

Request bodies are decoded strictly (``jsonexact``: no NaN or Infinity, numbers in
64-bit range), as a real provider's JSON parser would: what we forward must be JSON.

Python API::

    with DevUpstream(master_key="sk-dev") as up:
        httpx.post(up.url + "/v1/chat/completions", ...)
        assert up.requests[0].body["model"] == "..."

Command line: ``python -m llmcredits.local.dev_upstream --port 4000``.
"""

from __future__ import annotations

import argparse
import contextlib
import hmac
import json
import os
import re
import threading
import time
import uuid
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from itertools import pairwise
from typing import Any, Self

from llmcredits import jsonexact
from llmcredits.local.dev_server import StandIn, StandInHandler
from llmcredits.units import Seconds

DEV_HEADER = "X-Dev-Upstream"
FAULT_HEADER = "X-Dev-Upstream-Fault"
DELAY_HEADER = "X-Dev-Upstream-Delay"
PACE_HEADER = "X-Dev-Upstream-Pace"
REPLY_PREFIX = "[dev upstream] "
#: Counted per message and per prompt (OpenAI counts 3 and 3; far below the hold bound's).
MESSAGE_TOKENS = 3
REPLY_PRIMING_TOKENS = 3
#: Tokens per streamed content chunk.
STREAM_CHUNK_TOKENS = 3
FAULTS = ("timeout", "garbage", "no-usage", "error-in-200", "wrong-model", "stream-error",
          "stream-cut")
#: The model a ``wrong-model`` answer reports (not a catalog model of any level).
WRONG_MODEL = "dev/some-other-model"
#: Content chunks a ``stream-error`` / ``stream-cut`` stream delivers before it fails.
PARTIAL_CHUNKS = 2
MAX_BODY_BYTES = 16 * 1024 * 1024

_TOKEN = re.compile(r"\w+|[^\w\s]")
_FAULT_MARKER = re.compile(r"\[\[dev-upstream-fault:([\w-]+)\]\]")
_PACE_MARKER = re.compile(r"\[\[dev-upstream-pace:([\d, ]+)\]\]")
#: Paced answers are bounded (a typo must not hold a test for hours).
MAX_PACED_TOKENS = 100_000
MAX_PACE_GAP_MS = 60_000


# --------------------------------------------------------------------------- tokenizer


def tokens(text: str) -> list[re.Match[str]]:
    """Words and single punctuation/symbol characters; each is at least one UTF-8 byte."""
    return list(_TOKEN.finditer(text))


def count_tokens(text: str) -> int:
    return len(tokens(text))


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from _strings(v)
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from _strings(v)
    elif isinstance(value, (int, Decimal)) and not isinstance(value, bool):
        yield str(value)


def prompt_tokens(messages: Any) -> int:
    """The prompt tokens the dev upstream reports for ``messages``."""
    items = messages if isinstance(messages, list) else [messages]
    return REPLY_PRIMING_TOKENS + sum(
        MESSAGE_TOKENS + sum(count_tokens(s) for s in _strings(m)) for m in items
    )


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(
            str(p.get("text", ""))
            for p in content
            if isinstance(p, dict) and isinstance(p.get("text"), str)
        )
    return ""


def last_user_text(messages: Any) -> str:
    if isinstance(messages, list):
        for message in reversed(messages):
            if isinstance(message, dict) and message.get("role") == "user":
                return _text_of(message.get("content"))
    return ""


def reply_for(messages: Any, max_tokens: int | None) -> tuple[str, str]:
    """The deterministic reply text and its finish_reason."""
    echo = " ".join(last_user_text(messages).split()) or "(no user message)"
    text = REPLY_PREFIX + echo
    found = tokens(text)
    if max_tokens is not None and len(found) > max_tokens:
        return text[: found[max_tokens - 1].end()], "length"
    return text, "stop"


# --------------------------------------------------------------------------- server


@dataclass(frozen=True)
class Pace:
    tokens: int
    gap_ms: int
    fail_after: int | None = None


def parse_pace(text: str) -> Pace:
    try:
        parts = [int(p) for p in text.replace(" ", "").split(",")]
    except ValueError:
        parts = []
    if len(parts) not in (2, 3) or not 1 <= parts[0] <= MAX_PACED_TOKENS or \
            not 0 <= parts[1] <= MAX_PACE_GAP_MS or (len(parts) == 3 and parts[2] < 0):
        raise _ApiError(400, f"A pace is N,G[,K]: 1..{MAX_PACED_TOKENS} tokens, 0.."
                             f"{MAX_PACE_GAP_MS} ms apart, failing after K chunks.",
                        "invalid_request_error", "invalid_pace")
    return Pace(parts[0], parts[1], parts[2] if len(parts) == 3 else None)


@dataclass
class PacedStream:
    """One paced stream as the dev upstream sent it."""

    pace: Pace
    sent: int = 0  # content chunks written
    reader_left: bool = False  # a write failed: the caller closed the connection
    finished: bool = False


@dataclass(frozen=True)
class RecordedRequest:
    method: str
    path: str
    headers: dict[str, str]  # lower-case names
    body: Any  # parsed JSON, or None
    api_key: str | None = None  # the body's "api_key" (LiteLLM client-side key)
    received_at: Seconds = field(default_factory=time.time)


class _ApiError(Exception):
    def __init__(
        self, status: int, message: str, type_: str, code: str | None, param: str | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.body = {"error": {"message": message, "type": type_, "code": code, "param": param}}


class DevUpstream(StandIn):
    """A deterministic OpenAI-compatible server on 127.0.0.1 (development stand-in)."""

    def __init__(
        self,
        master_key: str | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        timeout_delay: Seconds = 30.0,
    ) -> None:
        super().__init__(host, port)
        self.master_key = master_key
        self.timeout_delay = timeout_delay
        self._lock = threading.Lock()
        self._requests: list[RecordedRequest] = []
        self._faults: deque[tuple[str, Seconds | None]] = deque()
        self._stopping = threading.Event()
        self._paced: list[PacedStream] = []

    # ---- lifecycle

    name = "dev-upstream"

    def start(self) -> Self:
        self._stopping.clear()
        return super().start()

    def stop(self) -> None:
        self._stopping.set()  # wakes requests sleeping for a "timeout" fault
        super().stop()

    # ---- test helpers

    @property
    def requests(self) -> list[RecordedRequest]:
        """A snapshot of every request received so far, oldest first."""
        with self._lock:
            return list(self._requests)

    @property
    def paced(self) -> list[PacedStream]:
        """Every paced stream so far, oldest first (live objects: ``sent`` grows)."""
        with self._lock:
            return list(self._paced)

    def clear(self) -> None:
        with self._lock:
            self._requests.clear()
            self._faults.clear()
            self._paced.clear()

    def inject(self, fault: str, *, times: int = 1, delay: Seconds | None = None) -> None:
        """Make the next ``times`` chat requests fail with ``fault`` (see module doc)."""
        if not _valid_fault(fault):
            raise ValueError(f"unknown fault {fault!r}")
        with self._lock:
            self._faults.extend([(fault, delay)] * times)

    # ---- internals used by the handler

    def _record(self, request: RecordedRequest) -> None:
        with self._lock:
            self._requests.append(request)

    def _next_fault(self) -> tuple[str, Seconds | None] | None:
        with self._lock:
            return self._faults.popleft() if self._faults else None

    def _sleep(self, seconds: Seconds) -> None:
        self._stopping.wait(max(0.0, seconds))


def _valid_fault(fault: str) -> bool:
    return fault in FAULTS or (fault.isdigit() and 400 <= int(fault) <= 599)


def _check_fault(fault: str) -> None:
    if _valid_fault(fault):
        return
    raise _ApiError(
        400,
        f"Unknown {FAULT_HEADER} {fault!r}: use an HTTP status "
        f"(400-599) or one of {', '.join(FAULTS)}.",
        "invalid_request_error",
        "invalid_fault",
    )


class _Handler(StandInHandler):
    server_version = "llmcredits-dev-upstream"

    def _dispatch(self, method: str) -> None:
        up = self.server.owner
        path = self.path.split("?", 1)[0].rstrip("/")
        headers = {k.lower(): v for k, v in self.headers.items()}
        try:
            raw = self._read_body()
        except _ApiError as err:
            up._record(RecordedRequest(method, path, headers, None))
            self._answer_error(err)
            return
        body: Any = None
        parse_error = False
        if raw:
            try:
                body = jsonexact.loads(raw)
            except ValueError:  # also UnicodeDecodeError and jsonexact.JsonRefused
                parse_error = True
        api_key = body.get("api_key") if isinstance(body, dict) else None
        up._record(
            RecordedRequest(
                method, path, headers, body, api_key if isinstance(api_key, str) else None
            )
        )
        try:
            self._authorize(headers)
            if method == "GET" and path in ("/models", "/v1/models"):
                self._json(200, _model_list())
            elif method == "POST" and path in ("/chat/completions", "/v1/chat/completions"):
                if parse_error or not isinstance(body, dict):
                    raise _ApiError(
                        400,
                        "The request body is not a JSON object.",
                        "invalid_request_error",
                        "invalid_json",
                    )
                self._chat(body, headers)
            else:
                raise _ApiError(
                    404, f"No route {method} {path}.", "invalid_request_error", "not_found"
                )
        except _ApiError as err:
            self._answer_error(err)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the caller gave up (e.g. its timeout fired): nothing to answer

    def _answer_error(self, err: _ApiError) -> None:
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            self._json(err.status, err.body)

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            parts = []
            size = 0
            while True:
                length = int(self.rfile.readline().split(b";", 1)[0].strip() or b"0", 16)
                if length == 0:
                    self.rfile.readline()
                    break
                size += length
                if size > MAX_BODY_BYTES:
                    raise _ApiError(
                        413, "Request body too large.", "invalid_request_error", "request_too_large"
                    )
                parts.append(self.rfile.read(length))
                self.rfile.readline()
            return b"".join(parts)
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY_BYTES:
            raise _ApiError(
                413, "Request body too large.", "invalid_request_error", "request_too_large"
            )
        return self.rfile.read(length) if length > 0 else b""

    def _authorize(self, headers: dict[str, str]) -> None:
        key = self.server.owner.master_key
        if not key:
            return
        auth = headers.get("authorization", "")
        scheme, _, token = auth.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            token.strip().encode(), key.encode()
        ):
            raise _ApiError(
                401,
                "Invalid or missing master key (Authorization: Bearer ...).",
                "authentication_error",
                "invalid_api_key",
            )

    # ---- chat

    def _chat(self, body: dict[str, Any], headers: dict[str, str]) -> None:
        up = self.server.owner
        model = body.get("model")
        messages = body.get("messages")
        if not isinstance(model, str) or not model:
            raise _ApiError(
                400, "model is required.", "invalid_request_error", "invalid_request", "model"
            )
        if not isinstance(messages, list) or not messages:
            raise _ApiError(
                400,
                "messages must be a non-empty array.",
                "invalid_request_error",
                "invalid_request",
                "messages",
            )
        max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
        if max_tokens is not None and (
            isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1
        ):
            raise _ApiError(
                400,
                "max_tokens must be a positive integer.",
                "invalid_request_error",
                "invalid_request",
                "max_tokens",
            )

        fault, delay = self._fault(headers, messages)
        if fault == "timeout":
            up._sleep(up.timeout_delay if delay is None else delay)
        elif delay is not None:
            up._sleep(delay)
        if fault is not None and fault.isdigit():
            status = int(fault)
            raise _ApiError(
                status,
                f"Injected upstream error {status} (dev upstream).",
                "rate_limit_error" if status == 429 else "api_error",
                "dev_upstream_fault",
            )
        if fault == "garbage":
            self._send(200, "application/json", b"<html>502 Bad Gateway? not JSON{")
            return
        if fault == "error-in-200":
            error = {"error": {"message": "Injected error inside a 200 (dev upstream).",
                               "type": "api_error", "code": "dev_upstream_fault"}}
            if body.get("stream") is True:
                self._send(200, "text/event-stream; charset=utf-8",
                           f"data: {json.dumps(error)}\n\ndata: [DONE]\n\n".encode())
            else:
                self._json(200, error)
            return
        if fault == "wrong-model":
            model = WRONG_MODEL

        pace = self._pace(headers, messages)
        if pace is not None:
            self._paced_answer(body, model, messages, pace, fault)
            return

        text, finish = reply_for(messages, max_tokens)
        completion = count_tokens(text)
        prompt = prompt_tokens(messages)
        usage = {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
        }
        with_usage = fault != "no-usage"
        ident = f"chatcmpl-dev-{uuid.uuid4().hex[:24]}"
        created = int(time.time())
        if body.get("stream") is True:
            options = body.get("stream_options")
            include = isinstance(options, dict) and options.get("include_usage") is True
            self._stream(
                ident,
                created,
                model,
                text,
                finish,
                usage if include and with_usage else None,
                include,
                fault if fault in ("stream-error", "stream-cut") else None,
            )
            return
        response: dict[str, Any] = {
            "id": ident,
            "object": "chat.completion",
            "created": created,
            "model": model,
            "system_fingerprint": "dev-upstream",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": text, "refusal": None},
                    "logprobs": None,
                    "finish_reason": finish,
                }
            ],
        }
        if with_usage:
            response["usage"] = usage
        if fault == "stream-cut":  # a non-streamed answer cut off halfway
            data = json.dumps(response).encode("utf-8")
            self._send_cut(data[: len(data) // 2], "application/json")
            return
        self._json(200, response)

    def _pace(self, headers: dict[str, str], messages: list[Any]) -> Pace | None:
        raw = headers.get(PACE_HEADER.lower())
        if raw is None:
            marker = _PACE_MARKER.search(last_user_text(messages))
            raw = marker.group(1) if marker else None
        return None if raw is None else parse_pace(raw)

    def _paced_answer(self, body: dict[str, Any], model: str, messages: list[Any], pace: Pace,
                      fault: str | None) -> None:
        """N one-token chunks, G ms apart (see the module doc)."""
        up = self.server.owner
        words = [f"t{i + 1} " for i in range(pace.tokens)]
        prompt = prompt_tokens(messages)
        usage = {"prompt_tokens": prompt, "completion_tokens": pace.tokens,
                 "total_tokens": prompt + pace.tokens}
        ident = f"chatcmpl-dev-{uuid.uuid4().hex[:24]}"
        created = int(time.time())
        if body.get("stream") is not True:
            up._sleep(pace.tokens * pace.gap_ms / 1000)
            self._json(200, {
                "id": ident, "object": "chat.completion", "created": created, "model": model,
                "choices": [{"index": 0, "message": {"role": "assistant",
                                                     "content": "".join(words).strip()},
                             "logprobs": None, "finish_reason": "stop"}],
                "usage": usage})
            return
        options = body.get("stream_options")
        include = isinstance(options, dict) and options.get("include_usage") is True
        record = PacedStream(pace)
        with up._lock:
            up._paced.append(record)

        def event(choices: list[Any], **extra: Any) -> bytes:
            data = {"id": ident, "object": "chat.completion.chunk", "created": created,
                    "model": model, "choices": choices, **extra}
            return f"data: {json.dumps(data, separators=(',', ':'))}\n\n".encode()

        def delta(content: dict[str, Any], finish: str | None = None) -> bytes:
            return event([{"index": 0, "delta": content, "logprobs": None,
                           "finish_reason": finish}])

        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream; charset=utf-8")
        self.send_header("Cache-Control", "no-cache")
        self.send_header(DEV_HEADER, "true")
        self.send_header("Connection", "close")  # the body ends when the connection does
        self.end_headers()
        self.close_connection = True
        try:
            self._write(delta({"role": "assistant", "content": ""}) + delta({"content": words[0]}))
            record.sent = 1
            for word in words[1:]:
                if pace.fail_after is not None and record.sent >= pace.fail_after:
                    break
                up._sleep(pace.gap_ms / 1000)
                self._write(delta({"content": word}))
                record.sent += 1
            if pace.fail_after is not None and record.sent >= pace.fail_after:
                if fault != "stream-cut":
                    self._write(b'data: {"error":{"message":"Injected mid-stream error (dev '
                                b'upstream).","type":"api_error","code":"dev_upstream_fault"}}'
                                b'\n\n')
                return  # no [DONE]: a failed stream
            tail = delta({}, "stop")
            if include:
                tail += event([], usage=usage)
            self._write(tail + b"data: [DONE]\n\n")
            record.finished = True
        except (BrokenPipeError, ConnectionResetError):
            record.reader_left = True

    def _write(self, data: bytes) -> None:
        self.wfile.write(data)
        self.wfile.flush()

    def _fault(
        self, headers: dict[str, str], messages: list[Any]
    ) -> tuple[str | None, Seconds | None]:
        delay_raw = headers.get(DELAY_HEADER.lower())
        delay: Seconds | None = None
        if delay_raw is not None:
            try:
                delay = Seconds(delay_raw)  # seconds to sleep; not money
            except ValueError as exc:
                raise _ApiError(
                    400,
                    f"{DELAY_HEADER} must be a number of seconds.",
                    "invalid_request_error",
                    "invalid_fault",
                ) from exc
        fault = headers.get(FAULT_HEADER.lower())
        if fault is None:
            queued = self.server.owner._next_fault()
            if queued is not None:
                fault, queued_delay = queued
                delay = queued_delay if delay is None else delay
        if fault is None:
            marker = _FAULT_MARKER.search(last_user_text(messages))
            fault = marker.group(1) if marker else None
        if fault is not None:
            fault = fault.strip().lower()
            _check_fault(fault)
        return fault, delay

    def _stream(
        self,
        ident: str,
        created: int,
        model: str,
        text: str,
        finish: str,
        usage: dict[str, int] | None,
        include_usage: bool,
        failure: str | None = None,
    ) -> None:
        def chunk(delta: dict[str, Any], finish_reason: str | None) -> dict[str, Any]:
            out: dict[str, Any] = {
                "id": ident,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "system_fingerprint": "dev-upstream",
                "choices": [
                    {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
                ],
            }
            if include_usage:
                out["usage"] = None
            return out

        starts = [m.start() for m in tokens(text)][::STREAM_CHUNK_TOKENS]
        bounds = [0, *starts[1:], len(text)]
        events = [chunk({"role": "assistant", "content": ""}, None)]
        events += [chunk({"content": text[a:b]}, None) for a, b in pairwise(bounds)]
        events.append(chunk({}, finish))
        if usage is not None:
            events.append(
                {
                    "id": ident,
                    "object": "chat.completion.chunk",
                    "created": created,
                    "model": model,
                    "system_fingerprint": "dev-upstream",
                    "choices": [],
                    "usage": usage,
                }
            )
        if failure is not None:
            # The role chunk and PARTIAL_CHUNKS content chunks, then the failure.
            events = events[: 1 + PARTIAL_CHUNKS]
            if failure == "stream-error":
                events.append({"error": {"message": "Injected mid-stream error (dev upstream).",
                                         "type": "api_error", "code": "dev_upstream_fault"}})
        payload = "".join(f"data: {json.dumps(e, separators=(',', ':'))}\n\n" for e in events)
        if failure == "stream-cut":
            self._send_cut(payload.encode("utf-8"))
            return
        if failure is None:
            payload += "data: [DONE]\n\n"
        self._send(
            200,
            "text/event-stream; charset=utf-8",
            payload.encode("utf-8"),
            {"Cache-Control": "no-cache"},
        )

    # ---- output

    def _send_cut(self, data: bytes, content_type: str = "text/event-stream; charset=utf-8"
                  ) -> None:
        """Announce more than ``data`` and close after it: a connection lost mid-answer."""
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data) + 4096))
        self.send_header(DEV_HEADER, "true")
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(data)
        self.wfile.flush()
        self.close_connection = True

    def _json(self, status: int, body: Any) -> None:
        self._send(status, "application/json", json.dumps(body).encode("utf-8"))

    def _send(
        self, status: int, content_type: str, data: bytes, headers: dict[str, str] | None = None
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.send_header(DEV_HEADER, "true")
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(data)
        self.wfile.flush()


def _model_list() -> dict[str, Any]:
    from llmcredits.domain.pricing import catalog

    names = dict.fromkeys(m.upstream_model for m in catalog().models.values())
    return {
        "object": "list",
        "data": [
            {"id": name, "object": "model", "created": 0, "owned_by": "dev-upstream"}
            for name in names
        ],
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description="Deterministic OpenAI-compatible dev upstream (NOT a real model)."
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=4000)
    parser.add_argument("--master-key", default=os.environ.get("LITELLM_MASTER_KEY"))
    args = parser.parse_args(argv)
    with DevUpstream(args.master_key, host=args.host, port=args.port) as up:
        print(f"dev upstream (development stand-in) on {up.url}", flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass


DevUpstream.handler = _Handler

if __name__ == "__main__":
    main()
