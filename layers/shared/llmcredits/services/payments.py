"""Credit purchases with Stripe Checkout, and the webhook that lands each one exactly once.

Pure use cases over ``LedgerService`` and a small ``PaymentProvider`` port (implemented
by ``llmcredits.dal.stripe_checkout``); no boto3 and no stripe import here.

Exactly once (DESIGN invariant 3). Stripe retries for days, may deliver an event twice,
concurrently, or out of order, and one Checkout Session may produce both
``checkout.session.completed`` and ``checkout.session.async_payment_succeeded``. Every
money change carries its records *in the same DynamoDB transaction as its ledger entry*
(``RecordWrite``), so "credited" and "recorded as credited" cannot come apart:

- ``purchase:<cs id>`` (user partition): written by POST /credits/purchase before the
  checkout URL is returned. Only a session with this record, for the same user, amount
  and currency, is credited; anything else (a Payment Link, another integration on the
  same Stripe account naming some user in ``client_reference_id``) is acknowledged with
  200, logged and counted (``unknown_payment_ignored``).
- ``stripe-event:<evt id>`` (user partition, must not exist): one event, one change.
- ``checkout-session:<cs id>`` (user partition, must not exist): one session, one credit.
- ``payment-intent:<pi id>`` (global, must not exist, written by the credit): one payment,
  one credit, and state 0 of the charge (user, session, amount). Refund and dispute
  events carry only the payment intent, so this is how they find the purchase.
- ``charge-state:<pi id>:<n>`` (global, must not exist): state n of the charge
  (``domain.payment_charges.ChargeState``: refunded total, each dispute's status, what
  has been clawed back). Each event builds state n+1 from state n; "must not exist"
  makes that a compare-and-swap, and a state that moves money is written with its
  ledger entry. The clawback is derived from the state, ``min(charge, refunded +
  disputed funds out)``, so a refund and a dispute of one charge never take more than
  it, and a won dispute gives back (``reinstatement``) exactly what it took, once.

A ``RecordConflict`` from the ledger means the change was applied already (answer 200,
change nothing) or that a concurrent event moved the charge (re-read and re-plan).
Refunds and disputes of a payment never credited answer 503 (Stripe retries: the
purchase's own event may be late) for an hour after the event was created, then 200,
logged and counted (``unknown_charge_ignored``, alarmed).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any, Protocol
from urllib.parse import SplitResult, urlsplit

from llmcredits.domain.ledger import EntryType, LotSource, RecordWrite, timestamp
from llmcredits.domain.payment_charges import ChargeState, dispute_status
from llmcredits.domain.ports import RecordConflict
from llmcredits.errors import ApiError, ContentionTimeout, IdempotencyConflict, InvalidRequest
from llmcredits.money import format_money
from llmcredits.services.ledger import ChangeResult, LedgerService

log = logging.getLogger("llmcredits.payments")

CURRENCY = "usd"
CENT = Decimal("0.01")
DEFAULT_MIN_USD = Decimal(5)
DEFAULT_MAX_USD = Decimal(1000)
DEFAULT_URL_ALLOWLIST = "http://localhost,http://127.0.0.1"
MAX_ATTEMPTS = 50
# A refund or dispute of a payment we do not know is retried (503) this long after the
# event's creation, for a purchase whose own event is late; then acknowledged (200).
UNKNOWN_CHARGE_RETRY_SECONDS = 3600
DISPUTE_EVENTS = frozenset({
    "charge.dispute.created", "charge.dispute.funds_withdrawn", "charge.dispute.closed",
    "charge.dispute.funds_reinstated",
})
# Outcomes that mean "not ours": acknowledged, logged, and counted in a metric of the
# same name (the webhook handler publishes it; UnknownChargeEventIgnored has an alarm).
UNKNOWN_PAYMENT_IGNORED = "unknown_payment_ignored"
UNKNOWN_CHARGE_IGNORED = "unknown_charge_ignored"
IGNORED_METRICS = {UNKNOWN_PAYMENT_IGNORED: "UnknownPaymentIgnored",
                   UNKNOWN_CHARGE_IGNORED: "UnknownChargeEventIgnored"}

# Checkout Session metadata keys (also on the PaymentIntent, for operators in Stripe).
META_USER = "llmcredits_user_id"
META_CREDITS = "llmcredits_credits"


def event_key(event_id: str) -> str:
    return f"stripe-event:{event_id}"


def session_key(session_id: str) -> str:
    return f"checkout-session:{session_id}"


def purchase_key(session_id: str) -> str:
    return f"purchase:{session_id}"


def payment_intent_key(payment_intent: str) -> str:
    return f"payment-intent:{payment_intent}"


def charge_state_key(payment_intent: str, version: int) -> str:
    return f"charge-state:{payment_intent}:{version}"


NEGATIVE_BALANCE_KEY = "negative-balance"


# -- errors -----------------------------------------------------------------------------


class RetryLater(ApiError):
    """Not applicable yet (e.g. a refund of a purchase whose credit has not landed):
    a non-2xx makes Stripe deliver the event again later, with backoff, for days."""

    status = 503
    type = "server_error"
    code = "retry_later"


class PaymentProviderError(ApiError):
    """Stripe refused or could not be reached; nothing was recorded."""

    status = 502
    type = "upstream_error"
    code = "payment_provider_error"


class CheckoutIdempotencyMismatch(Exception):
    """The provider saw this idempotency key before with different parameters."""


class CheckoutUnavailable(Exception):
    """The provider failed or refused to create the session (message is safe to show)."""


class InvalidWebhook(Exception):
    """Signature missing, wrong or too old, or a body that is not an event."""


# -- the provider port ---------------------------------------------------------------------


@dataclass(frozen=True)
class CheckoutRequest:
    user_id: str
    amount_cents: int
    currency: str
    product_name: str
    success_url: str
    cancel_url: str
    metadata: dict[str, str]
    idempotency_key: str


@dataclass(frozen=True)
class CheckoutSession:
    id: str
    url: str


class TopupEvents(Protocol):
    """The auto top-up webhooks (services/auto_topup.py): setup-mode sessions and the
    PaymentIntents of top-ups."""

    def handles(self, event_type: str, obj: dict[str, Any]) -> bool: ...

    def apply_event(self, event_id: str, event_type: str, obj: dict[str, Any]) -> str: ...


class PaymentProvider(Protocol):
    def create_checkout_session(self, request: CheckoutRequest) -> CheckoutSession:
        """Raises CheckoutIdempotencyMismatch or CheckoutUnavailable."""
        ...

    def verify_webhook(self, payload: str, signature: str | None) -> dict[str, Any]:
        """The event of a correctly signed, recent payload (numbers as int/Decimal).

        Raises InvalidWebhook."""
        ...

    def receipt_url(self, payment_intent: str) -> str | None:
        """The receipt URL of the payment's charge (``latest_charge.receipt_url``), or
        None when the provider cannot say now (never raises: a receipt is not worth
        failing a credit for)."""
        ...


# -- configuration -----------------------------------------------------------------------


@dataclass(frozen=True)
class AllowedUrl:
    """One allow-list entry: an origin ("https://app.example.com") or a URL prefix
    ("https://app.example.com/billing"). Without a port it admits any port of the host
    (local dev servers); with one, only that port. Paths match on segment boundaries."""

    scheme: str
    host: str
    port: int | None
    path: str

    @classmethod
    def parse(cls, entry: str) -> AllowedUrl:
        parts = urlsplit(entry.strip())
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) origin or URL prefix: {entry!r}")
        return cls(parts.scheme, parts.hostname.lower(), parts.port, parts.path.rstrip("/"))

    def admits(self, url: SplitResult) -> bool:
        if url.scheme != self.scheme or (url.hostname or "").lower() != self.host:
            return False
        if self.port is not None and (url.port or _default_port(url.scheme)) != self.port:
            return False
        return not self.path or url.path == self.path or url.path.startswith(self.path + "/")


def _default_port(scheme: str) -> int:
    return 443 if scheme == "https" else 80


@dataclass(frozen=True)
class PurchaseConfig:
    min_amount: Decimal = DEFAULT_MIN_USD
    max_amount: Decimal = DEFAULT_MAX_USD
    allowed_urls: tuple[AllowedUrl, ...] = ()
    # Purchased lots expire this many days after the credit (None: never, the default).
    expires_in_days: int | None = None

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> PurchaseConfig:
        """PURCHASE_MIN_USD, PURCHASE_MAX_USD, CHECKOUT_URL_ALLOWLIST (comma-separated),
        PURCHASE_EXPIRES_IN_DAYS (unset or 0: purchases never expire)."""
        env = os.environ if environ is None else environ
        days = _config_days(env.get("PURCHASE_EXPIRES_IN_DAYS"), "PURCHASE_EXPIRES_IN_DAYS")
        low = _config_amount(env.get("PURCHASE_MIN_USD"), DEFAULT_MIN_USD, "PURCHASE_MIN_USD")
        high = _config_amount(env.get("PURCHASE_MAX_USD"), DEFAULT_MAX_USD, "PURCHASE_MAX_USD")
        if high < low:
            raise ValueError("PURCHASE_MAX_USD must not be below PURCHASE_MIN_USD")
        raw = env.get("CHECKOUT_URL_ALLOWLIST")
        entries = DEFAULT_URL_ALLOWLIST if raw is None else raw
        allowed = tuple(AllowedUrl.parse(e) for e in entries.split(",") if e.strip())
        return cls(min_amount=low, max_amount=high, allowed_urls=allowed,
                   expires_in_days=days)


def _config_days(raw: str | None, name: str) -> int | None:
    if raw is None or not raw.strip():
        return None
    try:
        days = int(raw.strip())
    except ValueError as exc:
        raise ValueError(f"{name} must be a whole number of days") from exc
    if days < 0:
        raise ValueError(f"{name} must not be negative")
    return days or None


def _config_amount(raw: str | None, default: Decimal, name: str) -> Decimal:
    if raw is None or not raw.strip():
        return default
    try:
        value = Decimal(raw.strip())
    except InvalidOperation as exc:
        raise ValueError(f"{name} is not a decimal") from exc
    if not value.is_finite() or value <= 0 or value != value.quantize(CENT):
        raise ValueError(f"{name} must be a positive amount with at most 2 decimal places")
    return value


def url_allowed(url: str, allowed: tuple[AllowedUrl, ...]) -> bool:
    if any(ch.isspace() or ord(ch) < 32 or ch == "\\" for ch in url):
        return False
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a malformed port
    except ValueError:
        return False
    if parts.username is not None or parts.password is not None or not parts.hostname:
        return False
    return any(entry.admits(parts) for entry in allowed)


def stripe_idempotency_key(user_id: str, key: str) -> str:
    """The key sent to Stripe for a client's Idempotency-Key, scoped to the caller: two
    users who happen to pick the same key must not share (or collide on) a session."""
    digest = hashlib.sha256(json.dumps([user_id, key]).encode()).hexdigest()
    return f"llmcredits-purchase-{digest}"


def dollars(cents: int) -> Decimal:
    """Stripe's integer cents as exact credits (1 credit = 1 USD)."""
    return Decimal(cents).scaleb(-2)


