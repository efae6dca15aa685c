"""Auto top-up: a saved card, settings, the crossing watcher, the worker that charges the
card off-session, and the webhooks that credit or count each top-up (DESIGN section 7).

Pure use cases over ports (no boto3, no stripe here):

- ``POST /credits/payment-method`` opens a Checkout Session in setup mode for the user's
  Stripe customer (created once per user: a per-user Stripe idempotency key, then kept
  on the auto top-up item only if none is there yet, so concurrent first calls agree)
  and records ``payment-method-session:<cs>``. Its ``checkout.session.completed`` (mode
  setup) saves the card, only for sessions with that record and customer.
- ``AutoTopupWatcher`` (an ``AccountWatcher`` of the account-events stream consumer):
  when a change leaves ``available`` below the threshold, it *claims* the account (one
  top-up in flight, within the monthly limit, by a compare-and-swap on the item's
  revision) and writes the top-up's record in the same transaction. It never calls
  Stripe: the stream consumer's batch is shared with the alerts, and a slow or failing
  Stripe would hold back (and, on retry, re-run) every record behind it on the shard.
- ``AutoTopupWorker`` runs from the claim's own stream record (a second, filtered event
  source mapping with its own retries and on-failure queue): it creates the off-session
  PaymentIntent (``confirm``, ``off_session``, idempotency key of the top-up, so a retry
  or a redelivered claim makes no second payment). A refusal Stripe reports at once (a
  declined card, authentication required) is applied as the failure right there.
- Webhooks: ``payment_intent.succeeded`` credits the top-up once (records
  ``stripe-event:``, ``topup-credit:`` and ``payment-intent:`` in the ledger entry's
  transaction; the last is state 0 of the charge, so refunds and disputes of a top-up
  work as for purchases) and ends the claim; ``payment_intent.payment_failed`` and
  ``payment_intent.requires_action`` end it as a failure: the amount leaves the month's
  total, ``topup.failed`` is raised through the ``AlertSink``, and the third failure in
  a row disables auto top-up (the alert says so). Only PaymentIntents of top-ups this
  service claimed are acted on (the ``topup:<id>`` record, same user, amount, currency).
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, Protocol

from llmcredits.domain.auto_topup import (
    AutoTopup,
    Claim,
    SavedCard,
    SkipReason,
    TopupState,
    is_crossing,
    may_cross,
    plan_claim,
    plan_failure,
    plan_success,
    topup_id_for,
)
from llmcredits.domain.ledger import EntryType, LotSource, RecordWrite, month_of, timestamp
from llmcredits.domain.ports import RecordConflict, StaleRead
from llmcredits.errors import ContentionTimeout, InvalidRequest
from llmcredits.money import format_money
from llmcredits.services.account_events import AccountChange
from llmcredits.services.ledger import LedgerService
from llmcredits.services.payments import (
    CENT,
    CURRENCY,
    META_USER,
    CheckoutSession,
    CheckoutUnavailable,
    PaymentProviderError,
    PurchaseConfig,
    RetryLater,
    dollars,
    event_key,
    payment_intent_key,
    url_allowed,
)

log = logging.getLogger("llmcredits.auto_topup")

MAX_ATTEMPTS = 50
META_TOPUP = "llmcredits_topup_id"
META_KIND = "llmcredits_kind"
TOPUP_FAILED = "topup.failed"
LOT_SOURCE = LotSource.AUTO_TOPUP.value
SETUP_EVENTS = frozenset({"checkout.session.completed"})
PAYMENT_INTENT_EVENTS = frozenset({
    "payment_intent.succeeded", "payment_intent.payment_failed",
    "payment_intent.requires_action",
})


def utcnow() -> datetime:
    return datetime.now(UTC)


def topup_record_key(topup_id: str) -> str:
    return f"topup:{topup_id}"


def topup_credit_key(topup_id: str) -> str:
    return f"topup-credit:{topup_id}"


def setup_session_key(session_id: str) -> str:
    return f"payment-method-session:{session_id}"


def customer_idempotency_key(user_id: str) -> str:
    digest = hashlib.sha256(json.dumps(["customer", user_id]).encode()).hexdigest()
    return f"llmcredits-customer-{digest}"


def payment_idempotency_key(topup_id: str) -> str:
    """One per top-up (= per crossing): the worker's retries reuse it."""
    return f"llmcredits-topup-{topup_id}"


