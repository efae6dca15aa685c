"""The metered chat completion (DESIGN section 4).

validate -> route -> reserve a hold (one conditional write: funds, cap, rate limit)
-> call the upstream -> settle atomically (charge, release the rest, ledger entry)
or release the hold when the upstream fails.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Protocol

from llmcredits import jsonexact
from llmcredits.domain.api_keys import ApiKey, KeyCredential, check_power_level
from llmcredits.domain.byok import may_have_key, redact
from llmcredits.domain.pricing import Catalog, Route, prompt_token_bound
from llmcredits.errors import ApiError, UpstreamError
from llmcredits.models_chat import ChatCompletionRequest
from llmcredits.money import ZERO, format_money, quantize
from llmcredits.services.ledger import LedgerService

# Request fields the upstream renders into the prompt besides the messages.
PROMPT_FIELDS = ("tools", "functions", "tool_choice", "function_call", "response_format")


class Reply(Protocol):
    body: dict[str, Any] | None
    chunks: list[dict[str, Any]]

    @property
    def usage(self) -> Any: ...


class Upstream(Protocol):
    def complete(self, payload: dict[str, Any], headers: dict[str, str]) -> Reply: ...


class ProviderKeys(Protocol):
    """The caller's own enabled provider key (BYOK), if any. Plaintext only in memory."""

    def key_for(self, user_id: str, provider: str) -> str | None: ...


class NoProviderKeys:
    def key_for(self, user_id: str, provider: str) -> str | None:
        return None


@dataclass(frozen=True)
class ChatResult:
    status: int
    content_type: str
    body: str
    headers: dict[str, str]
    # For metrics (the handler emits them): what was charged, and the upstream's time.
    cost: Decimal = ZERO
    upstream_ms: int = 0