# -- results ------------------------------------------------------------------------------


@dataclass(frozen=True)
class PurchaseStarted:
    session_id: str
    checkout_url: str
    replayed: bool = False


@dataclass(frozen=True)
class WebhookOutcome:
    event_id: str
    event_type: str
    outcome: str  # credited, duplicate, refunded, disputed, ignored, awaiting_payment, ...

    def body(self) -> dict[str, Any]:
        return {"received": True, "event_id": self.event_id, "type": self.event_type,
                "outcome": self.outcome}


def utcnow() -> datetime:
    return datetime.now(UTC)


# -- the service ---------------------------------------------------------------------------


class PaymentsService:
    def __init__(
        self,
        ledger: LedgerService,
        provider: PaymentProvider,
        config: PurchaseConfig,
        clock: Callable[[], datetime] = utcnow,
        topups: TopupEvents | None = None,
    ) -> None:
        self._ledger = ledger
        self._provider = provider
        self._config = config
        self._clock = clock
        self._topups = topups

    # -- POST /credits/purchase ----------------------------------------------------------

    def start_purchase(
        self,
        user_id: str,
        amount: Decimal,
        success_url: str,
        cancel_url: str,
        idempotency_key: str | None = None,
    ) -> PurchaseStarted:
        cfg = self._config
        if amount != amount.quantize(CENT):
            raise InvalidRequest("amount must have at most 2 decimal places", param="amount")
        if not cfg.min_amount <= amount <= cfg.max_amount:
            raise InvalidRequest(
                f"amount must be between {cfg.min_amount} and {cfg.max_amount} USD",
                param="amount",
                code="amount_out_of_range",
            )
        for name, url in (("success_url", success_url), ("cancel_url", cancel_url)):
            if not url_allowed(url, cfg.allowed_urls):
                raise InvalidRequest(
                    f"{name} is not on the allow-list of return URLs", param=name,
                    code="url_not_allowed",
                )
        self._ledger.account(user_id)  # accounts exist from first authenticated use
        cents = int(amount.scaleb(2))
        credits = f"{amount:.2f}"
        request = CheckoutRequest(
            user_id=user_id,
            amount_cents=cents,
            currency=CURRENCY,
            product_name=f"{credits} llmcredits",
            success_url=success_url,
            cancel_url=cancel_url,
            metadata={META_USER: user_id, META_CREDITS: credits},
            # Without a client key, still one per attempt, so the stripe client's own
            # network retries cannot open two sessions.
            idempotency_key=stripe_idempotency_key(user_id, idempotency_key or uuid.uuid4().hex),
        )
        try:
            session = self._provider.create_checkout_session(request)
        except CheckoutIdempotencyMismatch as exc:
            raise IdempotencyConflict(
                "This Idempotency-Key was already used with a different purchase.",
                param="Idempotency-Key",
            ) from exc
        except CheckoutUnavailable as exc:
            raise PaymentProviderError(f"The payment provider refused the checkout: {exc}") from exc
        now = timestamp(self._clock())
        fresh = self._ledger.put_record(
            purchase_key(session.id),
            user_id,
            {
                "status": "pending",
                "session_id": session.id,
                "amount": amount,
                "amount_cents": cents,
                "currency": CURRENCY,
                "created_at": now,
                "updated_at": now,
            },
            only_new=True,  # a replayed session keeps the state its webhooks gave it
        )
        log.info("checkout session created", extra={"session_id": session.id,
                                                     "amount": credits, "replayed": not fresh})
        return PurchaseStarted(session.id, session.url, replayed=not fresh)

    # -- POST /stripe/webhook -------------------------------------------------------------

    def handle_webhook(self, payload: str, signature: str | None) -> WebhookOutcome:
        try:
            event = self._provider.verify_webhook(payload, signature)
        except InvalidWebhook as exc:
            raise InvalidRequest(str(exc), param="Stripe-Signature",
                                 code="invalid_signature") from exc
        return self.apply_event(event)

    def apply_event(self, event: dict[str, Any]) -> WebhookOutcome:
        """Apply one verified event; safe to call any number of times, concurrently."""
        event_id = event.get("id")
        event_type = event.get("type")
        data = event.get("data")
        obj = data.get("object") if isinstance(data, dict) else None
        if not isinstance(event_id, str) or not event_id or not isinstance(event_type, str) \
                or not isinstance(obj, dict):
            raise InvalidRequest("The payload is not a Stripe event.", code="invalid_event")
        session_handler = {
            "checkout.session.completed": self._session_completed,
            "checkout.session.async_payment_succeeded": self._session_paid,
            "checkout.session.async_payment_failed": self._session_failed,
        }.get(event_type)
        if self._topups is not None and self._topups.handles(event_type, obj):
            outcome = self._topups.apply_event(event_id, event_type, obj)
        elif session_handler is not None:
            outcome = session_handler(event_id, obj)
        elif event_type == "charge.refunded":
            outcome = self._charge_refunded(event, obj)
        elif event_type in DISPUTE_EVENTS:
            outcome = self._dispute_changed(event, obj)
        else:
            outcome = "ignored"
        log.info("stripe event", extra={"event_id": event_id, "event_type": event_type,
                                        "outcome": outcome})
        return WebhookOutcome(event_id, event_type, outcome)

    # -- checkout sessions -----------------------------------------------------------------

    def _session_completed(self, event_id: str, session: dict[str, Any]) -> str:
        purchase = _parse_session(session)
        if purchase is None:
            return "ignored"
        if not self._started_here(purchase, event_id):
            return UNKNOWN_PAYMENT_IGNORED
        if session.get("payment_status") != "paid":
            # An asynchronous method (bank debit...): the money is not there yet;
            # async_payment_succeeded or async_payment_failed follows.
            self._mark_purchase(purchase, "awaiting_payment", event_id)
            return "awaiting_payment"
        return self._credit(event_id, purchase)

    def _session_paid(self, event_id: str, session: dict[str, Any]) -> str:
        purchase = _parse_session(session)
        if purchase is None:
            return "ignored"
        if not self._started_here(purchase, event_id):
            return UNKNOWN_PAYMENT_IGNORED
        if session.get("payment_status") != "paid":
            log.warning("async_payment_succeeded without payment_status=paid",
                        extra={"event_id": event_id, "session_id": purchase.session_id})
            return "ignored"
        return self._credit(event_id, purchase)

    def _session_failed(self, event_id: str, session: dict[str, Any]) -> str:
        purchase = _parse_session(session)
        if purchase is None:
            return "ignored"
        if not self._started_here(purchase, event_id):
            return UNKNOWN_PAYMENT_IGNORED
        self._mark_purchase(purchase, "failed", event_id)
        return "payment_failed"

    def _started_here(self, purchase: _Purchase, event_id: str) -> bool:
        """Only sessions POST /credits/purchase opened are credited: the purchase record it
        wrote (in the partition of the user the session names) must exist with the same
        amount and currency. A Payment Link or another integration on the same Stripe
        account can name any user in ``client_reference_id``; such a session is not ours."""
        record = self._ledger.get_record(purchase_key(purchase.session_id), purchase.user_id)
        known = (
            record is not None
            and record.get("session_id") == purchase.session_id
            and int(record.get("amount_cents", -1)) == purchase.amount_cents
            and str(record.get("currency", "")).lower() == CURRENCY
        )
        if not known:
            log.error("paid checkout session this service did not start; not credited",
                      extra={"event_id": event_id, "session_id": purchase.session_id,
                             "purchase_record": record is not None})
        return known

    def _credit(self, event_id: str, purchase: _Purchase) -> str:
        now = timestamp(self._clock())
        amount = dollars(purchase.amount_cents)
        links = {"stripe_event": event_id, "checkout_session": purchase.session_id}
        if purchase.payment_intent:
            links["payment_intent"] = purchase.payment_intent
        records = [
            RecordWrite(event_key(event_id), {**links, "applied_at": now}, purchase.user_id),
            RecordWrite(
                session_key(purchase.session_id),
                {**links, "amount": amount, "credited_at": now},
                purchase.user_id,
            ),
        ]
        if purchase.payment_intent:
            records.append(
                RecordWrite(
                    payment_intent_key(purchase.payment_intent),
                    {  # state 0 of the charge (see payment_state)
                        "user_id": purchase.user_id,
                        "checkout_session": purchase.session_id,
                        "amount_cents": purchase.amount_cents,
                        "stripe_event": event_id,
                        "credited_at": now,
                    },
                    None,
                )
            )
        days = self._config.expires_in_days
        receipt = (self._provider.receipt_url(purchase.payment_intent)
                   if purchase.payment_intent else None)
        try:
            result = self._ledger.credit(
                purchase.user_id, amount, EntryType.PURCHASE, metadata=links, records=records,
                source=LotSource.PURCHASE, receipt_url=receipt,
                expires_at=None if days is None else self._clock() + timedelta(days=days),
            )
        except RecordConflict as conflict:
            # This event, or another one of the same session, was credited already.
            if conflict.key.startswith("payment-intent:"):
                log.error("payment intent credited through another session",
                          extra={"event_id": event_id, "session_id": purchase.session_id})
            self._mark_purchase(purchase, "credited", event_id)
            return "duplicate"
        self._mark_purchase(purchase, "credited", event_id)
        self._resolve_negative(purchase.user_id, result)
        return "credited"

    def _mark_purchase(self, purchase: _Purchase, status: str, event_id: str) -> None:
        """The purchase's visible status (bookkeeping only: the session record written
        with the credit is what guards money). A credited purchase stays credited."""
        key = purchase_key(purchase.session_id)
        current = self._ledger.get_record(key, purchase.user_id) or {}
        if current.get("status") == status:
            return
        if status != "credited" and (current.get("status") == "credited" or self._credited(
                purchase)):
            return
        self._put_purchase(purchase, status, event_id, current)
        if status != "credited" and self._credited(purchase):
            # The credit committed between our check and our write: its own status write
            # may have come first, so restore "credited" (every interleaving ends there).
            self._put_purchase(purchase, "credited", event_id, current)

    def _credited(self, purchase: _Purchase) -> bool:
        return self._ledger.get_record(session_key(purchase.session_id),
                                       purchase.user_id) is not None

    def _put_purchase(
        self, purchase: _Purchase, status: str, event_id: str, current: dict[str, Any]
    ) -> None:
        now = timestamp(self._clock())
        self._ledger.put_record(
            purchase_key(purchase.session_id),
            purchase.user_id,
            {
                "session_id": purchase.session_id,
                "amount": dollars(purchase.amount_cents),
                "amount_cents": purchase.amount_cents,
                "currency": CURRENCY,
                "created_at": now,
                **current,
                "status": status,
                "stripe_event": event_id,
                "updated_at": now,
            },
        )

    # -- refunds and disputes ------------------------------------------------------------

    def payment_state(self, payment_intent: str) -> ChargeState | None:
        """The latest stored state of a credited payment, or None if we never credited it.

        States are a chain of records ``charge-state:<pi>:<n>`` (n = 1, 2, ...) after the
        ``payment-intent:<pi>`` record the credit wrote (state 0). Each next state is
        written only if it does not exist yet: a compare-and-swap, so two concurrent events
        cannot both build on state n (the loser re-reads and re-plans). A money-moving
        state is written in the same transaction as its ledger entry."""
        record = self._ledger.get_record(payment_intent_key(payment_intent), None)
        if record is None:
            return None
        state = ChargeState.from_record({**record, "version": 0}, payment_intent)
        while True:
            following = self._ledger.get_record(
                charge_state_key(payment_intent, state.version + 1), None)
            if following is None:
                return state
            state = ChargeState.from_record(following, payment_intent)

    def _charge_refunded(self, event: dict[str, Any], charge: dict[str, Any]) -> str:
        payment_intent = _id_of(charge.get("payment_intent"))
        refunded = _cents(charge, "amount_refunded")
        if not payment_intent or refunded is None:
            return "ignored"  # not a Checkout payment of ours
        if str(charge.get("currency", CURRENCY)).lower() != CURRENCY:
            log.error("refund in an unexpected currency", extra={"event_id": event["id"]})
            return "ignored"
        links = {"charge": _id_of(charge.get("id")) or ""}
        return self._apply_to_charge(event, payment_intent, EntryType.REFUND, links,
                                     lambda state: state.refunded(refunded))

    def _dispute_changed(self, event: dict[str, Any], dispute: dict[str, Any]) -> str:
        event_id = event["id"]
        dispute_id = _id_of(dispute.get("id"))
        payment_intent = _id_of(dispute.get("payment_intent"))
        amount = _cents(dispute, "amount")
        status = dispute_status(event["type"], str(dispute.get("status") or ""))
        if not dispute_id or amount is None or amount <= 0 or status is None:
            return "ignored"
        if not payment_intent:
            # Disputes carry their payment intent; one without is not a Checkout payment.
            log.error("dispute without a payment intent", extra={"event_id": event_id,
                                                                   "dispute": dispute_id})
            return "ignored"
        if str(dispute.get("currency", CURRENCY)).lower() != CURRENCY:
            log.error("dispute in an unexpected currency", extra={"event_id": event_id})
            return "ignored"
        links = {"charge": _id_of(dispute.get("charge")) or "", "dispute": dispute_id,
                 "reason": str(dispute.get("reason") or ""), "dispute_status": status.value}
        return self._apply_to_charge(event, payment_intent, EntryType.CHARGEBACK, links,
                                     lambda state: state.dispute(dispute_id, amount, status))

    def _apply_to_charge(
        self,
        event: dict[str, Any],
        payment_intent: str,
        clawback_type: EntryType,
        links: dict[str, str],
        change: Callable[[ChargeState], ChargeState],
    ) -> str:
        """Move the charge to the state the event implies and the balance by the change of
        what should be clawed back (never more than the charge in total)."""
        event_id = event["id"]
        for _ in range(MAX_ATTEMPTS):
            before = self.payment_state(payment_intent)
            if before is None:
                return self._unknown_charge(event, payment_intent)
            after = change(before)
            if after.same_facts(before):
                return "duplicate"  # this event (or a later one) is applied already
            after = after.settled()
            delta = after.clawed_back_cents - before.clawed_back_cents
            now = timestamp(self._clock())
            state_record = RecordWrite(
                charge_state_key(payment_intent, after.version),
                {**after.to_record(), "stripe_event": event_id, "updated_at": now}, None)
            if delta == 0:
                # Facts changed, money did not (e.g. a dispute of a charge already refunded
                # in full): record the state alone, still only if no one else moved it.
                if self._ledger.put_record(state_record.key, None, state_record.values,
                                           only_new=True):
                    return "covered"
                continue
            metadata = {
                "stripe_event": event_id,
                "checkout_session": before.checkout_session,
                "payment_intent": payment_intent,
                **links,
                "refunded_total": format_money(dollars(after.refunded_cents)),
                "clawed_back_total": format_money(dollars(after.clawed_back_cents)),
            }
            records = [
                RecordWrite(event_key(event_id),
                            {"applied_at": now, "payment_intent": payment_intent},
                            before.user_id),
                state_record,
            ]
            try:
                if delta > 0:
                    result = self._ledger.clawback(before.user_id, dollars(delta), clawback_type,
                                                   metadata=metadata, records=records)
                else:
                    result = self._ledger.credit(before.user_id, dollars(-delta),
                                                 EntryType.REINSTATEMENT, metadata=metadata,
                                                 records=records,
                                                 source=LotSource.REINSTATEMENT)
            except RecordConflict as conflict:
                if conflict.key == event_key(event_id):
                    return "duplicate"
                continue  # another event moved the charge: re-read
            if delta > 0:
                self._flag_negative(before.user_id, result, event_id)
                return "refunded" if clawback_type is EntryType.REFUND else "disputed"
            self._resolve_negative(before.user_id, result)
            return "reinstated"
        raise ContentionTimeout("The payment is busy; retry the event.")

    def _unknown_charge(self, event: dict[str, Any], payment_intent: str) -> str:
        """A refund or dispute of a payment we never credited.

        Stripe does not order deliveries: it can arrive before the purchase's own event
        (whose delivery failed and is being retried). Within UNKNOWN_CHARGE_RETRY_SECONDS
        of the event's creation, a 503 makes Stripe deliver it again after the credit;
        after that it is not ours (another integration on the Stripe account, or a credit
        that never came): 200, so Stripe does not disable the endpoint, plus a log line
        and the ``UnknownChargeEventIgnored`` metric, which has an alarm."""
        created = event.get("created")
        age = None
        if isinstance(created, int) and not isinstance(created, bool):
            age = self._clock().timestamp() - created
        extra = {"event_id": event["id"], "event_type": event["type"],
                 "payment_intent": payment_intent}
        if age is not None and age < UNKNOWN_CHARGE_RETRY_SECONDS:
            log.warning("refund/dispute for a payment not credited yet", extra=extra)
            raise RetryLater(
                "The payment this event refers to has not been credited yet; retry later."
            )
        log.error("refund/dispute for a payment this service never credited; ignored",
                  extra=extra)
        return UNKNOWN_CHARGE_IGNORED

    # -- negative balances ---------------------------------------------------------------

    def _flag_negative(self, user_id: str, result: ChangeResult, event_id: str) -> None:
        """Only refunds and chargebacks may take a balance below zero (the money already
        left). Usage is refused anyway (available < 0); the record lets operators find
        and follow up such accounts, and the warning can drive an alarm."""
        balance = Decimal(result.body["balance"])
        if balance >= 0:
            return
        log.warning("balance negative after a clawback",
                    extra={"user_id": user_id, "balance": format_money(balance),
                           "event_id": event_id})
        now = timestamp(self._clock())
        current = self._ledger.get_record(NEGATIVE_BALANCE_KEY, user_id) or {}
        since = current.get("since") if current.get("status") == "negative" else None
        self._ledger.put_record(
            NEGATIVE_BALANCE_KEY,
            user_id,
            {"status": "negative", "balance": balance, "since": since or now,
             "stripe_event": event_id, "updated_at": now},
        )

    def _resolve_negative(self, user_id: str, result: ChangeResult) -> None:
        current = self._ledger.get_record(NEGATIVE_BALANCE_KEY, user_id)
        if not current or current.get("status") != "negative":
            return
        balance = Decimal(result.body["balance"])
        if balance >= 0:
            self._ledger.put_record(
                NEGATIVE_BALANCE_KEY,
                user_id,
                {**current, "status": "resolved", "balance": balance,
                 "updated_at": timestamp(self._clock())},
            )


