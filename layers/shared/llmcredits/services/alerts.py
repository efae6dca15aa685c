"""Alerts: settings (GET/PUT /credits/alerts), detection from account changes, and
delivery to the EventBridge bus and the user's signed webhook.

Flow: the stream consumer calls :class:`AlertWatcher` for each account change; events it
detects are recorded in the table's outbox (one item per event id, only if absent) and
tried at once; whatever fails stays due on the ``AlertDeliveries`` index, where the
scheduled deliverer (:meth:`AlertService.deliver_due`) retries it with backoff
(1, 2, 4 ... minutes, at most 3 h apart) until 24 h after the event, then gives up.
Each attempt first takes a short lease on the event, so the stream consumer and the
deliverer never POST the same event at the same time.

The signing secret (``whsec_`` + 32 random bytes) is returned by PUT when it is made
(first webhook_url, or ``rotate_secret``) and stored only sealed: KMS envelope + Fernet
with the encryption context ``{user_id, purpose: "webhook-signing"}``.
"""

from __future__ import annotations

import base64
import json
import logging
import secrets
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Protocol

from llmcredits.dal.dynamodb_alerts import DynamoAlertStore, OutboxEvent, SealedSecret
from llmcredits.domain.alerts import (
    ALERTS_FLAG,
    EVENT_TYPES,
    EXPIRING_NOTICE,
    AlertEvent,
    AlertSettings,
    ExpiringLot,
    InvalidSetting,
    check_cap_percent,
    check_webhook_url,
    detect,
    event_id,
    expiring_event,
    initial_low_state,
    may_matter,
    next_attempt,
)
from llmcredits.domain.ledger import Account, timestamp
from llmcredits.errors import InvalidRequest
from llmcredits.money import format_money
from llmcredits.services.account_events import AccountChange
from llmcredits.webhooks import EVENT_ID_HEADER, SIGNATURE_HEADER, signature_header

if TYPE_CHECKING:
    from llmcredits.dal.events import EventPublisher
    from llmcredits.dal.kms_envelope import Envelope
    from llmcredits.services.ledger import LedgerService

log = logging.getLogger(__name__)

SECRET_PREFIX = "whsec_"  # noqa: S105 - a prefix, not a secret
#: The KMS encryption context's ``purpose`` of webhook signing secrets.
SECRET_PURPOSE = "webhook-signing"  # noqa: S105 - a KMS context value
#: An attempt holds its event this long (longer than one POST's timeout).
LEASE_SECONDS = 30
DUE_PER_SHARD = 25
USER_AGENT = "llmcredits-webhooks/1"


class WebhookSender(Protocol):
    def post(self, url: str, body: bytes, headers: dict[str, str]) -> int:
        """The HTTP status of the answer; raises when there was none."""
        ...


class ExpiringLots(Protocol):
    """The ledger's "lots expiring before T" query (lots with a remainder only)."""

    def lots_expiring_before(self, before: datetime) -> Iterable[ExpiringLot]: ...


def new_secret() -> str:
    return SECRET_PREFIX + base64.urlsafe_b64encode(secrets.token_bytes(32)).decode().rstrip("=")


def utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class AlertsView:
    low_balance: str | None
    cap_percent: list[int]
    webhook_url: str | None
    webhook_secret_set: bool
    updated_at: str | None
    event_types: tuple[str, ...] = EVENT_TYPES

    def as_dict(self) -> dict[str, Any]:
        return {"low_balance": self.low_balance, "cap_percent": self.cap_percent,
                "webhook_url": self.webhook_url, "webhook_secret_set": self.webhook_secret_set,
                "updated_at": self.updated_at, "event_types": list(self.event_types)}


@dataclass
class DeliveryReport:
    delivered: int = 0  # POSTed and answered 2xx
    published: int = 0  # on the bus only (no webhook configured)
    retrying: int = 0
    failed: int = 0  # given up after 24 h
    busy: int = 0  # another attempt held the event

    def add(self, result: str) -> None:
        setattr(self, result, getattr(self, result) + 1)


def _view(settings: AlertSettings, secret_set: bool, updated_at: str | None) -> AlertsView:
    return AlertsView(
        low_balance=None if settings.low_balance is None else format_money(settings.low_balance),
        cap_percent=list(settings.cap_percent), webhook_url=settings.webhook_url,
        webhook_secret_set=secret_set, updated_at=updated_at)


def _outbox(event: AlertEvent) -> OutboxEvent:
    return OutboxEvent(event.user_id, event.id, event.type, event.created, event.body(), 0,
                       False, "pending")


