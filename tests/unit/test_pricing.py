"""Pricing: the catalog data, the cost formula, routing and the hold bound."""

from __future__ import annotations

import copy
import json
import random
from decimal import ROUND_HALF_EVEN, ROUND_HALF_UP, Decimal

import pytest
from llmcredits.domain import pricing
from llmcredits.domain.ledger import Tier
from llmcredits.domain.pricing import (
    CATALOG_PATH,
    MESSAGE_OVERHEAD_TOKENS,
    PROMPT_OVERHEAD_TOKENS,
    STRING_OVERHEAD_TOKENS,
    Route,
    charge,
    clip_max_tokens,
    hold_amount,
    load_catalog,
    markup,
    prompt_token_bound,
    rate_limit,
    resolve,
)
from llmcredits.errors import Forbidden, InvalidRequest
from llmcredits.local.dev_upstream import DevUpstream, count_tokens, prompt_tokens, reply_for

D = Decimal
TIERS = ["free", "starter", "professional", "enterprise"]
MARKUP = {"free": D("0"), "starter": D("0.40"), "professional": D("0.60"),
          "enterprise": D("0.80")}


def raw_catalog() -> dict:
    return json.loads(CATALOG_PATH.read_text(), parse_float=Decimal)


# --------------------------------------------------------------------------- the data


def test_catalog_holds_the_briefs_defaults():
    cat = pricing.catalog()
    levels = cat.power_levels
    assert (levels["eco"].multiplier, levels["eco"].max_completion_tokens) == (D("0.1"), 2000)
    assert (levels["balanced"].multiplier, levels["balanced"].max_completion_tokens) == (
        D("0.25"), 4000)
    assert (levels["precision"].multiplier, levels["precision"].max_completion_tokens) == (
        D("1.0"), 16000)
    assert set(levels["eco"].providers) == {"local", "groq", "huggingface"}
    assert {"together", "fireworks", "openrouter"} <= set(levels["balanced"].providers)
    assert set(levels["precision"].providers) == {"anthropic", "openai"}
    assert cat.default_power_level == "balanced"
    base = {name: p.base_cost_per_1k for name, p in cat.providers.items()}
    assert base == {"local": 0, "groq": 0, "huggingface": 0, "together": D("0.002"),
                    "fireworks": D("0.002"), "deepinfra": D("0.003"), "openrouter": D("0.003"),
                    "anthropic": D("0.015"), "openai": D("0.015")}
    by_id = {m.id: m.price for m in cat.models.values()}
    assert by_id["openrouter/mistralai/mixtral-8x7b-instruct"].base_cost_per_1k == D("0.003")
    assert by_id["openrouter/anthropic/claude-3.5-sonnet"].base_cost_per_1k == D("0.008")
    assert by_id["openrouter/openai/gpt-4o"].base_cost_per_1k == D("0.010")
    assert by_id["anthropic/claude-3-5-sonnet-20241022"].base_cost_per_1k == D("0.015")
    assert by_id["openai/gpt-4o"].base_cost_per_1k == D("0.015")
    assert {t: markup(t) for t in TIERS} == MARKUP
    assert {t: rate_limit(t) for t in TIERS} == {"free": 10, "starter": 60,
                                                 "professional": 300, "enterprise": 1000}
    assert {t: cat.tiers[t].power_levels for t in TIERS} == {
        "free": ("eco",), "starter": ("eco", "balanced"),
        "professional": ("eco", "balanced", "precision"),
        "enterprise": ("eco", "balanced", "precision")}
    # every provider has models, every level a default model of its own
    assert {m.provider for m in cat.models.values()} == set(cat.providers)
    for name, level in levels.items():
        assert name in cat.models[level.default_model].power_levels


def test_money_in_the_catalog_file_is_strings_never_json_numbers():
    def walk(value, path):
        if isinstance(value, dict):
            for k, v in value.items():
                walk(v, f"{path}.{k}")
        elif isinstance(value, list):
            for i, v in enumerate(value):
                walk(v, f"{path}[{i}]")
        else:
            assert not isinstance(value, Decimal), f"{path} is a JSON fraction"
            if any(w in path for w in ("cost", "markup", "multiplier")):
                assert isinstance(value, str), path

    walk(raw_catalog(), "$")


