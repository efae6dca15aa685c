"""The metered chat completion (DESIGN section 4).

validate -> route -> reserve a hold (one conditional write: funds, cap, rate limit)
-> call the upstream -> settle atomically (charge, release the rest, ledger entry)
or release the hold when the upstream fails.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Generator, Iterator, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Protocol

from llmcredits import jsonexact
from llmcredits.domain.answer import ensure_routed_model, interrupted_event
from llmcredits.domain.api_keys import ApiKey, check_power_level
from llmcredits.domain.byok import may_have_key, redact
from llmcredits.domain.ledger import Account, GuardedWrite, Hold, fingerprint
from llmcredits.domain.ports import StoredResponse
from llmcredits.domain.pricing import Catalog, Route
from llmcredits.errors import ApiError, IdempotencyConflict, InvalidRequest, UpstreamError
from llmcredits.models_chat import ChatCompletionRequest
from llmcredits.money import ZERO, format_money, quantize
from llmcredits.services.ledger import LedgerService
from llmcredits.units import Seconds

log = logging.getLogger(__name__)

# Responses kept for an Idempotency-Key, at most this large (DynamoDB items stop at
# 400 KB); a retry of a larger one gets 409 ``idempotency_response_too_large``.
MAX_STORED_RESPONSE_BYTES = 256 * 1024
# A claim still "running" after this long belongs to a process that died (longer than
# the chat function's timeout, 900 s: tests/unit/test_stream_timeouts.py); a retry may
# then take the key over.
IDEMPOTENCY_LEASE_SECONDS = 20 * 60
MAX_IDEMPOTENCY_KEY_LENGTH = 255


class Reply(Protocol):
    body: dict[str, Any] | None
    chunks: list[dict[str, Any]]
    models: list[str]

    @property
    def usage(self) -> Any: ...

    @property
    def partial(self) -> bool: ...

    def billable_usage(self, prompt_bound: int, completion_bound: int) -> Any: ...


class Stream(Protocol):
    """A streamed answer being read (dal.upstream.UpstreamStream)."""

    @property
    def failure(self) -> Exception | None: ...

    @property
    def failure_reason(self) -> str: ...

    def __iter__(self) -> Iterator[dict[str, Any]]: ...

    @property
    def partial(self) -> bool: ...

    def billable_usage(self, prompt_bound: int, completion_bound: int) -> Any: ...

    def close(self) -> None: ...


class Upstream(Protocol):
    def complete(self, payload: dict[str, Any], headers: dict[str, str]) -> Reply: ...

    def open_stream(self, payload: dict[str, Any], headers: dict[str, str], *,
                    check_model: Callable[[str], None] | None = None) -> Stream: ...


class ProviderKeys(Protocol):
    """The caller's own enabled provider key (BYOK), if any. Plaintext only in memory."""

    def key_for(self, user_id: str, provider: str) -> str | None: ...


class NoProviderKeys:
    def key_for(self, user_id: str, provider: str) -> str | None:
        return None


class TransactionExtras(Protocol):
    """Writes another adapter adds to the money transactions of one chat request (e.g.
    an API key's limit on reserve, its spend on settle). Each returns GuardedWrites."""

    def on_reserve(self, account: Account, amount: Decimal) -> Sequence[GuardedWrite]: ...

    def on_settle(self, hold: Hold, cost: Decimal) -> Sequence[GuardedWrite]: ...

    def on_release(self, hold: Hold) -> Sequence[GuardedWrite]: ...


class NoExtras:
    def on_reserve(self, account: Account, amount: Decimal) -> Sequence[GuardedWrite]:
        return ()

    def on_settle(self, hold: Hold, cost: Decimal) -> Sequence[GuardedWrite]:
        return ()

    def on_release(self, hold: Hold) -> Sequence[GuardedWrite]:
        return ()


@dataclass
class StreamOutcome:
    """How a stream ended, filled in when it is settled (for the handler's metrics)."""

    settled: bool = False
    cost: Decimal = ZERO
    upstream_ms: int = 0
    partial: bool = False


