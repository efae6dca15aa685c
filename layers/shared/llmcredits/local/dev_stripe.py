"""DEVELOPMENT STAND-IN for Stripe: Checkout Sessions, a pay page and signed webhooks.

Not Stripe and not for production: no card is charged and nothing leaves 127.0.0.1.
``make dev`` starts it when ``STRIPE_SECRET_KEY`` is not set, so buying credits works
offline end to end; tests use it (``tests/fakes/stripe_api.py`` re-exports it) to see
exactly what our Stripe adapter sends. Every response carries ``X-Dev-Stripe: true``.

Stripe's API as our adapter (``llmcredits.dal.stripe_checkout``) uses it:

* ``POST /v1/checkout/sessions`` (form-encoded, ``Authorization: Bearer sk_...``): a
  ``checkout.session`` object (``status`` "open", ``payment_status`` "unpaid") whose
  ``url`` is this server's own ``/pay/<session id>``. ``Idempotency-Key``: the same key
  with the same parameters replays the first response (``Idempotent-Replayed: true``);
  with different parameters it is a 400 ``idempotency_error``, as on Stripe. Only
  successful creations are saved (Stripe does not save requests that failed validation).
* ``GET /v1/checkout/sessions/<id>``: the session as it is now.
* ``POST /v1/refunds`` (``payment_intent``, optional ``amount``): refunds as below.
* ``GET /v1/payment_intents/<id>`` (``expand[]=latest_charge``): a paid session's
  PaymentIntent; its charge carries a ``receipt_url`` (this server's ``/receipts/<ch>``,
  a plain page), which the webhook path records on the purchase entry.

Stand-in pages (no API key; what a buyer's browser or a developer's curl does):

* ``GET /pay/<session id>`` or ``POST /pay/<session id>``: the buyer pays. The session
  becomes ``complete``/``paid`` with a ``payment_intent`` (``pi_test_...``) and a charge,
  a ``checkout.session.completed`` event is delivered, signed, to the webhook URL (before
  answering, so the credit has landed when the redirect is followed), then ``303`` to
  the session's ``success_url`` (``{CHECKOUT_SESSION_ID}`` filled in, like Stripe). Paying
  a paid session charges nothing again: it redelivers the same event (same event id, as
  a Stripe retry would), which also retries a delivery that failed.
* ``POST /refund/<session id>?amount=<cents>`` (default: all that is left): refunds part
  of the payment and delivers ``charge.refunded`` with the cumulative ``amount_refunded``.
* ``POST /dispute/<session id>``: the buyer disputes the whole charge
  (``charge.dispute.created``); ``POST /dispute/<session id>/close?status=won|lost``
  closes it (``charge.dispute.closed``, and for ``won`` ``charge.dispute.funds_reinstated``).

Auto top-up (saved cards and off-session payments), as Stripe shapes them:

* ``POST /v1/customers``: a ``customer`` (Idempotency-Key honoured as above).
* ``POST /v1/checkout/sessions`` with ``mode=setup`` (and ``customer``): a setup-mode
  session whose ``url`` is ``/pay/<id>``. Visiting it "saves a card": a SetupIntent
  (``seti_test_...``, succeeded) and a PaymentMethod attached to the customer, then a
  signed ``checkout.session.completed`` (mode ``setup``, ``setup_intent``) and 303 to the
  success URL. ``?card=`` picks the card, as Stripe's test PaymentMethods do:
  ``pm_card_visa`` (default: payments succeed), ``pm_card_chargeDeclined`` (declined) or
  ``pm_card_authenticationRequired`` (the payment needs the customer: ``requires_action``).
* ``GET /v1/setup_intents/<id>`` (``expand[]=payment_method``), ``GET /v1/charges/<id>``
  (with a ``receipt_url``).
* ``POST /v1/payment_intents`` (``amount``, ``currency``, ``customer``, ``payment_method``:
  a saved one or a ``pm_card_*`` shorthand, ``confirm``, ``off_session``, ``metadata``):
  succeeds (200, ``status`` succeeded, ``latest_charge``; event
  ``payment_intent.succeeded``), is declined (402 ``card_error`` ``card_declined`` naming
  the PaymentIntent, now ``requires_payment_method``; ``payment_intent.payment_failed``)
  or needs authentication (200, ``requires_action``; ``payment_intent.requires_action``).
  The same Idempotency-Key replays the first answer, error included, with no new event.
* ``POST /payment_methods/<pm>/card?card=pm_card_chargeDeclined``: make a saved card
  behave as another from now on (a card that starts failing).

Webhook signing is Stripe's scheme (https://docs.stripe.com/webhooks#verify-manually):
``Stripe-Signature: t=<unix time>,v1=<hex HMAC-SHA256 of "<t>.<raw body>">`` keyed with
the endpoint secret; the body is pretty-printed JSON, as Stripe sends it. Deliveries are
not retried automatically; each is recorded in :attr:`DevStripe.deliveries`.

Python API::

    with DevStripe(webhook_url, "whsec_dev", "sk_test_dev") as stripe:
        # point STRIPE_API_BASE at stripe.url, STRIPE_SECRET_KEY at "sk_test_dev"
        stripe.pay(session_id)          # or GET stripe.url + "/pay/" + session_id
        stripe.requests, stripe.sessions, stripe.events, stripe.deliveries

Command line: ``python -m llmcredits.local.dev_stripe --port 12111 --webhook-url
http://127.0.0.1:3000/api/v1/llm/stripe/webhook``.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import hashlib
import hmac
import json
import secrets
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, parse_qsl, urlsplit

from llmcredits.local.dev_server import StandIn, StandInHandler
from llmcredits.units import Seconds

DEV_HEADER = "X-Dev-Stripe"
API_VERSION = "2025-10-29.clover"
MAX_BODY_BYTES = 1024 * 1024
WEBHOOK_TIMEOUT_SECONDS = 15.0
WEBHOOK_USER_AGENT = "Stripe/1.0 (+https://stripe.com/docs/webhooks)"
#: Stripe's minimum charge in USD cents.
MINIMUM_AMOUNT_CENTS = 50
#: The default webhook signing secret (public: this is a development stand-in).
DEV_WEBHOOK_SECRET = "whsec_dev_local"  # noqa: S105 - not a secret


# --------------------------------------------------------------------------- objects


def new_id(prefix: str) -> str:
    return f"{prefix}_test_{secrets.token_hex(12)}"


def checkout_session(
    *,
    user_id: str | None,
    amount_cents: int,
    session_id: str | None = None,
    payment_intent: str | None = "auto",
    payment_status: str = "paid",
    metadata: dict[str, str] | None = None,
    success_url: str = "http://localhost:3000/billing/success",
    cancel_url: str | None = "http://localhost:3000/billing",
    currency: str = "usd",
) -> dict[str, Any]:
    """A ``checkout.session`` object (by default paid, with llmcredits metadata)."""
    now = int(time.time())
    sid = session_id or new_id("cs")
    if metadata is None:
        metadata = (
            {
                "llmcredits_user_id": user_id,
                "llmcredits_credits": f"{amount_cents // 100}.{amount_cents % 100:02d}",
            }
            if user_id
            else {}
        )
    return {
        "id": sid,
        "object": "checkout.session",
        "amount_subtotal": amount_cents,
        "amount_total": amount_cents,
        "cancel_url": cancel_url,
        "client_reference_id": user_id,
        "created": now,
        "currency": currency,
        "customer": None,
        "customer_details": {"email": "buyer@example.com", "name": "Buyer"},
        "expires_at": now + 86400,
        "livemode": False,
        "metadata": metadata,
        "mode": "payment",
        "payment_intent": new_id("pi") if payment_intent == "auto" else payment_intent,
        "payment_method_types": ["card"],
        "payment_status": payment_status,
        "status": "complete" if payment_status == "paid" else "open",
        "success_url": success_url,
        "total_details": {"amount_discount": 0, "amount_shipping": 0, "amount_tax": 0},
        "url": None,
    }


def charge(
    *,
    payment_intent: str,
    amount: int,
    amount_refunded: int,
    charge_id: str | None = None,
    currency: str = "usd",
) -> dict[str, Any]:
    """A ``charge`` object; ``amount_refunded`` is cumulative, as on Stripe."""
    return {
        "id": charge_id or new_id("ch"),
        "object": "charge",
        "amount": amount,
        "amount_captured": amount,
        "amount_refunded": amount_refunded,
        "captured": True,
        "created": int(time.time()),
        "currency": currency,
        "disputed": False,
        "livemode": False,
        "metadata": {},
        "paid": True,
        "payment_intent": payment_intent,
        "refunded": amount_refunded == amount,
        "status": "succeeded",
    }


def dispute(
    *,
    payment_intent: str,
    amount: int,
    charge_id: str | None = None,
    dispute_id: str | None = None,
) -> dict[str, Any]:
    return {
        "id": dispute_id or new_id("dp"),
        "object": "dispute",
        "amount": amount,
        "charge": charge_id or new_id("ch"),
        "created": int(time.time()),
        "currency": "usd",
        "is_charge_refundable": False,
        "livemode": False,
        "metadata": {},
        "payment_intent": payment_intent,
        "reason": "fraudulent",
        "status": "needs_response",
    }


#: Stripe's test PaymentMethods: what paying with each does, and how it looks.
TEST_CARDS: dict[str, dict[str, str]] = {
    "pm_card_visa": {"outcome": "succeed", "brand": "visa", "last4": "4242"},
    "pm_card_chargeDeclined": {"outcome": "decline", "brand": "visa", "last4": "0002"},
    "pm_card_authenticationRequired": {"outcome": "authenticate", "brand": "visa",
                                       "last4": "3155"},
}


def payment_method(card: str, customer: str | None) -> dict[str, Any]:
    """A ``payment_method`` of type card, made from one of TEST_CARDS."""
    looks = TEST_CARDS[card]
    return {
        "id": new_id("pm"),
        "object": "payment_method",
        "type": "card",
        "card": {"brand": looks["brand"], "last4": looks["last4"], "exp_month": 12,
                 "exp_year": 2034, "country": "US", "funding": "credit"},
        "created": int(time.time()),
        "customer": customer,
        "livemode": False,
        "metadata": {},
    }


def payment_intent(
    *,
    amount: int,
    customer: str | None,
    payment_method_id: str | None,
    metadata: dict[str, str] | None = None,
    status: str = "succeeded",
    currency: str = "usd",
    latest_charge: str | None = None,
    last_payment_error: dict[str, Any] | None = None,
    pi_id: str | None = None,
) -> dict[str, Any]:
    """A ``payment_intent`` object (by default a succeeded off-session payment)."""
    return {
        "id": pi_id or new_id("pi"),
        "object": "payment_intent",
        "amount": amount,
        "amount_received": amount if status == "succeeded" else 0,
        "capture_method": "automatic",
        "confirmation_method": "automatic",
        "created": int(time.time()),
        "currency": currency,
        "customer": customer,
        "description": None,
        "last_payment_error": last_payment_error,
        "latest_charge": latest_charge,
        "livemode": False,
        "metadata": metadata or {},
        "next_action": {"type": "use_stripe_sdk"} if status == "requires_action" else None,
        "payment_method": payment_method_id,
        "payment_method_types": ["card"],
        "setup_future_usage": None,
        "status": status,
    }


def event(type_: str, obj: dict[str, Any], event_id: str | None = None) -> dict[str, Any]:
    """A Stripe ``event`` wrapping ``obj``."""
    return {
        "id": event_id or f"evt_{secrets.token_hex(12)}",
        "object": "event",
        "api_version": API_VERSION,
        "created": int(time.time()),
        "data": {"object": obj},
        "livemode": False,
        "pending_webhooks": 1,
        "request": {"id": None, "idempotency_key": None},
        "type": type_,
    }


def payload(evt: dict[str, Any]) -> str:
    """The body as Stripe sends it (pretty-printed)."""
    return json.dumps(evt, indent=2)


def sign(body: str, secret: str, timestamp: int | None = None) -> str:
    """The Stripe-Signature header Stripe sends with ``body``."""
    ts = int(time.time()) if timestamp is None else timestamp
    mac = hmac.new(secret.encode(), f"{ts}.{body}".encode(), hashlib.sha256).hexdigest()
    return f"t={ts},v1={mac}"


def stripe_error(type_: str, message: str, param: str | None = None,
                 code: str | None = None) -> dict[str, Any]:
    """Stripe's error body: ``{"error": {"type", "message", "param"?, "code"?}}``."""
    body: dict[str, Any] = {"type": type_, "message": message}
    if param:
        body["param"] = param
    if code:
        body["code"] = code
    return {"error": body}