def test_invalid_catalogs_are_rejected():
    def broken(edit):
        data = raw_catalog()
        edit(data)
        with pytest.raises(ValueError):
            load_catalog(data)

    broken(lambda d: d["models"][0].update(input_cost_per_token="0.001"))  # pair incomplete
    broken(lambda d: d["models"][0].update(provider="nobody"))
    broken(lambda d: d["providers"]["groq"].update(base_cost_per_1k=0.5))  # a float
    broken(lambda d: d["providers"]["groq"].update(base_cost_per_1k="-1"))
    broken(lambda d: d["power_levels"]["eco"].update(default_model="openai/gpt-4o"))
    broken(lambda d: d["tiers"]["free"].update(power_levels=["turbo"]))
    broken(lambda d: d["models"].append(dict(d["models"][0])))  # duplicate id
    broken(lambda d: d["models"][0].pop("context_window"))  # every model needs one
    broken(lambda d: d["models"][0].update(context_window=0))
    broken(lambda d: d["models"][0].update(context_window="128000"))
    broken(lambda d: d["models"][0].update(answered_as="gpt-4o"))  # a list of names


# --------------------------------------------------------------------------- the formula


@pytest.mark.parametrize("tier", TIERS)
@pytest.mark.parametrize(
    ("model", "base", "power"),
    [
        ("together_ai/meta-llama/Llama-3.3-70B-Instruct-Turbo", "0.002", "0.25"),
        ("fireworks_ai/accounts/fireworks/models/llama-v3p1-70b-instruct", "0.002", "0.25"),
        ("deepinfra/meta-llama/Meta-Llama-3.1-70B-Instruct", "0.003", "0.25"),
        ("openrouter/mistralai/mixtral-8x7b-instruct", "0.003", "0.25"),
        ("openrouter/anthropic/claude-3.5-sonnet", "0.008", "0.25"),
        ("openrouter/openai/gpt-4o", "0.010", "0.25"),
        ("anthropic/claude-3-5-sonnet-20241022", "0.015", "1.0"),
        ("openai/gpt-4o", "0.015", "1.0"),
        ("groq/llama-3.1-8b-instant", "0", "0.1"),
    ],
)
def test_formula_per_tier_and_level(model, base, power, tier):
    expected = (D(1234 + 567) / 1000 * D(base) * D(power) * (1 + MARKUP[tier])).quantize(
        D("0.000001"), ROUND_HALF_UP)
    assert charge(model, None, tier, 1234, 567) == expected


def test_worked_examples():
    # 1,000 tokens of openai/gpt-4o (0.015, precision x1.0)
    assert [charge("openai/gpt-4o", None, t, 600, 400) for t in TIERS] == [
        D("0.015000"), D("0.021000"), D("0.024000"), D("0.027000")]
    # 1,000 tokens of Together (0.002, balanced x0.25)
    assert [charge("together_ai/meta-llama/Llama-3.3-70B-Instruct-Turbo", None, t, 1000, 0)
            for t in TIERS] == [D("0.000500"), D("0.000700"), D("0.000800"), D("0.000900")]
    # 2,000 tokens of OpenRouter Claude 3.5 at starter: 2 x 0.008 x 0.25 x 1.4
    assert charge("openrouter/anthropic/claude-3.5-sonnet", "balanced", "starter", 1500,
                  500) == D("0.005600")
    # a Route prices the same as its model id; Tier enum values work as tier names
    route = resolve("openai/gpt-4o", None, "enterprise")
    assert charge(route, None, Tier.ENTERPRISE, 600, 400) == D("0.027000")


def test_free_tier_pays_base_times_power_only():
    cat = pricing.catalog()
    for model in cat.models.values():
        for level_name in model.power_levels:
            level = cat.power_levels[level_name]
            cost = charge(model.id, level_name, "free", 3000, 1000)
            expected = model.price.list_cost(3000, 1000) * level.multiplier
            assert cost == expected.quantize(D("0.000001"), ROUND_HALF_UP), model.id


def test_zero_cost_providers_charge_nothing():
    for model in ("local/llama-3.2-3b-instruct", "groq/llama-3.3-70b-versatile",
                  "huggingface/meta-llama/Meta-Llama-3.1-8B-Instruct"):
        for tier in TIERS:
            assert charge(model, None, tier, 10**6, 10**6) == D("0.000000")


