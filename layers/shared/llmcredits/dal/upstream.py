"""The LLM upstream: an OpenAI-compatible LiteLLM proxy, called with httpx.

One httpx.Client per container (connection reuse across warm invocations), explicit
timeouts, and every failure mapped to an ApiError so the caller can release the hold.

What counts as a failure, and what the reply says happened:

* HTTP errors, timeouts, unreadable JSON (strict: ``jsonexact``), and an error inside a
  200 (a body ``{"error": ...}``, or a stream whose first event is ``data: {"error":
  ...}``): raised, so nothing is delivered and nothing charged.
* A stream that fails after content arrived (an error event, a dropped connection, a
  timeout, an unreadable chunk, or an end without ``data: [DONE]``): not raised; the
  reply is **partial** (``reply.failure`` says why), its chunks are those delivered
  plus one error event of ours (never the provider's text, which may echo a BYOK key),
  and :meth:`UpstreamReply.billable_usage` says what to charge: the usage the upstream
  reported, else the prompt bound plus the UTF-8 bytes of the delivered text (content,
  reasoning, refusals, tool calls), at most the completion bound (so within the hold).
  Bytes are a true upper bound of tokens for every tokenizer in use (see pricing), the
  same rule the hold uses; without the upstream's count we do not guess lower.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import httpx

from llmcredits import jsonexact
from llmcredits.domain.answer import STREAM_INTERRUPTED, interrupted_event
from llmcredits.errors import (
    ApiError,
    InvalidRequest,
    RateLimited,
    UpstreamError,
    UpstreamTimeout,
)


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass
class UpstreamReply:
    """An answer: the JSON body, or (streamed) every chunk in order.

    ``models``: every distinct ``model`` the answer reported, in order (for
    domain.answer.ensure_routed_model). ``failure``: set when a stream failed after
    content was delivered (the reply is partial); ``delivered_bytes``: the UTF-8 bytes
    of the text delivered (content, reasoning, refusal, tool-call names and arguments).
    """

    body: dict[str, Any] | None = None
    chunks: list[dict[str, Any]] = field(default_factory=list)
    usage: Usage | None = None
    models: list[str] = field(default_factory=list)
    failure: ApiError | None = None
    delivered_bytes: int = 0

    @property
    def model(self) -> str | None:
        return self.models[0] if self.models else None

    @property
    def partial(self) -> bool:
        return self.failure is not None

    def billable_usage(self, prompt_bound: int, completion_bound: int) -> Usage | None:
        """The tokens to charge: the reported usage; for a partial stream without one,
        ``prompt_bound`` plus the delivered bytes, at most ``completion_bound``; None
        for a complete answer without usage (the caller charges its hold, as before)."""
        if self.usage is not None or not self.partial:
            return self.usage
        return Usage(prompt_bound, min(self.delivered_bytes, completion_bound))

    def note_model(self, value: Any) -> None:
        if isinstance(value, str) and value and value not in self.models:
            self.models.append(value)


def _delivered_bytes(chunk: dict[str, Any]) -> int:
    """UTF-8 bytes of the generated text in one stream chunk (0: no content)."""
    total = 0
    for choice in chunk.get("choices") or ():
        delta = choice.get("delta") if isinstance(choice, dict) else None
        if not isinstance(delta, dict):
            continue
        texts: list[Any] = [delta.get(k) for k in ("content", "reasoning_content", "refusal")]
        calls = list(delta.get("tool_calls") or ())
        if isinstance(delta.get("function_call"), dict):
            calls.append({"function": delta["function_call"]})
        for call in calls:
            function = call.get("function") if isinstance(call, dict) else None
            if isinstance(function, dict):
                texts += [function.get("name"), function.get("arguments")]
        total += sum(len(t.encode("utf-8")) for t in texts if isinstance(t, str))
    return total


def _error_in(body: Any) -> bool:
    """An OpenAI-shaped error inside a 200 (LiteLLM sends one mid-stream, too)."""
    return isinstance(body, dict) and body.get("error") not in (None, "", {})


def parse_usage(raw: Any) -> Usage | None:
    if not isinstance(raw, dict):
        return None
    prompt, completion = raw.get("prompt_tokens"), raw.get("completion_tokens")
    if not isinstance(prompt, int) or not isinstance(completion, int):
        return None
    if isinstance(prompt, bool) or isinstance(completion, bool) or prompt < 0 or completion < 0:
        return None
    return Usage(prompt, completion)


class LiteLLMUpstream:
    def __init__(
        self,
        base_url: str,
        master_key: str | None,
        *,
        timeout_seconds: Decimal = Decimal(50),
        idle_seconds: Decimal | None = None,
        client: httpx.Client | None = None,
    ) -> None:
        self._url = base_url.rstrip("/") + "/chat/completions"
        self._master_key = master_key
        seconds = int(timeout_seconds)
        # A whole streamed answer ends within ``timeout_seconds`` (checked between
        # chunks), below the function's timeout; each read (so a whole non-streamed
        # answer) waits at most ``idle_seconds``, below the REST API's 5-minute idle
        # limit for a stream (tests/unit/test_stream_timeouts.py).
        self._deadline_seconds = seconds
        idle = seconds if idle_seconds is None else min(seconds, int(idle_seconds))
        self._client = client or httpx.Client(
            timeout=httpx.Timeout(idle, connect=3),
            limits=httpx.Limits(max_connections=32, max_keepalive_connections=8),
        )

    def _headers(self, extra: dict[str, str]) -> dict[str, str]:
        headers = {"Content-Type": "application/json", **extra}
        if self._master_key:
            headers["Authorization"] = f"Bearer {self._master_key}"
        return headers

    def complete(self, payload: dict[str, Any], headers: dict[str, str]) -> UpstreamReply:
        if payload.get("stream"):
            return self._stream(payload, headers)
        try:
            resp = self._client.post(
                self._url, content=jsonexact.dumps(payload), headers=self._headers(headers)
            )
        except httpx.TimeoutException as exc:
            raise UpstreamTimeout("The model provider did not answer in time; nothing was "
                                  "charged.") from exc
        except httpx.HTTPError as exc:
            raise UpstreamError("The model provider could not be reached; nothing was "
                                "charged.") from exc
        _raise_for_status(resp.status_code, resp.text, resp.headers)
        try:
            body = jsonexact.loads(resp.content)
        except ValueError as exc:
            raise UpstreamError("The model provider sent an unreadable answer; nothing was "
                                "charged.") from exc
        if not isinstance(body, dict):
            raise UpstreamError("The model provider sent an unexpected answer; nothing was "
                                "charged.")
        if _error_in(body):
            raise UpstreamError("The model provider answered with an error (inside an HTTP "
                                "200); nothing was charged.")
        reply = UpstreamReply(body=body, usage=parse_usage(body.get("usage")))
        reply.note_model(body.get("model"))
        return reply

    def open_stream(
        self,
        payload: dict[str, Any],
        headers: dict[str, str],
        *,
        check_model: Callable[[str], None] | None = None,
    ) -> UpstreamStream:
        """Start a streamed answer and read it up to its first generated text, so that
        any failure before then is raised (nothing delivered: nothing charged). The
        returned stream yields that head, then each further chunk as it arrives."""
        stream = UpstreamStream(self._client, self._url, jsonexact.dumps(payload),
                                self._headers(headers), self._deadline_seconds, check_model)
        stream.open()
        return stream

    def _stream(self, payload: dict[str, Any], headers: dict[str, str]) -> UpstreamReply:
        """A streamed answer read to its end (for callers that want it whole)."""
        stream = self.open_stream(payload, headers)
        reply = UpstreamReply()
        try:
            reply.chunks.extend(stream)
        finally:
            stream.close()
        reply.usage, reply.models = stream.usage, stream.models
        reply.delivered_bytes, reply.failure = stream.delivered_bytes, stream.failure
        if stream.failure is not None:
            reply.chunks.append(interrupted_event(stream.failure_reason))
        return reply


class UpstreamStream:
    """One streamed answer, read lazily. Iterating yields the upstream's chunks (error
    events are not chunks: they end the stream). After iteration: ``usage`` (the last
    reported), ``delivered_bytes``, ``models``, ``done`` (``[DONE]`` seen) and
    ``failure`` (set when the stream failed after content was delivered, with
    ``failure_reason``). :meth:`close` stops reading (and drops the connection)."""

    def __init__(self, client: httpx.Client, url: str, content: str, headers: dict[str, str],
                 deadline_seconds: int,
                 check_model: Callable[[str], None] | None = None) -> None:
        self._client = client
        self._request = client.build_request("POST", url, content=content, headers=headers)
        self._deadline = time.monotonic() + deadline_seconds
        self._check_model = check_model
        self._response: httpx.Response | None = None
        self._lines: Iterator[str] = iter(())
        self._head: list[dict[str, Any]] = []
        self.usage: Usage | None = None
        self.models: list[str] = []
        self.delivered_bytes = 0
        self.done = False
        self.failure: ApiError | None = None
        self.failure_reason = ""
        self.closed = False

    def open(self) -> None:
        try:
            self._response = self._client.send(self._request, stream=True)
        except httpx.TimeoutException as exc:
            raise UpstreamTimeout("The model provider did not answer in time; nothing was "
                                  "charged.") from exc
        except httpx.HTTPError as exc:
            raise UpstreamError("The model provider could not be reached; nothing was "
                                "charged.") from exc
        resp = self._response
        if resp.status_code >= 400:
            with contextlib.suppress(httpx.HTTPError):
                resp.read()
            resp.close()
            _raise_for_status(resp.status_code, resp.text, resp.headers)
        self._lines = resp.iter_lines()
        # Hold chunks back until the first generated text: before it, a failure can
        # still be an HTTP error with nothing charged.
        while self.delivered_bytes == 0 and not self.done and self.failure is None:
            chunk = self._read()
            if chunk is None:
                break
            self._head.append(chunk)
        if self.failure is not None and self.delivered_bytes == 0:
            self.close()
            raise self.failure

    def _fail(self, failure: ApiError, reason: str) -> None:
        self.failure, self.failure_reason = failure, reason

    def _read(self) -> dict[str, Any] | None:
        """The next chunk, or None at the end (``done``) or on a failure (``failure``)."""
        try:
            for line in self._lines:
                if time.monotonic() > self._deadline:
                    self._fail(UpstreamTimeout("The model provider did not finish in time; "
                                               "nothing was charged."), "timeout")
                    return None
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    self.done = True
                    return None
                chunk = jsonexact.loads(data)
                if _error_in(chunk):
                    self._fail(UpstreamError("The model provider's stream reported an error; "
                                             "nothing was charged."),
                               "the provider reported an error")
                    return None
                if not isinstance(chunk, dict):
                    continue
                model = chunk.get("model")
                if isinstance(model, str) and model and model not in self.models:
                    if self._check_model is not None:
                        try:
                            self._check_model(model)
                        except ApiError as exc:
                            self._fail(exc, "another model answered")
                            return None
                    self.models.append(model)
                self.delivered_bytes += _delivered_bytes(chunk)
                usage = parse_usage(chunk.get("usage"))
                if usage is not None:
                    self.usage = usage
                return chunk
        except httpx.TimeoutException:
            self._fail(UpstreamTimeout("The model provider did not answer in time; nothing "
                                       "was charged."), "timeout")
            return None
        except (httpx.HTTPError, ValueError):
            if self.closed:
                return None
            self._fail(UpstreamError("The model provider's stream failed; nothing was "
                                     "charged."), "connection lost or unreadable data")
            return None
        if not self.closed:
            self._fail(UpstreamError("The model provider's stream ended early; nothing was "
                                     "charged.", code=STREAM_INTERRUPTED),
                       "ended without [DONE]")
        return None

    def __iter__(self) -> Iterator[dict[str, Any]]:
        head, self._head = self._head, []
        yield from head
        while not self.done and self.failure is None and not self.closed:
            chunk = self._read()
            if chunk is None:
                return
            yield chunk

    @property
    def partial(self) -> bool:
        """Failed partway, or closed before its end (the client left)."""
        return self.failure is not None or (self.closed and not self.done)

    def billable_usage(self, prompt_bound: int, completion_bound: int) -> Usage | None:
        """As :meth:`UpstreamReply.billable_usage`; a stream closed before its end (the
        client left) counts as partial too."""
        if self.usage is not None:
            return self.usage
        if not self.partial:
            return None
        return Usage(prompt_bound, min(self.delivered_bytes, completion_bound))

    def close(self) -> None:
        """Stop reading: the connection is dropped, the provider stops generating."""
        if self.closed:
            return
        self.closed = True
        if self._response is not None:
            self._response.close()


def _raise_for_status(status: int, text: str, headers: httpx.Headers) -> None:
    if status < 400:
        return
    message = _upstream_message(text)
    if status in (400, 404, 422):
        # The provider refused the request itself (bad parameters for that model).
        raise InvalidRequest(f"The model provider rejected the request: {message}",
                             code="upstream_rejected")
    if status == 429:
        retry = headers.get("retry-after", "30")
        raise RateLimited("The model provider is rate limiting; retry later. Nothing was "
                          "charged.", code="upstream_rate_limited",
                          headers={"Retry-After": retry if retry.isdigit() else "30"})
    raise UpstreamError(f"The model provider failed (HTTP {status}); nothing was charged.")


def _upstream_message(text: str) -> str:
    try:
        body = jsonexact.loads(text)
        message = body.get("error", {}).get("message") if isinstance(body, dict) else None
    except (ValueError, AttributeError):
        message = None
    return str(message or text or "no detail")[:300]
