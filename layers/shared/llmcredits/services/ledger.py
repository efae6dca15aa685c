"""Ledger use cases: accounts, grants, debits, caps, history.

Every money change is read -> plan (pure domain) -> one conditional transaction. A guard
that fails means another writer got there first; re-read and re-plan, so limits are
always checked against the state the write actually lands on.
"""

from __future__ import annotations

import base64
import binascii
import functools
import json
import logging
import random
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from llmcredits.domain.ledger import (
    PAID_SOURCES,
    Account,
    EntryType,
    GuardedWrite,
    Hold,
    IdempotencyClaim,
    LedgerEntry,
    Lot,
    LotNotDue,
    LotReserved,
    LotSource,
    Mutation,
    RecordWrite,
    Settlement,
    Tier,
    fingerprint,
    hold_charged_record,
    hold_id_for,
    month_of,
    operation_token,
    plan_adjustment_debit,
    plan_clawback,
    plan_credit,
    plan_expiry,
    plan_lots_tidy,
    plan_release,
    plan_reserve,
    plan_settle,
    plan_usage_debit,
    rate_guard,
    rolled_over,
    settlement_entry,
    timestamp,
    with_monthly_cap,
)
from llmcredits.domain.ports import (
    HoldAnswered,
    HoldGone,
    IdempotentReplay,
    LedgerStore,
    RecordConflict,
    ResponseClaim,
    StaleRead,
    StoredResponse,
    StoredResult,
    StoreUnavailable,
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
# A settle re-plans only when the month or the cap changed under it; past this many
# tries (or when the store does not answer) the recorded settlement waits for the worker.
SETTLE_ATTEMPTS = 5
# Recording the settlement on the hold is what makes an answer's charge durable.
RECORD_ATTEMPTS = 6

log = logging.getLogger(__name__)


def utcnow() -> datetime:
    return datetime.now(UTC)


#: Records written with a money change's entry: fixed, or made from the entry written.
EntryRecords = Sequence[RecordWrite] | Callable[[LedgerEntry], Sequence[RecordWrite]]


@dataclass(frozen=True)
class ChangeResult:
    """What a money change returns: the HTTP status and body, first time or replayed."""

    status: int
    body: dict[str, Any]
    replayed: bool = False


@dataclass(frozen=True)
class Settled:
    """A settle's outcome: the usage entry, and whether it is committed yet.

    ``pending``: the settlement is recorded on the hold (durable) and the settle worker
    commits it; ``entry.balance_after`` is None until then (or until it is stamped)."""

    entry: LedgerEntry
    pending: bool = False


@dataclass(frozen=True)
class SweepResult:
    released: list[Hold]
    settled: list[Hold]


@dataclass(frozen=True)
class PendingReport:
    """What one settle-worker run found: applied now, left pending, and the oldest age."""

    applied: int
    pending: int
    older_than_minute: int
    oldest_seconds: int


@dataclass(frozen=True)
class HistoryPage:
    entries: list[LedgerEntry]
    next_cursor: str | None


@dataclass(frozen=True)
class ExpiringLot:
    """A lot with something left that expires soon (``lots_expiring_before``)."""

    user_id: str
    lot: Lot


@dataclass(frozen=True)
class ExpiryReport:
    """What one run of the expiry job did: entries written, lots left for a later run
    (open holds reserve them), and accounts whose due lot was spent meanwhile."""

    expired: list[LedgerEntry]
    deferred: list[ExpiringLot]
    tidied: int


#: The (tier, cumulative paid threshold) pairs of the catalog, read on a paid credit.
PromotionRule = Callable[[], Sequence[tuple[Tier, Decimal]]]

# A grant's expiry: at most this far out, so a typo cannot make a lot that never goes.
MAX_EXPIRY_DAYS = 3650
LOT_SOURCE_OF_GRANT = {EntryType.BONUS: LotSource.BONUS, EntryType.REFUND: LotSource.REFUND,
                       EntryType.ADJUSTMENT: LotSource.ADJUSTMENT}


def no_promotion() -> Sequence[tuple[Tier, Decimal]]:
    return ()


class LedgerService:
    def __init__(
        self,
        store: LedgerStore,
        clock: Callable[[], datetime] = utcnow,
        sleep: Callable[[float], None] = time.sleep,
        promotion: PromotionRule = no_promotion,
    ) -> None:
        self._store = store
        self._clock = clock
        self._sleep = sleep
        self._promotion = promotion

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

    # -- chat responses kept for an Idempotency-Key ------------------------------------

    def claim_response(
        self, user_id: str, key: str, request_fingerprint: str, lease_seconds: int
    ) -> ResponseClaim | None:
        return self._store.claim_response(user_id, key, request_fingerprint, lease_seconds)

    def finish_response(
        self, user_id: str, key: str, request_fingerprint: str, response: StoredResponse
    ) -> None:
        self._store.finish_response(user_id, key, request_fingerprint, response)

    def drop_response_claim(self, user_id: str, key: str) -> None:
        self._store.drop_response_claim(user_id, key)

    # -- money changes ----------------------------------------------------------------

    def grant(
        self,
        user_id: str,
        amount: Decimal,
        entry_type: EntryType,
        reason: str,
        actor: str,
        idempotency_key: str | None = None,
        *,
        expires_at: datetime | None = None,
        expires_in_days: int | None = None,
    ) -> ChangeResult:
        """An operator's credit (bonus, refund, adjustment): one ledger entry and one lot,
        once per key. The lot expires at ``expires_at`` or ``expires_in_days`` from now
        (at most one of them; default never)."""
        claim = grant_claim(user_id, amount, entry_type, reason, actor, idempotency_key,
                            expires_at=expires_at, expires_in_days=expires_in_days)
        if claim is not None:
            earlier = self.earlier_result(user_id, claim)
            if earlier is not None:  # a retry: its expiry was checked the first time
                return earlier
        expiry = self.grant_expiry(expires_at, expires_in_days)
        source = LOT_SOURCE_OF_GRANT[entry_type]
        metadata: dict[str, Any] = {"reason": reason, "by": actor}
        if expiry is not None:
            metadata["expires_at"] = expiry
        return self._change(
            user_id,
            plan=lambda account, entry_id, now: plan_credit(
                account, amount, lot_id=entry_id, created_at=now, source=source,
                expires_at=expiry),
            entry_type=entry_type,
            details={"metadata": metadata},
            claim=claim,
            status=201,
        )

    def grant_expiry(self, expires_at: datetime | None, expires_in_days: int | None
                     ) -> str | None:
        """The lot expiry of a grant, checked: in the future, within MAX_EXPIRY_DAYS."""
        if expires_at is not None and expires_in_days is not None:
            raise InvalidRequest("Give expires_at or expires_in_days, not both.",
                                 param="expires_at")
        now = self._clock()
        if expires_in_days is not None:
            if not 1 <= expires_in_days <= MAX_EXPIRY_DAYS:
                raise InvalidRequest(f"expires_in_days must be 1..{MAX_EXPIRY_DAYS}.",
                                     param="expires_in_days")
            expires_at = now + timedelta(days=expires_in_days)
        if expires_at is None:
            return None
        if expires_at.tzinfo is None:
            raise InvalidRequest("expires_at needs a time zone (e.g. Z or +00:00).",
                                 param="expires_at")
        if expires_at <= now:
            raise InvalidRequest("expires_at must be in the future.", param="expires_at")
        if expires_at > now + timedelta(days=MAX_EXPIRY_DAYS):
            raise InvalidRequest(f"expires_at must be within {MAX_EXPIRY_DAYS} days.",
                                 param="expires_at")
        return timestamp(expires_at)

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
        records: EntryRecords = (),
    ) -> ChangeResult:
        """Usage paid straight from the balance (402 when it would overdraw or pass the cap).

        ``records``: bookkeeping records for the same transaction, or a function of the
        entry written that makes them (a record that names its entry)."""
        claim = None
        if idempotency_key:
            claim = IdempotencyClaim(
                scope="usage",
                key=idempotency_key,
                fingerprint=fingerprint({"user": user_id, "amount": str(amount)}),
            )
        return self._change(
            user_id,
            plan=lambda account, _id, _now: plan_usage_debit(account, amount),
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
            records=records,
        )

    def credit(
        self,
        user_id: str,
        amount: Decimal,
        entry_type: EntryType,
        *,
        metadata: dict[str, Any],
        source: LotSource,
        expires_at: datetime | None = None,
        receipt_url: str | None = None,
        records: Sequence[RecordWrite] = (),
    ) -> ChangeResult:
        """Money in (a purchase, an auto top-up, a reinstatement) as a new lot from
        ``source`` that expires at ``expires_at`` (None: never), with bookkeeping records
        in the same transaction. A paid source (purchase, auto top-up) adds to the
        cumulative paid amount and promotes the tier in that transaction when it crosses
        a catalog threshold. ``receipt_url`` is kept on the entry (history shows it).

        Raises RecordConflict (nothing written) when a record's condition fails, e.g. the
        Stripe event was applied already."""
        expiry = None if expires_at is None else timestamp(expires_at)
        promotion = self._promotion() if source in PAID_SOURCES else ()
        return self._change(
            user_id,
            plan=lambda account, entry_id, now: plan_credit(
                account, amount, lot_id=entry_id, created_at=now, source=source,
                expires_at=expiry, promotion=promotion),
            entry_type=entry_type,
            details={"metadata": metadata, "receipt_url": receipt_url},
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
            plan=lambda account, _id, _now: plan_clawback(account, amount),
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
        claim = adjust_claim(user_id, amount, reason, actor, allow_negative, idempotency_key)
        metadata: dict[str, Any] = {"reason": reason, "by": actor}
        if allow_negative:
            metadata["allow_negative"] = True
        return self._change(
            user_id,
            plan=lambda account, _id, _now: plan_adjustment_debit(account, amount,
                                                                  allow_negative),
            entry_type=EntryType.ADJUSTMENT,
            details={"metadata": metadata},
            claim=claim,
            status=201,
        )

    def _change(
        self,
        user_id: str,
        plan: Callable[[Account, str, str], Mutation],
        entry_type: EntryType,
        details: dict[str, Any],
        claim: IdempotencyClaim | None,
        status: int,
        records: EntryRecords = (),
    ) -> ChangeResult:
        if claim is not None:
            stored = self._store.get_idempotent_result(user_id, claim)
            if stored is not None:
                return self._replay(stored, claim)
        for attempt in range(MAX_ATTEMPTS):
            account = self.account(user_id)
            now = self._clock()
            entry_id = uuid.uuid4().hex
            mutation = plan(account, entry_id, timestamp(now))  # raises the 402s
            entry = LedgerEntry(
                id=entry_id,
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
                    user_id, mutation, entry, timestamp(now), record,
                    records=records(entry) if callable(records) else records,
                )
                return ChangeResult(status, body)
            except IdempotentReplay as replay:
                assert claim is not None
                return self._replay(replay.stored, claim)
            except StaleRead:
                self._backoff(attempt)
            except StoreUnavailable as exc:
                # Outcome unknown even after re-sending with the same token: do not
                # re-plan (a new entry id would apply it twice); the caller may retry
                # with its Idempotency-Key.
                raise ContentionTimeout(
                    "The ledger did not confirm the change; retry with the same "
                    "Idempotency-Key to apply it at most once."
                ) from exc
        raise ContentionTimeout("The account is busy; retry the request.")

    def earlier_result(self, user_id: str, claim: IdempotencyClaim | None) -> ChangeResult | None:
        """The stored result a change with this claim would replay (None: it would change
        something), so an operator is told up front that a retry changes nothing."""
        if claim is None:
            return None
        stored = self._store.get_idempotent_result(user_id, claim)
        return None if stored is None else self._replay(stored, claim)

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
        extra: Callable[[Account], Sequence[GuardedWrite]] | Sequence[GuardedWrite] = (),
        key_id: str = "",
        release_extra: Callable[[Hold], Sequence[GuardedWrite]] | None = None,
    ) -> Hold:
        """Reserve ``amount`` with one conditional write that also enforces the monthly
        cap and the per-minute rate limit. Raises 402/429; writes nothing then.

        ``extra``: more guarded item updates for the same transaction (e.g. an API
        key's limit), or a function of the fresh account read that plans them; a failed
        condition raises its ``error``."""
        for attempt in range(MAX_ATTEMPTS):
            now = self._clock()
            rate = None if rate_limit is None else rate_guard(account, now, rate_limit)
            writes = tuple(extra(account) if callable(extra) else extra)
            mutation = plan_reserve(account, amount, rate, writes)  # raises the 402s
            hold = Hold(
                id=hold_id_for(account.user_id, request_id),  # found again from the request id
                user_id=account.user_id,
                amount=amount,
                created_at=timestamp(now),
                request_id=request_id,
                model=model,
                key_id=key_id,
            )
            if release_extra is not None:
                hold = replace(hold, release_extra=tuple(release_extra(hold)))
            try:
                # A token per attempt: the hold id is the same on every attempt (it is
                # the request's), and DynamoDB refuses a token reused with other items.
                self._store.commit(
                    account.user_id, mutation, None, timestamp(now), hold_put=hold,
                    token=operation_token("reserve", hold.id, str(attempt), mutation.month,
                                          str(mutation.capped)),
                )
                return hold
            except StaleRead:
                self._backoff(attempt)
                account = self.account(account.user_id)
        raise ContentionTimeout("The account is busy; retry the request.")

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
        extra: Sequence[GuardedWrite] = (),
    ) -> Settled:
        """Charge ``cost`` (at most the hold), release the rest and write the usage entry,
        in one transaction without a guard on the balance.

        First the settlement is recorded on the hold (the outbox): from then on the
        charge is durable. If the transaction cannot commit now, the settle worker
        applies the recorded settlement later, exactly once (``pending``). ``extra``:
        guarded writes for the same transaction (e.g. an API key's spend), kept with
        the settlement so the worker applies the same ones."""
        now = self._clock()
        settlement = Settlement(
            entry_id=uuid.uuid4().hex,
            created_at=timestamp(now),
            cost=cost,
            provider=provider,
            model=model,
            tokens=tokens,
            metadata=metadata,
            extra=tuple(extra),
        )
        recorded = self._record(hold, settlement)
        if recorded is False:
            # The hold is gone without our settlement: the sweeper freed it (the request
            # outlived the sweeper's cutoff). Bill the answer from the balance instead.
            return self._charge_without_hold(hold, settlement)
        settled = self._apply(hold, settlement, account)
        # Neither the outbox nor the ledger took the write: keep trying the outbox.
        if settled.pending and recorded is None and \
                self._record(hold, settlement, attempts=RECORD_ATTEMPTS) is None:
            log.error("settlement not recorded", extra={"hold_id": hold.id,
                                                            "user_id": hold.user_id,
                                                            "cost": str(cost)})
        return settled

    def _record(self, hold: Hold, settlement: Settlement, attempts: int = 1) -> bool | None:
        """True: recorded; False: the hold is gone; None: the store did not answer."""
        for attempt in range(attempts):
            try:
                return self._store.record_settlement(hold, settlement)
            except Exception:  # any store failure: the settle may still commit
                log.warning("recording a settlement failed", exc_info=True,
                            extra={"hold_id": hold.id})
                if attempt < attempts - 1:
                    self._backoff(attempt + 4)
        return None

    def _apply(self, hold: Hold, settlement: Settlement, account: Account | None) -> Settled:
        entry = settlement_entry(hold, settlement)
        account = account or self.account(hold.user_id)
        for attempt in range(SETTLE_ATTEMPTS):
            mutation = plan_settle(account, hold, settlement.cost, settlement.extra)
            try:
                self._store.settle(hold, settlement, mutation)
                break
            except StaleRead:  # the month rolled over, or a cap was set or removed
                self._backoff(attempt)
                account = self.account(hold.user_id)
            except StoreUnavailable:
                log.warning("settle not confirmed; left to the settle worker",
                            extra={"hold_id": hold.id})
                return Settled(entry, pending=True)
            except HoldGone:
                log.error("settle found its hold gone and no entry", extra={"hold_id": hold.id})
                return Settled(entry, pending=True)
        else:
            return Settled(entry, pending=True)
        try:
            balance_after = self._store.stamp_balance_after(hold.user_id, entry)
        except Exception:  # committed; balance_after waits on the account
            log.warning("stamping balance_after failed", exc_info=True,
                        extra={"entry_id": entry.id})
            return Settled(entry)
        return Settled(replace(entry, balance_after=balance_after))

    def _charge_without_hold(self, hold: Hold, settlement: Settlement) -> Settled:
        log.error("hold gone before settle; charging the balance",
                  extra={"hold_id": hold.id, "user_id": hold.user_id})
        entry = settlement_entry(hold, settlement)
        try:
            result = self.debit_usage(
                hold.user_id,
                settlement.cost,
                provider=settlement.provider,
                model=settlement.model,
                tokens=settlement.tokens,
                metadata={**settlement.metadata, "hold_id": hold.id, "hold_lost": True},
                idempotency_key=f"hold-{hold.id}",
                # The marker names the entry this debit writes (its own id and time).
                records=lambda written: (hold_charged_record(hold, written),),
            )
        except RecordConflict:
            # Not freed by the sweeper but settled already (a retried settle): no charge.
            log.warning("hold charged already; settle ignored", extra={"hold_id": hold.id})
            return Settled(entry)
        return Settled(replace(entry, balance_after=Decimal(result.body["balance"])))

    def release(
        self,
        hold: Hold,
        account: Account | None = None,
        extra: Sequence[GuardedWrite] = (),
    ) -> bool:
        """Give a hold back in full. False if it was already settled or released.

        Raises HoldAnswered for a hold whose settlement is recorded: it is settled,
        never freed."""
        account = account or self.account(hold.user_id)
        for attempt in range(MAX_ATTEMPTS):
            try:
                self._store.commit(
                    hold.user_id,
                    plan_release(account, hold, tuple(extra or hold.release_extra)),
                    None,
                    timestamp(self._clock()),
                    hold_delete=hold,
                )
                return True
            except HoldGone:
                return False
            except StaleRead:
                self._backoff(attempt)
                account = self.account(hold.user_id)
        raise ContentionTimeout("The account is busy; retry the request.")

    def sweep_holds(self, max_age_seconds: int) -> SweepResult:
        """Release holds of requests that died before an answer (older than any live
        request can be); a hold whose answer is recorded is settled instead."""
        cutoff = timestamp(self._clock() - timedelta(seconds=max_age_seconds))
        released, settled = [], []
        for hold in self._store.holds_created_before(cutoff):
            try:
                if hold.settlement is None:
                    if self.release(hold):
                        released.append(hold)
                    continue
            except HoldAnswered as answered:
                hold = answered.hold
            assert hold.settlement is not None
            if not self._apply(hold, hold.settlement, None).pending:
                settled.append(hold)
        return SweepResult(released=released, settled=settled)

    def apply_pending_settlements(self, older_than_seconds: int) -> PendingReport:
        """The settle worker: commit every recorded settlement of a hold older than
        ``older_than_seconds`` (younger ones are still being settled by their request)."""
        now = self._clock()
        cutoff = timestamp(now - timedelta(seconds=older_than_seconds))
        applied = pending = old = oldest = 0
        for hold in self._store.settlements_recorded_before(cutoff):
            assert hold.settlement is not None
            recorded = datetime.strptime(hold.settlement.created_at, "%Y-%m-%dT%H:%M:%S.%fZ")
            age = int((now - recorded.replace(tzinfo=UTC)).total_seconds())
            oldest = max(oldest, age)
            old += age > 60
            if self._apply(hold, hold.settlement, None).pending:
                pending += 1
            else:
                applied += 1
        return PendingReport(applied=applied, pending=pending, older_than_minute=old,
                             oldest_seconds=oldest)

    # -- lots: expiry -------------------------------------------------------------------

    def expire_due_lots(self) -> ExpiryReport:
        """The expiry job: for each account with a due lot, remove what is left of it as
        one ``expiry`` entry, in a conditional transaction like every other change (the
        lot leaves the list in it, so a second run, or a concurrent one, finds nothing).

        A lot that a hold open at its expiry time may still be charged against (a hold
        created before ``expires_at``) is left spendable until those holds settle: the
        settle draws from it first, and the next run expires what is left. Likewise
        while expiring it would take ``available`` below zero (invariant 1)."""
        now = timestamp(self._clock())
        expired: list[LedgerEntry] = []
        deferred: list[ExpiringLot] = []
        tidied = 0
        for user_id in dict.fromkeys(self._store.accounts_with_expiry_before(now,
                                                                             inclusive=True)):
            done, waiting, tidy = self.expire_lots_of(user_id)
            expired.extend(done)
            deferred.extend(ExpiringLot(user_id, lot) for lot in waiting)
            tidied += tidy
        return ExpiryReport(expired=expired, deferred=deferred, tidied=tidied)

    def expire_lots_of(self, user_id: str) -> tuple[list[LedgerEntry], list[Lot], bool]:
        """Expire ``user_id``'s due lots, soonest first: (entries, lots deferred, whether
        the lot list was only tidied)."""
        entries: list[LedgerEntry] = []
        account = self.account(user_id)
        now = timestamp(self._clock())
        due = [lot for lot in account.current_lots if lot.due(now)]
        if not due:
            # The index said a lot was due but usage spent it: drop it, move the index on.
            if account.lots != account.materialized()[0] or account.lot_draw:
                self._tidy(account)
                return entries, [], True
            return entries, [], False
        holds = self._store.open_holds(user_id)
        for position, lot in enumerate(due):
            assert lot.expires_at is not None
            if any(hold.created_at < lot.expires_at for hold in holds):
                return entries, due[position:], False
            try:
                result = self._change(
                    user_id,
                    plan=functools.partial(_plan_expiry_of, lot.id),
                    entry_type=EntryType.EXPIRY,
                    details={"metadata": {"lot_id": lot.id, "lot_source": lot.source.value,
                                          "lot_amount": format_money(lot.amount),
                                          "expires_at": lot.expires_at}},
                    claim=None,
                    status=200,
                )
            except LotNotDue:
                continue  # expired by a concurrent run, or spent meanwhile
            except LotReserved:
                log.info("due lot reserved by requests in flight; expiry deferred",
                         extra={"user_id": user_id, "lot_id": lot.id})
                return entries, due[position:], False
            entries.append(entry_from_body(user_id, result.body))
        return entries, [], False

    def _tidy(self, account: Account) -> None:
        for attempt in range(MAX_ATTEMPTS):
            mutation = plan_lots_tidy(account)
            try:
                self._store.commit(
                    account.user_id, mutation, None, timestamp(self._clock()),
                    token=operation_token("lots-tidy", account.user_id,
                                          str(account.lots_version)))
                return
            except StaleRead:
                self._backoff(attempt)
                account = self.account(account.user_id)
        raise ContentionTimeout("The account is busy; retry.")

    def lots_expiring_before(self, before: datetime) -> list[ExpiringLot]:
        """Every lot with something left that expires before ``before`` (e.g. now + 7
        days for the ``credits.expiring`` alert), remaining as of now, soonest first per
        account. Reads only accounts the LotsByExpiry index lists."""
        cutoff = timestamp(before)
        found: list[ExpiringLot] = []
        for user_id in dict.fromkeys(self._store.accounts_with_expiry_before(cutoff)):
            account = self._store.get_account(user_id)
            if account is None:
                continue
            found.extend(ExpiringLot(user_id, lot) for lot in account.current_lots
                         if lot.expires_at is not None and lot.expires_at < cutoff)
        return found

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


