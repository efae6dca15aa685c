"""Request and response models of the BYOK routes (they also generate the OpenAPI)."""

from __future__ import annotations

from pydantic import ConfigDict, Field, SecretStr, StrictBool

from llmcredits.models import ApiModel

PROVIDER_FIELD = Field(
    description="openai, anthropic, openrouter, groq, huggingface, together, fireworks or "
    "deepinfra",
    examples=["openai"],
    max_length=64,
)


class ByokKeyCreate(ApiModel):
    model_config = ConfigDict(extra="forbid")

    provider: str = PROVIDER_FIELD
    api_key: SecretStr = Field(
        description="Your API key for that provider. Stored encrypted (KMS envelope + "
        "Fernet); never shown again, only its masked form.",
        max_length=1024,
    )


class ByokKeyPatch(ApiModel):
    model_config = ConfigDict(extra="forbid")

    enabled: StrictBool = Field(
        description="false: chat requests use the platform's key (and are charged); "
        "true: they use yours"
    )


class ByokKeyOut(ApiModel):
    provider: str
    masked_key: str = Field(description="Prefix and last four characters", examples=["sk-…abcd"])
    enabled: bool
    fingerprint: str = Field(
        description="Truncated SHA-256 of the key: tells keys apart, reveals nothing",
        examples=["sha256:0f1e2d3c4b5a6978"],
    )
    created_at: str
    updated_at: str


class ByokKeyList(ApiModel):
    keys: list[ByokKeyOut]