def test_rounding_is_half_up_at_the_sixth_place():
    model = "together_ai/meta-llama/Llama-3.3-70B-Instruct-Turbo"
    # free: 0.002 x 0.25 per 1K = 0.0000005 per token: exactly half a micro-credit
    assert charge(model, None, "free", 1, 0) == D("0.000001")  # half-even would give 0
    assert charge(model, None, "free", 5, 0) == D("0.000003")  # half-even: 0.000002
    assert D("0.0000025").quantize(D("0.000001"), ROUND_HALF_EVEN) == D("0.000002")
    assert charge(model, None, "free", 0, 0) == D("0.000000")
    # starter: 0.0000007 per token
    assert charge(model, None, "starter", 1, 0) == D("0.000001")
    assert charge(model, None, "starter", 3, 4) == D("0.000005")  # 0.0000049
    result = charge(model, None, "starter", 7, 0)
    assert isinstance(result, Decimal) and result.as_tuple().exponent == -6


def test_eco_multiplier_applies_to_a_priced_eco_provider():
    data = raw_catalog()
    data["providers"]["groq"]["base_cost_per_1k"] = "0.004"
    cat = load_catalog(data)
    # 0.004 x 0.1 x 1.6 per 1K
    assert cat.charge("groq/llama-3.1-8b-instant", None, "professional", 500, 500) == D(
        "0.000640")


def test_per_token_input_and_output_prices():
    model = "openai/gpt-4o-mini"  # input 0.00000015, output 0.0000006 per token
    price = pricing.catalog().models[model].price
    assert price.per_token and price.base_cost_per_1k is None
    # (1000 x 0.00000015 + 500 x 0.0000006) x 1.0 x 1.6 = 0.00045 x 1.6
    assert charge(model, None, "professional", 1000, 500) == D("0.000720")
    # output tokens cost 4x input tokens
    assert charge(model, None, "enterprise", 0, 10_000) == D("0.010800")
    assert charge(model, None, "enterprise", 10_000, 0) == D("0.002700")
    # a per-token pair on another model, through a custom catalog
    data = raw_catalog()
    for m in data["models"]:
        if m["id"] == "groq/llama-3.1-8b-instant":
            m.update(input_cost_per_token="0.000001", output_cost_per_token="0.000003")
    cat = load_catalog(data)
    # (10 x 0.000001 + 20 x 0.000003) x 0.1 x 1.4 = 0.0000098
    assert cat.charge("groq/llama-3.1-8b-instant", None, "starter", 10, 20) == D("0.000010")


def test_charge_rejects_bad_token_counts():
    for bad in (-1, True, 1.5, "3"):
        with pytest.raises(ValueError):
            charge("openai/gpt-4o", None, "free", bad, 0)


# --------------------------------------------------------------------------- routing


def test_auto_uses_the_levels_default_model():
    assert resolve("auto", "eco", "free") == Route(
        "groq/llama-3.1-8b-instant", "groq", "eco", 2000, "groq/llama-3.1-8b-instant",
        context_window=131072)
    r = resolve("auto", "precision", "enterprise")
    assert (r.model, r.provider, r.power_level, r.max_tokens) == (
        "anthropic/claude-3-5-sonnet-20241022", "anthropic", "precision", 16000)
    # no power level: the default (balanced) when the tier has it...
    assert resolve("auto", None, "starter").power_level == "balanced"
    assert resolve("auto", None, "professional").model == (
        "together_ai/meta-llama/Llama-3.3-70B-Instruct-Turbo")
    # ...else the tier's best level, rather than a 403 for a request that named nothing
    assert resolve("auto", None, "free").power_level == "eco"


def test_explicit_model_routes_to_its_level():
    r = resolve("openrouter/openai/gpt-4o", None, "starter")
    assert (r.provider, r.power_level, r.max_tokens, r.upstream_model) == (
        "openrouter", "balanced", 4000, "openrouter/openai/gpt-4o")
    assert resolve("deepinfra/mistralai/Mixtral-8x7B-Instruct-v0.1", "balanced",
                   "starter").provider == "deepinfra"


