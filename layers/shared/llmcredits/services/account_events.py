"""Account changes from the table's stream, fanned out to the watchers that react to
them (alerts, auto top-up). The seam between the alerts and auto top-up work: the
stream consumer builds one ``AccountChange`` per account record and calls ``handle``."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from llmcredits.domain.ledger import Account


@dataclass(frozen=True)
class AccountChange:
    user_id: str
    old: Account | None      # llmcredits.domain.ledger.Account from OldImage
    new: Account | None      # from NewImage
    event_id: str            # the stream record's eventID (stable across redelivery)
    at: datetime             # ApproximateCreationDateTime


class AccountWatcher(Protocol):
    def on_account_change(self, change: AccountChange) -> None:
        """Must be idempotent: a batch may be delivered twice."""
        ...


class AccountEventsService:
    def __init__(self, watchers: Sequence[AccountWatcher]) -> None:
        self._watchers = tuple(watchers)

    def handle(self, change: AccountChange) -> None:
        for watcher in self._watchers:
            watcher.on_account_change(change)
