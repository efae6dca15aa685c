"""Ledger use cases: accounts, grants, debits, caps, history.

Every money change is read -> plan (pure domain) -> one conditional transaction. A guard
that fails means another writer got there first; re-read and re-plan, so limits are
always checked against the state the write actually lands on.
"""

from __future__ import annotations

import base64
import binascii
import json
import random
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any, Protocol

from llmcredits.domain.api_keys import (
    ApiKey,
    KeyCredential,
    KeyWrite,
    check_usable,
    plan_key_release,
    plan_key_reserve,
    plan_key_settle,
)
from llmcredits.domain.ledger import (
    Account,
    EntryType,
    Hold,
    IdempotencyClaim,
    LedgerEntry,
    Mutation,
    RecordWrite,
    Tier,
    fingerprint,
    month_of,
    plan_adjustment_debit,
    plan_clawback,
    plan_credit,
    plan_release,
    plan_reserve,
    plan_settle,
    plan_usage_debit,
    rate_guard,
    rolled_over,
    timestamp,
    with_monthly_cap,
)
from llmcredits.domain.ports import (
    HoldGone,
    IdempotentReplay,
    LedgerStore,
    StaleRead,
    StoredResult,
)
from llmcredits.errors import (
    ContentionTimeout,
    IdempotencyConflict,
    InvalidRequest,
    NotFound,
)
from llmcredits.money import ZERO, format_money
from llmcredits.views import entry_view

MAX_ATTEMPTS = 100
MAX_BACKOFF_SECONDS = 0.05
HISTORY_MAX_LIMIT = 200


def utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class ChangeResult:
    """What a money change returns: the HTTP status and body, first time or replayed."""

    status: int
    body: dict[str, Any]
    replayed: bool = False


@dataclass(frozen=True)
class HistoryPage:
    entries: list[LedgerEntry]
    next_cursor: str | None


class KeyReader(Protocol):
    """The current record of an API key (moved into its current budget period)."""

    def current(self, user_id: str, key_id: str) -> ApiKey | None: ...