class ChatService:
    def __init__(
        self,
        ledger: LedgerService,
        catalog: Catalog,
        upstream: Upstream,
        keys: ProviderKeys | None = None,
        byok_fee_rate: Decimal = ZERO,
    ) -> None:
        self._ledger = ledger
        self._catalog = catalog
        self._upstream = upstream
        self._keys = keys or NoProviderKeys()
        self._byok_fee_rate = byok_fee_rate

    def complete(
        self,
        user_id: str,
        request: ChatCompletionRequest,
        *,
        power_level_header: str | None,
        request_id: str,
        key: KeyCredential | None = None,
    ) -> ChatResult:
        account = self._ledger.account(user_id)
        tier = account.tier.value
        power_level = request.power_level or power_level_header
        # An API key: refused here (401) if unusable; its allowed levels bound the route.
        key_record = self._ledger.api_key(user_id, key) if key is not None else None
        if key_record is not None and power_level is None and request.model == "auto":
            power_level = key_default_level(key_record, self._catalog, tier)
        route = self._catalog.resolve(request.model, power_level, tier)
        if key_record is not None:
            check_power_level(key_record, route.power_level)  # 403
        max_tokens = self._catalog.clip_max_tokens(request.requested_max_tokens(), route)
        # The account's flags say whether an enabled BYOK key exists for the provider
        # (written with the key): accounts without one pay no extra read.
        api_key = (
            self._keys.key_for(user_id, route.provider)
            if may_have_key(account.flags, route.provider)
            else None
        )
        fee_rate = self._byok_fee_rate if api_key else Decimal(1)

        extra = {f: v for f, v in (request.model_extra or {}).items() if f in PROMPT_FIELDS}
        messages = [m.model_dump(mode="python", exclude_none=True) for m in request.messages]
        prompt_bound = prompt_token_bound(messages, extra=extra or None)
        hold_amount = self._price(route, tier, prompt_bound, request.n * max_tokens, fee_rate)
        hold = self._ledger.reserve(
            account,
            hold_amount,
            rate_limit=self._catalog.rate_limit(tier),
            request_id=request_id,
            model=route.model,
            key=key,
            api_key=key_record,
        )

        payload = request.passthrough()
        payload["model"] = route.upstream_model
        payload.pop("max_completion_tokens", None)
        payload["max_tokens"] = max_tokens
        if request.stream:
            payload["stream_options"] = {**(request.stream_options or {}), "include_usage": True}
        if api_key:
            payload["api_key"] = api_key  # LiteLLM's client-side credential
        started = time.monotonic()
        try:
            reply = self._upstream.complete(payload, {"X-Request-Id": request_id})
        except Exception as exc:
            # 502/504/4xx from the upstream, or anything else: no charge, hold back.
            self._ledger.release(hold, account)
            if api_key:
                # A provider may echo the caller's key in its error: never pass it on.
                raise without_secret(exc, api_key) from None
            raise
        latency_ms = int((time.monotonic() - started) * 1000)

        usage = reply.usage
        metadata: dict[str, Any] = {
            "request_id": request_id,
            "power_level": route.power_level,
            "byok": bool(api_key),
            "latency_ms": latency_ms,
        }
        tokens = None
        if usage is None:
            # No usage reported: charge the bound we reserved (never more) and say so.
            cost = hold.amount
            metadata["usage_missing"] = True
        else:
            prompt_tokens, completion_tokens = usage.prompt_tokens, usage.completion_tokens
            tokens = prompt_tokens + completion_tokens
            cost = self._price(route, tier, prompt_tokens, completion_tokens, fee_rate)
            metadata["prompt_tokens"] = prompt_tokens
            metadata["completion_tokens"] = completion_tokens
            if cost > hold.amount:
                # The upstream reported more than the bound allows; the hold is all we
                # reserved, so it is all we may take (never overdraw).
                metadata["capped_at_hold"] = format_money(cost)
                cost = hold.amount
        entry = self._ledger.settle(
            account,
            hold,
            cost,
            provider=route.provider,
            model=route.model,
            tokens=tokens,
            metadata=metadata,
        )
        headers = {
            "X-Credits-Charged": format_money(cost),
            "X-Credits-Remaining": format_money(entry.balance_after),
            "X-Request-Id": request_id,
        }
        if request.stream:
            return ChatResult(200, "text/event-stream", self._sse(reply.chunks, cost), headers,
                              cost=cost, upstream_ms=latency_ms)
        body = dict(reply.body or {})
        body["usage"] = {**(body.get("usage") or {}), "cost": quantize(cost)}
        return ChatResult(200, "application/json", jsonexact.dumps(body), headers,
                          cost=cost, upstream_ms=latency_ms)

    def _price(
        self, route: Route, tier: str, prompt: int, completion: int, fee_rate: Decimal
    ) -> Decimal:
        price = self._catalog.charge(route, None, tier, prompt, completion)
        return price if fee_rate == 1 else quantize(price * fee_rate)

    @staticmethod
    def _sse(chunks: list[dict[str, Any]], cost: Decimal) -> str:
        """A complete event stream: every chunk, usage (with cost) last, then [DONE]."""
        lines = []
        usage_seen = False
        for chunk in chunks:
            if isinstance(chunk.get("usage"), dict):
                chunk = {**chunk, "usage": {**chunk["usage"], "cost": quantize(cost)}}
                usage_seen = True
            lines.append(f"data: {jsonexact.dumps(chunk)}\n\n")
        if not usage_seen and chunks:
            last = chunks[-1]
            lines.append("data: " + jsonexact.dumps({
                "id": last.get("id"), "object": "chat.completion.chunk",
                "created": last.get("created"), "model": last.get("model"),
                "choices": [], "usage": {"cost": quantize(cost)},
            }) + "\n\n")
        lines.append("data: [DONE]\n\n")
        return "".join(lines)


def key_default_level(key: ApiKey, catalog: Catalog, tier: str) -> str | None:
    """For ``model: auto`` without a level: the tier's default if the key allows it, else
    the highest level both the key and the tier allow (None: let routing refuse)."""
    if key.power_levels is None:
        return None
    default = catalog.default_level_for(tier)
    if default in key.power_levels:
        return default
    allowed = [lv for lv in catalog.power_levels
               if lv in key.power_levels and lv in catalog.tier(tier).power_levels]
    return allowed[-1] if allowed else None


def without_secret(exc: Exception, secret: str) -> Exception:
    """``exc`` as is, or (when it shows ``secret`` or a piece of it) an error of the same
    status whose message withholds the provider's text. Raised ``from None``: no cause."""
    headers = exc.headers.values() if isinstance(exc, ApiError) else ()
    if all(redact(text, secret) is not None for text in (str(exc), *headers)):
        return exc
    message = ("The model provider refused the request made with your own key; its error "
               "message is withheld because it contained the key. Nothing was charged.")
    if isinstance(exc, ApiError):
        clean = {k: v for k, v in exc.headers.items() if redact(v, secret) is not None}
        return type(exc)(message, code=exc.code, param=exc.param, headers=clean)
    return UpstreamError(message)
