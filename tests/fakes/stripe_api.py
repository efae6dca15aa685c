"""Stripe for tests: the dev stand-in's fake API and Stripe-signed webhook payloads.

One implementation: the server, the Stripe objects and the signing live in
``llmcredits.local.dev_stripe`` (the DEVELOPMENT STAND-IN ``make dev`` uses) and are
re-exported here. ``FakeStripe()`` is a ``DevStripe`` without a webhook URL that
accepts any ``sk_...`` key: point STRIPE_API_BASE at ``.url``; it records what Stripe
would receive (form fields, Idempotency-Key, API key) and answers like Stripe (the same
Idempotency-Key with the same parameters replays the first response with
``Idempotent-Replayed: true``, with different parameters it is an ``idempotency_error``).

Signing (https://docs.stripe.com/webhooks#verify-manually): the header is
``t=<unix time>,v1=<hex HMAC-SHA256 of "<t>.<raw body>" keyed with the endpoint secret>``;
Stripe sends the body pretty-printed with two-space indents. Written from the
documented scheme, not with the stripe library, so the tests check compatibility.

Re-sign the sample webhook event (its signature expires after 300 s) for `sam local invoke`:
    .venv/bin/python -m tests.fakes.stripe_api sign-sample > /tmp/stripe_webhook.json
    (the function then needs STRIPE_WEBHOOK_SECRET=whsec_sample)
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from llmcredits.local.dev_stripe import (
    API_VERSION,
    DevStripe,
    RecordedRequest,
    charge,
    checkout_session,
    dispute,
    event,
    new_id,
    payload,
    sign,
)

ROOT = Path(__file__).resolve().parent.parent.parent
SAMPLE_WEBHOOK_SECRET = "whsec_sample"
SAMPLE_SECRET_KEY = "sk_test_sample"

__all__ = [
    "API_VERSION",
    "SAMPLE_SECRET_KEY",
    "SAMPLE_WEBHOOK_SECRET",
    "DevStripe",
    "FakeStripe",
    "RecordedRequest",
    "charge",
    "checkout_session",
    "dispute",
    "event",
    "new_id",
    "payload",
    "resign",
    "sample_ready",
    "sign",
    "webhook_request",
]


class FakeStripe(DevStripe):
    """The stand-in for unit tests: no webhook delivery, any ``sk_...`` key."""

    def __init__(self) -> None:
        super().__init__(webhook_url=None, webhook_secret=SAMPLE_WEBHOOK_SECRET, api_key=None)


def webhook_request(body: str, signature: str | None, *, base64_body: bool = False) -> dict:
    """The API Gateway HTTP API event of a Stripe delivery (no JWT on this route)."""
    import base64

    from tests.support import event as api_event

    headers = {"User-Agent": "Stripe/1.0 (+https://stripe.com/docs/webhooks)",
               "Content-Type": "application/json; charset=utf-8"}
    if signature is not None:
        headers["Stripe-Signature"] = signature
    evt = api_event("POST", "/api/v1/llm/stripe/webhook", raw_body=body, headers=headers,
                    sub=None)
    if base64_body:
        evt["body"] = base64.b64encode(body.encode()).decode()
        evt["isBase64Encoded"] = True
    return evt


# -- sample events ---------------------------------------------------------------------------


@contextmanager
def sample_ready(name: str, evt: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Make events/<name>.json servable: the purchase sample gets a FakeStripe and a test
    key; the webhook sample is re-signed now with whsec_sample (its stored signature is
    older than Stripe's 300 s tolerance). Other samples pass through unchanged."""
    if name not in ("credits_purchase_post", "stripe_webhook", "credits_payment_method_post"):
        yield evt
        return
    from llmcredits import bootstrap

    saved = {k: os.environ.get(k) for k in
             ("STRIPE_SECRET_KEY", "STRIPE_API_BASE", "STRIPE_WEBHOOK_SECRET")}
    try:
        if name == "stripe_webhook":
            os.environ["STRIPE_WEBHOOK_SECRET"] = SAMPLE_WEBHOOK_SECRET
            bootstrap.reset()
            yield resign(evt)
        else:
            with FakeStripe() as fake:
                os.environ["STRIPE_SECRET_KEY"] = SAMPLE_SECRET_KEY
                os.environ["STRIPE_API_BASE"] = fake.url
                bootstrap.reset()
                yield evt
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        bootstrap.reset()


def resign(evt: dict[str, Any], secret: str = SAMPLE_WEBHOOK_SECRET) -> dict[str, Any]:
    headers = {k: v for k, v in evt["headers"].items() if k.lower() != "stripe-signature"}
    headers["stripe-signature"] = sign(evt["body"], secret)
    return {**evt, "headers": headers}


def main(argv: list[str]) -> int:
    if argv[:1] != ["sign-sample"]:
        print("usage: python -m tests.fakes.stripe_api sign-sample [events/stripe_webhook.json]",
              file=sys.stderr)
        return 2
    path = Path(argv[1]) if len(argv) > 1 else ROOT / "events" / "stripe_webhook.json"
    print(json.dumps(resign(json.loads(path.read_text())), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
