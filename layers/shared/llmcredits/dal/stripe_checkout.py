"""Stripe adapter: Checkout Session creation and webhook signature verification.

``stripe`` is imported inside the methods, so functions that never pay do not load it.
The secret key and the webhook secret are read on use through ``secret()``: from the
environment locally (STRIPE_SECRET_KEY, STRIPE_WEBHOOK_SECRET), from SSM Parameter Store
in Lambda (STRIPE_SECRET_KEY_PARAM, STRIPE_WEBHOOK_SECRET_PARAM; cached by Powertools).
So the purchase function needs only the key and the webhook function only the webhook
secret. STRIPE_API_BASE points the client at another host (tests, the local stack's
dev stand-in ``llmcredits.local.dev_stripe``, stripe-mock). A secret that is not
configured is a 503 ``payments_not_configured`` naming the setting, never a generic 500
(for the webhook, a non-2xx also makes Stripe retry once it is configured).
Neither secret is ever logged, returned or put into an exception message.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from decimal import Decimal
from typing import Any

from llmcredits.dal.secrets import secret
from llmcredits.errors import ApiError
from llmcredits.services.payments import (
    CheckoutIdempotencyMismatch,
    CheckoutRequest,
    CheckoutSession,
    CheckoutUnavailable,
    InvalidWebhook,
)
from llmcredits.units import Seconds

log = logging.getLogger("llmcredits.stripe")


class PaymentsNotConfigured(ApiError):
    """A Stripe secret is not configured: our misconfiguration, so a 5xx (never the
    caller's fault, and for the webhook a non-2xx makes Stripe retry later)."""

    status = 503
    type = "server_error"
    code = "payments_not_configured"

    @classmethod
    def missing(cls, name: str) -> PaymentsNotConfigured:
        log.error("stripe secret not configured", extra={"setting": name})
        return cls(
            f"Payments are not configured on this server: {name} is not set "
            f"(locally the variable {name}, in Lambda the SSM parameter named by {name}_PARAM)."
        )


def _configured(read: Callable[[], str | None], name: str) -> str:
    """The secret, or PaymentsNotConfigured (also when SSM cannot give it: a parameter
    that does not exist or may not be read is a deployment error, not a generic 500)."""
    try:
        value = read()
    except Exception as exc:
        log.error("stripe secret could not be read",
                  extra={"setting": name, "error": type(exc).__name__})
        raise PaymentsNotConfigured(
            f"Payments are not configured on this server: {name} could not be read "
            f"(the SSM parameter named by {name}_PARAM)."
        ) from None
    if not value:
        raise PaymentsNotConfigured.missing(name)
    return value


# Stripe's own default and the contract: a signed payload older than this is refused.
SIGNATURE_TOLERANCE_SECONDS = 300
# Under the purchase function's timeout, with room to answer.
HTTP_TIMEOUT_SECONDS = 8.0
NETWORK_RETRIES = 1  # safe: every create carries an idempotency key


class StripeClients:
    """The StripeClient of a container: built on first use (so importing the adapter
    never loads stripe), rebuilt when the secret key is rotated."""

    def __init__(self, api_key: Callable[[], str | None], api_base: str | None,
                 timeout_seconds: Seconds) -> None:
        self._api_key = api_key
        self._api_base = api_base.rstrip("/") if api_base else None
        self._timeout = timeout_seconds
        self._client: Any = None
        self._client_key: str | None = None

    def __call__(self) -> Any:
        import stripe

        key = _configured(self._api_key, "STRIPE_SECRET_KEY")
        if self._client is None or key != self._client_key:
            self._client = stripe.StripeClient(
                key,
                base_addresses={"api": self._api_base} if self._api_base else {},
                http_client=stripe.RequestsClient(timeout=self._timeout),
                max_network_retries=NETWORK_RETRIES,
            )
            self._client_key = key
        return self._client


class StripeCheckout:
    """Implements ``llmcredits.services.payments.PaymentProvider``."""

    def __init__(
        self,
        *,
        api_key: Callable[[], str | None],
        webhook_secret: Callable[[], str | None],
        api_base: str | None = None,
        timeout_seconds: Seconds = HTTP_TIMEOUT_SECONDS,
    ) -> None:
        self._api_key = api_key
        self._webhook_secret = webhook_secret
        self._clients = StripeClients(api_key, api_base, timeout_seconds)

    @classmethod
    def from_env(cls) -> StripeCheckout:
        return cls(
            api_key=lambda: secret("STRIPE_SECRET_KEY"),
            webhook_secret=lambda: secret("STRIPE_WEBHOOK_SECRET"),
            api_base=os.environ.get("STRIPE_API_BASE") or None,
        )

    # -- Checkout --------------------------------------------------------------------------

    def create_checkout_session(self, request: CheckoutRequest) -> CheckoutSession:
        import stripe

        params: dict[str, Any] = {
            "mode": "payment",
            "line_items": [
                {
                    "price_data": {
                        "currency": request.currency,
                        "unit_amount": request.amount_cents,
                        "product_data": {"name": request.product_name},
                    },
                    "quantity": 1,
                }
            ],
            "success_url": request.success_url,
            "cancel_url": request.cancel_url,
            "client_reference_id": request.user_id,
            "metadata": dict(request.metadata),
            # Copied to the PaymentIntent so refunds and disputes are recognisable in Stripe.
            "payment_intent_data": {"metadata": dict(request.metadata)},
        }
        try:
            session = self._stripe().v1.checkout.sessions.create(
                params=params, options={"idempotency_key": request.idempotency_key}
            )
        except stripe.IdempotencyError as exc:
            raise CheckoutIdempotencyMismatch() from exc
        except stripe.StripeError as exc:
            # The class, status and Stripe's error code only: never the message, which may
            # echo request data, and never the key.
            log.error("stripe checkout session create failed",
                      extra={"stripe_error": type(exc).__name__, "http_status": exc.http_status,
                             "stripe_code": exc.code})
            if isinstance(exc, (stripe.APIConnectionError, stripe.APIError,
                                stripe.RateLimitError)):
                raise CheckoutUnavailable("Stripe is not reachable right now; retry.") from exc
            raise CheckoutUnavailable("Stripe refused to create the checkout session.") from exc
        if not session.id or not session.url:
            raise CheckoutUnavailable("Stripe returned a session without a checkout URL.")
        return CheckoutSession(id=str(session.id), url=str(session.url))

    def receipt_url(self, payment_intent: str) -> str | None:
        """``latest_charge.receipt_url`` of the PaymentIntent, expanded in one retrieve.
        Any failure (Stripe down, no key configured) is logged and answered None: the
        purchase is credited without a receipt link rather than not at all."""
        import stripe

        try:
            intent = self._stripe().v1.payment_intents.retrieve(
                payment_intent, params={"expand": ["latest_charge"]})
        except (stripe.StripeError, PaymentsNotConfigured) as exc:
            log.warning("stripe receipt lookup failed",
                        extra={"payment_intent": payment_intent,
                               "stripe_error": type(exc).__name__})
            return None
        charge = intent.to_dict().get("latest_charge")
        url = charge.get("receipt_url") if isinstance(charge, dict) else None
        return url if isinstance(url, str) and url.startswith(("https://", "http://")) else None

    def _stripe(self) -> Any:
        return self._clients()

    # -- webhooks ---------------------------------------------------------------------------

    def verify_webhook(self, payload: str, signature: str | None) -> dict[str, Any]:
        """Stripe's own verification (HMAC-SHA256 of "<t>.<raw body>", constant-time
        compare, any v1 signature of the header, 300 s tolerance), then the body parsed
        with Decimal for non-integer numbers (Stripe's money fields are integer cents)."""
        import stripe

        # Our misconfiguration, not the sender's fault: a 5xx, so Stripe retries.
        webhook_secret = _configured(self._webhook_secret, "STRIPE_WEBHOOK_SECRET")
        if not signature:
            raise InvalidWebhook("The Stripe-Signature header is missing.")
        try:
            stripe.WebhookSignature.verify_header(
                payload, signature, webhook_secret, tolerance=SIGNATURE_TOLERANCE_SECONDS
            )
        except stripe.SignatureVerificationError as exc:
            text = str(exc.user_message or exc)
            if "tolerance" in text:
                reason = (f"The Stripe-Signature timestamp is more than "
                          f"{SIGNATURE_TOLERANCE_SECONDS} seconds old.")
            else:
                reason = "The Stripe-Signature does not match the payload."
            raise InvalidWebhook(reason) from None  # no chained payload/header
        try:
            event = json.loads(payload, parse_float=Decimal)
        except ValueError:
            raise InvalidWebhook("The payload is not JSON.") from None
        if not isinstance(event, dict):
            raise InvalidWebhook("The payload is not a Stripe event.")
        return event
