"""Request and response models of the saved card and auto top-up routes (and their OpenAPI)."""

from __future__ import annotations

from decimal import Decimal
from typing import Annotated

from pydantic import BeforeValidator, Field, WithJsonSchema

from llmcredits.models import ApiModel, MoneyOut, Strict
from llmcredits.models_payments import MAX_URL_LENGTH, PurchaseAmount
from llmcredits.money import MoneyError, parse_money

CENTS_SCHEMA = {
    "type": "string",
    "pattern": r"^\d+(\.\d{1,2})?$",
    "examples": ["5.00"],
    "description": "USD, a decimal string with at most 2 places.",
}


def _cents_amount(raw: object) -> Decimal:
    try:
        value = parse_money(raw, max_places=2)
    except MoneyError as exc:
        raise ValueError(str(exc)) from exc
    if value < 0:
        raise ValueError("must not be negative")
    return value


CentsAmount = Annotated[Decimal, BeforeValidator(_cents_amount), WithJsonSchema(CENTS_SCHEMA)]


class PaymentMethodRequest(Strict):
    success_url: str = Field(
        min_length=1, max_length=MAX_URL_LENGTH,
        description="Where Stripe sends the customer after saving the card; must be on the "
        "allow-list.", examples=["https://app.example.com/billing/card-saved"])
    cancel_url: str = Field(
        min_length=1, max_length=MAX_URL_LENGTH,
        description="Where Stripe sends the customer who cancels; must be on the allow-list.",
        examples=["https://app.example.com/billing"])


class PaymentMethodResponse(ApiModel):
    checkout_url: str = Field(description="Stripe Checkout page (setup mode) that saves a card")


class AutoTopupRequest(Strict):
    enabled: bool = Field(description="Enabling needs a saved card and all three amounts "
                          "(given here or stored before)")
    threshold: CentsAmount | None = Field(
        default=None, description="Top up when usage leaves available credits below this")
    amount: PurchaseAmount | None = Field(
        default=None, description="USD charged (= credits added) per top-up, within the "
        "purchase bounds")
    monthly_limit: CentsAmount | None = Field(
        default=None, description="The most top-ups may charge in a calendar month (UTC), "
        "the one in flight included")


class SavedCardOut(ApiModel):
    brand: str = Field(examples=["visa"])
    last4: str = Field(examples=["4242"])


class AutoTopupResponse(ApiModel):
    enabled: bool
    threshold: MoneyOut | None
    amount: MoneyOut | None
    monthly_limit: MoneyOut | None
    payment_method: SavedCardOut | None = Field(description="The saved card, if any")
    month: str = Field(examples=["2026-12"])
    month_topped_up: MoneyOut = Field(description="Top-ups this month, the one in flight "
                                      "included")
    in_flight: bool = Field(description="A top-up is being charged now")
    consecutive_failures: int = Field(description="Failed top-ups in a row (3 disable it)")
