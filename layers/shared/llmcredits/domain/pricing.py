"""Pricing: the catalog of models, power levels and tiers, and the cost of a request.

Pure (no AWS). The catalog is data (``llmcredits/data/catalog.json``), loaded once into
frozen dataclasses. The formula (DESIGN section 3)::

    cost = tokens/1000 x base x power x (1 + markup)                      # base per 1K
    cost = (prompt x input + completion x output) x power x (1 + markup)  # per token

in Decimal, rounded once at the end to 0.000001, half up.

Holds: a chat request reserves :func:`hold_amount`, the charge of an upper bound of its
tokens: prompt tokens bounded by :meth:`Catalog.prompt_bound` (UTF-8 bytes plus overhead,
never above the model's context window; a non-text part such as an image, a file or
audio is bounded only by the context window), completion tokens by the clipped
``max_tokens``. Every price is non-negative and the rounding is monotone, so
``charge(actual) <= hold`` whenever the actual token counts are within those bounds.
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation, localcontext
from functools import cache
from pathlib import Path
from types import MappingProxyType
from typing import Any

from llmcredits.domain.ledger import Tier
from llmcredits.errors import Forbidden, InvalidRequest
from llmcredits.money import ZERO, quantize

CATALOG_PATH = Path(__file__).resolve().parent.parent / "data" / "catalog.json"
AUTO = "auto"
MAX_TOKENS_CLIPPED_HEADER = "X-Max-Tokens-Clipped"
MODELS_HINT = 'GET /api/v1/llm/models lists them; or send model "auto" with a power_level'

# Prompt bound (see prompt_token_bound). Every tokenizer in use (byte-level BPE,
# SentencePiece with byte fallback) spends at least one UTF-8 byte per text token, so a
# string's byte length bounds its tokens; the constants bound what a chat template adds.
#: Role markers, separators and end-of-turn tokens per message (OpenAI adds 3-4, Llama 3 ~5).
MESSAGE_OVERHEAD_TOKENS = 16
#: Once per prompt: reply priming and template preambles (e.g. Llama 3.1 date header).
PROMPT_OVERHEAD_TOKENS = 64
#: Per string: a tokenizer may add a prefix token (SentencePiece's dummy prefix).
STRING_OVERHEAD_TOKENS = 1
# A non-text content part (image, audio, file) has no size in the request text: a
# high-detail image costs gpt-4o-mini up to ~37K tokens, a PDF ~1.5-3K tokens a page. The
# only bound that holds for every model is its context window (a prompt cannot exceed
# it), so one such part makes the prompt bound the model's context window.
#: Once when tools/functions are sent: the tool-use system prompt some providers inject
#: (Anthropic: ~350 tokens).
TOOLS_OVERHEAD_TOKENS = 512

_TEXT_PART_TYPES = frozenset({"text", "input_text", "output_text", "refusal"})


# --------------------------------------------------------------------------- values


@dataclass(frozen=True)
class PowerLevel:
    name: str
    multiplier: Decimal
    max_completion_tokens: int
    providers: tuple[str, ...]
    default_model: str
    description: str = ""


@dataclass(frozen=True)
class TierPolicy:
    name: str
    markup: Decimal
    power_levels: tuple[str, ...]
    rate_limit_per_minute: int
    # A purchase that takes the cumulative paid amount to this promotes an account to
    # this tier (None: never automatically, e.g. enterprise).
    promote_after_paid: Decimal | None = None


@dataclass(frozen=True)
class Provider:
    name: str
    base_cost_per_1k: Decimal
    display_name: str = ""


@dataclass(frozen=True)
class Price:
    """A model's list price before power multiplier and markup.

    Exactly one form: ``base_cost_per_1k`` (all tokens alike) or the per-token pair.
    """

    base_cost_per_1k: Decimal | None = None
    input_cost_per_token: Decimal | None = None
    output_cost_per_token: Decimal | None = None

    @property
    def per_token(self) -> bool:
        return self.base_cost_per_1k is None

    @property
    def prompt_per_1k(self) -> Decimal:
        if self.base_cost_per_1k is not None:
            return self.base_cost_per_1k
        assert self.input_cost_per_token is not None
        return self.input_cost_per_token * 1000

    @property
    def completion_per_1k(self) -> Decimal:
        if self.base_cost_per_1k is not None:
            return self.base_cost_per_1k
        assert self.output_cost_per_token is not None
        return self.output_cost_per_token * 1000

    def list_cost(self, prompt_tokens: int, completion_tokens: int) -> Decimal:
        """Unrounded cost before power and markup (call inside a wide Decimal context)."""
        if self.base_cost_per_1k is not None:
            return Decimal(prompt_tokens + completion_tokens) / 1000 * self.base_cost_per_1k
        assert self.input_cost_per_token is not None and self.output_cost_per_token is not None
        return (prompt_tokens * self.input_cost_per_token
                + completion_tokens * self.output_cost_per_token)


@dataclass(frozen=True)
class Model:
    id: str
    provider: str
    upstream_model: str
    power_levels: tuple[str, ...]
    price: Price
    created: int
    #: The most prompt tokens the model accepts (catalog data; prompt + completion for
    #: most providers), so the most a prompt can cost.
    context_window: int
    max_completion_tokens: int | None = None
    description: str = ""
    #: Other names the upstream may report in an answer's ``model`` for this model
    #: (catalog data), besides those domain.answer accepts by its naming rules.
    answered_as: tuple[str, ...] = ()


@dataclass(frozen=True)
class Route:
    """Where a chat request goes and under which power level it is priced."""

    model: str
    provider: str
    power_level: str
    max_tokens: int
    upstream_model: str
    context_window: int | None = None
    answered_as: tuple[str, ...] = ()


# --------------------------------------------------------------------------- catalog


@dataclass(frozen=True)
class Catalog:
    version: int
    default_power_level: str
    power_levels: Mapping[str, PowerLevel]
    tiers: Mapping[str, TierPolicy]
    providers: Mapping[str, Provider]
    models: Mapping[str, Model]

    # ---- lookups

    def level(self, name: str) -> PowerLevel:
        level = self.power_levels.get(name)
        if level is None:
            raise InvalidRequest(
                f"Unknown power_level {name!r}; use one of {', '.join(self.power_levels)}.",
                param="power_level",
            )
        return level

    def tier(self, name: str) -> TierPolicy:
        policy = self.tiers.get(str(name))
        if policy is None:  # an account's tier is ours, never client input: a bug
            raise ValueError(f"tier {name!r} is not in the pricing catalog")
        return policy

    def model(self, model_id: str) -> Model:
        model = self.models.get(model_id)
        if model is None:
            close = self.suggest_models(model_id)
            hint = f" Did you mean {_or(close)}?" if close else ""
            raise InvalidRequest(
                f"Unknown model {model_id!r}.{hint} {MODELS_HINT}.",
                param="model",
                code="model_not_found",
            )
        return model

    def suggest_models(self, model_id: str, limit: int = 3) -> list[str]:
        """Catalog ids close to ``model_id``: ids that end in it (``gpt-4o`` ->
        ``openai/gpt-4o``), then difflib's closest matches (case-insensitive)."""
        wanted = str(model_id).strip().lower()
        if not wanted:
            return []
        by_lower = {m.lower(): m for m in self.models}
        tails = [m for low, m in by_lower.items()
                 if low == wanted or low.endswith("/" + wanted.lstrip("/"))]
        close = difflib.get_close_matches(wanted, list(by_lower), n=limit, cutoff=0.6)
        return list(dict.fromkeys([*tails, *(by_lower[c] for c in close)]))[:limit]

    def promotion_thresholds(self) -> tuple[tuple[Tier, Decimal], ...]:
        """(tier, cumulative paid amount that promotes to it), lowest first."""
        return tuple(sorted(((Tier(t.name), t.promote_after_paid) for t in self.tiers.values()
                             if t.promote_after_paid is not None), key=lambda pair: pair[1]))

    def markup(self, tier: str) -> Decimal:
        return self.tier(tier).markup

    def rate_limit(self, tier: str) -> int:
        """Requests per minute."""
        return self.tier(tier).rate_limit_per_minute

    def allowed(self, model: Model, tier: str) -> bool:
        """Whether ``tier`` may use ``model`` under at least one of its power levels."""
        allowed = self.tier(tier).power_levels
        return any(level in allowed for level in model.power_levels)

    def models_in(self, power_level: str | None = None) -> list[Model]:
        """Catalog order; only the models of ``power_level`` when given (validated)."""
        if power_level is None:
            return list(self.models.values())
        self.level(power_level)
        return [m for m in self.models.values() if power_level in m.power_levels]

    def default_level_for(self, tier: str) -> str:
        """The catalog default if ``tier`` may use it, else the tier's highest level."""
        allowed = self.tier(tier).power_levels
        if self.default_power_level in allowed or not allowed:
            return self.default_power_level
        return max(allowed, key=list(self.power_levels).index)

    # ---- routing

    def _model_and_level(
        self, model: str, power_level: str | None, tier: str | None
    ) -> tuple[Model, PowerLevel]:
        level = self.level(power_level) if power_level is not None else None
        if model == AUTO:
            if level is None:
                level = self.level(
                    self.default_level_for(tier) if tier else self.default_power_level
                )
            return self.model(level.default_model), level
        found = self.model(model)
        if level is not None:
            if level.name not in found.power_levels:
                raise InvalidRequest(
                    f"Model {found.id!r} is in power level {_or(found.power_levels)}, not "
                    f"{level.name!r}. Omit power_level, or use model \"auto\" with "
                    f"power_level {level.name!r}.",
                    param="power_level",
                )
            return found, level
        names = found.power_levels
        if tier is not None:
            allowed = self.tier(tier).power_levels
            names = tuple(n for n in found.power_levels if n in allowed) or names
        return found, self.power_levels[names[0]]

    def resolve(self, model: str, power_level: str | None, tier: str) -> Route:
        """Route a request: model (a catalog id or "auto"), optional power level, tier.

        Raises InvalidRequest (400) for an unknown model or power level, or a model not
        in the requested level; Forbidden (403, ``model_not_allowed_for_tier``) when the
        tier may not use the level.
        """
        found, level = self._model_and_level(model, power_level, tier)
        policy = self.tier(tier)
        if level.name not in policy.power_levels:
            what = (f"model {found.id!r} is in power level {level.name!r}" if model != AUTO
                    else f"power level {level.name!r} is not included")
            raise Forbidden(
                f"The {policy.name} tier may use power level {_or(policy.power_levels)} "
                f"only; {what}. Upgrade your tier, or choose a model from "
                "GET /api/v1/llm/models that shows \"allowed\": true.",
                code="model_not_allowed_for_tier",
                param="model" if model != AUTO else "power_level",
            )
        max_tokens = level.max_completion_tokens
        if found.max_completion_tokens is not None:
            max_tokens = min(max_tokens, found.max_completion_tokens)
        return Route(
            model=found.id,
            provider=found.provider,
            power_level=level.name,
            max_tokens=max_tokens,
            upstream_model=found.upstream_model,
            context_window=found.context_window,
            answered_as=found.answered_as,
        )

    # ---- money

    def charge(
        self,
        route_or_model: Route | str,
        power_level: str | None,
        tier: str,
        prompt_tokens: int,
        completion_tokens: int,
    ) -> Decimal:
        """The price of a request, rounded to 0.000001 half up. No access check.

        ``power_level`` None means the route's level (or the model's first level).
        """
        for name, value in (("prompt_tokens", prompt_tokens),
                            ("completion_tokens", completion_tokens)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{name} must be a non-negative int, got {value!r}")
        if isinstance(route_or_model, Route):
            model = self.model(route_or_model.model)
            level = self.level(power_level or route_or_model.power_level)
        else:
            model, level = self._model_and_level(route_or_model, power_level, None)
        markup = self.markup(tier)
        # Wide enough that nothing rounds before the one final quantize.
        with localcontext() as ctx:
            ctx.prec = 80
            raw = (model.price.list_cost(prompt_tokens, completion_tokens)
                   * level.multiplier * (1 + markup))
            return quantize(raw) + ZERO

    def effective_per_1k(self, model: Model, power_level: str, tier: str) -> tuple[
            Decimal, Decimal]:
        """What ``tier`` pays per 1K prompt and completion tokens (unrounded)."""
        level = self.level(power_level)
        factor = level.multiplier * (1 + self.markup(tier))
        with localcontext() as ctx:
            ctx.prec = 80
            return model.price.prompt_per_1k * factor, model.price.completion_per_1k * factor

    def clip_max_tokens(self, requested: int | None, route: Route) -> int:
        """The completion-token limit sent upstream: the request's, at most the level's."""
        if requested is None:
            return route.max_tokens
        if isinstance(requested, bool) or not isinstance(requested, int) or requested < 1:
            raise InvalidRequest("max_tokens must be a positive integer.", param="max_tokens")
        return min(requested, route.max_tokens)

    def clip_headers(self, requested: int | None, route: Route) -> dict[str, str]:
        """``X-Max-Tokens-Clipped: <requested>`` when ``requested`` is above what the route
        allows (so the client sees that a lower max_tokens was sent), else nothing."""
        if requested is not None and self.clip_max_tokens(requested, route) < requested:
            return {MAX_TOKENS_CLIPPED_HEADER: str(requested)}
        return {}

    def context_window(self, route_or_model: Route | str) -> int:
        if isinstance(route_or_model, Route) and route_or_model.context_window is not None:
            return route_or_model.context_window
        model_id = route_or_model.model if isinstance(route_or_model, Route) else route_or_model
        return self.model(model_id).context_window

    def prompt_bound(self, route_or_model: Route | str, messages: Any, *,
                     extra: Any = None) -> int:
        """An upper bound of the prompt tokens of ``messages`` (plus ``extra`` request
        fields rendered into the prompt) on the route's model: the text bound of
        :func:`prompt_token_bound`, never above the model's context window."""
        return prompt_token_bound(messages, extra=extra,
                                  context_window=self.context_window(route_or_model))

    def hold_amount(
        self,
        route: Route,
        tier: str,
        messages: Any,
        max_tokens: int | None,
        *,
        extra: Any = None,
        n: int = 1,
    ) -> Decimal:
        """An upper bound of the final charge: bound of prompt tokens, max completion."""
        return self.charge(
            route,
            None,
            tier,
            self.prompt_bound(route, messages, extra=extra),
            n * self.clip_max_tokens(max_tokens, route),
        )


# --------------------------------------------------------------------------- prompt bound


def prompt_token_bound(messages: Any, *, extra: Any = None,
                       context_window: int | None = None) -> int:
    """An upper bound of the prompt tokens of ``messages`` (OpenAI chat messages).

    Counts the UTF-8 bytes of every string anywhere in the messages (role, name,
    content strings, content-part text, tool-call names and arguments, ...) plus
    STRING_OVERHEAD_TOKENS per string, MESSAGE_OVERHEAD_TOKENS per message and
    PROMPT_OVERHEAD_TOKENS once. ``extra``: other request fields the upstream renders
    into the prompt (``tools``, ``functions``, ``tool_choice``, ``response_format``,
    ...), counted as their JSON bytes plus TOOLS_OVERHEAD_TOKENS.

    ``context_window``: the model's; the bound is never above it, and is it as soon as a
    non-text part (image, audio, file) is present, whose tokens the text cannot bound.
    Without one, a non-text part is a ValueError (there is no bound to give).
    """
    total = PROMPT_OVERHEAD_TOKENS
    items: Iterable[Any] = messages if isinstance(messages, (list, tuple)) else [messages]
    media = False
    for message in items:
        total += MESSAGE_OVERHEAD_TOKENS + _value_bound(message)
        media = media or _has_media_part(message)
    if extra:
        blob = json.dumps(extra, ensure_ascii=False, default=str, separators=(",", ":"))
        total += TOOLS_OVERHEAD_TOKENS + len(blob.encode("utf-8"))
    if context_window is None:
        if media:
            raise ValueError("a non-text content part is bounded only by the model's "
                             "context window: pass context_window")
        return total
    return context_window if media else min(total, context_window)


def _value_bound(value: Any) -> int:
    """The text bound of every string and number in ``value``, without recursion (a
    request nests at most jsonexact.MAX_DEPTH deep, but this must not depend on it)."""
    total = 0
    stack = [value]
    while stack:
        node = stack.pop()
        if node is None or isinstance(node, bool):
            continue
        if isinstance(node, str):
            total += len(node.encode("utf-8")) + STRING_OVERHEAD_TOKENS
        elif isinstance(node, Mapping):
            stack.extend(node.values())
        elif isinstance(node, (list, tuple)):
            stack.extend(node)
        else:
            total += len(str(node).encode("utf-8")) + STRING_OVERHEAD_TOKENS  # numbers
    return total


def _has_media_part(message: Any) -> bool:
    """Whether a message's content list holds a part that is not text, such as
    {"type": "image_url", ...}, {"type": "input_audio", ...} or {"type": "file", ...}.
    Every part whose type is not a text type counts: the bound must hold for part types
    we do not know (e.g. a provider-specific "document")."""
    content = message.get("content") if isinstance(message, Mapping) else None
    if not isinstance(content, (list, tuple)):
        return False
    return any(not (isinstance(part, Mapping) and isinstance(part.get("type"), str)
                    and part["type"] in _TEXT_PART_TYPES)
               for part in content)


# --------------------------------------------------------------------------- loading


def load_catalog(source: str | Path | Mapping[str, Any] | None = None) -> Catalog:
    """Build a Catalog from a JSON file path, a parsed mapping, or the packaged file."""
    if source is None:
        source = CATALOG_PATH
    if isinstance(source, (str, Path)):
        data = json.loads(Path(source).read_text(encoding="utf-8"), parse_float=Decimal)
    else:
        data = source
    try:
        return _build(data)
    except (KeyError, TypeError, ValueError, InvalidOperation) as exc:
        raise ValueError(f"invalid pricing catalog: {exc}") from exc


def _decimal(raw: Any, what: str) -> Decimal:
    if isinstance(raw, (bool, float)):
        raise ValueError(f"{what} must be a decimal string, not {type(raw).__name__}")
    value = Decimal(raw) if isinstance(raw, (str, int, Decimal)) else None
    if value is None or not value.is_finite() or value < 0:
        raise ValueError(f"{what} must be a non-negative decimal string, got {raw!r}")
    return value + ZERO


def _positive_int(raw: Any, what: str) -> int:
    if isinstance(raw, bool) or not isinstance(raw, int) or raw < 1:
        raise ValueError(f"{what} must be a positive integer, got {raw!r}")
    return raw


def _build(data: Mapping[str, Any]) -> Catalog:
    providers = {
        name: Provider(name, _decimal(p["base_cost_per_1k"], f"providers.{name}"),
                       str(p.get("name", name)))
        for name, p in data["providers"].items()
    }
    levels: dict[str, PowerLevel] = {}
    for name, lv in data["power_levels"].items():
        unknown = [p for p in lv["providers"] if p not in providers]
        if unknown:
            raise ValueError(f"power_levels.{name}: unknown providers {unknown}")
        levels[name] = PowerLevel(
            name=name,
            multiplier=_decimal(lv["multiplier"], f"power_levels.{name}.multiplier"),
            max_completion_tokens=_positive_int(lv["max_completion_tokens"],
                                                f"power_levels.{name}.max_completion_tokens"),
            providers=tuple(lv["providers"]),
            default_model=str(lv["default_model"]),
            description=str(lv.get("description", "")),
        )
    tiers: dict[str, TierPolicy] = {}
    for name, t in data["tiers"].items():
        unknown = [lv for lv in t["power_levels"] if lv not in levels]
        if unknown:
            raise ValueError(f"tiers.{name}: unknown power levels {unknown}")
        tiers[name] = TierPolicy(
            name=name,
            markup=_decimal(t["markup"], f"tiers.{name}.markup"),
            power_levels=tuple(t["power_levels"]),
            rate_limit_per_minute=_positive_int(t["rate_limit_per_minute"],
                                                f"tiers.{name}.rate_limit_per_minute"),
            promote_after_paid=None if t.get("promote_after_paid") is None else _decimal(
                t["promote_after_paid"], f"tiers.{name}.promote_after_paid"),
        )
    created = int(data.get("created", 0))
    models: dict[str, Model] = {}
    for m in data["models"]:
        model_id, provider = str(m["id"]), str(m["provider"])
        if model_id == AUTO or model_id in models:
            raise ValueError(f"models: duplicate or reserved id {model_id!r}")
        if provider not in providers:
            raise ValueError(f"models.{model_id}: unknown provider {provider!r}")
        in_levels = tuple(n for n, lv in levels.items() if provider in lv.providers)
        if not in_levels:
            raise ValueError(f"models.{model_id}: provider {provider!r} is in no power level")
        max_out = m.get("max_completion_tokens")
        aliases = m.get("answered_as", [])
        if not isinstance(aliases, list) or not all(isinstance(a, str) and a for a in aliases):
            raise ValueError(f"models.{model_id}.answered_as must be a list of names")
        models[model_id] = Model(
            id=model_id,
            provider=provider,
            upstream_model=str(m.get("upstream_model") or model_id),
            power_levels=in_levels,
            price=_price(m, providers[provider], model_id),
            created=int(m.get("created", created)),
            context_window=_positive_int(m.get("context_window"),
                                         f"models.{model_id}.context_window"),
            max_completion_tokens=None if max_out is None else _positive_int(
                max_out, f"models.{model_id}.max_completion_tokens"),
            description=str(m.get("description", "")),
            answered_as=tuple(aliases),
        )
    for name, lv in levels.items():
        if lv.default_model not in models or name not in models[lv.default_model].power_levels:
            raise ValueError(f"power_levels.{name}: default_model {lv.default_model!r} "
                             "is not a model of this level")
    default = str(data["default_power_level"])
    if default not in levels:
        raise ValueError(f"default_power_level {default!r} is not a power level")
    return Catalog(
        version=int(data.get("version", 1)),
        default_power_level=default,
        power_levels=MappingProxyType(levels),
        tiers=MappingProxyType(tiers),
        providers=MappingProxyType(providers),
        models=MappingProxyType(models),
    )


def _price(m: Mapping[str, Any], provider: Provider, model_id: str) -> Price:
    has_in, has_out = "input_cost_per_token" in m, "output_cost_per_token" in m
    if has_in != has_out:
        raise ValueError(f"models.{model_id}: give both input_cost_per_token and "
                         "output_cost_per_token, or neither")
    if has_in and "base_cost_per_1k" in m:
        raise ValueError(f"models.{model_id}: base_cost_per_1k and per-token prices exclude "
                         "each other")
    if has_in:
        return Price(
            input_cost_per_token=_decimal(m["input_cost_per_token"], f"models.{model_id}"),
            output_cost_per_token=_decimal(m["output_cost_per_token"], f"models.{model_id}"),
        )
    if "base_cost_per_1k" in m:
        return Price(base_cost_per_1k=_decimal(m["base_cost_per_1k"], f"models.{model_id}"))
    return Price(base_cost_per_1k=provider.base_cost_per_1k)


def _or(names: Iterable[str]) -> str:
    quoted = [repr(n) for n in names]
    return quoted[0] if len(quoted) == 1 else ", ".join(quoted[:-1]) + " or " + quoted[-1]


# --------------------------------------------------------------------------- defaults


@cache
def catalog() -> Catalog:
    """The packaged catalog, loaded once per process."""
    return load_catalog()


def resolve(model: str, power_level: str | None, tier: str) -> Route:
    return catalog().resolve(model, power_level, tier)


def charge(
    route_or_model: Route | str,
    power_level: str | None,
    tier: str,
    prompt_tokens: int,
    completion_tokens: int,
) -> Decimal:
    return catalog().charge(route_or_model, power_level, tier, prompt_tokens, completion_tokens)


def clip_max_tokens(requested: int | None, route: Route) -> int:
    return catalog().clip_max_tokens(requested, route)


def hold_amount(
    route: Route, tier: str, messages: Any, max_tokens: int | None, *, extra: Any = None,
    n: int = 1,
) -> Decimal:
    return catalog().hold_amount(route, tier, messages, max_tokens, extra=extra, n=n)


def rate_limit(tier: str) -> int:
    return catalog().rate_limit(tier)


def markup(tier: str) -> Decimal:
    return catalog().markup(tier)