def test_model_outside_the_requested_level_is_400_on_power_level():
    with pytest.raises(InvalidRequest) as exc:
        resolve("openai/gpt-4o", "eco", "enterprise")
    assert exc.value.status == 400 and exc.value.param == "power_level"
    assert "precision" in exc.value.message


def test_unknown_model_or_level_is_400():
    with pytest.raises(InvalidRequest) as exc:
        resolve("gpt-5-ultra", None, "enterprise")
    assert exc.value.param == "model" and "/models" in exc.value.message
    for model in ("auto", "openai/gpt-4o"):
        with pytest.raises(InvalidRequest) as exc:
            resolve(model, "turbo", "enterprise")
        assert exc.value.param == "power_level" and "eco" in exc.value.message


@pytest.mark.parametrize(
    ("model", "level", "tier"),
    [
        ("openai/gpt-4o", None, "free"),
        ("together_ai/meta-llama/Llama-3.3-70B-Instruct-Turbo", None, "free"),
        ("auto", "balanced", "free"),
        ("auto", "precision", "starter"),
        ("anthropic/claude-3-5-haiku-20241022", "precision", "starter"),
    ],
)
def test_tier_without_the_level_is_403(model, level, tier):
    with pytest.raises(Forbidden) as exc:
        resolve(model, level, tier)
    err = exc.value
    assert err.status == 403 and err.code == "model_not_allowed_for_tier"
    assert tier in err.message and "'eco'" in err.message


def test_every_tier_may_use_what_its_levels_contain():
    cat = pricing.catalog()
    for tier in TIERS:
        for model in cat.models.values():
            allowed = cat.allowed(model, tier)
            if allowed:
                assert resolve(model.id, None, tier).model == model.id
            else:
                with pytest.raises(Forbidden):
                    resolve(model.id, None, tier)


def test_clip_max_tokens():
    eco = resolve("auto", "eco", "free")
    assert clip_max_tokens(None, eco) == 2000
    assert clip_max_tokens(50, eco) == 50
    assert clip_max_tokens(10**6, eco) == 2000
    assert clip_max_tokens(10**6, resolve("auto", "precision", "enterprise")) == 16000
    for bad in (0, -5, True):
        with pytest.raises(InvalidRequest):
            clip_max_tokens(bad, eco)


def test_per_model_completion_limit_lowers_the_levels():
    data = raw_catalog()
    data["models"][1]["max_completion_tokens"] = 512  # groq/llama-3.1-8b-instant
    route = load_catalog(data).resolve("groq/llama-3.1-8b-instant", None, "free")
    assert route.max_tokens == 512


# --------------------------------------------------------------------------- holds


def test_prompt_bound_counts_every_string():
    base = prompt_token_bound([])
    assert base == PROMPT_OVERHEAD_TOKENS
    one = prompt_token_bound([{"role": "user", "content": "héllo"}])  # 6 bytes + "user" 4
    assert one == base + MESSAGE_OVERHEAD_TOKENS + 6 + 4 + 2 * STRING_OVERHEAD_TOKENS
    named = prompt_token_bound([{"role": "user", "content": "héllo", "name": "bob"}])
    assert named == one + 3 + STRING_OVERHEAD_TOKENS
    parts = prompt_token_bound([{"role": "user", "content": [
        {"type": "text", "text": "héllo"}, {"type": "text", "text": "🙂"}]}])
    assert parts >= base + MESSAGE_OVERHEAD_TOKENS + 6 + 4
    tool = {"role": "assistant", "content": None, "tool_calls": [
        {"id": "c1", "type": "function",
         "function": {"name": "get_weather", "arguments": json.dumps({"city": "Zürich" * 50})}}]}
    assert prompt_token_bound([tool]) > base + 300  # the arguments are counted
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
    assert prompt_token_bound([], extra=tools) >= base + pricing.TOOLS_OVERHEAD_TOKENS


def test_hold_amount_is_the_charge_of_the_bounds():
    route = resolve("openai/gpt-4o", None, "professional")
    messages = [{"role": "user", "content": "x" * 1000}]
    bound = prompt_token_bound(messages)
    assert hold_amount(route, "professional", messages, 100) == charge(
        route, None, "professional", bound, 100)
    # max_tokens None or too big holds the level's maximum
    assert hold_amount(route, "professional", messages, None) == charge(
        route, None, "professional", bound, 16000)
    assert hold_amount(route, "professional", messages, 10**9) == hold_amount(
        route, "professional", messages, None)


