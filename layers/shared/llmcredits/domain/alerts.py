"""Alerts: the settings, what an account change means, and the delivery schedule.

Pure values and functions (no AWS). Detection reads an account item's old and new
stream images:

* ``balance.low``: ``available`` drops below ``low_balance`` while the alert is not
  already "low". The state (``low``) is stored with the settings and flipped in the same
  write that records the event, so a crossing emits once however many concurrent
  requests cross it, and a balance hovering at the threshold (a hold taking it under,
  its settle giving part back) does not flap.
* ``balance.recovered``: while "low", money comes in (the balance goes up: a purchase,
  bonus, refund, top-up) and ``available`` is back at or above ``low_balance``. A
  released hold alone does not recover the alert (that is the flapping above).
* ``cap.threshold``: ``month_spent`` reaches ``percent`` % of ``monthly_cap``; the event
  id is made of the user, month and percent, so it is emitted once per threshold per month.

Event ids are deterministic (stream record id + type, or user + month + percent), so a
redelivered stream batch records nothing new.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any
from urllib.parse import urlsplit

from llmcredits.domain.ledger import Account
from llmcredits.money import format_money

#: Account flag: the account has alert settings (watchers skip accounts without it).
ALERTS_FLAG = "alerts"

BALANCE_LOW = "balance.low"
BALANCE_RECOVERED = "balance.recovered"
CAP_THRESHOLD = "cap.threshold"
TOPUP_FAILED = "topup.failed"
CREDITS_EXPIRING = "credits.expiring"
EVENT_TYPES = (BALANCE_LOW, BALANCE_RECOVERED, CAP_THRESHOLD, TOPUP_FAILED, CREDITS_EXPIRING)

MAX_THRESHOLDS = 10
MAX_URL_LENGTH = 2048
#: How long a failing webhook is retried, counted from the event's creation.
RETRY_WINDOW = timedelta(hours=24)
#: Delay before attempt n+1 after n failed attempts: 1, 2, 4, ... minutes, at most 3 h.
FIRST_RETRY = timedelta(minutes=1)
MAX_RETRY_DELAY = timedelta(hours=3)
#: credits.expiring is sent this long before a lot expires.
EXPIRING_NOTICE = timedelta(days=7)


class InvalidSetting(ValueError):
    def __init__(self, message: str, param: str) -> None:
        super().__init__(message)
        self.param = param


@dataclass(frozen=True)
class AlertSettings:
    low_balance: Decimal | None = None
    cap_percent: tuple[int, ...] = ()
    webhook_url: str | None = None

    @property
    def configured(self) -> bool:
        return (self.low_balance is not None or bool(self.cap_percent)
                or self.webhook_url is not None)


def check_cap_percent(values: list[int]) -> tuple[int, ...]:
    if len(values) > MAX_THRESHOLDS:
        raise InvalidSetting(f"at most {MAX_THRESHOLDS} thresholds", "cap_percent")
    for value in values:
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 100:
            raise InvalidSetting("each threshold must be an integer 1..100", "cap_percent")
    if len(set(values)) != len(values):
        raise InvalidSetting("thresholds must be unique", "cap_percent")
    return tuple(sorted(values))


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_webhook_url(url: str, allow_loopback_http: bool) -> str:
    """``https://`` anywhere; ``http://`` only to a loopback host and only when allowed
    (the local stack). No credentials in the URL, no fragment."""
    if len(url) > MAX_URL_LENGTH:
        raise InvalidSetting(f"at most {MAX_URL_LENGTH} characters", "webhook_url")
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        parts.port  # noqa: B018 - raises ValueError for a bad port
    except ValueError:
        raise InvalidSetting("not a valid URL", "webhook_url") from None
    if not host:
        raise InvalidSetting("the URL needs a host", "webhook_url")
    if parts.username or parts.password:
        raise InvalidSetting("the URL must not carry credentials", "webhook_url")
    if parts.fragment:
        raise InvalidSetting("the URL must not have a fragment", "webhook_url")
    if parts.scheme == "https":
        return url
    if parts.scheme == "http" and allow_loopback_http and _is_loopback(host):
        return url
    if parts.scheme == "http" and _is_loopback(host):
        raise InvalidSetting("http:// is allowed only to a loopback host in the local stack; "
                             "use https://", "webhook_url")
    raise InvalidSetting("the webhook URL must be https://", "webhook_url")


def event_id(*parts: str) -> str:
    return "evt_" + hashlib.sha256("\x1f".join(parts).encode()).hexdigest()[:32]


@dataclass(frozen=True)
class AlertEvent:
    """One alert, as published to the bus and POSTed to the webhook (``payload``)."""

    id: str
    type: str
    user_id: str
    created: int  # unix seconds
    data: dict[str, Any] = field(default_factory=dict)

    def payload(self) -> dict[str, Any]:
        return {"id": self.id, "object": "event", "type": self.type, "created": self.created,
                "user_id": self.user_id, "data": self.data}

    def body(self) -> bytes:
        """The exact bytes that are signed and sent (stored once, sent unchanged)."""
        return json.dumps(self.payload(), sort_keys=True, separators=(",", ":")).encode()


@dataclass(frozen=True)
class Detected:
    events: tuple[AlertEvent, ...]
    low: bool  # the balance alert's state after this change
    # The event that flips the state (written together with the state), if any.
    state_event: AlertEvent | None = None


def _balance_data(account: Account, low: Decimal) -> dict[str, Any]:
    return {"available": format_money(account.available), "balance": format_money(account.balance),
            "low_balance": format_money(low)}


def _cap_reached(account: Account, percent: int) -> bool:
    if account.monthly_cap is None:
        return False
    return account.month_spent * 100 >= account.monthly_cap * percent


def detect(settings: AlertSettings, low: bool, old: Account | None, new: Account | None,
           record_id: str, at: datetime) -> Detected:
    """The events one account change emits, given the alert's current ``low`` state."""
    if new is None:
        return Detected((), low)
    created = int(at.astimezone(UTC).timestamp())
    events: list[AlertEvent] = []
    state_event: AlertEvent | None = None
    threshold = settings.low_balance
    if threshold is not None:
        if not low and new.available < threshold:
            state_event = AlertEvent(event_id(record_id, BALANCE_LOW), BALANCE_LOW,
                                     new.user_id, created, _balance_data(new, threshold))
            low = True
        elif (low and old is not None and new.balance > old.balance
              and new.available >= threshold):
            state_event = AlertEvent(event_id(record_id, BALANCE_RECOVERED), BALANCE_RECOVERED,
                                     new.user_id, created, _balance_data(new, threshold))
            low = False
    for percent in settings.cap_percent:
        if not _cap_reached(new, percent):
            continue
        if old is not None and old.month == new.month and _cap_reached(old, percent):
            continue
        assert new.monthly_cap is not None
        events.append(AlertEvent(
            event_id(new.user_id, CAP_THRESHOLD, new.month, str(percent)), CAP_THRESHOLD,
            new.user_id, created,
            {"month": new.month, "percent": percent,
             "month_spent": format_money(new.month_spent),
             "monthly_cap": format_money(new.monthly_cap),
             "threshold": format_money(new.monthly_cap * percent / 100)}))
    if state_event is not None:
        events.insert(0, state_event)
    return Detected(tuple(events), low, state_event)


