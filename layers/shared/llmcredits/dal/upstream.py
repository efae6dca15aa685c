"""The LLM upstream: an OpenAI-compatible LiteLLM proxy, called with httpx.

One httpx.Client per container (connection reuse across warm invocations), explicit
timeouts, and every failure mapped to an ApiError so the caller can release the hold.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import httpx

from llmcredits import jsonexact
from llmcredits.errors import InvalidRequest, RateLimited, UpstreamError, UpstreamTimeout


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass
class UpstreamReply:
    """A complete answer: the JSON body, or (streamed) every chunk in order."""

    body: dict[str, Any] | None = None
    chunks: list[dict[str, Any]] = field(default_factory=list)
    usage: Usage | None = None


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
        return UpstreamReply(body=body, usage=parse_usage(body.get("usage")))

    def _stream(self, payload: dict[str, Any], headers: dict[str, str]) -> UpstreamReply:
        reply = UpstreamReply()
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
                        break
                    chunk = jsonexact.loads(data)
                    if isinstance(chunk, dict):
                        reply.chunks.append(chunk)
                        usage = parse_usage(chunk.get("usage"))
                        if usage is not None:
                            reply.usage = usage
        except httpx.TimeoutException as exc:
            raise UpstreamTimeout("The model provider did not answer in time; nothing was "
                                  "charged.") from exc
        except (httpx.HTTPError, ValueError) as exc:
            raise UpstreamError("The model provider's stream failed; nothing was "
                                "charged.") from exc
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
