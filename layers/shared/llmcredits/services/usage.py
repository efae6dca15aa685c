"""Usage analytics: usage ledger entries -> (user, day, provider, model) aggregates.

Aggregates are built from the table's stream, never on the request path:

    stream record --parse--> UsageRecord --group--> {UsageKey: [UsageRecord]}
                  --store.apply_group (one write per group, idempotent per entry id)-->

``usage_of_entry`` is the only mapping from a ledger entry to the numbers it adds, used
by the aggregator and by reconciliation (invariant 4) alike, so the two cannot drift.
Money is Decimal end to end and leaves as 6-place strings.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Protocol

from llmcredits.domain.ledger import EntryType, LedgerEntry
from llmcredits.errors import InvalidRequest
from llmcredits.money import ZERO, format_money

if TYPE_CHECKING:
    # GET /usage's response models are imported where built: the aggregator and the
    # reconciler use this module too, and need no pydantic (cold start).
    from llmcredits.models_usage import UsageResponse

log = logging.getLogger(__name__)

MAX_DAYS = 366
UNKNOWN = "unknown"  # provider/model of a usage entry that names none


class PoisonRecord(ValueError):
    """A stream record that claims to be a usage ledger insert but cannot be read."""


@dataclass(frozen=True, order=True)
class UsageKey:
    """One aggregate: a user's usage of one model of one provider on one UTC day, through
    one API key ("" for requests made with a login token)."""

    user_id: str
    day: str  # yyyy-mm-dd, UTC date of the entry's created_at
    provider: str
    model: str
    key_id: str = ""


@dataclass(frozen=True)
class UsageTotals:
    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    cost: Decimal = ZERO

    def __add__(self, other: UsageTotals) -> UsageTotals:
        return UsageTotals(
            requests=self.requests + other.requests,
            prompt_tokens=self.prompt_tokens + other.prompt_tokens,
            completion_tokens=self.completion_tokens + other.completion_tokens,
            total_tokens=self.total_tokens + other.total_tokens,
            cost=self.cost + other.cost,
        )

    def as_fields(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.total_tokens,
            "cost": self.cost,
        }


@dataclass(frozen=True)
class UsageRecord:
    """What one usage ledger entry adds to its aggregate."""

    entry_id: str
    key: UsageKey
    totals: UsageTotals


@dataclass(frozen=True)
class Aggregate:
    key: UsageKey
    totals: UsageTotals


def usage_day(created_at: str) -> str:
    """UTC date of a ledger timestamp ("2026-11-27T08:00:00.000000Z" -> "2026-11-27")."""
    day = created_at[:10]
    date.fromisoformat(day)  # ValueError when it is not a date
    return day


def _count(value: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{what} must be a non-negative integer, got {value!r}")
    return value


def usage_of_entry(entry: LedgerEntry) -> UsageRecord:
    """The aggregate key and totals of a usage ledger entry (ValueError when malformed)."""
    if entry.type is not EntryType.USAGE:
        raise ValueError(f"entry {entry.id} is {entry.type.value}, not usage")
    if not entry.id or not entry.user_id:
        raise ValueError("usage entry without id or user_id")
    metadata = entry.metadata if isinstance(entry.metadata, dict) else {}
    prompt = _count(metadata.get("prompt_tokens", 0), "prompt_tokens")
    completion = _count(metadata.get("completion_tokens", 0), "completion_tokens")
    tokens = prompt + completion if entry.tokens is None else _count(entry.tokens, "tokens")
    cost = entry.cost if entry.cost is not None else -entry.amount
    if not cost.is_finite():
        raise ValueError(f"entry {entry.id}: cost is not finite")
    return UsageRecord(
        entry_id=entry.id,
        key=UsageKey(
            user_id=entry.user_id,
            day=usage_day(entry.created_at),
            provider=entry.provider or UNKNOWN,
            model=entry.model or UNKNOWN,
            key_id=entry.key_id or "",
        ),
        totals=UsageTotals(1, prompt, completion, tokens, cost + ZERO),
    )


def group_records(records: Iterable[UsageRecord]) -> dict[UsageKey, list[UsageRecord]]:
    """Records by aggregate, in first-seen order; a repeated entry id counts once."""
    groups: dict[UsageKey, list[UsageRecord]] = {}
    seen: set[str] = set()
    for record in records:
        if record.entry_id in seen:
            continue
        seen.add(record.entry_id)
        groups.setdefault(record.key, []).append(record)
    return groups


def sum_totals(records: Iterable[UsageRecord]) -> UsageTotals:
    total = UsageTotals()
    for record in records:
        total = total + record.totals
    return total


# ------------------------------------------------------------------- aggregation


class UsageStore(Protocol):
    def apply_group(self, key: UsageKey, records: Sequence[UsageRecord]) -> int:
        """Add the records not applied before to ``key``'s aggregate, atomically with a
        marker per entry id; returns how many were new. Raises when nothing could be
        written (the caller reports the group's records as failed)."""
        ...

    def aggregates(self, user_id: str, first_day: str, last_day: str) -> list[Aggregate]:
        """The user's aggregates of days first_day..last_day (inclusive), one Query."""
        ...


@dataclass
class ApplyResult:
    groups: int = 0
    applied: int = 0  # entries added to an aggregate now
    duplicates: int = 0  # entries applied by an earlier delivery
    failed: dict[str, BaseException] = field(default_factory=dict)  # entry id -> error


class UsageAggregator:
    """Applies parsed records: one store write per (user, day, provider, model)."""

    def __init__(self, store: UsageStore) -> None:
        self._store = store

    def apply(self, records: Iterable[UsageRecord]) -> ApplyResult:
        result = ApplyResult()
        for key, group in group_records(records).items():
            result.groups += 1
            try:
                applied = self._store.apply_group(key, group)
            except Exception as exc:  # the whole group is retried by the stream
                log.exception("usage aggregate write failed", extra={"key": str(key)})
                for record in group:
                    result.failed[record.entry_id] = exc
                continue
            result.applied += applied
            result.duplicates += len(group) - applied
        return result


# ------------------------------------------------------------------- GET /usage


def _totals_out(totals: UsageTotals) -> dict[str, Any]:
    fields = totals.as_fields()
    fields["cost"] = format_money(totals.cost)
    return fields


def _by_cost(item: tuple[Any, UsageTotals]) -> tuple[Decimal, Any]:
    name, totals = item
    return (-totals.cost, name)


def build_report(
    user_id: str, days: int, start: date, end: date, aggregates: Iterable[Aggregate]
) -> UsageResponse:
    """Totals and breakdowns of ``aggregates`` (all of ``user_id`` in start..end)."""
    from llmcredits.models_usage import (
        DayUsageOut,
        KeyUsageOut,
        ModelUsageOut,
        ProviderUsageOut,
        UsageResponse,
        UsageTotalsOut,
    )

    totals = UsageTotals()
    providers: dict[str, UsageTotals] = {}
    models: dict[tuple[str, str], UsageTotals] = {}
    per_day: dict[str, UsageTotals] = {}
    keys: dict[str, UsageTotals] = {}
    for agg in aggregates:
        if agg.key.user_id != user_id or not start.isoformat() <= agg.key.day <= end.isoformat():
            continue
        totals = totals + agg.totals
        providers[agg.key.provider] = providers.get(agg.key.provider, UsageTotals()) + agg.totals
        mkey = (agg.key.model, agg.key.provider)
        models[mkey] = models.get(mkey, UsageTotals()) + agg.totals
        per_day[agg.key.day] = per_day.get(agg.key.day, UsageTotals()) + agg.totals
        keys[agg.key.key_id] = keys.get(agg.key.key_id, UsageTotals()) + agg.totals
    all_days = [(start + timedelta(days=i)).isoformat() for i in range((end - start).days + 1)]
    return UsageResponse(
        user_id=user_id,
        days=days,
        start_date=start.isoformat(),
        end_date=end.isoformat(),
        totals=UsageTotalsOut(**_totals_out(totals)),
        by_provider=[
            ProviderUsageOut(provider=name, **_totals_out(t))
            for name, t in sorted(providers.items(), key=_by_cost)
        ],
        by_model=[
            ModelUsageOut(model=m, provider=p, **_totals_out(t))
            for (m, p), t in sorted(models.items(), key=_by_cost)
        ],
        by_day=[
            DayUsageOut(date=d, **_totals_out(per_day.get(d, UsageTotals())))
            for d in all_days
        ],
        by_key=[
            KeyUsageOut(key_id=k or None, **_totals_out(t))
            for k, t in sorted(keys.items(), key=_by_cost)
        ],
    )


def utcnow() -> datetime:
    return datetime.now(UTC)


class UsageService:
    def __init__(self, store: UsageStore, clock: Callable[[], datetime] = utcnow) -> None:
        self._store = store
        self._clock = clock

    def report(self, user_id: str, days: int) -> UsageResponse:
        """The last ``days`` UTC days, today included, from the aggregates (one Query)."""
        if not 1 <= days <= MAX_DAYS:
            raise InvalidRequest(f"days must be 1..{MAX_DAYS}", param="days")
        end = self._clock().astimezone(UTC).date()
        start = end - timedelta(days=days - 1)
        aggregates = self._store.aggregates(user_id, start.isoformat(), end.isoformat())
        return build_report(user_id, days, start, end, aggregates)