class AlertService:
    def __init__(
        self,
        store: DynamoAlertStore,
        ensure_account: Callable[[str], Account],
        envelope: Callable[[], Envelope],
        publisher: Callable[[], EventPublisher],
        sender: Callable[[], WebhookSender],
        *,
        allow_loopback_http: bool = False,
        clock: Callable[[], datetime] = utcnow,
        make_secret: Callable[[], str] = new_secret,
    ) -> None:
        self.store = store
        self._ensure_account = ensure_account
        self._envelope = envelope
        self._publisher = publisher
        self._sender = sender
        self._allow_loopback_http = allow_loopback_http
        self._clock = clock
        self._make_secret = make_secret

    # -- settings ------------------------------------------------------------------
    def settings(self, user_id: str) -> AlertsView:
        stored = self.store.get(user_id)
        if stored is None:
            return _view(AlertSettings(), False, None)
        return _view(stored.settings, stored.sealed is not None, stored.updated_at)

    def update(self, user_id: str, low_balance: Decimal | None, cap_percent: list[int],
               webhook_url: str | None, rotate_secret: bool = False
               ) -> tuple[AlertsView, str | None]:
        """Replace the settings; the second value is a new signing secret (shown once)."""
        try:
            settings = AlertSettings(
                low_balance=low_balance,
                cap_percent=check_cap_percent(cap_percent),
                webhook_url=None if webhook_url is None
                else check_webhook_url(webhook_url, self._allow_loopback_http),
            )
        except InvalidSetting as exc:
            raise InvalidRequest(f"{exc.param}: {exc}", param=exc.param) from None
        if rotate_secret and settings.webhook_url is None:
            raise InvalidRequest("rotate_secret needs a webhook_url", param="rotate_secret")
        account = self._ensure_account(user_id)
        current = self.store.get(user_id)
        sealed = current.sealed if current is not None else None
        secret: str | None = None
        if settings.webhook_url is None:
            sealed = None  # a later webhook gets a new secret
        elif sealed is None or rotate_secret:
            secret = self._make_secret()
            sealed = self._seal(user_id, secret)
        if current is not None and current.settings.low_balance == settings.low_balance:
            low = current.low
        else:
            low = initial_low_state(settings, account)
        now = timestamp(self._clock())
        self.store.put(user_id, settings, low, sealed, now)
        return _view(settings, sealed is not None, now if settings.configured else None), secret

    def _seal(self, user_id: str, secret: str) -> SealedSecret:
        sealed = self._envelope().seal(secret, user_id=user_id, provider=SECRET_PURPOSE)
        return SealedSecret(sealed.token, sealed.encrypted_data_key, sealed.kms_key_id)

    def _open(self, user_id: str, sealed: SealedSecret) -> str:
        return self._envelope().open(sealed.token, sealed.encrypted_data_key, user_id=user_id,
                                     provider=SECRET_PURPOSE)

    # -- recording -------------------------------------------------------------------
    def record(self, event: AlertEvent, state: tuple[bool, bool] | None = None) -> bool:
        """Put ``event`` in the outbox (due now) unless it is there; True when new."""
        return self.store.record(event, timestamp(self._clock()), state)

    def emit(self, user_id: str, event_type: str, detail: dict[str, Any],
             source_id: str, *, deliver: bool = True) -> bool:
        """An alert raised by another service (``topup.failed``): recorded once per
        (user, type, ``source_id``), published and POSTed like every alert (with
        ``deliver=False`` by the deliverer only, within a minute)."""
        if event_type not in EVENT_TYPES:
            raise ValueError(f"unknown alert type {event_type!r}")
        event = AlertEvent(event_id(user_id, event_type, source_id), event_type, user_id,
                           int(self._clock().timestamp()), dict(detail))
        recorded = self.record(event)
        if recorded and deliver:
            self.deliver_now([event])
        return recorded

    def warn_expiring(self, lots: ExpiringLots, *, deliver: bool = True) -> int:
        """Scheduled: ``credits.expiring`` once per lot that expires within 7 days (with
        ``deliver=False`` recorded only: the deliverer sends it within a minute)."""
        now = self._clock()
        sent = 0
        for lot in lots.lots_expiring_before(now + EXPIRING_NOTICE):
            if lot.remaining <= 0 or lot.expires_at <= timestamp(now):
                continue
            event = expiring_event(lot, now)
            if self.record(event):
                sent += 1
                if deliver:
                    self.deliver_now([event])
        return sent

    # -- delivery --------------------------------------------------------------------
    def deliver_now(self, events: Iterable[AlertEvent]) -> None:
        """A first attempt right after recording; a failure stays due for the deliverer."""
        for event in events:
            try:
                self.attempt(_outbox(event))
            except Exception:  # the event is recorded and due: the deliverer retries it
                log.exception("first delivery attempt failed", extra={"event_id": event.id})

    def deliver_due(self, per_shard: int = DUE_PER_SHARD) -> DeliveryReport:
        """Scheduled: one attempt for every event whose delivery is due."""
        report = DeliveryReport()
        from llmcredits.dal.dynamodb_alerts import DELIVERY_SHARDS

        for shard in range(DELIVERY_SHARDS):
            for event in self.store.due(shard, timestamp(self._clock()), per_shard):
                report.add(self.attempt(event))
        return report

    def attempt(self, event: OutboxEvent) -> str:
        """One delivery attempt: the bus (once), then the webhook if one is set.
        Returns "delivered", "published", "retrying", "failed" or "busy"."""
        now = self._clock()
        epoch = int(now.timestamp())
        if not self.store.claim(event.user_id, event.id, epoch, LEASE_SECONDS):
            return "busy"
        attempts = event.attempts + 1
        try:
            if not event.published:
                self._publisher().publish(event.type, event.user_id, json.loads(event.body),
                                          event.id)
                self.store.mark_published(event.user_id, event.id)
            stored = self.store.get(event.user_id)
            if stored is None or stored.settings.webhook_url is None or stored.sealed is None:
                self.store.finish(event.user_id, event.id, "published", attempts, "no webhook")
                return "published"
            secret = self._open(event.user_id, stored.sealed)
            headers = {
                "Content-Type": "application/json",
                "User-Agent": USER_AGENT,
                EVENT_ID_HEADER: event.id,
                SIGNATURE_HEADER: signature_header(secret, event.body, epoch),
            }
            del secret
            status = self._sender().post(stored.settings.webhook_url, event.body, headers)
            if 200 <= status < 300:
                self.store.finish(event.user_id, event.id, "delivered", attempts,
                                  f"HTTP {status}")
                return "delivered"
            last = f"HTTP {status}"
        except Exception as exc:  # network, KMS, the bus: all retried
            last = type(exc).__name__
        created = datetime.fromtimestamp(event.created, UTC)
        due = next_attempt(created, now, attempts)
        if due is None:
            log.warning("alert delivery given up", extra={
                "event_id": event.id, "user_id": event.user_id, "attempts": attempts,
                "last_result": last})
            self.store.finish(event.user_id, event.id, "failed", attempts, last)
            return "failed"
        log.info("alert delivery failed; retrying", extra={
            "event_id": event.id, "attempts": attempts, "last_result": last,
            "retry_in_s": int((due - now) / timedelta(seconds=1))})
        self.store.reschedule(event.user_id, event.id, attempts, timestamp(due), last)
        return "retrying"