def initial_low_state(settings: AlertSettings, account: Account) -> bool:
    """The balance alert's state when settings are saved: already low means no
    ``balance.low`` until it has recovered once."""
    return settings.low_balance is not None and account.available < settings.low_balance


def may_matter(old: Account | None, new: Account | None) -> bool:
    """False when nothing an alert looks at changed (e.g. a rate counter): no read."""
    if old is None or new is None:
        return new is not None
    return (old.available, old.balance, old.month, old.month_spent, old.monthly_cap) != (
        new.available, new.balance, new.month, new.month_spent, new.monthly_cap)


def retry_delay(failed_attempts: int) -> timedelta:
    """Wait after ``failed_attempts`` (>= 1) failures: 1, 2, 4 ... minutes, at most 3 h."""
    exponent = min(max(failed_attempts - 1, 0), 16)
    return min(FIRST_RETRY * (2 ** exponent), MAX_RETRY_DELAY)


def next_attempt(created: datetime, now: datetime, failed_attempts: int) -> datetime | None:
    """When to try again, or None: the 24 h window is over (give up)."""
    due = now + retry_delay(failed_attempts)
    if due > created + RETRY_WINDOW:
        return None
    return due


@dataclass(frozen=True)
class ExpiringLot:
    """A lot that expires soon (from the ledger's "lots expiring before T" query)."""

    user_id: str
    lot_id: str
    remaining: Decimal
    expires_at: str  # ISO timestamp


def expiring_event(lot: ExpiringLot, now: datetime) -> AlertEvent:
    return AlertEvent(
        event_id(lot.user_id, CREDITS_EXPIRING, lot.lot_id, lot.expires_at), CREDITS_EXPIRING,
        lot.user_id, int(now.timestamp()),
        {"lot_id": lot.lot_id, "remaining": format_money(lot.remaining),
         "expires_at": lot.expires_at})