class LedgerService:
    def __init__(
        self,
        store: LedgerStore,
        clock: Callable[[], datetime] = utcnow,
        sleep: Callable[[float], None] = time.sleep,
        keys: KeyReader | None = None,
    ) -> None:
        self._store = store
        self._clock = clock
        self._sleep = sleep
        self._keys = keys

    # -- accounts ---------------------------------------------------------------------

    def account(self, user_id: str) -> Account:
        """The caller's account, created on first use and moved to the current month."""
        for attempt in range(MAX_ATTEMPTS):
            now = self._clock()
            account = self._store.get_account(user_id)
            if account is None:
                self._store.create_account(Account.new(user_id, now))
                continue
            current = rolled_over(account, month_of(now))
            if current is account:
                return account
            try:
                self._store.roll_over(account, current)
                return current
            except StaleRead:
                self._backoff(attempt)
        raise ContentionTimeout("The account is busy; retry the request.")

    def find_account(self, user_id: str) -> Account:
        """Read-only view for operators: 404 if the user never used the service."""
        account = self._store.get_account(user_id)
        if account is None:
            raise NotFound(f"No account for user {user_id!r}.", param="user_id")
        return rolled_over(account, month_of(self._clock()))

    def set_monthly_cap(self, user_id: str, cap: Decimal | None) -> Account:
        for attempt in range(MAX_ATTEMPTS):
            before = self.account(user_id)
            after = replace(with_monthly_cap(before, cap), updated_at=timestamp(self._clock()))
            try:
                self._store.set_monthly_cap(before, after)
                return after
            except StaleRead:
                self._backoff(attempt)
        raise ContentionTimeout("The account is busy; retry the request.")

    def set_tier(self, user_id: str, tier: Tier) -> Account:
        self.account(user_id)
        self._store.set_tier(user_id, tier, timestamp(self._clock()))
        return self.account(user_id)

    # -- bookkeeping records (no money moves) -------------------------------------------

    def get_record(self, key: str, owner: str | None) -> dict[str, Any] | None:
        return self._store.get_record(key, owner)

    def put_record(
        self, key: str, owner: str | None, values: dict[str, Any], *, only_new: bool = False
    ) -> bool:
        return self._store.put_record(key, owner, values, only_new=only_new)

    # -- money changes ----------------------------------------------------------------

    def grant(
        self,
        user_id: str,
        amount: Decimal,
        entry_type: EntryType,
        reason: str,
        actor: str,
        idempotency_key: str | None = None,
    ) -> ChangeResult:
        """An operator's credit (bonus, refund, adjustment): one ledger entry, once per key."""
        claim = None
        if idempotency_key:
            claim = IdempotencyClaim(
                scope=f"admin-grant#{actor}",
                key=idempotency_key,
                fingerprint=fingerprint(
                    {"user": user_id, "amount": str(amount), "type": entry_type.value,
                     "reason": reason}
                ),
            )
        return self._change(
            user_id,
            plan=lambda account: plan_credit(account, amount),
            entry_type=entry_type,
            details={"metadata": {"reason": reason, "by": actor}},
            claim=claim,
            status=201,
        )

    def debit_usage(
        self,
        user_id: str,
        amount: Decimal,
        *,
        provider: str | None = None,
        model: str | None = None,
        tokens: int | None = None,
        metadata: dict[str, Any] | None = None,
        idempotency_key: str | None = None,
    ) -> ChangeResult:
        """Usage paid straight from the balance (402 when it would overdraw or pass the cap)."""
        claim = None
        if idempotency_key:
            claim = IdempotencyClaim(
                scope="usage",
                key=idempotency_key,
                fingerprint=fingerprint({"user": user_id, "amount": str(amount)}),
            )
        return self._change(
            user_id,
            plan=lambda account: plan_usage_debit(account, amount),
            entry_type=EntryType.USAGE,
            details={
                "provider": provider,
                "model": model,
                "tokens": tokens,
                "cost": amount,
                "metadata": metadata or {},
            },
            claim=claim,
            status=200,
        )

    def credit(
        self,
        user_id: str,
        amount: Decimal,
        entry_type: EntryType,
        *,
        metadata: dict[str, Any],
        records: Sequence[RecordWrite] = (),
    ) -> ChangeResult:
        """Money in (e.g. a purchase) with bookkeeping records in the same transaction.

        Raises RecordConflict (nothing written) when a record's condition fails, e.g. the
        Stripe event was applied already."""
        return self._change(
            user_id,
            plan=lambda account: plan_credit(account, amount),
            entry_type=entry_type,
            details={"metadata": metadata},
            claim=None,
            status=200,
            records=records,
        )

    def clawback(
        self,
        user_id: str,
        amount: Decimal,
        entry_type: EntryType,
        *,
        metadata: dict[str, Any],
        records: Sequence[RecordWrite] = (),
    ) -> ChangeResult:
        """Money taken back after a refund or dispute; may leave the balance negative."""
        return self._change(
            user_id,
            plan=lambda account: plan_clawback(account, amount),
            entry_type=entry_type,
            details={"metadata": metadata},
            claim=None,
            status=200,
            records=records,
        )

    def adjust_down(
        self,
        user_id: str,
        amount: Decimal,
        reason: str,
        actor: str,
        *,
        allow_negative: bool = False,
        idempotency_key: str | None = None,
    ) -> ChangeResult:
        """An operator's downward correction: an ``adjustment`` entry of ``-amount``.

        Refused (402, nothing written) if it would take ``available`` below zero, unless
        ``allow_negative``; 404 for a user who never had an account."""
        self.find_account(user_id)
        claim = None
        if idempotency_key:
            claim = IdempotencyClaim(
                scope=f"admin-adjust#{actor}",
                key=idempotency_key,
                fingerprint=fingerprint(
                    {"user": user_id, "amount": str(-amount), "reason": reason,
                     "allow_negative": allow_negative}
                ),
            )
        metadata: dict[str, Any] = {"reason": reason, "by": actor}
        if allow_negative:
            metadata["allow_negative"] = True
        return self._change(
            user_id,
            plan=lambda account: plan_adjustment_debit(account, amount, allow_negative),
            entry_type=EntryType.ADJUSTMENT,
            details={"metadata": metadata},
            claim=claim,
            status=201,
        )

    def _change(
        self,
        user_id: str,
        plan: Callable[[Account], Mutation],
        entry_type: EntryType,
        details: dict[str, Any],
        claim: IdempotencyClaim | None,
        status: int,
        records: Sequence[RecordWrite] = (),
    ) -> ChangeResult:
        if claim is not None:
            stored = self._store.get_idempotent_result(user_id, claim)
            if stored is not None:
                return self._replay(stored, claim)
        for attempt in range(MAX_ATTEMPTS):
            account = self.account(user_id)
            mutation = plan(account)  # raises the 402s
            now = self._clock()
            entry = LedgerEntry(
                id=uuid.uuid4().hex,
                user_id=user_id,
                created_at=timestamp(now),
                type=entry_type,
                amount=mutation.balance_delta,
                balance_after=mutation.balance_after,
                **details,
            )
            body = {
                "user_id": user_id,
                "balance": format_money(mutation.balance_after),
                "entry": entry_view(entry),
            }
            record = None
            if claim is not None:
                record = (claim, StoredResult(claim.fingerprint, status, body))
            try:
                self._store.commit(
                    user_id, mutation, entry, timestamp(now), record, records=records
                )
                return ChangeResult(status, body)
            except IdempotentReplay as replay:
                assert claim is not None
                return self._replay(replay.stored, claim)
            except StaleRead:
                self._backoff(attempt)
        raise ContentionTimeout("The account is busy; retry the request.")

    @staticmethod
    def _replay(stored: StoredResult, claim: IdempotencyClaim) -> ChangeResult:
        if stored.fingerprint != claim.fingerprint:
            raise IdempotencyConflict(
                "This Idempotency-Key was already used with a different request body.",
                param="Idempotency-Key",
            )
        return ChangeResult(stored.status, stored.body, replayed=True)

    def _backoff(self, attempt: int) -> None:
        # Full jitter: contending writers spread out instead of colliding again.
        self._sleep(random.uniform(0, min(MAX_BACKOFF_SECONDS, 0.001 * 2**attempt)))  # noqa: S311

    # -- holds (metered chat) ---------------------------------------------------------

    def reserve(
        self,
        account: Account,
        amount: Decimal,
        *,
        rate_limit: int | None,
        request_id: str = "",
        model: str = "",
        key: KeyCredential | None = None,
        api_key: ApiKey | None = None,
    ) -> Hold:
        """Reserve ``amount`` with one conditional write that also enforces the monthly
        cap and the per-minute rate limit. Raises 402/429; writes nothing then.

        With ``key`` the same transaction checks the API key (usable, its limit, its rate
        limit) and holds ``amount`` on its budget too; ``api_key`` is a recent read of it."""
        for attempt in range(MAX_ATTEMPTS):
            now = self._clock()
            rate = None if rate_limit is None else rate_guard(account, now, rate_limit)
            mutation = plan_reserve(account, amount, rate)  # raises the 402s
            key_write = None
            if key is not None:
                api_key = api_key or self.api_key(account.user_id, key)
                key_write = plan_key_reserve(api_key, key.secret_hash, amount, now,
                                             timestamp(now), rate_limit)  # 401/402/429
            hold = Hold(
                id=uuid.uuid4().hex,
                user_id=account.user_id,
                amount=amount,
                created_at=timestamp(now),
                request_id=request_id,
                model=model,
                key_id=key.key_id if key is not None else "",
            )
            try:
                self._store.commit(
                    account.user_id, mutation, None, timestamp(now), hold_put=hold,
                    key_write=key_write,
                )
                return hold
            except StaleRead:
                self._backoff(attempt)
                account = self.account(account.user_id)
                api_key = None
        raise ContentionTimeout("The account is busy; retry the request.")

    def api_key(self, user_id: str, key: KeyCredential) -> ApiKey:
        """The key a request came with, if it may be used now (else 401)."""
        if self._keys is None:
            raise RuntimeError("this ledger service has no API key reader")
        return check_usable(self._keys.current(user_id, key.key_id), key.secret_hash,
                            self._clock())

    def _key_write(self, hold: Hold, cost: Decimal) -> KeyWrite | None:
        """The key's part of a settle (or, with cost 0, a release) of ``hold``."""
        if not hold.key_id:
            return None
        if self._keys is None:
            raise RuntimeError("this ledger service has no API key reader")
        api_key = self._keys.current(hold.user_id, hold.key_id)
        if api_key is None:  # key items are never deleted (revoking keeps them)
            raise RuntimeError(f"API key {hold.key_id} of hold {hold.id} is missing")
        return plan_key_settle(api_key, hold.amount, cost) if cost else plan_key_release(
            api_key, hold.amount)

    def settle(
        self,
        account: Account,
        hold: Hold,
        cost: Decimal,
        *,
        provider: str | None,
        model: str | None,
        tokens: int | None,
        metadata: dict[str, Any],
    ) -> LedgerEntry:
        """Charge ``cost`` (at most the hold), release the rest and write the usage entry,
        in one transaction. ``account`` is a recent read; a stale one costs a retry."""
        for attempt in range(MAX_ATTEMPTS):
            now = self._clock()
            mutation = plan_settle(account, hold, cost)
            entry = LedgerEntry(
                id=uuid.uuid4().hex,
                user_id=account.user_id,
                created_at=timestamp(now),
                type=EntryType.USAGE,
                amount=mutation.balance_delta,
                balance_after=mutation.balance_after,
                provider=provider,
                model=model,
                tokens=tokens,
                cost=cost,
                metadata={**metadata, "hold_id": hold.id, "hold": format_money(hold.amount)},
                key_id=hold.key_id or None,
            )
            try:
                self._store.commit(
                    account.user_id, mutation, entry, timestamp(now), hold_delete=hold,
                    key_write=self._key_write(hold, cost),
                )
                return entry
            except StaleRead:
                self._backoff(attempt)
                account = self.account(account.user_id)
        raise ContentionTimeout("The account is busy; retry the request.")

    def release(self, hold: Hold, account: Account | None = None) -> bool:
        """Give a hold back in full. False if it was already settled or released."""
        account = account or self.account(hold.user_id)
        for attempt in range(MAX_ATTEMPTS):
            try:
                self._store.commit(
                    hold.user_id,
                    plan_release(account, hold),
                    None,
                    timestamp(self._clock()),
                    hold_delete=hold,
                    key_write=self._key_write(hold, ZERO),
                )
                return True
            except HoldGone:
                return False
            except StaleRead:
                self._backoff(attempt)
                account = self.account(hold.user_id)
        raise ContentionTimeout("The account is busy; retry the request.")

    def sweep_holds(self, max_age_seconds: int) -> list[Hold]:
        """Release holds of requests that died (older than any live request can be)."""
        cutoff = timestamp(self._clock() - timedelta(seconds=max_age_seconds))
        return [hold for hold in self._store.holds_created_before(cutoff) if self.release(hold)]

    # -- history ----------------------------------------------------------------------

    def history(
        self, user_id: str, limit: int, cursor: str | None, entry_type: EntryType | None,
        key_id: str | None = None,
    ) -> HistoryPage:
        if not 1 <= limit <= HISTORY_MAX_LIMIT:
            raise InvalidRequest(f"limit must be 1..{HISTORY_MAX_LIMIT}", param="limit")
        after = decode_cursor(cursor, user_id) if cursor else None
        page = self._store.list_entries(
            user_id, limit, after, entry_type.value if entry_type else None, key_id
        )
        next_cursor = encode_cursor(user_id, page.last_key) if page.last_key else None
        return HistoryPage(page.entries, next_cursor)


def encode_cursor(user_id: str, key: str) -> str:
    raw = json.dumps({"u": user_id, "k": key}, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str, user_id: str) -> str:
    """The position inside ``user_id``'s history; a cursor from anyone else is refused."""
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        data = json.loads(base64.urlsafe_b64decode(padded.encode()))
        key = data["k"]
        owner = data["u"]
    except (ValueError, KeyError, TypeError, binascii.Error) as exc:
        raise InvalidRequest("cursor is not valid", param="cursor") from exc
    if owner != user_id or not isinstance(key, str) or not key.startswith("LEDGER#"):
        raise InvalidRequest("cursor is not valid", param="cursor")
    return key


__all__ = ["ZERO", "ChangeResult", "HistoryPage", "LedgerService"]
