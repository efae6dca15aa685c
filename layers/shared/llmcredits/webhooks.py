"""Signed alert webhooks: how we sign, and how a receiver verifies (like Stripe's).

Every POST carries ``LLMCredits-Signature: t=<unix seconds>,v1=<hex>`` where ``v1`` is
HMAC-SHA256, keyed with the endpoint's signing secret (``whsec_...``, the whole string),
of ``"<t>.<raw body>"``. A receiver checks the HMAC on the *raw* bytes (before any JSON
parsing), compares in constant time, and refuses timestamps older than a tolerance
(replays). Several ``v1`` values may appear (e.g. during a secret rotation); one match
is enough.

Receivers::

    from llmcredits.webhooks import verify, SignatureVerificationError

    event = verify(request.body, request.headers["LLMCredits-Signature"], secret)
    if already_seen(event["id"]):   # deliveries are at least once: dedupe by id
        return 200

Pure Python (hmac, hashlib, json): copy this file into a receiver as is.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from typing import Any

SIGNATURE_HEADER = "LLMCredits-Signature"
EVENT_ID_HEADER = "LLMCredits-Event-Id"
SCHEME = "v1"
DEFAULT_TOLERANCE_SECONDS = 300


class SignatureVerificationError(ValueError):
    """The payload is not signed by this secret, or the signature is too old."""


def compute_signature(secret: str, timestamp: int, payload: bytes) -> str:
    signed = str(int(timestamp)).encode() + b"." + payload
    return hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()


def signature_header(secret: str, payload: bytes, timestamp: int | None = None) -> str:
    """The header value for ``payload`` signed now (or at ``timestamp``)."""
    t = int(time.time()) if timestamp is None else int(timestamp)
    return f"t={t},{SCHEME}={compute_signature(secret, t, payload)}"


def _parse(header: str) -> tuple[int, list[str]]:
    timestamp: int | None = None
    signatures: list[str] = []
    for part in header.split(","):
        key, _, value = part.strip().partition("=")
        if key == "t":
            try:
                timestamp = int(value)
            except ValueError:
                raise SignatureVerificationError("bad timestamp in signature header") from None
        elif key == SCHEME and value:
            signatures.append(value)
    if timestamp is None or not signatures:
        raise SignatureVerificationError(
            f"signature header must look like t=<unix>,{SCHEME}=<hex>")
    return timestamp, signatures


def verify(payload: bytes | str, header: str | None, secret: str,
           tolerance: int = DEFAULT_TOLERANCE_SECONDS, now: int | None = None) -> dict[str, Any]:
    """The event (parsed JSON) if ``header`` signs ``payload`` with ``secret`` within
    ``tolerance`` seconds (0 = no age check); else SignatureVerificationError."""
    if not header:
        raise SignatureVerificationError(f"no {SIGNATURE_HEADER} header")
    raw = payload.encode() if isinstance(payload, str) else bytes(payload)
    timestamp, signatures = _parse(header)
    expected = compute_signature(secret, timestamp, raw)
    if not any(hmac.compare_digest(expected, s) for s in signatures):
        raise SignatureVerificationError("no signature matches the payload and secret")
    current = int(time.time()) if now is None else now
    if tolerance > 0 and abs(current - timestamp) > tolerance:
        raise SignatureVerificationError("timestamp outside the tolerance (a replay?)")
    try:
        event = json.loads(raw)
    except ValueError:
        raise SignatureVerificationError("payload is not JSON") from None
    if not isinstance(event, dict):
        raise SignatureVerificationError("payload is not a JSON object")
    return event
