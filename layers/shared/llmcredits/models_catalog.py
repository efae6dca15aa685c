"""Response models of GET /models: the OpenAI list shape plus our pricing fields."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from llmcredits.domain.pricing import Catalog, Model
from llmcredits.models import ApiModel, MoneyOut
from llmcredits.money import format_money


class ModelPricing(ApiModel):
    """Prices in credits (1 credit = 1 USD) per 1,000 tokens, as 6-place strings."""

    unit: Literal["1K tokens"] = "1K tokens"
    base_prompt: MoneyOut = Field(description="List price per 1K prompt tokens")
    base_completion: MoneyOut = Field(description="List price per 1K completion tokens")
    power_level: str = Field(description="The power level these prices are for")
    power_multiplier: MoneyOut
    tier: str = Field(description="The caller's tier")
    tier_markup: MoneyOut
    prompt: MoneyOut = Field(
        description="What the caller pays per 1K prompt tokens: base x power x (1 + markup), "
        "shown rounded; a request's charge is rounded once, on its total"
    )
    completion: MoneyOut = Field(description="What the caller pays per 1K completion tokens")


class ModelOut(ApiModel):
    id: str = Field(description='The value to send as "model"')
    object: Literal["model"] = "model"
    created: int
    owned_by: str
    provider: str
    power_levels: list[str]
    pricing: ModelPricing
    max_tokens: int = Field(description="The most completion tokens a request may ask for")
    context_window: int = Field(
        description="The most prompt tokens the model accepts; a request's hold never "
        "prices more prompt tokens than this (and prices this many when it carries an "
        "image, audio or a file)")
    allowed: bool = Field(description="Whether the caller's tier may use this model")


class ModelList(ApiModel):
    object: Literal["list"] = "list"
    data: list[ModelOut]


def model_view(
    prices: Catalog, model: Model, tier: str, power_level: str | None = None
) -> ModelOut:
    """One catalog model as the caller's tier sees it (priced at ``power_level`` when
    given, else at the model's first level the tier may use, else its first level)."""
    allowed_levels = prices.tier(tier).power_levels
    level_name = power_level or next(
        (n for n in model.power_levels if n in allowed_levels), model.power_levels[0]
    )
    level = prices.level(level_name)
    prompt, completion = prices.effective_per_1k(model, level_name, tier)
    max_tokens = level.max_completion_tokens
    if model.max_completion_tokens is not None:
        max_tokens = min(max_tokens, model.max_completion_tokens)
    return ModelOut(
        id=model.id,
        created=model.created,
        owned_by=model.provider,
        provider=model.provider,
        power_levels=list(model.power_levels),
        pricing=ModelPricing(
            base_prompt=format_money(model.price.prompt_per_1k),
            base_completion=format_money(model.price.completion_per_1k),
            power_level=level_name,
            power_multiplier=format_money(level.multiplier),
            tier=tier,
            tier_markup=format_money(prices.markup(tier)),
            prompt=format_money(prompt),
            completion=format_money(completion),
        ),
        max_tokens=max_tokens,
        context_window=model.context_window,
        allowed=prices.allowed(model, tier),
    )