def _plan_expiry_of(lot_id: str, account: Account, _entry_id: str, now: str) -> Mutation:
    return plan_expiry(account, lot_id, now)


def entry_from_body(user_id: str, body: dict[str, Any]) -> LedgerEntry:
    """The entry a change result carries (its wire view), back as a LedgerEntry."""
    view = body["entry"]
    return LedgerEntry(
        id=view["id"], user_id=user_id, created_at=view["created_at"],
        type=EntryType(view["type"]), amount=Decimal(view["amount"]),
        balance_after=Decimal(view["balance_after"]), metadata=view["metadata"],
    )


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


__all__ = ["ZERO", "ChangeResult", "HistoryPage", "LedgerService", "Settled"]


def grant_claim(
    user_id: str, amount: Decimal, entry_type: EntryType, reason: str, actor: str,
    idempotency_key: str | None, *, expires_at: datetime | None = None,
    expires_in_days: int | None = None,
) -> IdempotencyClaim | None:
    """The idempotency claim of an operator's grant (None without a key). The expiry
    counts as sent (days, not the date they give), so a retry matches."""
    if not idempotency_key:
        return None
    request: dict[str, Any] = {"user": user_id, "amount": str(amount),
                               "type": entry_type.value, "reason": reason}
    if expires_at is not None:
        request["expires_at"] = timestamp(expires_at) if expires_at.tzinfo else str(expires_at)
    if expires_in_days is not None:
        request["expires_in_days"] = expires_in_days
    return IdempotencyClaim(
        scope=f"admin-grant#{actor}",
        key=idempotency_key,
        fingerprint=fingerprint(request),
    )


def adjust_claim(
    user_id: str, amount: Decimal, reason: str, actor: str, allow_negative: bool,
    idempotency_key: str | None,
) -> IdempotencyClaim | None:
    """The idempotency claim of an operator's downward adjustment of ``amount`` (> 0)."""
    if not idempotency_key:
        return None
    return IdempotencyClaim(
        scope=f"admin-adjust#{actor}",
        key=idempotency_key,
        fingerprint=fingerprint(
            {"user": user_id, "amount": str(-amount), "reason": reason,
             "allow_negative": allow_negative}
        ),
    )