@dataclass(frozen=True)
class ChatResult:
    status: int
    content_type: str
    body: str
    headers: dict[str, str]
    # For metrics (the handler emits them): what was charged, and the upstream's time.
    cost: Decimal = ZERO
    upstream_ms: int = 0
    # A streamed answer: the event stream's text, piece by piece as the upstream sends
    # it (``body`` is empty); settled when the last upstream chunk is read, before the
    # usage chunk and ``[DONE]``. Closing it early (the client left) settles as partial.
    stream: Generator[str, None, None] | None = None
    outcome: StreamOutcome = field(default_factory=StreamOutcome)


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
        idempotency_key: str | None = None,
        extras: TransactionExtras | None = None,
        key: ApiKey | None = None,
    ) -> ChatResult:
        """One metered completion. With ``idempotency_key`` (scoped to the user, kept
        24 h) a retry with the same body gets the first response and is charged once."""
        if idempotency_key is None:
            return self._complete(user_id, request, power_level_header, request_id,
                                  extras or NoExtras(), key)
        if not 0 < len(idempotency_key) <= MAX_IDEMPOTENCY_KEY_LENGTH or \
                not idempotency_key.isprintable():
            raise InvalidRequest(
                f"Idempotency-Key must be 1..{MAX_IDEMPOTENCY_KEY_LENGTH} printable characters.",
                param="Idempotency-Key",
            )
        request_fingerprint = fingerprint(
            {"body": request.model_dump(mode="json"), "power_level": power_level_header}
        )
        found = self._ledger.claim_response(
            user_id, idempotency_key, request_fingerprint, IDEMPOTENCY_LEASE_SECONDS
        )
        if found is not None:
            return replayed(found.fingerprint == request_fingerprint, found.running,
                            found.response)
        try:
            result = self._complete(user_id, request, power_level_header, request_id,
                                    extras or NoExtras(), key)
        except BaseException:
            # Nothing was charged: free the key so a retry runs again.
            self._ledger.drop_response_claim(user_id, idempotency_key)
            raise

        def store(body: str) -> None:
            size = len(body.encode())
            stored = StoredResponse(
                status=result.status,
                content_type=result.content_type,
                body=body if size <= MAX_STORED_RESPONSE_BYTES else None,
                headers=result.headers,
            )
            try:
                self._ledger.finish_response(user_id, idempotency_key, request_fingerprint,
                                             stored)
            except Exception:  # charged; a retry now sees "running" until the lease ends
                log.warning("storing the idempotent response failed", exc_info=True)

        if result.stream is None:
            store(result.body)
            return result
        return ChatResult(result.status, result.content_type, "", result.headers,
                          stream=_recorded(result.stream, store), outcome=result.outcome)

    def _complete(
        self,
        user_id: str,
        request: ChatCompletionRequest,
        power_level_header: str | None,
        request_id: str,
        extras: TransactionExtras,
        key: ApiKey | None,
    ) -> ChatResult:
        account = self._ledger.account(user_id)
        tier = account.tier.value
        power_level = request.power_level or power_level_header
        # An API key (checked usable by its extras): its allowed levels bound the route.
        key_record = key
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

        extra = request.prompt_extras()  # [input] tools, functions, response_format, ...
        messages = [m.model_dump(mode="python", exclude_none=True) for m in request.messages]
        # [input] Never above the model's context window; an image/file/audio part: it.
        prompt_bound = self._catalog.prompt_bound(route, messages, extra=extra or None)
        hold_amount = self._price(route, tier, prompt_bound, request.n * max_tokens, fee_rate)
        hold = self._ledger.reserve(
            account,
            hold_amount,
            rate_limit=self._catalog.rate_limit(tier),
            request_id=request_id,
            model=route.model,
            extra=lambda fresh: extras.on_reserve(fresh, hold_amount),
            key_id=key.id if key is not None else "",
            release_extra=extras.on_release,  # kept on the hold for the sweeper
        )

        payload = request.passthrough()
        payload["model"] = route.upstream_model
        payload.pop("max_completion_tokens", None)
        payload["max_tokens"] = max_tokens
        if request.stream:
            # [input] Always asked of the upstream (the settle needs it); passed on to the
            # client only when it asked.
            payload["stream_options"] = {**(request.stream_options or {}), "include_usage": True}
        if api_key:
            payload["api_key"] = api_key  # LiteLLM's client-side credential
        charge = _Charge(self, account, hold, route, tier, fee_rate, prompt_bound,
                         request.n * max_tokens, request_id, bool(api_key), extras)
        headers = {
            "X-Request-Id": request_id,
            # [input] X-Max-Tokens-Clipped: <requested> when max_tokens was lowered.
            **self._catalog.clip_headers(request.requested_max_tokens(), route),
        }
        started = time.monotonic()
        try:
            if request.stream:
                stream = self._upstream.open_stream(
                    payload, {"X-Request-Id": request_id},
                    check_model=lambda name: ensure_routed_model(route, [name]))
            else:
                reply = self._upstream.complete(payload, {"X-Request-Id": request_id})
                ensure_routed_model(route, reply.models)  # [input] another model: 502
        except Exception as exc:
            # 502/504/4xx from the upstream, or anything else: no charge, hold back.
            self._ledger.release(hold, account, extras.on_release(hold))
            if api_key:
                # A provider may echo the caller's key in its error: never pass it on.
                raise without_secret(exc, api_key) from None
            raise
        if request.stream:
            outcome = StreamOutcome()
            asked = bool((request.stream_options or {}).get("include_usage"))
            events = self._events(stream, charge, started, outcome, include_usage=asked)
            return ChatResult(200, "text/event-stream", "",
                              {**headers, "Cache-Control": "no-cache"},
                              stream=events, outcome=outcome)
        latency_ms = int((time.monotonic() - started) * 1000)
        # [input] Reported usage (no usage: the hold).
        cost, settled = charge.settle(reply.billable_usage(prompt_bound, request.n * max_tokens),
                                      latency_ms, partial=reply.partial)
        headers["X-Credits-Charged"] = format_money(cost)
        if settled.entry.balance_after is not None:
            headers["X-Credits-Remaining"] = format_money(settled.entry.balance_after)
        if settled.pending:
            # Recorded on the hold; the settle worker commits it within a minute.
            headers["X-Credits-Settlement"] = "pending"
        body = dict(reply.body or {})
        body["id"] = request_id  # what GET /generations/{request_id} looks up
        body["usage"] = {**(body.get("usage") or {}), "cost": quantize(cost)}
        return ChatResult(200, "application/json", jsonexact.dumps(body), headers,
                          cost=cost, upstream_ms=latency_ms)

    def _events(self, stream: Stream, charge: _Charge, started: Seconds, outcome: StreamOutcome,
                *, include_usage: bool) -> Generator[str, None, None]:
        """The client's event stream: each upstream chunk as it arrives (``id`` = the
        request id, usage removed), then, once the upstream is done and the answer
        settled, the usage chunk with ``cost`` (only if the client asked), an error
        event if the upstream failed partway, and ``data: [DONE]``.

        Closed early (the client left: ``GeneratorExit`` at a yield), it stops reading
        the upstream and settles for what was generated, as partial."""
        last: dict[str, Any] = {}
        raw_usage: dict[str, Any] | None = None
        try:
            for chunk in stream:
                if isinstance(chunk.get("usage"), dict):
                    raw_usage = chunk["usage"]
                last = chunk
                out = client_chunk(chunk, charge.request_id, include_usage=include_usage)
                if out is not None:
                    yield f"data: {jsonexact.dumps(out)}\n\n"
        except GeneratorExit:
            stream.close()  # the client is gone: the provider stops generating
            self._settle_stream(stream, charge, started, outcome, client_gone=True)
            raise
        stream.close()
        try:
            cost, pending = self._settle_stream(stream, charge, started, outcome)
        except Exception:
            # The answer was delivered; the hold stays for the sweeper. Say so, then end.
            log.exception("settling a stream failed")
            yield "data: " + jsonexact.dumps({"error": {
                "message": "The charge for this answer could not be recorded yet; see GET "
                           "/generations/{request_id}.", "type": "server_error",
                "code": "settlement_failed", "param": None}}) + "\n\n"
            yield "data: [DONE]\n\n"
            return
        if include_usage:
            usage: dict[str, Any] = {**(raw_usage or {}), "cost": quantize(cost)}
            if pending:
                # A header can't say it after the body started: the usage chunk does.
                usage["settlement"] = "pending"
            yield "data: " + jsonexact.dumps({
                "id": charge.request_id, "object": "chat.completion.chunk",
                "created": last.get("created", int(time.time())),
                "model": last.get("model", charge.route.upstream_model),
                **({"system_fingerprint": last["system_fingerprint"]}
                   if "system_fingerprint" in last else {}),
                "choices": [], "usage": usage,
            }) + "\n\n"
        if stream.failure is not None:
            yield f"data: {jsonexact.dumps(interrupted_event(stream.failure_reason))}\n\n"
        yield "data: [DONE]\n\n"

    @staticmethod
    def _settle_stream(stream: Stream, charge: _Charge, started: Seconds, outcome: StreamOutcome,
                       *, client_gone: bool = False) -> tuple[Decimal, bool]:
        latency_ms = int((time.monotonic() - started) * 1000)
        usage = stream.billable_usage(charge.prompt_bound, charge.completion_bound)
        cost, settled = charge.settle(usage, latency_ms, partial=stream.partial,
                                      client_gone=client_gone)
        outcome.settled, outcome.cost = True, cost
        outcome.upstream_ms, outcome.partial = latency_ms, stream.partial
        return cost, settled.pending

    def _price(
        self, route: Route, tier: str, prompt: int, completion: int, fee_rate: Decimal
    ) -> Decimal:
        price = self._catalog.charge(route, None, tier, prompt, completion)
        return price if fee_rate == 1 else quantize(price * fee_rate)


