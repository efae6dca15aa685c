"""Request and response models of GET/PUT /credits/alerts."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from llmcredits.models import ApiModel, MoneyOut, PositiveMoney, Strict

Percent = Annotated[int, Field(strict=True, ge=1, le=100)]


class AlertsRequest(Strict):
    low_balance: PositiveMoney | None = Field(
        default=None, description="balance.low when available credits drop below this; "
        "null: no balance alert")
    cap_percent: list[Percent] = Field(
        default_factory=list, max_length=10,
        description="cap.threshold once a month when month_spent reaches each percent of "
        "the monthly cap (unique, 1..100)", examples=[[80, 100]])
    webhook_url: str | None = Field(
        default=None, max_length=2048,
        description="Where alerts are POSTed, signed (LLMCredits-Signature); https only "
        "(http to a loopback host in the local stack); null: events go to the bus only")
    rotate_secret: bool = Field(
        default=False, description="Make a new signing secret (returned once); the old one "
        "stops signing at once")


class AlertsResponse(ApiModel):
    low_balance: MoneyOut | None
    cap_percent: list[int]
    webhook_url: str | None
    webhook_secret_set: bool = Field(description="A signing secret exists (it is never shown "
                                     "again after the PUT that made it)")
    updated_at: str | None
    event_types: list[str] = Field(description="The alert types there are")


class AlertsPutResponse(AlertsResponse):
    webhook_secret: str | None = Field(
        description="The webhook signing secret (whsec_...): only in the answer of the PUT "
        "that made it (first webhook_url, or rotate_secret); store it now")
