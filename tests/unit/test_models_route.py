"""GET /models through the real handler on moto: OpenAI list shape, prices, tier access."""

from __future__ import annotations

from decimal import Decimal

import pytest
from llmcredits.domain import pricing
from openai.types import Model as OpenAIModel

from tests.support import event, invoke

ADMIN = {"sub": "ops", "scopes": ["llmcredits/admin"]}


def models(user="user-1", **query):
    return invoke("models_get", event("GET", "/api/v1/llm/models", sub=user,
                                      query={k: str(v) for k, v in query.items()} or None))


def set_tier(user, tier):
    invoke("credits_get", event("GET", "/api/v1/llm/credits", sub=user))
    status, _, body = invoke("admin_user_patch", event(
        "PATCH", f"/api/v1/llm/admin/users/{user}", path_params={"user_id": user},
        body={"tier": tier}, **ADMIN))
    assert status == 200, body


def test_list_shape_is_openais(aws):
    status, _, body = models()
    assert status == 200
    assert body["object"] == "list"
    assert len(body["data"]) == len(pricing.catalog().models)
    for item in body["data"]:
        OpenAIModel.model_validate(item)  # what client.models.list() parses
        assert item["object"] == "model" and isinstance(item["created"], int)
        assert item["owned_by"] == item["provider"]
        assert item["power_levels"] and isinstance(item["max_tokens"], int)
        for key, value in item["pricing"].items():
            if key not in ("unit", "power_level", "tier"):
                assert isinstance(value, str) and len(value.split(".")[1]) == 6, key


def test_prices_are_the_callers(aws):
    set_tier("pat", "professional")
    _, _, body = models("pat")
    by_id = {m["id"]: m for m in body["data"]}
    gpt = by_id["openai/gpt-4o"]
    assert gpt["pricing"] == {
        "unit": "1K tokens", "base_prompt": "0.015000", "base_completion": "0.015000",
        "power_level": "precision", "power_multiplier": "1.000000", "tier": "professional",
        "tier_markup": "0.600000", "prompt": "0.024000", "completion": "0.024000",
    }
    assert gpt["max_tokens"] == 16000 and gpt["allowed"] is True
    mini = by_id["openai/gpt-4o-mini"]["pricing"]
    assert (mini["base_prompt"], mini["base_completion"]) == ("0.000150", "0.000600")
    assert (mini["prompt"], mini["completion"]) == ("0.000240", "0.000960")
    # the listed per-1K price is what 1,000 tokens cost
    assert Decimal(gpt["pricing"]["prompt"]) == pricing.charge(
        "openai/gpt-4o", None, "professional", 1000, 0)


@pytest.mark.parametrize(
    ("tier", "levels"),
    [("free", {"eco"}), ("starter", {"eco", "balanced"}),
     ("professional", {"eco", "balanced", "precision"}),
     ("enterprise", {"eco", "balanced", "precision"})],
)
def test_allowed_follows_the_tier(aws, tier, levels):
    user = f"u-{tier}"
    if tier != "free":
        set_tier(user, tier)
    _, _, body = models(user)
    for item in body["data"]:
        assert item["allowed"] is bool(set(item["power_levels"]) & levels), item["id"]
        assert item["pricing"]["tier"] == tier
    assert any(i["allowed"] for i in body["data"])
    if tier == "free":
        assert not all(i["allowed"] for i in body["data"])
        assert all(i["pricing"]["tier_markup"] == "0.000000" for i in body["data"])


def test_power_level_filter(aws):
    for level in ("eco", "balanced", "precision"):
        status, _, body = models(power_level=level)
        assert status == 200 and body["data"]
        assert all(level in m["power_levels"] for m in body["data"])
        assert all(m["pricing"]["power_level"] == level for m in body["data"])
    ids = {m["id"] for m in models(power_level="balanced")[2]["data"]}
    assert "deepinfra/meta-llama/Meta-Llama-3.1-70B-Instruct" in ids
    assert "openai/gpt-4o" not in ids


@pytest.mark.parametrize("level", ["turbo", "", "ECO"])
def test_unknown_power_level_is_400(aws, level):
    status, _, body = models(power_level=level)
    assert status == 400, body
    assert set(body["error"]) == {"message", "type", "code", "param"}
    assert body["error"]["param"] == "power_level"


def test_no_token_is_401(aws):
    status, _, body = models(user=None)
    assert status == 401 and body["error"]["message"]