# --------------------------------------------------------------------------- records


@dataclass
class RecordedRequest:
    """One request as received (form fields of a form-encoded body, else ``{}``)."""

    method: str
    path: str
    headers: dict[str, str]  # lower-case names
    form: dict[str, str]
    query: dict[str, str] = field(default_factory=dict)
    received_at: Seconds = field(default_factory=time.time)

    @property
    def idempotency_key(self) -> str | None:
        return self.headers.get("idempotency-key")

    @property
    def api_key(self) -> str | None:
        auth = self.headers.get("authorization", "")
        return auth.removeprefix("Bearer ") if auth.startswith("Bearer ") else None

    def prefixed(self, prefix: str) -> dict[str, str]:
        """Form fields under ``prefix[...]``, e.g. prefixed("metadata")."""
        start = f"{prefix}["
        return {
            k[len(start) : -1]: v
            for k, v in self.form.items()
            if k.startswith(start) and k.endswith("]") and "][" not in k[len(start) :]
        }


@dataclass(frozen=True)
class Delivery:
    """One webhook delivery attempt: ``status`` None when the endpoint was unreachable."""

    event_id: str
    event_type: str
    url: str
    status: int | None
    body: str
    error: str | None = None
    delivered_at: Seconds = field(default_factory=time.time)

    @property
    def ok(self) -> bool:
        return self.status is not None and 200 <= self.status < 300

    @property
    def outcome(self) -> str | None:
        """Our webhook's ``outcome`` (credited, duplicate, refunded, ...) when it said one."""
        try:
            parsed = json.loads(self.body)
        except ValueError:
            return None
        value = parsed.get("outcome") if isinstance(parsed, dict) else None
        return value if isinstance(value, str) else None


