"""Request and response models of the purchase and webhook routes (and their OpenAPI)."""

from __future__ import annotations

from decimal import Decimal
from typing import Annotated

from pydantic import BeforeValidator, Field, WithJsonSchema

from llmcredits.models import ApiModel, Strict
from llmcredits.money import MoneyError, parse_money

PURCHASE_AMOUNT_SCHEMA = {
    "type": "string",
    "pattern": r"^\d+(\.\d{1,2})?$",
    "examples": ["25.00"],
    "description": "USD to pay (= credits to receive), a decimal string with at most 2 "
    "places, within the configured bounds (default 5 to 1000).",
}
MAX_URL_LENGTH = 2048


def _purchase_amount(raw: object) -> Decimal:
    try:
        value = parse_money(raw, max_places=2)
    except MoneyError as exc:
        raise ValueError(str(exc)) from exc
    if value <= 0:
        raise ValueError("must be greater than 0")
    return value


PurchaseAmount = Annotated[
    Decimal, BeforeValidator(_purchase_amount), WithJsonSchema(PURCHASE_AMOUNT_SCHEMA)
]


class PurchaseRequest(Strict):
    amount: PurchaseAmount
    success_url: str = Field(
        min_length=1, max_length=MAX_URL_LENGTH,
        description="Where Stripe sends the buyer after paying; must be on the allow-list. "
        "May contain {CHECKOUT_SESSION_ID}.",
        examples=["https://app.example.com/billing/success?session={CHECKOUT_SESSION_ID}"],
    )
    cancel_url: str = Field(
        min_length=1, max_length=MAX_URL_LENGTH,
        description="Where Stripe sends the buyer who cancels; must be on the allow-list.",
        examples=["https://app.example.com/billing"],
    )


class PurchaseResponse(ApiModel):
    checkout_url: str = Field(description="Stripe Checkout page to send the buyer to")
    session_id: str = Field(examples=["cs_test_a1b2c3"])


class WebhookResponse(ApiModel):
    received: bool
    event_id: str
    type: str
    outcome: str = Field(
        description="credited, duplicate, refunded, disputed, reinstated, covered (recorded; "
        "the charge was already clawed back or nothing to give back), awaiting_payment, "
        "payment_failed, unknown_payment_ignored (a session this service did not start), "
        "unknown_charge_ignored (a refund/dispute of a payment never credited, after the "
        "retry window) or ignored"
    )
