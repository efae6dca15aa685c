"""The response of GET /generations/{request_id} (OpenRouter's ``/generation?id=`` shape:
the record under ``data``, with our field names and money as 6-place strings)."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any, Literal

from pydantic import Field

from llmcredits.domain.generations import Generation
from llmcredits.models import ApiModel, MoneyOut
from llmcredits.money import format_money

GenerationStatusName = Literal["settled", "partial", "pending"]


class GenerationOut(ApiModel):
    id: str = Field(description="The request id: the X-Request-Id header, every stream "
                                "chunk's id")
    status: GenerationStatusName = Field(
        description="pending: running, or answered and not yet committed (cost known once "
                    "answered); settled: charged; partial: charged for a stream that ended "
                    "early (client gone or upstream failed) for what was generated")
    created_at: str = Field(description="When the charge was decided (UTC); while the "
                                        "request runs, when its hold was reserved")
    model: str | None
    provider: str | None
    power_level: str | None
    byok: bool | None = Field(description="Paid with your own provider key (BYOK fee)")
    key_id: str | None = Field(description="The API key that made the request; null for a "
                                           "login token")
    prompt_tokens: int | None
    completion_tokens: int | None
    total_tokens: int | None
    cost: MoneyOut | None = Field(description="What the request was charged; null while it "
                                              "runs")
    hold: MoneyOut | None = Field(description="What was reserved for it: the most it can cost")
    latency_ms: int | None = Field(description="Time the upstream took to answer")
    usage_missing: bool = Field(description="The upstream reported no usage: charged the "
                                            "hold's bound")


class GenerationResponse(ApiModel):
    data: GenerationOut


def generation_out(generation: Generation) -> GenerationOut:
    values: dict[str, Any] = {
        **asdict(generation),
        "status": generation.status.value,
        "cost": None if generation.cost is None else format_money(generation.cost),
        "hold": None if generation.hold is None else format_money(generation.hold),
    }
    return GenerationOut(**values)