class _Charge:
    """What settling one request needs: the hold, the route and the bounds."""

    def __init__(self, service: ChatService, account: Account, hold: Hold, route: Route,
                 tier: str, fee_rate: Decimal, prompt_bound: int, completion_bound: int,
                 request_id: str, byok: bool, extras: TransactionExtras) -> None:
        self.service, self.account, self.hold, self.route = service, account, hold, route
        self.tier, self.fee_rate = tier, fee_rate
        self.prompt_bound, self.completion_bound = prompt_bound, completion_bound
        self.request_id, self.byok, self.extras = request_id, byok, extras

    def settle(self, usage: Any, latency_ms: int, *, partial: bool,
               client_gone: bool = False) -> tuple[Decimal, Any]:
        """Charge ``usage`` (None: the hold, ``usage_missing``), never above the hold;
        release the rest and write the usage entry (or record it for the worker)."""
        metadata: dict[str, Any] = {
            "request_id": self.request_id,
            "power_level": self.route.power_level,
            "byok": self.byok,
            "latency_ms": latency_ms,
        }
        if partial:
            metadata["partial"] = True  # [input] the stream ended before its end
        if client_gone:
            metadata["client_disconnected"] = True
        tokens = None
        if usage is None:
            # No usage reported: charge the bound we reserved (never more) and say so.
            cost = self.hold.amount
            metadata["usage_missing"] = True
        else:
            prompt_tokens, completion_tokens = usage.prompt_tokens, usage.completion_tokens
            tokens = prompt_tokens + completion_tokens
            cost = self.service._price(self.route, self.tier, prompt_tokens, completion_tokens,
                                       self.fee_rate)
            metadata["prompt_tokens"] = prompt_tokens
            metadata["completion_tokens"] = completion_tokens
            if cost > self.hold.amount:
                # The upstream reported more than the bound allows; the hold is all we
                # reserved, so it is all we may take (never overdraw).
                metadata["capped_at_hold"] = format_money(cost)
                cost = self.hold.amount
        settled = self.service._ledger.settle(
            self.account,
            self.hold,
            cost,
            provider=self.route.provider,
            model=self.route.model,
            tokens=tokens,
            metadata=metadata,
            extra=self.extras.on_settle(self.hold, cost),
        )
        return cost, settled


