"""Request and response models of our own endpoints (they also generate the OpenAPI)."""

from __future__ import annotations

from decimal import Decimal
from typing import Annotated, Any, Literal

from pydantic import AwareDatetime, BaseModel, BeforeValidator, ConfigDict, Field, WithJsonSchema

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


LotSourceName = Literal["purchase", "auto_topup", "bonus", "refund", "adjustment",
                        "reinstatement", "migrated"]


class LotOut(ApiModel):
    amount: MoneyOut = Field(description="Credited")
    remaining: MoneyOut = Field(description="Not spent yet (usage spends the soonest-"
                                "expiring lot first, lots without expiry last)")
    source: LotSourceName = Field(description="migrated: the balance from before lots")
    expires_at: str | None = Field(description="UTC; null: never expires",
                                   examples=["2026-12-31T00:00:00.000000Z"])


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
    lots: list[LotOut] = Field(description="Lots with credits left, in spending order")


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
    receipt_url: str | None = Field(default=None,
                                    description="A purchase's receipt (Stripe)")
    metadata: dict[str, Any]


class HistoryResponse(ApiModel):
    items: list[LedgerEntryOut]
    next_cursor: str | None


class AdminGrantRequest(Strict):
    amount: PositiveMoney
    type: GrantType = "bonus"
    reason: str = Field(default="", max_length=500)
    expires_at: AwareDatetime | None = Field(
        default=None, description="ISO 8601 with a time zone: the granted lot expires then "
        "(what is left of it leaves the balance as an expiry entry). Default: never.",
        examples=["2026-12-31T00:00:00Z"])
    expires_in_days: int | None = Field(
        default=None, ge=1, le=3650, description="Instead of expires_at: days from now")


class AdminGrantResponse(ApiModel):
    user_id: str
    balance: MoneyOut
    entry: LedgerEntryOut


class AdminPatchRequest(Strict):
    tier: TierName | None = None
    monthly_cap: NonNegativeMoney | None = None
