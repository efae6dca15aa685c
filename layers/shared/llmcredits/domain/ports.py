"""What the services need from storage. Implemented by ``llmcredits.dal``."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Protocol

from llmcredits.domain.api_keys import KeyWrite
from llmcredits.domain.ledger import (
    Account,
    Hold,
    IdempotencyClaim,
    LedgerEntry,
    Mutation,
    RecordWrite,
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
        key_write: KeyWrite | None = None,
    ) -> None:
        """Apply ``mutation`` and write ``entry`` and the idempotency record atomically.

        ``hold_put`` opens a hold, ``hold_delete`` closes one (fails with HoldGone if closed).
        ``records`` are written too (RecordConflict when one's condition fails).
        ``key_write`` updates the API key's budget in the same transaction (StaleRead).
        Raises StaleRead when a guard fails and IdempotentReplay when the key was used.
        """
        ...

    def set_monthly_cap(self, before: Account, after: Account) -> None: ...

    def set_tier(self, user_id: str, tier: Tier, now: str) -> None: ...

    def get_idempotent_result(self, user_id: str, claim: IdempotencyClaim) -> StoredResult | None:
        ...

    def sum_open_holds(self, user_id: str) -> Decimal: ...

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

