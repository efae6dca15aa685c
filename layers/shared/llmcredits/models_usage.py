"""GET /usage's response models (built by ``services.usage.build_report``)."""

from __future__ import annotations

from pydantic import Field

from llmcredits.models import ApiModel, MoneyOut


class UsageTotalsOut(ApiModel):
    requests: int = Field(description="Metered chat requests")
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    cost: MoneyOut = Field(description="Credits charged")


class ProviderUsageOut(UsageTotalsOut):
    provider: str


class ModelUsageOut(UsageTotalsOut):
    model: str
    provider: str


class KeyUsageOut(UsageTotalsOut):
    key_id: str | None = Field(description="The API key; null: requests with a login token")


class DayUsageOut(UsageTotalsOut):
    date: str = Field(examples=["2026-11-27"], description="UTC day")


class UsageResponse(ApiModel):
    user_id: str
    days: int
    start_date: str = Field(description="First UTC day of the window (inclusive)")
    end_date: str = Field(description="Last UTC day of the window (today, inclusive)")
    totals: UsageTotalsOut
    by_provider: list[ProviderUsageOut] = Field(description="Most expensive first")
    by_model: list[ModelUsageOut] = Field(description="Most expensive first")
    by_day: list[DayUsageOut] = Field(description="Every day of the window, oldest first")
    by_key: list[KeyUsageOut] = Field(description="Per API key (null: login token), most "
                                      "expensive first")
