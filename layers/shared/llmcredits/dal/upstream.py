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

from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import httpx

from llmcredits import jsonexact
from llmcredits.errors import (
    ApiError,
    InvalidRequest,
    RateLimited,
    UpstreamError,
    UpstreamTimeout,
)

#: The code of the error event that ends a partial stream (and of UpstreamError).
STREAM_INTERRUPTED = "upstream_stream_interrupted"


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


def _interrupted_event(reason: str) -> dict[str, Any]:
    return {"error": {
        "message": f"The model provider's stream failed partway ({reason}); you were "
                   "charged only for what was delivered (see GET /generations/{request_id}).",
        "type": "upstream_error", "code": STREAM_INTERRUPTED, "param": None}}


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
        client: httpx.Client | None = None,
    ) -> None:
        self._url = base_url.rstrip("/") + "/chat/completions"
        self._master_key = master_key
        seconds = int(timeout_seconds)
        self._client = client or httpx.Client(
            timeout=httpx.Timeout(seconds, connect=3),
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

    def _stream(self, payload: dict[str, Any], headers: dict[str, str]) -> UpstreamReply:
        reply = UpstreamReply()
        done = False
        failure: ApiError | None = None
        reason = ""
        try:
            with self._client.stream(
                "POST", self._url, content=jsonexact.dumps(payload),
                headers=self._headers(headers),
            ) as resp:
                if resp.status_code >= 400:
                    resp.read()
                    _raise_for_status(resp.status_code, resp.text, resp.headers)
                for line in resp.iter_lines():
                    if not line.startswith("data:"):
                        continue
                    data = line[5:].strip()
                    if data == "[DONE]":
                        done = True
                        break
                    chunk = jsonexact.loads(data)
                    if _error_in(chunk):
                        failure = UpstreamError("The model provider's stream reported an "
                                                "error; nothing was charged.")
                        reason = "the provider reported an error"
                        break
                    if isinstance(chunk, dict):
                        reply.chunks.append(chunk)
                        reply.note_model(chunk.get("model"))
                        reply.delivered_bytes += _delivered_bytes(chunk)
                        usage = parse_usage(chunk.get("usage"))
                        if usage is not None:
                            reply.usage = usage
        except httpx.TimeoutException:
            failure = UpstreamTimeout("The model provider did not answer in time; nothing "
                                      "was charged.")
            reason = "timeout"
        except (httpx.HTTPError, ValueError):
            failure = UpstreamError("The model provider's stream failed; nothing was "
                                    "charged.")
            reason = "connection lost or unreadable data"
        if failure is None and not done:
            failure = UpstreamError("The model provider's stream ended early; nothing was "
                                    "charged.", code=STREAM_INTERRUPTED)
            reason = "ended without [DONE]"
        if failure is not None:
            if reply.delivered_bytes == 0:
                raise failure  # nothing delivered: nothing charged, the hold released
            reply.failure = failure
            reply.chunks.append(_interrupted_event(reason))
        return reply


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
