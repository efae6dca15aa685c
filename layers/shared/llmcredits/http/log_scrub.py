"""Secrets never reach the logs: a Powertools formatter that scrubs every record.

The shared ``logger`` (``llmcredits.http.api``) uses :class:`ScrubbingFormatter`. Every
``logging.getLogger("llmcredits...")`` logger propagates to the same handler, so the
whole package's log lines pass through it too. Two passes, both over the complete
structured record (message, extra keys, appended keys, exception and stack trace):

1. by key: the value of a sensitive key (``authorization``, ``stripe-signature``,
   ``cookie``, ``api_key``, ``*secret``, ``*password`` ...) is replaced whole, at any
   depth (an API Gateway event's ``headers``, a dict logged as the message, ...);
2. by shape: bearer tokens, JWTs, our API keys (``llmc-``), provider and Stripe keys
   (``sk-``, ``sk-ant-``, ``sk_live_``, ``gsk_``, ``hf_``, ``whsec_`` ...), Stripe
   signature parts and ``key: value`` / ``key=value`` pairs of sensitive keys inside
   free text; this pass also runs over the serialized line, which covers objects
   rendered with ``str()``.

Over-redaction is accepted; a leaked key is not (DESIGN invariant 5).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from aws_lambda_powertools.logging.formatter import LambdaPowertoolsFormatter

REDACTED = "[REDACTED]"

#: Keys whose values are secret whatever they hold (compared lower-case, ``_`` as ``-``).
SENSITIVE_KEYS = frozenset({
    "authorization", "proxy-authorization", "stripe-signature", "x-api-key", "api-key",
    "apikey", "x-litellm-api-key", "cookie", "cookies", "set-cookie", "token",
    "access-token", "refresh-token", "id-token", "client-secret", "master-key",
    "litellm-master-key", "password", "passwd", "secret", "secret-key", "private-key",
    "plaintext", "data-key",
})
#: ... and keys ending like these (``stripe_webhook_secret``, ``provider_api_key``).
SENSITIVE_SUFFIXES = ("-secret", "-password", "-api-key", "-apikey", "-signature",
                      "-authorization", "-token", "-secret-key")

# Not preceded by a letter or digit (so "task-list" is no "sk-" key), but a JSON escape
# like "\n" right before the token still counts as a boundary.
_B = r"(?:(?<![A-Za-z0-9])|(?<=\\[nrt]))"
_TOKEN_PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = (
    # Authorization schemes: keep the scheme, drop the credential.
    (re.compile(_B + r"(Bearer)\s+[A-Za-z0-9\-._~+/]+=*", re.IGNORECASE), r"\1 " + REDACTED),
    (re.compile(_B + r"(Basic)\s+[A-Za-z0-9+/]{12,}=*"), r"\1 " + REDACTED),
    # JWTs (header.payload.signature), with or without "Bearer".
    (re.compile(_B + r"eyJ[A-Za-z0-9_\-]+\.[A-Za-z0-9_\-]+\.[A-Za-z0-9_\-]*"), REDACTED),
    # Provider keys: Anthropic, OpenAI (sk-, sk-proj-), OpenRouter (sk-or-), Groq,
    # Hugging Face, xAI, Replicate, Perplexity, Google; Stripe secret/restricted keys
    # and webhook secrets.
    (re.compile(_B + r"(?:sk-ant-|sk-or-|sk-proj-|sk-)[A-Za-z0-9_\-]{6,}"), REDACTED),
    (re.compile(_B + r"(?:sk|rk)_(?:live|test)_[A-Za-z0-9]{6,}"), REDACTED),
    # Our own API keys (llmc- + base64url), wherever they turn up in free text.
    (re.compile(_B + r"llmc-[A-Za-z0-9_\-]{6,}"), REDACTED),
    (re.compile(_B + r"whsec_[A-Za-z0-9+/=]{6,}"), REDACTED),
    (re.compile(_B + r"gsk_[A-Za-z0-9]{10,}"), REDACTED),
    (re.compile(_B + r"hf_[A-Za-z0-9]{10,}"), REDACTED),
    (re.compile(_B + r"(?:xai-|pplx-|r8_)[A-Za-z0-9]{10,}"), REDACTED),
    (re.compile(_B + r"AIza[0-9A-Za-z_\-]{30,}"), REDACTED),
    # Stripe-Signature parts: t=...,v1=<hex>,v0=<hex>
    (re.compile(_B + r"(v[01])=[0-9a-fA-F]{16,}"), r"\1=" + REDACTED),
)
_KEY_NAMES = (
    r"(?:proxy[-_]?)?authorization|stripe[-_]signature|x[-_]api[-_]key|api[-_]?key|"
    r"cookie|set[-_]cookie|password|passwd|client[-_]secret|webhook[-_]secret|"
    r"secret[-_]key|master[-_]key|access[-_]token|refresh[-_]token|id[-_]token"
)
# 'authorization': 'Basic abc', "api_key": "x", stripe-signature: t=1,v1=..., password=x
_V = r"[^\s\"',;{}\[\]]+"  # one unquoted value
_KEY_VALUE = re.compile(
    r"(?P<key>[\"']?\b(?:" + _KEY_NAMES + r")\b[\"']?\s*[:=]\s*)"
    # already done (the serialized line is scrubbed again, and tokens go first)
    r"(?!(?:(?:bearer|basic|digest)\s+)?[\"']?\[REDACTED\])"
    r"(?P<value>\"[^\"]*\"|'[^']*'|(?:(?:bearer|basic|digest)\s+)?"
    + _V + r"(?:," + _V + r"=" + _V + r")*)",
    re.IGNORECASE,
)


def _key_value(match: re.Match[str]) -> str:
    value = match.group("value")
    quote = value[0] if value[:1] in ("'", '"') else ""
    return f"{match.group('key')}{quote}{REDACTED}{quote}"


def scrub_text(text: str) -> str:
    """``text`` with every recognisable credential replaced by ``[REDACTED]``."""
    for pattern, replacement in _TOKEN_PATTERNS:
        text = pattern.sub(replacement, text)
    return _KEY_VALUE.sub(_key_value, text)


def is_sensitive_key(key: object) -> bool:
    if not isinstance(key, str):
        return False
    norm = key.strip().lower().replace("_", "-")
    return norm in SENSITIVE_KEYS or norm.endswith(SENSITIVE_SUFFIXES)


def scrub(value: Any) -> Any:
    """A copy of ``value`` (dicts, lists, tuples, strings, at any depth) without secrets.

    Other objects are returned as they are; the formatter scrubs their rendering. A
    sensitive key's value is replaced whatever it is (even null), so the pass over the
    serialized line always finds a string there and keeps the JSON valid."""
    if isinstance(value, str):
        return scrub_text(value)
    if isinstance(value, Mapping):
        return {k: REDACTED if is_sensitive_key(k) else scrub(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [scrub(v) for v in value]
    return value


class ScrubbingFormatter(LambdaPowertoolsFormatter):
    """Powertools' JSON formatter, with :func:`scrub` applied to each record."""

    def serialize(self, log: Any) -> str:
        return scrub_text(super().serialize(scrub(log)))