class AlertWatcher:
    """balance.low / balance.recovered / cap.threshold from account changes (seam.md)."""

    def __init__(self, service: AlertService) -> None:
        self._service = service

    def on_account_change(self, change: AccountChange) -> None:
        new = change.new
        if new is None or ALERTS_FLAG not in new.flags or not may_matter(change.old, new):
            return
        stored = self._service.store.get(change.user_id)
        if stored is None:
            return
        detected = detect(stored.settings, stored.low, change.old, new, change.event_id,
                          change.at)
        recorded: list[AlertEvent] = []
        for event in detected.events:
            state = (stored.low, detected.low) if event is detected.state_event else None
            if self._service.record(event, state):
                recorded.append(event)
        self._service.deliver_now(recorded)


class QueuedAlerts:
    """The AlertSink of functions that should not POST webhooks or hold KMS rights (the
    Stripe webhook and the auto top-up worker raise ``topup.failed``): the alert is
    recorded in the outbox and the deliverer sends it within a minute."""

    def __init__(self, service: AlertService) -> None:
        self._service = service

    def emit(self, user_id: str, event_type: str, detail: dict[str, Any],
             source_id: str) -> bool:
        return self._service.emit(user_id, event_type, detail, source_id, deliver=False)


class LedgerExpiringLots:
    """The ExpiringLots port over the ledger's ``lots_expiring_before``."""

    def __init__(self, ledger: LedgerService) -> None:
        self._ledger = ledger

    def lots_expiring_before(self, before: datetime) -> list[ExpiringLot]:
        return [ExpiringLot(found.user_id, found.lot.id, found.lot.remaining,
                            found.lot.expires_at)
                for found in self._ledger.lots_expiring_before(before)
                if found.lot.expires_at is not None]