def client_chunk(chunk: dict[str, Any], request_id: str, *,
                 include_usage: bool) -> dict[str, Any] | None:
    """An upstream chunk as the client gets it: ``id`` = the request id, the usage taken
    out (the settled usage chunk comes at the end, only if asked; OpenAI then sends
    ``"usage": null`` on the other chunks); a chunk left with no choices is dropped."""
    if not chunk.get("choices"):
        return None
    out = {**chunk, "id": request_id}
    if include_usage:
        out["usage"] = None
    else:
        out.pop("usage", None)
    return out


def _recorded(events: Generator[str, None, None],
              store: Callable[[str], None]) -> Generator[str, None, None]:
    """``events`` passed on as they come, their text stored (Idempotency-Key) at the
    end; a stream the client left is stored as far as it went, ended by an error event
    (it was charged: a retry replays it rather than paying again)."""
    sent: list[str] = []
    try:
        for event in events:
            sent.append(event)
            yield event
    except GeneratorExit:
        events.close()  # settles the partial answer
        sent.append("data: " + jsonexact.dumps({"error": {
            "message": "The client disconnected; the answer stopped here and was charged "
                       "for what was generated.", "type": "server_error",
            "code": "client_disconnected", "param": None}}) + "\n\ndata: [DONE]\n\n")
        store("".join(sent))
        raise
    store("".join(sent))


def replayed(same_body: bool, running: bool, response: StoredResponse | None) -> ChatResult:
    """The answer to a retry with a used Idempotency-Key (DESIGN section 2)."""
    if not same_body:
        raise IdempotencyConflict(
            "This Idempotency-Key was already used with a different request body.",
            param="Idempotency-Key",
        )
    if running or response is None:
        raise IdempotencyConflict(
            "A request with this Idempotency-Key is still running; retry when it has "
            "finished to get its response.",
            code="idempotency_in_progress",
            param="Idempotency-Key",
        )
    if response.body is None:
        raise IdempotencyConflict(
            f"The response to this Idempotency-Key was larger than "
            f"{MAX_STORED_RESPONSE_BYTES // 1024} KB and was not kept, so it cannot be "
            "replayed; it was charged once. Use a new key for a new request.",
            code="idempotency_response_too_large",
            param="Idempotency-Key",
        )
    headers = {**response.headers, "Idempotent-Replayed": "true"}
    return ChatResult(response.status, response.content_type, response.body, headers)


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
