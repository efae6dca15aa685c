"""Bring-your-own-key (BYOK): providers, key format rules, masking and fingerprints.

Pure (no AWS, no crypto library). A provider key is a secret: nothing here ever puts it,
or any part of it beyond the masked form (prefix and last four), into a message, an
exception or a return value other than the key itself.

The provider names are the pricing catalog's provider names, so the chat endpoint can
look a key up by the provider of the model it resolved.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

from llmcredits.errors import InvalidRequest

MAX_KEY_LENGTH = 512
#: Hex characters of the SHA-256 fingerprint kept (64 bits: tells keys apart, shows nothing).
FINGERPRINT_HEX = 16
#: Account flag meaning "an enabled BYOK key for <provider> exists" (a hint for the chat
#: path, so accounts without keys pay no extra read).
ACCOUNT_FLAG_PREFIX = "byok:"

_ASCII_PRINTABLE = re.compile(r"^[\x21-\x7e]+$")


@dataclass(frozen=True)
class ProviderRule:
    name: str
    label: str
    pattern: re.Pattern[str]
    expected: str  # what a key of this provider looks like, for error messages
    display_prefixes: tuple[str, ...]  # shown in the masked form (the first that matches)
    #: Prefixes of other providers' keys that also match this pattern (a clearer error).
    not_prefixes: tuple[str, ...] = ()

    @property
    def a_label(self) -> str:
        """The label with its article: "an OpenAI", "a Groq" (by the sound of each label)."""
        return f"{'an' if self.label[0] in 'AEIOaeio' else 'a'} {self.label}"


def _rule(name: str, label: str, pattern: str, expected: str, display_prefix: str,
          not_prefixes: tuple[str, ...] = ()) -> ProviderRule:
    prefixes = tuple(p for p in display_prefix.split("|") if p)
    return ProviderRule(name, label, re.compile(pattern), expected, prefixes, not_prefixes)


PROVIDERS: dict[str, ProviderRule] = {
    rule.name: rule
    for rule in (
        _rule("openai", "OpenAI", r"^sk-[A-Za-z0-9_\-]{20,}$",
              'starts with "sk-" (e.g. "sk-proj-...") followed by at least 20 letters, '
              "digits, '-' or '_'", "sk-", ("sk-ant-", "sk-or-")),
        _rule("anthropic", "Anthropic", r"^sk-ant-[A-Za-z0-9_\-]{20,}$",
              'starts with "sk-ant-" (e.g. "sk-ant-api03-...") followed by at least 20 '
              "letters, digits, '-' or '_'", "sk-ant-"),
        _rule("openrouter", "OpenRouter", r"^sk-or-[A-Za-z0-9_\-]{20,}$",
              'starts with "sk-or-" (e.g. "sk-or-v1-...") followed by at least 20 letters, '
              "digits, '-' or '_'", "sk-or-"),
        _rule("groq", "Groq", r"^gsk_[A-Za-z0-9]{20,}$",
              'starts with "gsk_" followed by at least 20 letters or digits', "gsk_"),
        _rule("huggingface", "Hugging Face", r"^hf_[A-Za-z0-9]{20,}$",
              'starts with "hf_" followed by at least 20 letters or digits', "hf_"),
        _rule("together", "Together AI", r"^(tgp_v1_[A-Za-z0-9_\-]{20,}|[0-9a-f]{64})$",
              'starts with "tgp_v1_" followed by at least 20 letters, digits, \'-\' or \'_\', '
              "or is 64 lowercase hex characters (older keys)", "tgp_v1_"),
        _rule("fireworks", "Fireworks AI", r"^(fw_[A-Za-z0-9]{20,}|[A-Za-z0-9]{32,64})$",
              'starts with "fw_" followed by at least 20 letters or digits, or is 32-64 '
              "letters and digits (older keys)", "fw_"),
        _rule("deepinfra", "DeepInfra", r"^[A-Za-z0-9]{24,64}$",
              "is 24-64 letters and digits (no prefix)", ""),
    )
}


#: Other names of a provider: the model-id prefixes of the catalog and LiteLLM
#: ("together_ai/..."), so a key is stored under the name a model id starts with too.
PROVIDER_ALIASES: dict[str, str] = {
    "together_ai": "together",
    "together-ai": "together",
    "togetherai": "together",
    "fireworks_ai": "fireworks",
    "fireworks-ai": "fireworks",
    "hugging_face": "huggingface",
    "hf": "huggingface",
    "deep_infra": "deepinfra",
    "open_router": "openrouter",
}


def canonical_provider(name: str) -> str:
    """The provider's name in PROVIDERS for any accepted spelling (lower case)."""
    name = name.strip().lower()
    return PROVIDER_ALIASES.get(name, name)


