"""Account changes from the table's stream, handed to the watchers that react to them.

The ``AccountEventsFunction`` stream consumer turns each account item's stream record
into an :class:`AccountChange` and calls :meth:`AccountEventsService.handle`; every
watcher (alerts, auto top-up) gets every change and must be idempotent: a batch may be
delivered twice. Records of one account arrive in order (one item, one shard), and the
consumer stops at the first failure of a batch so a retry keeps that order.

Watchers decide from the account's ``flags`` whether they need to read anything, so
accounts without alerts or auto top-up cost no extra read.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from llmcredits.domain.ledger import Account

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AccountChange:
    user_id: str
    old: Account | None  # llmcredits.domain.ledger.Account from OldImage
    new: Account | None  # from NewImage
    event_id: str  # the stream record's eventID (stable across redelivery)
    at: datetime  # ApproximateCreationDateTime


class AccountWatcher(Protocol):
    def on_account_change(self, change: AccountChange) -> None:
        """React to one change; must be idempotent (a batch may be delivered twice)."""
        ...


class AccountEventsService:
    def __init__(self, watchers: Sequence[AccountWatcher]) -> None:
        self._watchers = tuple(watchers)

    def handle(self, change: AccountChange) -> None:
        """Call each watcher; the first failure is raised (the record is retried, and
        the watchers that already ran see it again, harmlessly)."""
        for watcher in self._watchers:
            watcher.on_account_change(change)
