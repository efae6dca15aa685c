"""Credentials never reach the logs: the shared Logger scrubs every line it writes."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest
from llmcredits.http.api import logger
from llmcredits.http.log_scrub import REDACTED, ScrubbingFormatter, scrub, scrub_text

JWT = ("eyJhbGciOiJSUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiJhbm4iLCJzY29wZSI6Imxsb"
       "WNyZWRpdHMvYWRtaW4ifQ.c2lnbmF0dXJlLW9mLXRoZS10b2tlbi1oZXJl")
OPENAI = "sk-proj-AbCdEf0123456789ghIJklMNopQRstUVwxYZ"
ANTHROPIC = "sk-ant-api03-AbCdEf0123456789_ghIJklMNop-QRstUV"
GROQ = "gsk_AbCdEf0123456789ghIJklMNopQRstUVwxYZ0123456789abcd"
HF = "hf_AbCdEf0123456789ghIJklMNopQRstUVwx"
WHSEC = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
STRIPE_KEY = "sk_live_51AbCdEf0123456789ghIJklMN"
LITELLM = "sk-master-Zz9Yy8Xx7Ww6"
SIG_HEX = "5257a869e7ecebeda32affa62cdca3fa51cad7e77a0e56ff536d0ce8e108d8bd"
SIG_V0 = "6ffbb59b2300aae63f272406069a9788598b792a944a07aba816edb039989a39"
STRIPE_SIG = f"t=1492774577,v1={SIG_HEX},v0={SIG_V0}"
BASIC = "dXNlcm5hbWU6c3VwZXItc2VjcmV0LXBhc3N3b3Jk"

SECRETS = [JWT, OPENAI, ANTHROPIC, GROQ, HF, WHSEC, STRIPE_KEY, LITELLM, SIG_HEX, SIG_V0, BASIC,
           "hunter2-the-password", "session=abc123cookie"]


@pytest.fixture
def logged() -> Iterator[io.StringIO]:
    """Everything the shared logger writes during the test."""
    buf = io.StringIO()
    handler = logger.registered_handler
    assert isinstance(handler, logging.StreamHandler)
    old = handler.setStream(buf)
    try:
        yield buf
    finally:
        handler.setStream(old)


def lines(buf: io.StringIO) -> list[dict]:
    out = [json.loads(line) for line in buf.getvalue().splitlines() if line.strip()]
    assert out, "nothing was logged"
    return out


def assert_clean(text: str) -> None:
    for secret in SECRETS:
        assert secret not in text, f"{secret[:12]}... leaked: {text}"


def test_the_shared_logger_uses_the_scrubbing_formatter():
    assert isinstance(logger.registered_handler.formatter, ScrubbingFormatter)


def test_an_event_with_secret_headers_is_logged_without_them(logged):
    event = {
        "version": "2.0",
        "routeKey": "POST /api/v1/llm/chat/completions",
        "headers": {
            "authorization": f"Bearer {JWT}",
            "Stripe-Signature": STRIPE_SIG,
            "x-api-key": OPENAI,
            "cookie": "session=abc123cookie",
            "content-type": "application/json",
            "idempotency-key": "order-42",
        },
        "multiValueHeaders": {"Authorization": [f"Bearer {JWT}"]},
        "cookies": ["session=abc123cookie"],
        "body": json.dumps({"provider": "anthropic", "api_key": ANTHROPIC}),
        "requestContext": {"requestId": "req-123", "authorizer": {"jwt": {"claims": {}}}},
    }
    logger.info(event)
    (line,) = lines(logged)
    text = logged.getvalue()
    assert_clean(text)
    headers = line["message"]["headers"]
    assert headers["authorization"] == REDACTED
    assert headers["Stripe-Signature"] == REDACTED
    assert headers["x-api-key"] == REDACTED
    # what is not secret survives, so the log stays useful
    assert headers["content-type"] == "application/json"
    assert headers["idempotency-key"] == "order-42"
    assert line["message"]["routeKey"] == "POST /api/v1/llm/chat/completions"
    assert line["message"]["requestContext"]["requestId"] == "req-123"


def test_keys_in_messages_and_extra_keys_are_scrubbed(logged):
    logger.info(
        f"BYOK keys {OPENAI}, {ANTHROPIC}, {GROQ} and {HF}; Stripe {STRIPE_KEY} / {WHSEC}; "
        f"upstream Authorization: Bearer {LITELLM}; signature {STRIPE_SIG}; "
        "password=hunter2-the-password",
        extra={
            "provider_api_key": OPENAI,
            "stripe_webhook_secret": WHSEC,
            "upstream_headers": {"Authorization": f"Basic {BASIC}"},
            "note": f"header was 'authorization': 'Basic {BASIC}'",
            "tokens": 42,  # not a secret: a count
            "model": "openai/gpt-4o",
        },
    )
    logger.warning("as %s args: %s", "format", f"Bearer {JWT}")
    first, second = lines(logged)
    assert_clean(logged.getvalue())
    assert first["provider_api_key"] == REDACTED
    assert first["stripe_webhook_secret"] == REDACTED
    assert first["tokens"] == 42 and first["model"] == "openai/gpt-4o"
    assert first["message"].startswith("BYOK keys [REDACTED], [REDACTED]")
    assert "Bearer [REDACTED]" in second["message"]


def test_an_exception_with_a_bearer_token_is_scrubbed(logged):
    try:
        raise RuntimeError(f"upstream refused Authorization: Bearer {JWT} (key {ANTHROPIC})")
    except RuntimeError:
        logger.exception("upstream call failed")
    (line,) = lines(logged)
    assert_clean(logged.getvalue())
    assert "Bearer [REDACTED]" in line["exception"]
    assert line["exception_name"] == "RuntimeError"


def test_package_loggers_and_rendered_objects_are_scrubbed_too(logged):
    class Creds:
        def __str__(self) -> str:
            return f"Creds(api_key={OPENAI!r}, token={JWT})"

    # std logging in the package propagates to the shared logger's handler
    logging.getLogger("llmcredits.services.test").warning("retrying with %s", OPENAI)
    logger.info("object", extra={"creds": Creds()})
    out = lines(logged)
    assert len(out) == 2
    assert_clean(logged.getvalue())


def test_scrub_keeps_ordinary_text_and_structure():
    text = "task-list, risk-management, basic usage, 12 tokens, hf_hub, model sk"
    assert scrub_text(text) == text
    assert scrub({"a": [1, "x", {"Authorization": None}], "b": (2,)}) == {
        "a": [1, "x", {"Authorization": REDACTED}], "b": [2]}
    # the second pass over an already scrubbed line changes nothing
    once = scrub_text(f"Authorization: Bearer {JWT}; password='pw'")
    assert scrub_text(once) == once == "Authorization: Bearer [REDACTED]; password='[REDACTED]'"
