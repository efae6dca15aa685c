"""What the services need from storage. Implemented by ``llmcredits.dal``."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Protocol

from llmcredits.domain.ledger import (
    Account,
    Hold,
    IdempotencyClaim,
    LedgerEntry,
    Mutation,
    RecordWrite,
    Settlement,
    Tier,
)


class StaleRead(Exception):
    """A guard failed because the account changed since it was read: re-read and retry."""


class RecordConflict(Exception):
    """A RecordWrite's condition failed: it exists already, or changed since read."""

    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


class HoldGone(Exception):
    """The hold was already settled or released (e.g. by the sweeper)."""


class HoldAnswered(Exception):
    """A release was refused: the hold has a recorded settlement (its answer exists)."""

    def __init__(self, hold: Hold) -> None:
        super().__init__(hold.id)
        self.hold = hold


class StoreUnavailable(Exception):
    """The store did not confirm a write (errors, timeouts) after retrying it.

    The write may or may not have been applied; re-sending the same transaction (same
    ClientRequestToken) is safe."""


@dataclass(frozen=True)
class StoredResponse:
    """A chat response kept for an Idempotency-Key (None body: too large to keep)."""

    status: int
    content_type: str
    body: str | None
    headers: dict[str, str]


@dataclass(frozen=True)
class ResponseClaim:
    """What claiming a chat Idempotency-Key found: nothing (claimed now), a request
    still running, or the finished response."""

    fingerprint: str
    running: bool
    response: StoredResponse | None = None


@dataclass(frozen=True)
class StoredResult:
    """The first result of an idempotent request, returned again on a retry."""

    fingerprint: str
    status: int
    body: dict[str, Any]


class IdempotentReplay(Exception):
    def __init__(self, stored: StoredResult) -> None:
        super().__init__("idempotent replay")
        self.stored = stored


@dataclass(frozen=True)
class EntryPage:
    entries: list[LedgerEntry]
    last_key: str | None


class LedgerStore(Protocol):
    def get_account(self, user_id: str) -> Account | None: ...

    def create_account(self, account: Account) -> bool:
        """Insert if absent; False if it already existed."""
        ...

    def roll_over(self, before: Account, after: Account) -> None:
        """Move to a new month if ``before`` is still current; raises StaleRead."""
        ...

    def commit(
        self,
        user_id: str,
        mutation: Mutation,
        entry: LedgerEntry | None,
        now: str,
        idempotency: tuple[IdempotencyClaim, StoredResult] | None = None,
        hold_put: Hold | None = None,
        hold_delete: Hold | None = None,
        records: Sequence[RecordWrite] = (),
        token: str | None = None,
    ) -> None:
        """Apply ``mutation`` and write ``entry`` and the idempotency record atomically.

        ``hold_put`` opens a hold, ``hold_delete`` closes one (fails with HoldGone if closed,
        HoldAnswered when releasing a hold with a settlement). ``records`` are written too
        (RecordConflict when one's condition fails). ``token`` is the transaction's
        ClientRequestToken (default: derived from the entry, hold or record written).
        Raises StaleRead when a guard fails, IdempotentReplay when the key was used and
        StoreUnavailable when the outcome is unknown after retries.
        """
        ...

    def record_settlement(self, hold: Hold, settlement: Settlement) -> bool:
        """Write ``settlement`` onto the open hold (the outbox). False if the hold is gone."""
        ...

    def settle(self, hold: Hold, settlement: Settlement, mutation: Mutation) -> None:
        """Commit a recorded settlement: the account change (without a balance guard),
        the usage entry and the hold's deletion, in one transaction whose token is
        derived from the hold. Raises HoldGone if the hold is gone and the entry is not
        in the ledger, StaleRead or StoreUnavailable."""
        ...

    def stamp_balance_after(self, user_id: str, entry: LedgerEntry) -> Decimal:
        """The exact balance after a settled ``entry``, copied onto the entry."""
        ...

    def settlements_recorded_before(self, cutoff: str) -> list[Hold]:
        """Open holds created before ``cutoff`` that carry a settlement."""
        ...

    def claim_response(
        self, user_id: str, key: str, fingerprint: str, lease_seconds: int
    ) -> ResponseClaim | None:
        """Claim a chat Idempotency-Key: None if claimed now, else what holds it."""
        ...

    def finish_response(
        self, user_id: str, key: str, fingerprint: str, response: StoredResponse
    ) -> None: ...

    def drop_response_claim(self, user_id: str, key: str) -> None: ...

    def set_monthly_cap(self, before: Account, after: Account) -> None: ...

    def set_tier(self, user_id: str, tier: Tier, now: str) -> None: ...

    def get_idempotent_result(self, user_id: str, claim: IdempotencyClaim) -> StoredResult | None:
        ...

    def sum_open_holds(self, user_id: str) -> Decimal: ...

    def open_holds(self, user_id: str) -> list[Hold]:
        """The user's open holds (a consistent read of the partition)."""
        ...

    def accounts_with_expiry_before(self, cutoff: str, *, inclusive: bool = False) -> list[str]:
        """Users whose soonest lot expiry is before (or at) ``cutoff``; may be stale."""
        ...

    def get_hold(self, user_id: str, hold_id: str) -> Hold | None: ...

    def get_record(self, key: str, owner: str | None) -> dict[str, Any] | None: ...

    def put_record(
        self, key: str, owner: str | None, values: dict[str, Any], *, only_new: bool = False
    ) -> bool: ...

    def holds_created_before(self, cutoff: str) -> list[Hold]: ...

    def list_entries(
        self, user_id: str, limit: int, after_key: str | None, entry_type: str | None,
        key_id: str | None = None,
    ) -> EntryPage: ...



class GenerationReads(Protocol):
    """The consistent single-item reads GET /generations needs (no query, no scan)."""

    def get_hold(self, user_id: str, hold_id: str) -> Hold | None: ...

    def get_record(self, key: str, owner: str | None) -> dict[str, Any] | None: ...

    def get_entry(self, user_id: str, created_at: str, entry_id: str) -> LedgerEntry | None: ...
