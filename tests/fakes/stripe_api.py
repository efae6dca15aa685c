"""A small local fake of Stripe's API, and Stripe webhook payloads signed as Stripe signs them.

``FakeStripe`` serves ``POST /v1/checkout/sessions`` on 127.0.0.1 (point STRIPE_API_BASE
at ``.url``). It records what Stripe would receive (form fields, Idempotency-Key, API
key) and answers like Stripe: a realistic ``checkout.session`` object; the same
Idempotency-Key with the same parameters replays the first response
(``Idempotent-Replayed: true``), with different parameters it is an ``idempotency_error``.

Signing (https://docs.stripe.com/webhooks#verify-manually): the header is
``t=<unix time>,v1=<hex HMAC-SHA256 of "<t>.<raw body>" keyed with the endpoint secret>``;
Stripe sends the body pretty-printed with two-space indents. Written here from the
documented scheme, not with the stripe library, so the tests check compatibility.

Re-sign the sample webhook event (its signature expires after 300 s) for `sam local invoke`:
    .venv/bin/python -m tests.fakes.stripe_api sign-sample > /tmp/stripe_webhook.json
    (the function then needs STRIPE_WEBHOOK_SECRET=whsec_sample)
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

ROOT = Path(__file__).resolve().parent.parent.parent
SAMPLE_WEBHOOK_SECRET = "whsec_sample"
SAMPLE_SECRET_KEY = "sk_test_sample"
API_VERSION = "2025-10-29.clover"


# -- the fake API ----------------------------------------------------------------------------


@dataclass
class RecordedRequest:
    method: str
    path: str
    headers: dict[str, str]
    form: dict[str, str]

    @property
    def idempotency_key(self) -> str | None:
        return self.headers.get("idempotency-key")

    @property
    def api_key(self) -> str | None:
        auth = self.headers.get("authorization", "")
        return auth.removeprefix("Bearer ") if auth.startswith("Bearer ") else None

    def prefixed(self, prefix: str) -> dict[str, str]:
        """Form fields under ``prefix[...]``, e.g. prefixed("metadata")."""
        start = f"{prefix}["
        return {k[len(start):-1]: v for k, v in self.form.items()
                if k.startswith(start) and k.endswith("]") and "][" not in k[len(start):]}


@dataclass
class FakeStripe:
    requests: list[RecordedRequest] = field(default_factory=list)
    sessions: dict[str, dict[str, Any]] = field(default_factory=dict)
    # (status, body) to answer every request with, e.g. (500, {...}) for an outage.
    fail_with: tuple[int, dict[str, Any]] | None = None
    _idempotent: dict[tuple[str, str], tuple[dict[str, str], int, dict[str, Any]]] = field(
        default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        assert self._server is not None
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def __enter__(self) -> FakeStripe:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length).decode()
                recorded = RecordedRequest(
                    "POST", self.path, {k.lower(): v for k, v in self.headers.items()},
                    dict(parse_qsl(raw, keep_blank_values=True)),
                )
                status, body, headers = fake._answer(recorded)
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.send_header("Request-Id", f"req_{secrets.token_hex(7)}")
                for name, value in headers.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.shutdown()
        self._server.server_close()

    def _answer(self, req: RecordedRequest) -> tuple[int, dict[str, Any], dict[str, str]]:
        with self._lock:
            self.requests.append(req)
            if self.fail_with is not None:
                return self.fail_with[0], self.fail_with[1], {}
            if not req.api_key or not req.api_key.startswith("sk_"):
                return 401, _error("invalid_request_error", "You did not provide an API key."), {}
            if req.path != "/v1/checkout/sessions":
                return 404, _error("invalid_request_error", f"Unrecognized request URL "
                                   f"(POST: {req.path})."), {}
            key = req.idempotency_key
            if key:
                seen = self._idempotent.get((req.api_key, key))
                if seen is not None:
                    form, status, body = seen
                    if form != req.form:
                        return 400, _error(
                            "idempotency_error",
                            "Keys for idempotent requests can only be used with the same "
                            "parameters they were first used with.",
                        ), {}
                    return status, body, {"Idempotent-Replayed": "true"}
            status, body = self._create_session(req)
            if key:
                self._idempotent[(req.api_key, key)] = (req.form, status, body)
            return status, body, {}

    def _create_session(self, req: RecordedRequest) -> tuple[int, dict[str, Any]]:
        form = req.form
        if form.get("mode") != "payment":
            return 400, _error("invalid_request_error", "Invalid mode", param="mode")
        for name in ("success_url", "line_items[0][quantity]",
                     "line_items[0][price_data][currency]",
                     "line_items[0][price_data][unit_amount]",
                     "line_items[0][price_data][product_data][name]"):
            if not form.get(name):
                return 400, _error("invalid_request_error", f"Missing required param: {name}.",
                                   param=name)
        try:
            unit = int(form["line_items[0][price_data][unit_amount]"])
            quantity = int(form["line_items[0][quantity]"])
        except ValueError:
            return 400, _error("invalid_request_error", "Invalid integer",
                               param="line_items[0][price_data][unit_amount]")
        if unit < 50:
            return 400, _error("invalid_request_error",
                               "The Checkout Session's total amount due must add up to at "
                               "least $0.50 usd", param="line_items[0][price_data][unit_amount]")
        session = checkout_session(
            user_id=form.get("client_reference_id"),
            amount_cents=unit * quantity,
            metadata=req.prefixed("metadata"),
            payment_status="unpaid",
            payment_intent=None,  # created when the buyer pays
            success_url=form["success_url"],
            cancel_url=form.get("cancel_url"),
            currency=form["line_items[0][price_data][currency]"],
        )
        session["status"] = "open"
        session["url"] = f"https://checkout.stripe.com/c/pay/{session['id']}#fid{secrets.token_hex(8)}"
        self.sessions[session["id"]] = session
        return 200, session


def _error(type_: str, message: str, param: str | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"type": type_, "message": message}
    if param:
        body["param"] = param
    return {"error": body}


# -- Stripe objects and events ---------------------------------------------------------------


def new_id(prefix: str) -> str:
    return f"{prefix}_test_{secrets.token_hex(12)}"


def checkout_session(
    *,
    user_id: str | None,
    amount_cents: int,
    session_id: str | None = None,
    payment_intent: str | None = "auto",
    payment_status: str = "paid",
    metadata: dict[str, str] | None = None,
    success_url: str = "http://localhost:3000/billing/success",
    cancel_url: str | None = "http://localhost:3000/billing",
    currency: str = "usd",
) -> dict[str, Any]:
    now = int(time.time())
    sid = session_id or new_id("cs")
    if metadata is None:
        metadata = {"llmcredits_user_id": user_id, "llmcredits_credits":
                    f"{amount_cents // 100}.{amount_cents % 100:02d}"} if user_id else {}
    return {
        "id": sid,
        "object": "checkout.session",
        "amount_subtotal": amount_cents,
        "amount_total": amount_cents,
        "cancel_url": cancel_url,
        "client_reference_id": user_id,
        "created": now,
        "currency": currency,
        "customer": None,
        "customer_details": {"email": "buyer@example.com", "name": "Buyer"},
        "expires_at": now + 86400,
        "livemode": False,
        "metadata": metadata,
        "mode": "payment",
        "payment_intent": new_id("pi") if payment_intent == "auto" else payment_intent,
        "payment_method_types": ["card"],
        "payment_status": payment_status,
        "status": "complete" if payment_status == "paid" else "open",
        "success_url": success_url,
        "total_details": {"amount_discount": 0, "amount_shipping": 0, "amount_tax": 0},
        "url": None,
    }


def charge(
    *, payment_intent: str, amount: int, amount_refunded: int, charge_id: str | None = None
) -> dict[str, Any]:
    return {
        "id": charge_id or new_id("ch"),
        "object": "charge",
        "amount": amount,
        "amount_captured": amount,
        "amount_refunded": amount_refunded,
        "captured": True,
        "created": int(time.time()),
        "currency": "usd",
        "disputed": False,
        "livemode": False,
        "metadata": {},
        "paid": True,
        "payment_intent": payment_intent,
        "refunded": amount_refunded == amount,
        "status": "succeeded",
    }


def dispute(
    *, payment_intent: str, amount: int, charge_id: str | None = None,
    dispute_id: str | None = None,
) -> dict[str, Any]:
    return {
        "id": dispute_id or new_id("dp"),
        "object": "dispute",
        "amount": amount,
        "charge": charge_id or new_id("ch"),
        "created": int(time.time()),
        "currency": "usd",
        "is_charge_refundable": False,
        "livemode": False,
        "metadata": {},
        "payment_intent": payment_intent,
        "reason": "fraudulent",
        "status": "needs_response",
    }


def event(type_: str, obj: dict[str, Any], event_id: str | None = None) -> dict[str, Any]:
    return {
        "id": event_id or f"evt_{secrets.token_hex(12)}",
        "object": "event",
        "api_version": API_VERSION,
        "created": int(time.time()),
        "data": {"object": obj},
        "livemode": False,
        "pending_webhooks": 1,
        "request": {"id": None, "idempotency_key": None},
        "type": type_,
    }


def payload(evt: dict[str, Any]) -> str:
    """The body as Stripe sends it (pretty-printed)."""
    return json.dumps(evt, indent=2)


def sign(body: str, secret: str, timestamp: int | None = None) -> str:
    """The Stripe-Signature header Stripe sends with ``body``."""
    ts = int(time.time()) if timestamp is None else timestamp
    mac = hmac.new(secret.encode(), f"{ts}.{body}".encode(), hashlib.sha256).hexdigest()
    return f"t={ts},v1={mac}"


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
    if name not in ("credits_purchase_post", "stripe_webhook"):
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
