"""Credit purchases with Stripe Checkout, and the webhook that lands each one exactly once.

Pure use cases over ``LedgerService`` and a small ``PaymentProvider`` port (implemented
by ``llmcredits.dal.stripe_checkout``); no boto3 and no stripe import here.

Exactly once (DESIGN invariant 3). Stripe retries for days, may deliver an event twice,
concurrently, or out of order, and one Checkout Session may produce both
``checkout.session.completed`` and ``checkout.session.async_payment_succeeded``. Every
money change carries dedupe records *in the same DynamoDB transaction as its ledger
entry* (``RecordWrite``), so "credited" and "recorded as credited" cannot come apart:

- ``stripe-event:<evt id>`` (user partition, must not exist): one event, one change.
- ``checkout-session:<cs id>`` (user partition, must not exist): one session, one credit.
- ``payment-intent:<pi id>`` (global, created by the credit): payment -> user, session,
  amount, and the refunded/disputed totals so far with a ``version`` for optimistic
  concurrency. Refund and dispute events carry only the payment intent, so this is how
  they find the purchase.
- ``stripe-dispute:<dp id>`` (user partition, must not exist): one dispute, one clawback.

A ``RecordConflict`` from the ledger means the change was applied already (answer 200,
change nothing) or, for the payment-intent record, that a concurrent refund/dispute
moved it (re-read and re-plan).

Refunds: ``charge.amount_refunded`` is cumulative, so the clawback is the refunded total
minus the total already clawed back, written with a ``version`` guard: duplicate,
concurrent and out-of-order refund events together claw back exactly what Stripe
refunded. Disputes claw back the disputed amount once per dispute.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Any, Protocol
from urllib.parse import SplitResult, urlsplit

from llmcredits.domain.ledger import EntryType, RecordWrite, timestamp
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


def dispute_key(dispute_id: str) -> str:
    return f"stripe-dispute:{dispute_id}"


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


class PaymentProvider(Protocol):
    def create_checkout_session(self, request: CheckoutRequest) -> CheckoutSession:
        """Raises CheckoutIdempotencyMismatch or CheckoutUnavailable."""
        ...

    def verify_webhook(self, payload: str, signature: str | None) -> dict[str, Any]:
        """The event of a correctly signed, recent payload (numbers as int/Decimal).

        Raises InvalidWebhook."""
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

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> PurchaseConfig:
        """PURCHASE_MIN_USD, PURCHASE_MAX_USD, CHECKOUT_URL_ALLOWLIST (comma-separated)."""
        env = os.environ if environ is None else environ
        low = _config_amount(env.get("PURCHASE_MIN_USD"), DEFAULT_MIN_USD, "PURCHASE_MIN_USD")
        high = _config_amount(env.get("PURCHASE_MAX_USD"), DEFAULT_MAX_USD, "PURCHASE_MAX_USD")
        if high < low:
            raise ValueError("PURCHASE_MAX_USD must not be below PURCHASE_MIN_USD")
        raw = env.get("CHECKOUT_URL_ALLOWLIST")
        entries = DEFAULT_URL_ALLOWLIST if raw is None else raw
        allowed = tuple(AllowedUrl.parse(e) for e in entries.split(",") if e.strip())
        return cls(min_amount=low, max_amount=high, allowed_urls=allowed)


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
    ) -> None:
        self._ledger = ledger
        self._provider = provider
        self._config = config
        self._clock = clock

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
        handler = {
            "checkout.session.completed": self._session_completed,
            "checkout.session.async_payment_succeeded": self._session_paid,
            "checkout.session.async_payment_failed": self._session_failed,
            "charge.refunded": self._charge_refunded,
            "charge.dispute.created": self._dispute_created,
        }.get(event_type)
        outcome = "ignored" if handler is None else handler(event_id, obj)
        log.info("stripe event", extra={"event_id": event_id, "event_type": event_type,
                                        "outcome": outcome})
        return WebhookOutcome(event_id, event_type, outcome)

    # -- checkout sessions -----------------------------------------------------------------

    def _session_completed(self, event_id: str, session: dict[str, Any]) -> str:
        purchase = _parse_session(session)
        if purchase is None:
            return "ignored"
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
        if session.get("payment_status") != "paid":
            log.warning("async_payment_succeeded without payment_status=paid",
                        extra={"event_id": event_id, "session_id": purchase.session_id})
            return "ignored"
        return self._credit(event_id, purchase)

    def _session_failed(self, event_id: str, session: dict[str, Any]) -> str:
        purchase = _parse_session(session)
        if purchase is None:
            return "ignored"
        self._mark_purchase(purchase, "failed", event_id)
        return "payment_failed"

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
                    {
                        "user_id": purchase.user_id,
                        "checkout_session": purchase.session_id,
                        "amount_cents": purchase.amount_cents,
                        "refunded_cents": 0,
                        "disputed_cents": 0,
                        "version": 0,
                        "stripe_event": event_id,
                        "credited_at": now,
                    },
                    None,
                )
            )
        try:
            result = self._ledger.credit(
                purchase.user_id, amount, EntryType.PURCHASE, metadata=links, records=records
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

    def _charge_refunded(self, event_id: str, charge: dict[str, Any]) -> str:
        payment_intent = _id_of(charge.get("payment_intent"))
        charge_id = _id_of(charge.get("id")) or ""
        refunded = _cents(charge, "amount_refunded")
        if not payment_intent or refunded is None:
            return "ignored"  # not a Checkout payment of ours
        if str(charge.get("currency", CURRENCY)).lower() != CURRENCY:
            log.error("refund in an unexpected currency", extra={"event_id": event_id})
            return "ignored"
        for _ in range(MAX_ATTEMPTS):
            record = self._payment(payment_intent, event_id)
            before = int(record["refunded_cents"])
            new = refunded - before
            if new <= 0:
                return "duplicate"  # this refund total (or a later one) was applied
            try:
                result = self._ledger.clawback(
                    record["user_id"],
                    dollars(new),
                    EntryType.REFUND,
                    metadata={
                        "stripe_event": event_id,
                        "checkout_session": record["checkout_session"],
                        "payment_intent": payment_intent,
                        "charge": charge_id,
                        "refunded_total": format_money(dollars(refunded)),
                    },
                    records=[
                        RecordWrite(event_key(event_id),
                                    {"applied_at": timestamp(self._clock()),
                                     "payment_intent": payment_intent},
                                    record["user_id"]),
                        self._payment_update(payment_intent, record, refunded_cents=refunded),
                    ],
                )
            except RecordConflict as conflict:
                if conflict.key == event_key(event_id):
                    return "duplicate"
                continue  # another refund or dispute moved the payment: re-read
            self._flag_negative(record["user_id"], result, event_id)
            return "refunded"
        raise ContentionTimeout("The payment is busy; retry the event.")

    def _dispute_created(self, event_id: str, dispute: dict[str, Any]) -> str:
        dispute_id = _id_of(dispute.get("id"))
        payment_intent = _id_of(dispute.get("payment_intent"))
        amount = _cents(dispute, "amount")
        if not dispute_id or amount is None or amount <= 0:
            return "ignored"
        if not payment_intent:
            # Disputes carry their payment intent; one without is not a Checkout payment.
            log.error("dispute without a payment intent", extra={"event_id": event_id,
                                                                   "dispute": dispute_id})
            return "ignored"
        if str(dispute.get("currency", CURRENCY)).lower() != CURRENCY:
            log.error("dispute in an unexpected currency", extra={"event_id": event_id})
            return "ignored"
        for _ in range(MAX_ATTEMPTS):
            record = self._payment(payment_intent, event_id)
            user = record["user_id"]
            try:
                result = self._ledger.clawback(
                    user,
                    dollars(amount),
                    EntryType.CHARGEBACK,
                    metadata={
                        "stripe_event": event_id,
                        "checkout_session": record["checkout_session"],
                        "payment_intent": payment_intent,
                        "charge": _id_of(dispute.get("charge")) or "",
                        "dispute": dispute_id,
                        "reason": str(dispute.get("reason") or ""),
                    },
                    records=[
                        RecordWrite(event_key(event_id),
                                    {"applied_at": timestamp(self._clock()),
                                     "payment_intent": payment_intent}, user),
                        RecordWrite(dispute_key(dispute_id),
                                    {"amount": dollars(amount), "stripe_event": event_id,
                                     "payment_intent": payment_intent}, user),
                        self._payment_update(
                            payment_intent, record,
                            disputed_cents=int(record["disputed_cents"]) + amount,
                        ),
                    ],
                )
            except RecordConflict as conflict:
                if conflict.key in (event_key(event_id), dispute_key(dispute_id)):
                    return "duplicate"
                continue
            self._flag_negative(user, result, event_id)
            return "disputed"
        raise ContentionTimeout("The payment is busy; retry the event.")

    def _payment(self, payment_intent: str, event_id: str) -> dict[str, Any]:
        record = self._ledger.get_record(payment_intent_key(payment_intent), None)
        if record is None:
            # Stripe does not order deliveries: a refund or dispute can arrive before the
            # purchase's own event has been credited (e.g. its delivery failed and is
            # being retried). Failing this one makes Stripe retry it too, after the
            # credit has landed; a 200 now would lose the clawback. (A charge that never
            # was an llmcredits purchase is retried until Stripe gives up: give llmcredits
            # its own Stripe account or endpoint subscription.)
            log.warning("refund/dispute for a payment not credited yet",
                        extra={"event_id": event_id, "payment_intent": payment_intent})
            raise RetryLater(
                "The payment this event refers to has not been credited yet; retry later."
            )
        return record

    def _payment_update(
        self, payment_intent: str, record: dict[str, Any], **changes: int
    ) -> RecordWrite:
        version = int(record["version"])
        values = {**record, **changes, "version": version + 1}
        return RecordWrite(payment_intent_key(payment_intent), values, None,
                           expect={"version": version})

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