def alert_event_id(topup_id: str) -> str:
    return f"topup.failed:{topup_id}"


# -- ports -------------------------------------------------------------------------------


class AlertSink(Protocol):
    """Where ``topup.failed`` goes (the alerts service's ``AlertService.emit``); must be
    idempotent by ``source_id``: a webhook redelivered raises the same alert again."""

    def emit(self, user_id: str, event_type: str, detail: dict[str, Any],
             source_id: str) -> object: ...


class TopupStore(Protocol):
    def get(self, user_id: str) -> AutoTopup | None: ...

    def replace(self, before: AutoTopup, after: AutoTopup) -> None:
        """Raises StaleRead when the item is no longer ``before``."""
        ...

    def claim(self, before: AutoTopup, after: AutoTopup, record: dict[str, Any]) -> bool:
        """False when the top-up record exists already; raises StaleRead."""
        ...

    def resolve(self, before: AutoTopup, after: AutoTopup, topup_id: str,
                outcome: dict[str, Any]) -> None: ...


@dataclass(frozen=True)
class SetupSessionRequest:
    user_id: str
    customer: str
    success_url: str
    cancel_url: str
    metadata: dict[str, str]


@dataclass(frozen=True)
class CardOnFile:
    customer: str
    payment_method: str
    brand: str
    last4: str


@dataclass(frozen=True)
class OffSessionCharge:
    amount_cents: int
    currency: str
    customer: str
    payment_method: str
    metadata: dict[str, str]
    idempotency_key: str


@dataclass(frozen=True)
class ChargeAttempt:
    """What creating the PaymentIntent told us at once."""

    payment_intent: str | None
    status: str  # succeeded, processing, requires_action, failed
    decline_code: str | None = None

    @property
    def refused(self) -> bool:
        return self.status in ("failed", "requires_action")


class ProviderBusy(Exception):
    """Stripe was unreachable or failed: nothing definite; retry (same idempotency key)."""


class TopupProvider(Protocol):
    def create_customer(self, user_id: str, idempotency_key: str) -> str: ...

    def create_setup_session(self, request: SetupSessionRequest) -> CheckoutSession:
        """Raises CheckoutUnavailable."""
        ...

    def saved_card(self, setup_intent: str) -> CardOnFile | None:
        """The card a succeeded SetupIntent saved (None: it saved none)."""
        ...

    def charge_off_session(self, charge: OffSessionCharge) -> ChargeAttempt:
        """Raises ProviderBusy when the outcome is unknown."""
        ...

    def receipt_url(self, charge: str) -> str | None:
        """The charge's receipt page, best effort (None when Stripe does not say)."""
        ...


# -- the service ---------------------------------------------------------------------------


@dataclass(frozen=True)
class SettingsUpdate:
    enabled: bool
    threshold: Decimal | None = None
    amount: Decimal | None = None
    monthly_limit: Decimal | None = None


def settings_view(config: AutoTopup) -> dict[str, Any]:
    def money(value: Decimal | None) -> str | None:
        return None if value is None else format_money(value)

    month = month_of(utcnow())
    card = config.card
    return {
        "enabled": config.enabled,
        "threshold": money(config.threshold),
        "amount": money(config.amount),
        "monthly_limit": money(config.monthly_limit),
        "payment_method": None if card is None else {"brand": card.brand, "last4": card.last4},
        "month": month,
        "month_topped_up": format_money(config.topped_up(month)),
        "in_flight": config.state is not TopupState.IDLE,
        "consecutive_failures": config.failures,
    }