def supported() -> str:
    return ", ".join(sorted(PROVIDERS))


def provider_rule(provider: object, param: str = "provider") -> ProviderRule:
    """The rule of a supported provider, or a 400 that lists the supported ones."""
    if not isinstance(provider, str) or not provider.strip():
        raise InvalidRequest(f"{param} is required: one of {supported()}.", param=param,
                             code="unknown_provider")
    name = provider.strip().lower()
    rule = PROVIDERS.get(canonical_provider(name))
    if rule is None:
        shown = name if len(name) <= 40 and _ASCII_PRINTABLE.match(name) else "(not shown)"
        raise InvalidRequest(
            f"Unknown provider {shown!r} for a stored key: use one of {supported()}.",
            param=param, code="unknown_provider",
        )
    return rule


def normalize_key(rule: ProviderRule, api_key: object) -> str:
    """The key, surrounding whitespace removed, if it has the provider's format.

    A 400 says what a key of that provider looks like; it never echoes the key."""
    if not isinstance(api_key, str) or not api_key.strip():
        raise InvalidRequest(
            f"api_key must not be empty: give your {rule.label} API key (it {rule.expected}).",
            param="api_key", code="invalid_api_key",
        )
    key = api_key.strip()
    if len(key) > MAX_KEY_LENGTH:
        raise InvalidRequest(
            f"api_key is too long for an API key (at most {MAX_KEY_LENGTH} characters).",
            param="api_key", code="invalid_api_key",
        )
    if not _ASCII_PRINTABLE.match(key):
        raise InvalidRequest(
            "api_key must be one word of printable ASCII characters (no spaces or line "
            f"breaks): {rule.a_label} API key {rule.expected}.",
            param="api_key", code="invalid_api_key",
        )
    for other in rule.not_prefixes:
        if key.startswith(other):
            owner = next((r.label for r in PROVIDERS.values() if other in r.display_prefixes),
                         "another provider")
            raise InvalidRequest(
                f"api_key looks like a key of {owner}, not of {rule.label}: {rule.a_label} "
                f"key {rule.expected}. Send it with the matching provider.",
                param="api_key", code="invalid_api_key",
            )
    if not rule.pattern.match(key):
        raise InvalidRequest(
            f"api_key does not look like {rule.a_label} API key: {rule.a_label} key "
            f"{rule.expected}.",
            param="api_key", code="invalid_api_key",
        )
    return key


def mask(rule: ProviderRule, key: str) -> str:
    """The displayable form: the provider's prefix and the last four ("sk-ant-…abcd")."""
    prefix = next((p for p in rule.display_prefixes if key.startswith(p)), "")
    return f"{prefix}…{key[-4:]}"


def fingerprint(key: str) -> str:
    """A non-reversible identifier of the key (truncated SHA-256), to tell keys apart."""
    return "sha256:" + hashlib.sha256(key.encode()).hexdigest()[:FINGERPRINT_HEX]


def account_flag(provider: str) -> str:
    return f"{ACCOUNT_FLAG_PREFIX}{provider}"


def may_have_key(flags: frozenset[str], provider: str) -> bool:
    """Whether an account's flags say an enabled key for ``provider`` may exist."""
    return account_flag(provider) in flags


def redact(text: str, secret: str | None, window: int = 12) -> str | None:
    """``text`` unless it contains ``secret`` or any ``window``-long piece of it (then None).

    Used on provider error messages before they reach a client or a log."""
    if not secret:
        return text
    size = min(window, len(secret))
    for i in range(len(secret) - size + 1):
        if secret[i : i + size] in text:
            return None
    return text