class DevStripeError(Exception):
    """A Stripe-shaped error answer."""

    def __init__(self, status: int, body: dict[str, Any]) -> None:
        super().__init__(body.get("error", {}).get("message", ""))
        self.status = status
        self.body = body


def _invalid(message: str, param: str | None = None, code: str | None = None) -> DevStripeError:
    return DevStripeError(400, stripe_error("invalid_request_error", message, param, code))


def _missing(kind: str, ident: str) -> DevStripeError:
    return DevStripeError(
        404,
        stripe_error("invalid_request_error", f"No such {kind}: '{ident}'", "id",
                     "resource_missing"),
    )


# --------------------------------------------------------------------------- the stand-in


@dataclass
class _Payment:
    """What paying a session created: its charge, its event, the refunded total."""

    payment_intent: str
    charge_id: str
    completed_event: dict[str, Any]
    refunded: int = 0
    dispute: dict[str, Any] | None = None  # the payment's one dispute, once opened


class DevStripe(StandIn):
    """Stripe's Checkout API, a pay page and signed webhooks on 127.0.0.1 (dev stand-in).

    ``api_key``: the secret key requests must carry (None: any ``sk_...`` key).
    ``webhook_url``: where events are delivered (None: recorded in :attr:`events` only);
    may be set after start (e.g. once the API's port is known).
    """

    def __init__(
        self,
        webhook_url: str | None = None,
        webhook_secret: str = DEV_WEBHOOK_SECRET,
        api_key: str | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        self.webhook_url = webhook_url
        self.webhook_secret = webhook_secret
        self.api_key = api_key
        super().__init__(host, port)
        #: (status, Stripe error body) to answer every API request with (an outage).
        self.fail_with: tuple[int, dict[str, Any]] | None = None
        self._lock = threading.Lock()
        self._requests: list[RecordedRequest] = []
        self._sessions: dict[str, dict[str, Any]] = {}
        self._payments: dict[str, _Payment] = {}  # by session id
        self._events: list[dict[str, Any]] = []
        self._deliveries: list[Delivery] = []
        # (api key, idempotency key) -> (form, response body)
        # (api key, idempotency key) -> (path, form, status, response body)
        self._idempotent: dict[tuple[str, str],
                               tuple[str, dict[str, str], int, dict[str, Any]]] = {}
        self._customers: dict[str, dict[str, Any]] = {}
        # payment method id -> (object, the TEST_CARDS entry it behaves as)
        self._payment_methods: dict[str, tuple[dict[str, Any], str]] = {}
        self._setup_intents: dict[str, dict[str, Any]] = {}
        self._payment_intents: dict[str, dict[str, Any]] = {}
        self._charges: dict[str, dict[str, Any]] = {}
        self._setups: dict[str, dict[str, Any]] = {}  # setup session id -> its event

    # ---- lifecycle

    name = "dev-stripe"

    def pay_url(self, session_id: str) -> str:
        return f"{self.url}/pay/{session_id}"

    # ---- what happened (snapshots)

    @property
    def requests(self) -> list[RecordedRequest]:
        """Every request received (API calls and pay/refund pages), oldest first."""
        with self._lock:
            return list(self._requests)

    @property
    def sessions(self) -> dict[str, dict[str, Any]]:
        """Checkout Sessions by id, as they are now."""
        with self._lock:
            return copy.deepcopy(self._sessions)

    @property
    def events(self) -> list[dict[str, Any]]:
        """Every event created (delivered or not), oldest first."""
        with self._lock:
            return copy.deepcopy(self._events)

    @property
    def deliveries(self) -> list[Delivery]:
        with self._lock:
            return list(self._deliveries)

    def clear(self) -> None:
        with self._lock:
            self._requests.clear()
            self._sessions.clear()
            self._payments.clear()
            self._events.clear()
            self._deliveries.clear()
            self._idempotent.clear()
            self._customers.clear()
            self._payment_methods.clear()
            self._setup_intents.clear()
            self._payment_intents.clear()
            self._charges.clear()
            self._setups.clear()

    @property
    def customers(self) -> dict[str, dict[str, Any]]:
        with self._lock:
            return copy.deepcopy(self._customers)

    @property
    def payment_methods(self) -> dict[str, dict[str, Any]]:
        """Saved PaymentMethods by id."""
        with self._lock:
            return {k: copy.deepcopy(v[0]) for k, v in self._payment_methods.items()}

    @property
    def payment_intents(self) -> dict[str, dict[str, Any]]:
        """PaymentIntents by id, as they are now."""
        with self._lock:
            return copy.deepcopy(self._payment_intents)

    def set_card(self, payment_method_id: str, card: str) -> dict[str, Any]:
        """Make a saved card behave as the TEST_CARDS entry ``card`` from now on."""
        if card not in TEST_CARDS:
            raise _invalid(f"Unknown test card {card!r}.", "card")
        with self._lock:
            found = self._payment_methods.get(payment_method_id)
            if found is None:
                raise _missing("payment_method", payment_method_id)
            self._payment_methods[payment_method_id] = (found[0], card)
            return copy.deepcopy(found[0])

    # ---- setup mode: the customer saves a card

    def save_card(self, session_id: str, card: str = "pm_card_visa"
                  ) -> tuple[dict[str, Any], Delivery | None]:
        """Complete a setup-mode session with ``card`` (once; again = redeliver)."""
        if card not in TEST_CARDS:
            raise _invalid(f"Unknown test card {card!r}.", "card")
        with self._lock:
            session = self._sessions.get(session_id)
            if session is None:
                raise _missing("checkout.session", session_id)
            evt = self._setups.get(session_id)
            if evt is None:
                customer = session.get("customer")
                pm = payment_method(card, customer)
                self._payment_methods[pm["id"]] = (pm, card)
                seti = {
                    "id": new_id("seti"), "object": "setup_intent", "customer": customer,
                    "payment_method": pm["id"], "status": "succeeded", "usage": "off_session",
                    "created": int(time.time()), "livemode": False,
                    "metadata": dict(session.get("metadata") or {}),
                    "payment_method_types": ["card"],
                }
                self._setup_intents[seti["id"]] = seti
                session = {**session, "status": "complete", "setup_intent": seti["id"],
                           "url": None}
                self._sessions[session_id] = session
                evt = event("checkout.session.completed", copy.deepcopy(session))
                self._setups[session_id] = evt
                self._events.append(evt)
            evt = copy.deepcopy(evt)
            session = copy.deepcopy(session)
        return session, self.deliver(evt)

    # ---- off-session payments

    def _create_payment_intent(self, form: dict[str, str], metadata: dict[str, str]
                               ) -> tuple[int, dict[str, Any], dict[str, Any] | None]:
        """(status, body, event to deliver) of POST /v1/payment_intents."""
        for name in ("amount", "currency"):
            if not form.get(name):
                raise _invalid(f"Missing required param: {name}.", name, "parameter_missing")
        try:
            amount = int(form["amount"])
        except ValueError:
            raise _invalid("Invalid integer", "amount", "parameter_invalid_integer") from None
        if amount < MINIMUM_AMOUNT_CENTS:
            raise _invalid("Amount must be at least $0.50 usd", "amount", "amount_too_small")
        if form.get("confirm") != "true":
            raise _invalid("This stand-in supports confirm=true only.", "confirm")
        customer = form.get("customer") or None
        if customer is not None and customer not in self._customers:
            raise _missing("customer", customer)
        pm_id = form.get("payment_method") or ""
        if pm_id in TEST_CARDS:  # Stripe's shorthand: a fresh PaymentMethod of that card
            pm = payment_method(pm_id, customer)
            self._payment_methods[pm["id"]] = (pm, pm_id)
            pm_id = pm["id"]
        found = self._payment_methods.get(pm_id)
        if found is None:
            raise _missing("payment_method", pm_id) if pm_id else _invalid(
                "Missing required param: payment_method.", "payment_method",
                "parameter_missing")
        if customer is not None and found[0].get("customer") not in (None, customer):
            raise _invalid("The provided PaymentMethod is attached to another customer.",
                           "payment_method")
        outcome = TEST_CARDS[found[1]]["outcome"]
        currency = form["currency"].lower()
        if outcome == "succeed":
            pi = payment_intent(amount=amount, customer=customer, payment_method_id=pm_id,
                                metadata=metadata, currency=currency)
            ch = charge(payment_intent=pi["id"], amount=amount, amount_refunded=0,
                        currency=currency)
            ch["receipt_url"] = f"{self.url}/receipts/{ch['id']}"
            ch["payment_method"] = pm_id
            self._charges[ch["id"]] = ch
            pi["latest_charge"] = ch["id"]
            self._payment_intents[pi["id"]] = pi
            return 200, copy.deepcopy(pi), event("payment_intent.succeeded", copy.deepcopy(pi))
        if outcome == "authenticate":
            pi = payment_intent(amount=amount, customer=customer, payment_method_id=pm_id,
                                metadata=metadata, currency=currency, status="requires_action")
            self._payment_intents[pi["id"]] = pi
            return 200, copy.deepcopy(pi), event("payment_intent.requires_action",
                                                 copy.deepcopy(pi))
        error = {"type": "card_error", "code": "card_declined", "decline_code": "generic_decline",
                 "message": "Your card was declined.", "payment_method": {"id": pm_id}}
        pi = payment_intent(amount=amount, customer=customer, payment_method_id=None,
                            metadata=metadata, currency=currency,
                            status="requires_payment_method", last_payment_error=error)
        self._payment_intents[pi["id"]] = pi
        body = {"error": {**error, "payment_intent": copy.deepcopy(pi),
                          "request_log_url": f"{self.url}/logs"}}
        return 402, body, event("payment_intent.payment_failed", copy.deepcopy(pi))

    # ---- the buyer and the operator

    def pay(self, session_id: str, card: str | None = None
            ) -> tuple[dict[str, Any], Delivery | None]:
        """Pay the session (once; again = redeliver its event) and deliver the event.
        A setup-mode session saves ``card`` instead (see save_card)."""
        with self._lock:
            session = self._sessions.get(session_id)
            if session is None:
                raise _missing("checkout.session", session_id)
            setup = session.get("mode") == "setup"
        if setup:
            return self.save_card(session_id, card or "pm_card_visa")
        with self._lock:
            session = self._sessions[session_id]
            paid = self._payments.get(session_id)
            if paid is None:
                pi = new_id("pi")
                session = {**session, "status": "complete", "payment_status": "paid",
                           "payment_intent": pi, "url": None}
                self._sessions[session_id] = session
                evt = event("checkout.session.completed", copy.deepcopy(session))
                paid = _Payment(pi, new_id("ch"), evt)
                self._payments[session_id] = paid
                self._events.append(evt)
            evt = copy.deepcopy(paid.completed_event)
            session = copy.deepcopy(session)
        return session, self.deliver(evt)

    def refund(self, session_id: str, amount: int | None = None
               ) -> tuple[dict[str, Any], Delivery | None]:
        """Refund ``amount`` cents (default: the rest) and deliver ``charge.refunded``.
        Returns the refund object and the delivery."""
        with self._lock:
            session = self._sessions.get(session_id)
            if session is None:
                raise _missing("checkout.session", session_id)
            paid = self._payments.get(session_id)
            if paid is None:
                raise _invalid("This PaymentIntent does not have a successful charge to "
                               "refund.", "payment_intent", "charge_not_refundable")
            total = int(session["amount_total"])
            left = total - paid.refunded
            amount = left if amount is None else amount
            if amount <= 0:
                raise _invalid("Refund amount must be a positive integer of cents."
                               if left > 0 else f"Charge {paid.charge_id} has already been "
                               "refunded.", "amount",
                               "parameter_invalid_integer" if left > 0 else
                               "charge_already_refunded")
            if amount > left:
                raise _invalid(f"Refund amount (${amount / 100:.2f}) is greater than "
                               f"unrefunded amount on charge (${left / 100:.2f})", "amount",
                               "amount_too_large")
            paid.refunded += amount
            obj = charge(payment_intent=paid.payment_intent, amount=total,
                         amount_refunded=paid.refunded, charge_id=paid.charge_id,
                         currency=str(session["currency"]))
            evt = event("charge.refunded", obj)
            self._events.append(evt)
            refund = {
                "id": new_id("re"), "object": "refund", "amount": amount,
                "charge": paid.charge_id, "created": int(time.time()),
                "currency": session["currency"], "metadata": {},
                "payment_intent": paid.payment_intent, "reason": None,
                "status": "succeeded",
            }
            evt = copy.deepcopy(evt)
        return refund, self.deliver(evt)

    def open_dispute(self, session_id: str) -> tuple[dict[str, Any], Delivery | None]:
        """The buyer disputes the whole charge: ``charge.dispute.created`` (funds withdrawn).
        Again: redelivers that event."""
        with self._lock:
            paid = self._paid(session_id)
            if paid.dispute is None:
                amount = int(self._sessions[session_id]["amount_total"])
                paid.dispute = dispute(payment_intent=paid.payment_intent, amount=amount,
                                       charge_id=paid.charge_id)
            evt = event("charge.dispute.created", copy.deepcopy(paid.dispute))
            self._events.append(evt)
        return copy.deepcopy(evt["data"]["object"]), self.deliver(evt)

    def close_dispute(self, session_id: str, status: str
                      ) -> tuple[dict[str, Any], list[Delivery | None]]:
        """Close the payment's dispute ``won`` (Stripe then also sends
        ``charge.dispute.funds_reinstated``) or ``lost``; every event is delivered."""
        if status not in ("won", "lost"):
            raise _invalid("status must be won or lost.", "status")
        with self._lock:
            paid = self._paid(session_id)
            if paid.dispute is None:
                raise _invalid("This charge has no dispute.", "charge")
            paid.dispute = {**paid.dispute, "status": status}
            types = ["charge.dispute.closed"]
            if status == "won":
                types.append("charge.dispute.funds_reinstated")
            events = [event(t, copy.deepcopy(paid.dispute)) for t in types]
            self._events.extend(events)
            dp = copy.deepcopy(paid.dispute)
        return dp, [self.deliver(evt) for evt in events]

    def _paid(self, session_id: str) -> _Payment:
        if session_id not in self._sessions:
            raise _missing("checkout.session", session_id)
        paid = self._payments.get(session_id)
        if paid is None:
            raise _invalid("This PaymentIntent does not have a successful charge.",
                           "payment_intent", "charge_not_disputable")
        return paid

    def deliver(self, evt: dict[str, Any]) -> Delivery | None:
        """POST ``evt``, signed, to the webhook URL (None when there is none)."""
        url = self.webhook_url
        if not url:
            return None
        body = payload(evt)
        request = urllib.request.Request(  # noqa: S310 - http(s) URL from our own config
            url,
            data=body.encode(),
            method="POST",
            headers={
                "Content-Type": "application/json; charset=utf-8",
                "User-Agent": WEBHOOK_USER_AGENT,
                "Stripe-Signature": sign(body, self.webhook_secret),
            },
        )
        status: int | None
        error: str | None = None
        try:
            with urllib.request.urlopen(  # noqa: S310
                request, timeout=WEBHOOK_TIMEOUT_SECONDS
            ) as response:
                status, text = response.status, response.read().decode(errors="replace")
        except urllib.error.HTTPError as exc:
            status, text = exc.code, exc.read().decode(errors="replace")
        except (urllib.error.URLError, OSError) as exc:
            status, text, error = None, "", str(getattr(exc, "reason", exc))
        delivery = Delivery(evt["id"], evt["type"], url, status, text, error)
        with self._lock:
            self._deliveries.append(delivery)
        return delivery

    # ---- the API (called by the handler)

    def _record(self, request: RecordedRequest) -> None:
        with self._lock:
            self._requests.append(request)

    def _api(self, req: RecordedRequest) -> tuple[int, dict[str, Any], dict[str, str]]:
        with self._lock:
            if self.fail_with is not None:
                return self.fail_with[0], copy.deepcopy(self.fail_with[1]), {}
        key = req.api_key
        if not key:
            raise DevStripeError(401, stripe_error(
                "invalid_request_error", "You did not provide an API key."))
        if (self.api_key is not None and not hmac.compare_digest(
                key.encode(), self.api_key.encode())) or not key.startswith("sk_"):
            raise DevStripeError(401, stripe_error(
                "invalid_request_error", f"Invalid API Key provided: {key[:8]}****",
                code="api_key_invalid"))
        path = req.path.rstrip("/")
        if req.method == "POST" and path == "/v1/checkout/sessions":
            return self._create_session(req, key)
        if req.method == "GET" and path.startswith("/v1/checkout/sessions/"):
            sid = path.rsplit("/", 1)[1]
            with self._lock:
                found = self._sessions.get(sid)
                if found is None:
                    raise _missing("checkout.session", sid)
                return 200, copy.deepcopy(found), {}
        if req.method == "POST" and path == "/v1/refunds":
            return 200, self._refund_by_payment_intent(req.form), {}
        if req.method == "POST" and path == "/v1/customers":
            return self._idempotent_create(req, key, self._new_customer)
        if req.method == "POST" and path == "/v1/payment_intents":
            return self._idempotent_create(req, key, self._payment_intent_answer)
        for prefix, store, kind in (("/v1/setup_intents/", self._setup_intents, "setup_intent"),
                                    ("/v1/charges/", self._charges, "charge"),
                                    ("/v1/payment_intents/", self._payment_intents,
                                     "payment_intent"),
                                    ("/v1/customers/", self._customers, "customer")):
            if req.method == "GET" and path.startswith(prefix):
                ident = path.removeprefix(prefix)
                if kind == "payment_intent" and ident not in self._payment_intents:
                    # A purchase's PaymentIntent (made when its Checkout was paid).
                    return 200, self._payment_intent(ident, req.query), {}
                with self._lock:
                    found = store.get(ident)
                    if found is None:
                        raise _missing(kind, ident)
                    found = copy.deepcopy(found)
                    expand = {v for k, v in req.query.items() if k.startswith("expand")}
                    pm = self._payment_methods.get(str(found.get("payment_method")))
                    if "payment_method" in expand and pm is not None:
                        found["payment_method"] = copy.deepcopy(pm[0])
                    latest = self._charges.get(str(found.get("latest_charge")))
                    if "latest_charge" in expand and latest is not None:
                        found["latest_charge"] = copy.deepcopy(latest)
                return 200, found, {}
        raise DevStripeError(404, stripe_error(
            "invalid_request_error", f"Unrecognized request URL ({req.method}: {req.path})."))

    def _create_session(self, req: RecordedRequest, api_key: str
                        ) -> tuple[int, dict[str, Any], dict[str, str]]:
        def create(request: RecordedRequest) -> tuple[int, dict[str, Any], None]:
            session = self._new_session(request)
            self._sessions[session["id"]] = session
            return 200, session, None

        return self._idempotent_create(req, api_key, create)

    def _idempotent_create(self, req: RecordedRequest, api_key: str, create: Any
                           ) -> tuple[int, dict[str, Any], dict[str, str]]:
        """Run ``create`` (-> status, body, event to deliver) once per Idempotency-Key:
        the same key and parameters replay the first answer (Stripe keeps an error
        answer too once the request ran), other parameters are an idempotency_error.
        Validation errors (DevStripeError) are not kept, as on Stripe."""
        with self._lock:
            idem = req.idempotency_key
            if idem:
                seen = self._idempotent.get((api_key, idem))
                if seen is not None:
                    path, form, status, body = seen
                    if form != req.form or path != req.path:
                        raise DevStripeError(400, stripe_error(
                            "idempotency_error",
                            "Keys for idempotent requests can only be used with the same "
                            "parameters they were first used with. Try using a key other "
                            f"than '{idem}' if you meant to execute a different request."))
                    return status, copy.deepcopy(body), {"Idempotent-Replayed": "true"}
            status, body, evt = create(req)
            if idem:
                self._idempotent[(api_key, idem)] = (req.path, dict(req.form), status,
                                                     copy.deepcopy(body))
            if evt is not None:
                self._events.append(evt)
        if evt is not None:
            self.deliver(copy.deepcopy(evt))
        return status, copy.deepcopy(body), {}

    def _new_customer(self, req: RecordedRequest) -> tuple[int, dict[str, Any], None]:
        customer: dict[str, Any] = {
            "id": new_id("cus"), "object": "customer", "created": int(time.time()),
            "description": req.form.get("description"), "email": req.form.get("email"),
            "livemode": False, "metadata": req.prefixed("metadata"),
        }
        self._customers[customer["id"]] = customer
        return 200, customer, None

    def _payment_intent_answer(self, req: RecordedRequest
                               ) -> tuple[int, dict[str, Any], dict[str, Any] | None]:
        return self._create_payment_intent(req.form, req.prefixed("metadata"))

    def _new_session(self, req: RecordedRequest) -> dict[str, Any]:
        form = req.form
        if form.get("mode") == "setup":
            return self._new_setup_session(req)
        if form.get("mode") != "payment":
            raise _invalid("Invalid mode: this stand-in supports mode=payment and setup.",
                           "mode")
        for name in ("success_url", "line_items[0][quantity]",
                     "line_items[0][price_data][currency]",
                     "line_items[0][price_data][unit_amount]",
                     "line_items[0][price_data][product_data][name]"):
            if not form.get(name):
                raise _invalid(f"Missing required param: {name}.", name, "parameter_missing")
        try:
            unit = int(form["line_items[0][price_data][unit_amount]"])
            quantity = int(form["line_items[0][quantity]"])
        except ValueError:
            raise _invalid("Invalid integer", "line_items[0][price_data][unit_amount]",
                           "parameter_invalid_integer") from None
        if unit * quantity < MINIMUM_AMOUNT_CENTS:
            raise _invalid("The Checkout Session's total amount due must add up to at least "
                           "$0.50 usd", "line_items[0][price_data][unit_amount]")
        session = checkout_session(
            user_id=form.get("client_reference_id"),
            amount_cents=unit * quantity,
            metadata=req.prefixed("metadata"),
            payment_status="unpaid",
            payment_intent=None,  # created when the buyer pays
            success_url=form["success_url"],
            cancel_url=form.get("cancel_url"),
            currency=form["line_items[0][price_data][currency]"].lower(),
        )
        session["url"] = self.pay_url(session["id"])
        return session

    def receipt_url(self, charge_id: str) -> str:
        return f"{self.url}/receipts/{charge_id}"

    def _payment_intent(self, pi: str, query: dict[str, str]) -> dict[str, Any]:
        with self._lock:
            paid = next((p for p in self._payments.values() if p.payment_intent == pi), None)
            if paid is None:
                raise _missing("payment_intent", pi)
            amount = int(paid.completed_event["data"]["object"]["amount_total"])
            refunded = paid.refunded
        latest: Any = paid.charge_id
        if "latest_charge" in query.values():  # expand[]=latest_charge (any index form)
            latest = {**charge(payment_intent=pi, amount=amount, amount_refunded=refunded,
                               charge_id=paid.charge_id),
                      "receipt_url": self.receipt_url(paid.charge_id)}
        return {"id": pi, "object": "payment_intent", "amount": amount,
                "amount_received": amount, "currency": "usd", "status": "succeeded",
                "latest_charge": latest, "livemode": False, "metadata": {}}

    def _new_setup_session(self, req: RecordedRequest) -> dict[str, Any]:
        form = req.form
        if not form.get("success_url"):
            raise _invalid("Missing required param: success_url.", "success_url",
                           "parameter_missing")
        customer = form.get("customer") or None
        if customer is not None and customer not in self._customers:
            raise _missing("customer", customer)
        session = checkout_session(
            user_id=form.get("client_reference_id"), amount_cents=0,
            metadata=req.prefixed("metadata"), payment_status="no_payment_required",
            payment_intent=None, success_url=form["success_url"],
            cancel_url=form.get("cancel_url"), currency="usd")
        session.update({"mode": "setup", "customer": customer, "setup_intent": None,
                        "amount_subtotal": None, "amount_total": None, "currency": None,
                        "status": "open", "url": self.pay_url(session["id"])})
        return session

    def _refund_by_payment_intent(self, form: dict[str, str]) -> dict[str, Any]:
        pi = form.get("payment_intent") or ""
        with self._lock:
            sid = next((s for s, p in self._payments.items() if p.payment_intent == pi), None)
        if sid is None:
            raise _missing("payment_intent", pi) if pi else _invalid(
                "Missing required param: payment_intent.", "payment_intent", "parameter_missing")
        return self.refund(sid, _cents(form.get("amount")))[0]


def _cents(raw: str | None) -> int | None:
    if raw is None or raw == "":
        return None
    try:
        return int(raw)
    except ValueError:
        raise _invalid("Invalid integer: amount must be a whole number of cents.", "amount",
                       "parameter_invalid_integer") from None


def _success_location(session: dict[str, Any]) -> str:
    return str(session.get("success_url") or "/").replace("{CHECKOUT_SESSION_ID}", session["id"])


# --------------------------------------------------------------------------- HTTP


class _Handler(StandInHandler):
    server_version = "llmcredits-dev-stripe"

    def _dispatch(self, method: str) -> None:
        stripe = self.server.owner
        parts = urlsplit(self.path)
        path = parts.path.rstrip("/") or "/"
        query = dict(parse_qsl(parts.query, keep_blank_values=True))
        headers = {k.lower(): v for k, v in self.headers.items()}
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY_BYTES:
            self.close_connection = True
            self._json(413, stripe_error("invalid_request_error", "Request body too large."))
            return
        raw = self.rfile.read(length).decode(errors="replace") if length > 0 else ""
        form = dict(parse_qsl(raw, keep_blank_values=True)) if raw else {}
        request = RecordedRequest(method, path, headers, form, query)
        stripe._record(request)
        try:
            if path.startswith("/v1/"):
                status, body, extra = stripe._api(request)
                self._json(status, body, extra)
            elif path.startswith("/pay/"):
                session, delivery = stripe.pay(path.removeprefix("/pay/"), query.get("card"))
                self._json(303, _page(session, delivery),
                           {"Location": _success_location(session)})
            elif method == "POST" and path.startswith("/dispute/") and \
                    path.endswith("/close"):
                session_id = path.removeprefix("/dispute/").removesuffix("/close")
                dp, deliveries = stripe.close_dispute(session_id, query.get("status", "won"))
                self._json(200, {"dispute": dp, "webhooks": [
                    _page(None, d)["webhook"] for d in deliveries]})
            elif method == "POST" and path.startswith("/dispute/"):
                dp, delivery = stripe.open_dispute(path.removeprefix("/dispute/"))
                self._json(200, {"dispute": dp, **_page(None, delivery)})
            elif method == "GET" and path.startswith("/receipts/"):
                self._json(200, {"object": "receipt", "charge": path.removeprefix("/receipts/"),
                                 "note": "dev stand-in: no money moved"})
            elif method == "POST" and path.startswith("/payment_methods/") and \
                    path.endswith("/card"):
                pm = stripe.set_card(path.removeprefix("/payment_methods/").removesuffix("/card"),
                                     query.get("card", "pm_card_visa"))
                self._json(200, {"payment_method": pm, "card": query.get("card", "pm_card_visa")})
            elif method == "POST" and path.startswith("/refund/"):
                amount = _cents(parse_qs(parts.query).get("amount", [None])[-1])
                refund, delivery = stripe.refund(path.removeprefix("/refund/"), amount)
                self._json(200, {"refund": refund, **_page(None, delivery)})
            else:
                raise DevStripeError(404, stripe_error(
                    "invalid_request_error",
                    f"Unrecognized request URL ({method}: {path})."))
        except DevStripeError as err:
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                self._json(err.status, err.body)
        except (BrokenPipeError, ConnectionResetError):
            pass

    def _json(self, status: int, body: dict[str, Any],
              headers: dict[str, str] | None = None) -> None:
        data = json.dumps(body, indent=2).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Request-Id", f"req_{secrets.token_hex(7)}")
        self.send_header("Stripe-Version", API_VERSION)
        self.send_header(DEV_HEADER, "true")
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)


def _page(session: dict[str, Any] | None, delivery: Delivery | None) -> dict[str, Any]:
    out: dict[str, Any] = {"dev_stripe": "development stand-in: no money moved"}
    if session is not None:
        out["session"] = session
    out["webhook"] = None if delivery is None else {
        "event_id": delivery.event_id, "type": delivery.event_type, "url": delivery.url,
        "status": delivery.status, "outcome": delivery.outcome, "error": delivery.error,
    }
    return out


# --------------------------------------------------------------------------- CLI


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0] if __doc__ else "")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=12111)
    parser.add_argument("--webhook-url", default=None)
    parser.add_argument("--webhook-secret", default=DEV_WEBHOOK_SECRET)
    parser.add_argument("--api-key", default=None, help="required secret key (default: any sk_)")
    args = parser.parse_args(argv)
    stripe = DevStripe(args.webhook_url, args.webhook_secret, args.api_key,
                       host=args.host, port=args.port).start()
    print(f"dev Stripe (development stand-in) on {stripe.url}; webhooks to "
          f"{args.webhook_url or '(none)'}")
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        stripe.stop()
    return 0


DevStripe.handler = _Handler

if __name__ == "__main__":
    raise SystemExit(main())
