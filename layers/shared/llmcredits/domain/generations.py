"""One chat request's charge, as GET /generations/{request_id} answers it.

Read from what the chat already writes (no write of its own): the request's hold (its
id derived from the request id, :func:`llmcredits.domain.ledger.hold_id_for`), which is
open while the request runs and carries the recorded settlement once it has answered
(the outbox); then the ``hold-charged`` marker the settle writes with the usage entry,
which names that entry.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from enum import StrEnum
from typing import Any

from llmcredits.domain.ledger import Hold, LedgerEntry, settlement_entry


class GenerationStatus(StrEnum):
    PENDING = "pending"  # the hold is open: running, or answered and not committed yet
    SETTLED = "settled"  # the usage entry is written
    PARTIAL = "partial"  # written, for a stream that ended early (client gone, upstream failed)


@dataclass(frozen=True)
class Generation:
    """What the caller sees of one request. None: not known yet (the request runs)."""

    id: str  # the request id (X-Request-Id, every stream chunk's id)
    status: GenerationStatus
    created_at: str  # when the charge was decided; while running, when the hold was made
    model: str | None
    provider: str | None = None
    power_level: str | None = None
    byok: bool | None = None
    key_id: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    total_tokens: int | None = None
    cost: Decimal | None = None
    hold: Decimal | None = None  # what was reserved: the most this request can cost
    latency_ms: int | None = None
    usage_missing: bool = False  # no usage reported: charged the hold's bound


def generation_of(
    request_id: str, hold: Hold | None, entry: LedgerEntry | None
) -> Generation | None:
    """The request's generation from its hold (open) or its usage entry (settled).

    None when neither says it is this request: an unknown id, another user's (their
    holds and entries are in their own partition), or a request that charged nothing
    (its hold was released: the upstream failed before answering)."""
    if hold is not None and hold.request_id == request_id:
        if hold.settlement is None:
            return Generation(id=request_id, status=GenerationStatus.PENDING,
                              created_at=hold.created_at, model=hold.model or None,
                              key_id=hold.key_id or None, hold=hold.amount)
        return _from_entry(request_id, settlement_entry(hold, hold.settlement), pending=True)
    if entry is not None and entry.metadata.get("request_id") == request_id:
        return _from_entry(request_id, entry, pending=False)
    return None


def _from_entry(request_id: str, entry: LedgerEntry, *, pending: bool) -> Generation:
    meta = entry.metadata
    if pending:
        status = GenerationStatus.PENDING
    elif meta.get("partial") is True:
        status = GenerationStatus.PARTIAL
    else:
        status = GenerationStatus.SETTLED
    prompt, completion = _int(meta.get("prompt_tokens")), _int(meta.get("completion_tokens"))
    return Generation(
        id=request_id,
        status=status,
        created_at=entry.created_at,
        model=entry.model,
        provider=entry.provider,
        power_level=meta.get("power_level"),
        byok=meta.get("byok") if isinstance(meta.get("byok"), bool) else None,
        key_id=entry.key_id,
        prompt_tokens=prompt,
        completion_tokens=completion,
        total_tokens=entry.tokens,
        cost=entry.cost,
        hold=_decimal(meta.get("hold")),
        latency_ms=_int(meta.get("latency_ms")),
        usage_missing=meta.get("usage_missing") is True,
    )


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _decimal(value: Any) -> Decimal | None:
    return Decimal(value) if isinstance(value, str) and value else None