# -- reading Stripe objects (ints for cents; anything else is refused) ---------------------


@dataclass(frozen=True)
class _Purchase:
    user_id: str
    session_id: str
    amount_cents: int
    payment_intent: str | None


def _parse_session(session: dict[str, Any]) -> _Purchase | None:
    """The purchase a Checkout Session stands for, or None if it is not one of ours."""
    session_id = _id_of(session.get("id"))
    metadata = session.get("metadata")
    user = metadata.get(META_USER) if isinstance(metadata, dict) else None
    reference = session.get("client_reference_id")
    if not isinstance(user, str) or not user:
        user = reference if isinstance(reference, str) and reference else None
    elif isinstance(reference, str) and reference and reference != user:
        log.warning("client_reference_id differs from metadata; using metadata",
                    extra={"session_id": session_id})
    amount = _cents(session, "amount_total")
    if not session_id or not user or session.get("mode", "payment") != "payment":
        return None
    if amount is None or amount <= 0:
        return None
    if str(session.get("currency", "")).lower() != CURRENCY:
        log.error("checkout session in an unexpected currency; not credited",
                  extra={"session_id": session_id})
        return None
    return _Purchase(user, session_id, amount, _id_of(session.get("payment_intent")))


def _cents(obj: dict[str, Any], name: str) -> int | None:
    value = obj.get(name)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        return None
    return value


def _id_of(value: Any) -> str | None:
    """An id field: a string, or an expanded object with an id."""
    if isinstance(value, dict):
        value = value.get("id")
    return value if isinstance(value, str) and value else None
