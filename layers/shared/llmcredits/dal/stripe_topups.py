"""Stripe adapter for auto top-up: customers, setup-mode Checkout, saved cards and
off-session PaymentIntents. Implements ``llmcredits.services.auto_topup.TopupProvider``.

Same client set-up as ``stripe_checkout`` (secret key from ``secret()``, STRIPE_API_BASE,
one network retry: every create carries an idempotency key). Errors are logged by class,
HTTP status and Stripe's code only, never the message (it may echo request data).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import Any

from llmcredits.dal.secrets import secret
from llmcredits.dal.stripe_checkout import HTTP_TIMEOUT_SECONDS, StripeClients
from llmcredits.services.auto_topup import (
    CardOnFile,
    ChargeAttempt,
    OffSessionCharge,
    ProviderBusy,
    SetupSessionRequest,
)
from llmcredits.services.payments import CheckoutSession, CheckoutUnavailable
from llmcredits.units import Seconds

log = logging.getLogger("llmcredits.stripe")


def _log_error(what: str, exc: Any) -> None:
    log.error(f"stripe {what} failed", extra={"stripe_error": type(exc).__name__,
                                              "http_status": exc.http_status,
                                              "stripe_code": exc.code})


class StripeTopups:
    def __init__(
        self,
        *,
        api_key: Callable[[], str | None],
        api_base: str | None = None,
        timeout_seconds: Seconds = HTTP_TIMEOUT_SECONDS,
    ) -> None:
        self._clients = StripeClients(api_key, api_base, timeout_seconds)

    @classmethod
    def from_env(cls) -> StripeTopups:
        return cls(api_key=lambda: secret("STRIPE_SECRET_KEY"),
                   api_base=os.environ.get("STRIPE_API_BASE") or None)

    def _stripe(self) -> Any:
        return self._clients()

    @staticmethod
    def _unavailable(what: str, exc: Any) -> CheckoutUnavailable:
        import stripe

        _log_error(what, exc)
        if isinstance(exc, (stripe.APIConnectionError, stripe.APIError, stripe.RateLimitError)):
            return CheckoutUnavailable("Stripe is not reachable right now; retry.")
        return CheckoutUnavailable(f"Stripe refused to create the {what}.")

    def create_customer(self, user_id: str, idempotency_key: str) -> str:
        import stripe

        try:
            customer = self._stripe().v1.customers.create(
                params={"metadata": {"llmcredits_user_id": user_id},
                        "description": f"llmcredits user {user_id}"},
                options={"idempotency_key": idempotency_key})
        except stripe.StripeError as exc:
            raise self._unavailable("customer", exc) from exc
        return str(customer.id)

    def create_setup_session(self, request: SetupSessionRequest) -> CheckoutSession:
        import stripe

        params: dict[str, Any] = {
            "mode": "setup",
            "customer": request.customer,
            "payment_method_types": ["card"],
            "success_url": request.success_url,
            "cancel_url": request.cancel_url,
            "client_reference_id": request.user_id,
            "metadata": dict(request.metadata),
            # On the SetupIntent too, so the saved card is recognisable in Stripe.
            "setup_intent_data": {"metadata": dict(request.metadata)},
        }
        try:
            session = self._stripe().v1.checkout.sessions.create(params=params)
        except stripe.StripeError as exc:
            raise self._unavailable("checkout session", exc) from exc
        if not session.id or not session.url:
            raise CheckoutUnavailable("Stripe returned a session without a checkout URL.")
        return CheckoutSession(id=str(session.id), url=str(session.url))

    def saved_card(self, setup_intent: str) -> CardOnFile | None:
        import stripe

        try:
            intent = self._stripe().v1.setup_intents.retrieve(
                setup_intent, params={"expand": ["payment_method"]}).to_dict()
        except stripe.StripeError as exc:
            _log_error("setup intent retrieve", exc)
            raise ProviderBusy() from exc
        pm = intent.get("payment_method")
        customer = intent.get("customer")
        if intent.get("status") != "succeeded" or not pm or not customer:
            return None
        if isinstance(pm, str):
            return CardOnFile(str(customer), pm, "", "")
        card = pm.get("card") or {}
        return CardOnFile(str(customer), str(pm["id"]), str(card.get("brand") or ""),
                          str(card.get("last4") or ""))

    def charge_off_session(self, charge: OffSessionCharge) -> ChargeAttempt:
        import stripe

        params = {
            "amount": charge.amount_cents,
            "currency": charge.currency,
            "customer": charge.customer,
            "payment_method": charge.payment_method,
            "off_session": True,
            "confirm": True,
            "metadata": dict(charge.metadata),
            "description": "llmcredits auto top-up",
        }
        try:
            intent = self._stripe().v1.payment_intents.create(
                params=params, options={"idempotency_key": charge.idempotency_key})
        except stripe.CardError as exc:
            # Declined, or authentication required: Stripe created the PaymentIntent and
            # names it in the error; its payment_failed webhook follows.
            body = exc.json_body if isinstance(exc.json_body, dict) else {}
            error = body.get("error") or {}
            pi = error.get("payment_intent") or {}
            code = error.get("decline_code") or error.get("code") or exc.code
            return ChargeAttempt(pi.get("id") if isinstance(pi, dict) else None, "failed",
                                 str(code) if code else None)
        except (stripe.APIConnectionError, stripe.APIError, stripe.RateLimitError) as exc:
            _log_error("payment intent create", exc)
            raise ProviderBusy() from exc
        except stripe.StripeError as exc:
            # A definite refusal (a detached card, a deleted customer): a failed top-up.
            _log_error("payment intent create", exc)
            return ChargeAttempt(None, "failed", str(exc.code or "payment_refused"))
        status = str(intent.status)
        if status in ("succeeded", "processing"):
            return ChargeAttempt(str(intent.id), status)
        if status == "requires_action":
            return ChargeAttempt(str(intent.id), "requires_action", "authentication_required")
        return ChargeAttempt(str(intent.id), "failed", status)

    def receipt_url(self, charge: str) -> str | None:
        import stripe

        try:
            found = self._stripe().v1.charges.retrieve(charge).to_dict()
        except stripe.StripeError as exc:
            _log_error("charge retrieve", exc)
            return None
        url = found.get("receipt_url")
        return str(url) if url else None
