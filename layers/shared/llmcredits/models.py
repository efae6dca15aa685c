"""Request and response models of our own endpoints (they also generate the OpenAPI)."""

from __future__ import annotations

from decimal import Decimal
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, WithJsonSchema

from llmcredits.money import MoneyError, parse_money

MONEY_SCHEMA = {
    "type": "string",
    "pattern": r"^-?\d+(\.\d{1,6})?$",
    "examples": ["12.500000"],
    "description": "A decimal amount of credits as a string (1 credit = 1 USD), up to 6 places.",
}


def _money(raw: object) -> Decimal:
    try:
        return parse_money(raw)
    except MoneyError as exc:
        raise ValueError(str(exc)) from exc


def _positive_money(raw: object) -> Decimal:
    value = _money(raw)
    if value <= 0:
        raise ValueError("must be greater than 0")
    return value


def _non_negative_money(raw: object) -> Decimal:
    value = _money(raw)
    if value < 0:
        raise ValueError("must not be negative")
    return value


PositiveMoney = Annotated[Decimal, BeforeValidator(_positive_money), WithJsonSchema(MONEY_SCHEMA)]
NonNegativeMoney = Annotated[
    Decimal, BeforeValidator(_non_negative_money), WithJsonSchema(MONEY_SCHEMA)
]
MoneyOut = Annotated[str, WithJsonSchema(MONEY_SCHEMA)]
TierName = Literal["free", "starter", "professional", "enterprise"]
GrantType = Literal["bonus", "refund", "adjustment"]
EntryTypeName = Literal["purchase", "usage", "refund", "bonus", "adjustment", "chargeback",
                        "expiry", "reinstatement"]


class ApiModel(BaseModel):
    """Every API model: its validator is built on first use, not at import (cold start:
    a function imports many models and uses one or two per request)."""

    model_config = ConfigDict(defer_build=True)


class Strict(ApiModel):
    model_config = ConfigDict(extra="forbid")


class HealthResponse(ApiModel):
    status: Literal["ok"]
    version: str


class CreditsResponse(ApiModel):
    user_id: str
    balance: MoneyOut
    held: MoneyOut = Field(description="Reserved by chat requests in flight")
    available: MoneyOut = Field(description="balance - held: what new requests can use")
    tier: TierName
    monthly_cap: MoneyOut | None
    month: str = Field(examples=["2026-11"])
    month_spent: MoneyOut
    created_at: str


class MonthlyCapRequest(Strict):
    monthly_cap: NonNegativeMoney | None = Field(
        description="The most usage may spend in a calendar month (UTC); null removes the cap"
    )


class LedgerEntryOut(ApiModel):
    id: str
    created_at: str
    type: EntryTypeName
    amount: MoneyOut = Field(description="Signed: positive adds credits, negative takes them")
    balance_after: MoneyOut
    provider: str | None
    model: str | None
    tokens: int | None
    cost: MoneyOut | None
    key_id: str | None = Field(default=None, description="The API key that made this usage")
    metadata: dict[str, Any]


class HistoryResponse(ApiModel):
    items: list[LedgerEntryOut]
    next_cursor: str | None


class AdminGrantRequest(Strict):
    amount: PositiveMoney
    type: GrantType = "bonus"
    reason: str = Field(default="", max_length=500)


class AdminGrantResponse(ApiModel):
    user_id: str
    balance: MoneyOut
    entry: LedgerEntryOut


class AdminPatchRequest(Strict):
    tier: TierName | None = None
    monthly_cap: NonNegativeMoney | None = None
