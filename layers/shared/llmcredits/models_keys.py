"""Request and response models of the API key routes (they also generate the OpenAPI)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, StrictBool, StrictInt

from llmcredits.domain.api_keys import LimitReset
from llmcredits.models import MoneyOut, NonNegativeMoney
from llmcredits.services.api_keys import UNSET, KeySettings

LimitResetName = Literal["daily", "weekly", "monthly", "never"]
PowerLevelName = Annotated[str, Field(min_length=1, max_length=32)]
KeyName = Annotated[str, Field(min_length=1, max_length=100)]


class _KeyFields(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: KeyName | None = None
    limit: NonNegativeMoney | None = Field(
        default=None, description="The most this key may spend per `limit_reset` window; "
        "null: no limit of its own (the account's balance and cap still apply)")
    limit_reset: LimitResetName | None = Field(
        default=None, description="When the limit's spend restarts (UTC): daily, weekly "
        "(Monday), monthly, or never (the default)")
    expires_at: AwareDatetime | None = Field(
        default=None, description="After this instant the key is refused (401)",
        examples=["2027-01-01T00:00:00Z"])
    power_levels: list[PowerLevelName] | None = Field(
        default=None, min_length=1, max_length=8,
        description="The power levels this key may use; null: all the tier allows")
    rate_limit_per_minute: StrictInt | None = Field(
        default=None, ge=1, description="Requests per minute, at most the tier's")

    def settings(self) -> KeySettings:
        """Only the fields the client sent (a PATCH leaves the others as they are)."""
        given: dict[str, Any] = {}
        for name in self.model_fields_set:
            value = getattr(self, name)
            given[name] = value
        if "name" in given and given["name"] is None:
            given["name"] = UNSET
        if given.get("limit_reset") is not None:
            given["limit_reset"] = LimitReset(given["limit_reset"])
        return KeySettings(**given)


class KeyCreate(_KeyFields):
    name: KeyName = "default"


class KeyPatch(_KeyFields):
    enabled: StrictBool | None = Field(default=None, description="false: refused (401) "
                                       "until enabled again")


class KeyRotate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    grace_seconds: StrictInt = Field(
        default=0, ge=0, le=86_400,
        description="How long the old secret keeps working (0: it stops now)")


class KeyOut(BaseModel):
    id: str = Field(examples=["key_0f1e2d3c4b5a6978"])
    name: str
    masked_key: str = Field(examples=["llmc-AbCd…wxyz"])
    limit: MoneyOut | None
    limit_reset: LimitResetName
    usage: MoneyOut = Field(description="All-time spend through this key")
    period_usage: MoneyOut = Field(description="Spend in the current limit_reset window")
    limit_remaining: MoneyOut | None = Field(
        description="limit - spend this window - requests in flight; null: no limit")
    expires_at: str | None
    power_levels: list[str] | None
    rate_limit_per_minute: int | None
    enabled: bool
    created_at: str
    last_used_at: str | None
    grace_until: str | None = Field(description="The previous secret works until then")


class KeyCreated(KeyOut):
    key: str = Field(description="The secret. Shown only now: store it; it cannot be "
                     "shown again (rotate to get a new one).")


class KeyList(BaseModel):
    keys: list[KeyOut]


class OwnKey(BaseModel):
    """GET /key (as OpenRouter's): the calling key's own record."""

    data: KeyOut