class AutoTopupService:
    def __init__(
        self,
        ledger: LedgerService,
        store: TopupStore,
        provider: TopupProvider,
        config: PurchaseConfig,
        alerts: AlertSink,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self._ledger = ledger
        self._store = store
        self._provider = provider
        self._config = config
        self._alerts = alerts
        self._clock = clock

    def _now(self) -> str:
        return timestamp(self._clock())

    def _read(self, user_id: str) -> AutoTopup:
        return self._store.get(user_id) or AutoTopup(user_id)

    # -- GET / PUT /credits/auto-topup -------------------------------------------------

    def settings(self, user_id: str) -> AutoTopup:
        self._ledger.account(user_id)
        return self._read(user_id)

    def update_settings(self, user_id: str, update: SettingsUpdate) -> AutoTopup:
        self._ledger.account(user_id)  # the flag lives on the account item
        for name, value in (("threshold", update.threshold), ("amount", update.amount),
                            ("monthly_limit", update.monthly_limit)):
            if value is not None and (value < 0 or value != value.quantize(CENT)):
                raise InvalidRequest(f"{name} must be a non-negative amount with at most 2 "
                                     "decimal places", param=name)
        cfg = self._config
        if update.amount is not None and not cfg.min_amount <= update.amount <= cfg.max_amount:
            raise InvalidRequest(
                f"amount must be between {cfg.min_amount} and {cfg.max_amount} USD",
                param="amount", code="amount_out_of_range")
        for _ in range(MAX_ATTEMPTS):
            before = self._read(user_id)
            after = replace(
                before,
                enabled=update.enabled,
                threshold=before.threshold if update.threshold is None else update.threshold,
                amount=before.amount if update.amount is None else update.amount,
                monthly_limit=before.monthly_limit if update.monthly_limit is None
                else update.monthly_limit,
                # Enabling again starts a new run of failures.
                failures=0 if update.enabled and not before.enabled else before.failures,
                revision=before.revision + 1,
                updated_at=self._now(),
            )
            if after.enabled:
                self._check_enable(after)
            try:
                self._store.replace(before, after)
                return after
            except StaleRead:
                continue
        raise ContentionTimeout("The auto top-up settings are busy; retry the request.")

    @staticmethod
    def _check_enable(config: AutoTopup) -> None:
        for name in ("threshold", "amount", "monthly_limit"):
            if getattr(config, name) is None:
                raise InvalidRequest(f"{name} is required to enable auto top-up", param=name)
        if config.card is None or not config.customer:
            raise InvalidRequest(
                "Save a card first: POST /api/v1/llm/credits/payment-method opens a Stripe "
                "page that saves one; auto top-up charges it.",
                param="enabled", code="payment_method_required")
        assert config.amount is not None and config.monthly_limit is not None
        if config.monthly_limit < config.amount:
            raise InvalidRequest("monthly_limit must be at least amount (else no top-up "
                                 "could ever be made)", param="monthly_limit")

    # -- POST /credits/payment-method --------------------------------------------------

    def start_payment_method(self, user_id: str, success_url: str, cancel_url: str) -> str:
        for name, url in (("success_url", success_url), ("cancel_url", cancel_url)):
            if not url_allowed(url, self._config.allowed_urls):
                raise InvalidRequest(f"{name} is not on the allow-list of return URLs",
                                     param=name, code="url_not_allowed")
        self._ledger.account(user_id)
        customer = self._customer(user_id)
        try:
            session = self._provider.create_setup_session(SetupSessionRequest(
                user_id=user_id, customer=customer, success_url=success_url,
                cancel_url=cancel_url, metadata={META_USER: user_id, META_KIND: "auto_topup"}))
        except CheckoutUnavailable as exc:
            raise PaymentProviderError(
                f"The payment provider refused the checkout: {exc}") from exc
        now = self._now()
        self._ledger.put_record(setup_session_key(session.id), user_id, {
            "session_id": session.id, "customer": customer, "status": "open",
            "created_at": now, "updated_at": now})
        log.info("setup session created", extra={"session_id": session.id})
        return session.url

    def _customer(self, user_id: str) -> str:
        """The user's Stripe customer, created once: concurrent first calls send Stripe
        the same idempotency key (one customer), and the item keeps the first stored."""
        current = self._read(user_id)
        if current.customer:
            return current.customer
        try:
            customer = self._provider.create_customer(user_id, customer_idempotency_key(user_id))
        except CheckoutUnavailable as exc:
            raise PaymentProviderError(
                f"The payment provider refused to create the customer: {exc}") from exc
        for _ in range(MAX_ATTEMPTS):
            before = self._read(user_id)
            if before.customer:
                return before.customer
            try:
                self._store.replace(before, replace(before, customer=customer,
                                                    revision=before.revision + 1,
                                                    updated_at=self._now()))
                return customer
            except StaleRead:
                continue
        raise ContentionTimeout("The auto top-up settings are busy; retry the request.")

    # -- the watcher's part: claim ------------------------------------------------------

    def on_account_change(self, change: AccountChange) -> str | None:
        """Claim a top-up if this change is a crossing; the outcome, for logs and tests."""
        if change.new is None or not may_cross(change.old, change.new):
            return None  # no read: auto top-up off, or available did not go down
        now_dt = self._clock()
        topup_id = topup_id_for(change.user_id, change.event_id)
        for _ in range(MAX_ATTEMPTS):
            config = self._store.get(change.user_id)
            if config is None or not config.enabled or config.threshold is None:
                return None
            if not is_crossing(change.old, change.new, config.threshold):
                return None
            planned = plan_claim(config, topup_id, month_of(now_dt), timestamp(now_dt))
            if isinstance(planned, SkipReason):
                if planned is SkipReason.MONTHLY_LIMIT:
                    log.warning("auto top-up skipped: monthly limit reached",
                                extra={"user_id": change.user_id})
                return planned.value
            try:
                fresh = self._store.claim(planned.before, planned.after,
                                          self._topup_record(planned, change))
            except StaleRead:
                continue
            if not fresh:
                return "duplicate"  # this crossing's top-up was claimed before
            log.info("auto top-up claimed", extra={"user_id": change.user_id,
                                                   "topup_id": topup_id})
            return "claimed"
        raise ContentionTimeout("The auto top-up item is busy; the batch is retried.")

    def _topup_record(self, claim: Claim, change: AccountChange) -> dict[str, Any]:
        flight = claim.in_flight
        return {
            "user_id": change.user_id, "topup_id": flight.topup_id, "amount": flight.amount,
            "amount_cents": int(flight.amount.scaleb(2)), "currency": CURRENCY,
            "status": "claimed", "crossing": change.event_id, "created_at": flight.claimed_at,
            "updated_at": flight.claimed_at,
        }

    # -- the worker: create the PaymentIntent ----------------------------------------------

    def process_claim(self, user_id: str, topup_id: str) -> str:
        """Charge the saved card for the claimed top-up (idempotent: the idempotency key
        is the top-up's). Raises ProviderBusy to be retried."""
        config = self._store.get(user_id)
        flight = None if config is None else config.in_flight
        if config is None or flight is None or flight.topup_id != topup_id \
                or config.state is not TopupState.CLAIMED:
            return "stale"  # created, resolved or replaced already
        if config.card is None or not config.customer:
            return self._fail(user_id, topup_id, None, "no_payment_method")
        attempt = self._provider.charge_off_session(OffSessionCharge(
            amount_cents=int(flight.amount.scaleb(2)),
            currency=CURRENCY,
            customer=config.customer,
            payment_method=config.card.payment_method,
            metadata={META_USER: user_id, META_TOPUP: topup_id, META_KIND: "auto_topup",
                      "llmcredits_credits": f"{flight.amount:.2f}"},
            idempotency_key=payment_idempotency_key(topup_id),
        ))
        log.info("auto top-up payment intent", extra={
            "user_id": user_id, "topup_id": topup_id, "payment_intent": attempt.payment_intent,
            "status": attempt.status})
        if attempt.refused:
            return self._fail(user_id, topup_id, attempt.payment_intent,
                              attempt.decline_code or attempt.status)
        for _ in range(MAX_ATTEMPTS):
            before = self._store.get(user_id)
            if before is None or before.in_flight is None \
                    or before.in_flight.topup_id != topup_id \
                    or before.state is not TopupState.CLAIMED:
                return "created"  # its webhook got there first
            after = replace(before, state=TopupState.CREATED, revision=before.revision + 1,
                            in_flight=replace(before.in_flight,
                                              payment_intent=attempt.payment_intent),
                            updated_at=self._now())
            try:
                self._store.replace(before, after)
                return "created"
            except StaleRead:
                continue
        raise ContentionTimeout("The auto top-up item is busy; retried.")

    # -- webhooks ------------------------------------------------------------------------------

    def handles(self, event_type: str, obj: dict[str, Any]) -> bool:
        if event_type in PAYMENT_INTENT_EVENTS:
            return True
        return event_type in SETUP_EVENTS and obj.get("mode") == "setup"

    def apply_event(self, event_id: str, event_type: str, obj: dict[str, Any]) -> str:
        if event_type in SETUP_EVENTS:
            return self._setup_completed(obj)
        topup = self._known_topup(event_id, obj)
        if topup is None:
            return "unknown_payment_ignored" if _meta(obj, META_TOPUP) else "ignored"
        user_id, topup_id, pi = topup
        if event_type == "payment_intent.succeeded":
            return self._credit(event_id, user_id, topup_id, pi, obj)
        error = obj.get("last_payment_error")
        reason = None
        if isinstance(error, dict):
            reason = error.get("decline_code") or error.get("code")
        if event_type == "payment_intent.requires_action":
            reason = "authentication_required"
        return self._fail(user_id, topup_id, pi, str(reason or "payment_failed"))

    def _setup_completed(self, session: dict[str, Any]) -> str:
        session_id = _id_of(session.get("id"))
        user_id = _meta(session, META_USER) or session.get("client_reference_id")
        customer = _id_of(session.get("customer"))
        setup_intent = _id_of(session.get("setup_intent"))
        if not session_id or not isinstance(user_id, str) or not customer or not setup_intent:
            return "ignored"
        record = self._ledger.get_record(setup_session_key(session_id), user_id)
        if record is None or record.get("customer") != customer:
            log.error("setup session this service did not start; card not saved",
                      extra={"session_id": session_id})
            return "unknown_payment_ignored"
        try:
            card = self._provider.saved_card(setup_intent)
        except ProviderBusy as exc:
            raise RetryLater("Stripe did not answer for the saved card; retry.") from exc
        if card is None or card.customer != customer:
            log.error("setup intent without a card of this customer",
                      extra={"session_id": session_id})
            return "ignored"
        for _ in range(MAX_ATTEMPTS):
            before = self._read(user_id)
            saved = SavedCard(card.payment_method, card.brand, card.last4)
            if before.card == saved and before.customer == customer:
                return "duplicate"
            after = replace(before, customer=customer, card=saved, failures=0,
                            revision=before.revision + 1, updated_at=self._now())
            try:
                self._store.replace(before, after)
            except StaleRead:
                continue
            self._ledger.put_record(setup_session_key(session_id), user_id,
                                    {**record, "status": "complete", "updated_at": self._now()})
            return "payment_method_saved"
        raise ContentionTimeout("The auto top-up settings are busy; retry the event.")

    def _known_topup(self, event_id: str, pi: dict[str, Any]) -> tuple[str, str, str] | None:
        """(user, top-up, payment intent) of a PaymentIntent this service created."""
        pi_id = _id_of(pi.get("id"))
        user_id = _meta(pi, META_USER)
        topup_id = _meta(pi, META_TOPUP)
        amount = pi.get("amount")
        if not pi_id or not user_id or not topup_id:
            return None
        record = self._ledger.get_record(topup_record_key(topup_id), user_id)
        known = (
            record is not None
            and record.get("topup_id") == topup_id
            and isinstance(amount, int) and not isinstance(amount, bool)
            and int(record.get("amount_cents", -1)) == amount
            and str(pi.get("currency", "")).lower() == CURRENCY == record.get("currency")
        )
        if not known:
            log.error("payment intent this service did not start; ignored",
                      extra={"event_id": event_id, "payment_intent": pi_id})
            return None
        return user_id, topup_id, pi_id

    def _credit(self, event_id: str, user_id: str, topup_id: str, pi_id: str,
                pi: dict[str, Any]) -> str:
        cents = pi.get("amount_received")
        if not isinstance(cents, int) or isinstance(cents, bool) or cents != pi.get("amount"):
            log.error("succeeded payment intent without its full amount received",
                      extra={"event_id": event_id, "payment_intent": pi_id})
            return "ignored"
        now = self._now()
        links = {"stripe_event": event_id, "payment_intent": pi_id, "topup_id": topup_id,
                 "source": LOT_SOURCE}
        receipt = _receipt_url(pi)
        charge_id = _id_of(pi.get("latest_charge"))
        if receipt is None and charge_id:
            receipt = self._provider.receipt_url(charge_id)
        metadata: dict[str, Any] = dict(links)
        records = [
            RecordWrite(event_key(event_id), {**links, "applied_at": now}, user_id),
            RecordWrite(topup_credit_key(topup_id), {**links, "credited_at": now}, user_id),
            RecordWrite(payment_intent_key(pi_id), {  # state 0 of the charge (refunds)
                "user_id": user_id, "checkout_session": "", "topup_id": topup_id,
                "amount_cents": cents, "stripe_event": event_id, "credited_at": now}, None),
        ]
        outcome = "credited"
        try:
            self._ledger.credit(user_id, dollars(cents), EntryType.PURCHASE,
                                metadata=metadata, records=records,
                                source=LotSource.AUTO_TOPUP, receipt_url=receipt)
        except RecordConflict:
            outcome = "duplicate"
        self._succeeded(user_id, topup_id, pi_id)
        return outcome

    def _succeeded(self, user_id: str, topup_id: str, pi_id: str) -> None:
        for _ in range(MAX_ATTEMPTS):
            before = self._read(user_id)
            after = plan_success(before, topup_id, self._now())
            if after is None:
                return
            try:
                self._store.resolve(before, after, topup_id, {
                    "status": "succeeded", "payment_intent": pi_id, "updated_at": self._now()})
                return
            except StaleRead:
                continue
        raise ContentionTimeout("The auto top-up item is busy; retry the event.")

    def _fail(self, user_id: str, topup_id: str, pi_id: str | None, reason: str) -> str:
        """End the top-up in flight as failed (once), then raise the alert (every time:
        the alert sink dedupes by event id, so a crash between the two loses nothing)."""
        for _ in range(MAX_ATTEMPTS):
            before = self._read(user_id)
            failure = plan_failure(before, topup_id, self._now())
            if failure is None:
                break  # applied already (or not in flight): re-raise what was recorded
            outcome = {"status": "failed", "reason": reason,
                       "consecutive_failures": failure.after.failures,
                       "auto_topup_disabled": failure.disabled, "updated_at": self._now()}
            if pi_id:
                outcome["payment_intent"] = pi_id
            try:
                self._store.resolve(failure.before, failure.after, topup_id, outcome)
            except StaleRead:
                continue
            break
        else:
            raise ContentionTimeout("The auto top-up item is busy; retry the event.")
        record = self._ledger.get_record(topup_record_key(topup_id), user_id) or {}
        if record.get("status") != "failed":
            return "ignored"
        disabled = bool(record.get("auto_topup_disabled"))
        failures = int(record.get("consecutive_failures", 0))
        message = (f"Auto top-up of {record.get('amount')} USD failed ({record.get('reason')})."
                   + (f" After {failures} failures in a row, auto top-up is now disabled; "
                      "save a working card and enable it again." if disabled else ""))
        self._alerts.emit(user_id, TOPUP_FAILED, {
            "topup_id": topup_id,
            "payment_intent": record.get("payment_intent"),
            "amount": format_money(Decimal(record.get("amount", 0))),
            "reason": record.get("reason"),
            "consecutive_failures": failures,
            "auto_topup_disabled": disabled,
            "message": message,
        }, alert_event_id(topup_id))
        return "topup_failed"


class AutoTopupWatcher:
    """The account-events watcher (services/account_events.py's AccountWatcher)."""

    def __init__(self, service: AutoTopupService) -> None:
        self._service = service

    def on_account_change(self, change: AccountChange) -> None:
        self._service.on_account_change(change)


def _meta(obj: dict[str, Any], name: str) -> str | None:
    metadata = obj.get("metadata")
    value = metadata.get(name) if isinstance(metadata, dict) else None
    return value if isinstance(value, str) and value else None


def _id_of(value: Any) -> str | None:
    if isinstance(value, dict):
        value = value.get("id")
    return value if isinstance(value, str) and value else None


def _receipt_url(pi: dict[str, Any]) -> str | None:
    """The receipt of the PaymentIntent's charge when the event carries it expanded."""
    charge = pi.get("latest_charge")
    url = charge.get("receipt_url") if isinstance(charge, dict) else None
    return url if isinstance(url, str) and url.startswith("https://") else None