_ALPHABETS = [
    "abcdefghijklmnopqrstuvwxyz ",
    "  \n\t.,;:!?'\"()[]{}<>-_/\\",
    "éüßçñøåÆŒ",
    "日本語中文한국어",
    "🙂🚀👍🏽👨‍👩‍👧🇨🇭",
    "\u0301\u200b\u00a0",  # combining accent, zero-width space, no-break space
    "0123456789",
]


def _random_text(rng: random.Random, max_len: int = 200) -> str:
    chars = "".join(rng.sample(_ALPHABETS, rng.randint(1, len(_ALPHABETS))))
    return "".join(rng.choice(chars) for _ in range(rng.randint(0, max_len)))


def _random_messages(rng: random.Random) -> list[dict]:
    messages = []
    for _ in range(rng.randint(1, 6)):
        role = rng.choice(["system", "user", "assistant", "user"])
        kind = rng.random()
        message: dict = {"role": role}
        if kind < 0.5:
            message["content"] = _random_text(rng)
        elif kind < 0.8:
            message["content"] = [{"type": "text", "text": _random_text(rng)}
                                  for _ in range(rng.randint(1, 3))]
        else:
            message["content"] = None
            message["role"] = "assistant"
            message["tool_calls"] = [{"id": f"call_{rng.randint(0, 999)}", "type": "function",
                                      "function": {"name": "lookup",
                                                   "arguments": json.dumps(
                                                       {"q": _random_text(rng, 50)},
                                                       ensure_ascii=False)}}]
        if rng.random() < 0.2:
            message["name"] = _random_text(rng, 10) or "n"
        messages.append(message)
    messages.append({"role": "user", "content": _random_text(rng, 400)})
    return messages


def test_hold_is_never_below_the_actual_charge_random_messages():
    rng = random.Random(20261127)
    cat = pricing.catalog()
    models = list(cat.models.values())
    for _ in range(600):
        tier = rng.choice(TIERS)
        allowed = [m for m in models if cat.allowed(m, tier)]
        model = rng.choice([*allowed, None])
        route = resolve(model.id if model else "auto", None, tier)
        messages = _random_messages(rng)
        requested = rng.choice([None, 1, 2, 5, 50, 4000, 10**6])
        max_tokens = clip_max_tokens(requested, route)
        hold = hold_amount(route, tier, messages, requested)
        # what the dev upstream would answer and report
        text, _ = reply_for(messages, max_tokens)
        used_prompt, used_completion = prompt_tokens(messages), count_tokens(text)
        assert used_prompt <= prompt_token_bound(messages)
        assert used_completion <= max_tokens
        assert charge(route, None, tier, used_prompt, used_completion) <= hold
        # and every string's tokens are within its bytes
        for m in messages:
            content = m.get("content")
            if isinstance(content, str):
                assert count_tokens(content) <= len(content.encode())


def test_hold_covers_the_dev_upstreams_reported_usage_over_http():
    import httpx

    rng = random.Random(7)
    with DevUpstream() as up:
        for _ in range(15):
            tier = rng.choice(TIERS[1:])
            route = resolve(rng.choice(["auto", "openai/gpt-4o-mini",
                                        "openrouter/openai/gpt-4o"]), None,
                            tier if tier != "starter" else "professional")
            messages = _random_messages(rng)
            max_tokens = clip_max_tokens(rng.choice([None, 3, 100]), route)
            usage = httpx.post(up.url + "/v1/chat/completions", json={
                "model": route.upstream_model, "messages": messages, "max_tokens": max_tokens,
            }).json()["usage"]
            cost = charge(route, None, "professional", usage["prompt_tokens"],
                          usage["completion_tokens"])
            assert cost <= hold_amount(route, "professional", messages, max_tokens)


def test_catalog_objects_are_frozen():
    cat = pricing.catalog()
    with pytest.raises(AttributeError):
        cat.models["openai/gpt-4o"].provider = "x"  # type: ignore[misc]
    with pytest.raises(TypeError):
        cat.models["x"] = copy.copy(cat.models["openai/gpt-4o"])  # type: ignore[index]
