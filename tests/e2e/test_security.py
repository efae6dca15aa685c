"""Security through the local stack: tenant isolation, admin scope, token validation, body limits.

Every request goes over HTTP through the emulated REST API (the real Lambda authorizer
included), as a client on the internet would send it.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
from llmcredits.local.issuer import JwtAuthority, b64url_encode

API = "/api/v1/llm"
pytestmark = pytest.mark.filterwarnings("ignore:No application metrics:UserWarning")
ALICE, BOB, OPS = "sec-alice", "sec-bob", "sec-ops"
ALICE_KEY = "sk-alice-secret-0123456789abcdef"
BOB_KEY = "sk-ant-bob-secret-0123456789abcdef"


@pytest.fixture(scope="module")
def http(stack: Any) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=stack.base_url + API, timeout=30) as client:
        yield client


def auth(stack: Any, sub: str, admin: bool = False) -> dict[str, str]:
    return {"Authorization": f"Bearer {stack.issue_token(sub, admin=admin)}"}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def assert_error(resp: httpx.Response, status: int, code: str | None = None) -> dict[str, Any]:
    assert resp.status_code == status, resp.text
    error = resp.json()["error"]
    assert set(error) >= {"message", "type", "code", "param"}, error
    if code is not None:
        assert error["code"] == code, error
    return dict(error)


@pytest.fixture(scope="module")
def tenants(stack: Any, http: httpx.Client) -> dict[str, dict[str, str]]:
    """Alice and Bob, both starters with credits and a few ledger entries of their own."""
    users = {ALICE: auth(stack, ALICE), BOB: auth(stack, BOB)}
    admin = auth(stack, OPS, admin=True)
    for user, grants in ((ALICE, ["7", "1"]), (BOB, ["3", "2", "1"])):
        assert http.patch(f"/admin/users/{user}", json={"tier": "starter"},
                          headers=admin).status_code == 200
        for i, amount in enumerate(grants):
            resp = http.post(f"/admin/users/{user}/credits", headers=admin,
                             json={"amount": amount, "reason": f"for {user} #{i}"})
            assert resp.status_code == 201, resp.text
    return users


def balance(http: httpx.Client, headers: dict[str, str]) -> str:
    body = http.get("/credits", headers=headers).json()
    return str(body["balance"])


# ------------------------------------------------------------------ tenant isolation


def test_credits_are_the_callers_own(http, tenants):
    alice, bob = tenants[ALICE], tenants[BOB]
    assert http.get("/credits", headers=alice).json()["user_id"] == ALICE
    assert balance(http, alice) == "8.000000" and balance(http, bob) == "6.000000"
    # Alice's cap changes Alice's account only.
    assert http.put("/credits/monthly-cap", json={"monthly_cap": "4"}, headers=alice).json()[
        "monthly_cap"] == "4.000000"
    assert http.get("/credits", headers=bob).json()["monthly_cap"] is None
    assert http.put("/credits/monthly-cap", json={"monthly_cap": None},
                    headers=alice).status_code == 200
    # No route takes a user id from a non-admin; the user id is only ever the token's sub.
    assert http.get("/credits", params={"user_id": BOB}, headers=alice).json()["user_id"] == ALICE
    body = {"monthly_cap": "1", "user_id": BOB}
    assert_error(http.put("/credits/monthly-cap", json=body, headers=alice), 400)
    assert http.get("/credits", headers=bob).json()["monthly_cap"] is None


def test_history_is_the_callers_own_and_cursors_are_bound_to_their_user(http, tenants):
    alice, bob = tenants[ALICE], tenants[BOB]
    mine = http.get("/credits/history", headers=alice).json()["items"]
    assert mine and all(ALICE in json.dumps(i["metadata"]) for i in mine if i["type"] == "bonus")
    assert not any(BOB in json.dumps(i) for i in mine)

    page = http.get("/credits/history", params={"limit": 1}, headers=bob).json()
    cursor = page["next_cursor"]
    assert cursor and len(page["items"]) == 1
    # Bob's cursor continues Bob's history for Bob ...
    assert http.get("/credits/history", params={"limit": 1, "cursor": cursor},
                    headers=bob).status_code == 200
    # ... and shows Alice nothing of Bob's.
    stolen = http.get("/credits/history", params={"limit": 1, "cursor": cursor}, headers=alice)
    assert_error(stolen, 400)
    assert BOB not in stolen.text
    # A tampered cursor is refused too (not silently read as someone else's position).
    tampered = cursor[:-4] + ("AAAA" if not cursor.endswith("AAAA") else "BBBB")
    assert_error(http.get("/credits/history", params={"cursor": tampered}, headers=bob), 400)


def test_byok_keys_are_the_callers_own(http, tenants):
    alice, bob = tenants[ALICE], tenants[BOB]
    stored = http.post("/byok/keys", json={"provider": "openai", "api_key": ALICE_KEY},
                       headers=alice)
    assert stored.status_code == 201, stored.text
    assert ALICE_KEY not in stored.text
    assert http.post("/byok/keys", json={"provider": "anthropic", "api_key": BOB_KEY},
                     headers=bob).status_code == 201

    alice_keys = http.get("/byok/keys", headers=alice).json()["keys"]
    bob_keys = http.get("/byok/keys", headers=bob).json()["keys"]
    assert [k["provider"] for k in alice_keys] == ["openai"]
    assert [k["provider"] for k in bob_keys] == ["anthropic"]
    assert ALICE_KEY not in json.dumps(bob_keys) and BOB_KEY not in json.dumps(alice_keys)

    # Bob acting on "openai" only ever touches Bob's own (absent) openai key.
    assert_error(http.patch("/byok/keys/openai", json={"enabled": False}, headers=bob), 404)
    assert_error(http.delete("/byok/keys/openai", headers=bob), 404)
    assert http.get("/byok/keys", headers=alice).json()["keys"] == alice_keys
    # Alice disabling and deleting hers leaves Bob's untouched.
    assert http.patch("/byok/keys/openai", json={"enabled": False},
                      headers=alice).json()["enabled"] is False
    assert http.delete("/byok/keys/openai", headers=alice).status_code == 204
    assert_error(http.delete("/byok/keys/anthropic", headers=alice), 404)
    assert http.get("/byok/keys", headers=alice).json()["keys"] == []
    assert http.get("/byok/keys", headers=bob).json()["keys"] == bob_keys


def test_usage_is_the_callers_own(stack, http, tenants):
    alice, bob = tenants[ALICE], tenants[BOB]
    bob_before = http.get("/usage", headers=bob).json()["totals"]
    chat = http.post("/chat/completions", headers=alice, json={
        "model": "auto", "power_level": "balanced",
        "messages": [{"role": "user", "content": "metered for alice"}]})
    assert chat.status_code == 200, chat.text
    assert stack.drain_streams(10)
    deadline = time.monotonic() + 10
    while http.get("/usage", headers=alice).json()["totals"]["requests"] < 1:
        assert time.monotonic() < deadline, "alice's usage never showed up"
        time.sleep(0.1)
    report = http.get("/usage", headers=alice).json()
    assert report["user_id"] == ALICE and report["totals"]["cost"] == chat.headers[
        "x-credits-charged"]
    assert http.get("/usage", headers=bob).json()["totals"] == bob_before
    # The charge came from Alice's balance only.
    assert balance(http, bob) == "6.000000"


# ------------------------------------------------------------------------ admin scope


@pytest.mark.parametrize(("method", "path", "body"), [
    ("GET", f"/admin/users/{BOB}", None),
    ("PATCH", f"/admin/users/{BOB}", {"tier": "enterprise"}),
    ("POST", f"/admin/users/{BOB}/credits", {"amount": "1000", "reason": "self-service"}),
])
def test_admin_routes_refuse_non_admins(stack, http, tenants, method, path, body):
    before = http.get("/credits", headers=tenants[BOB]).json()
    forged_scopes = [
        auth(stack, ALICE),
        # look-alike scopes and claims that are not the admin scope
        bearer(stack.authority.issue_token(ALICE, scopes=["llmcredits/admin-lite"])),
        bearer(stack.authority.issue_token(ALICE, extra_claims={"groups": ["admin"],
                                                                "admin": True})),
        bearer(stack.authority.issue_token(ALICE, extra_claims={"scp": ["llmcredits/user"]})),
    ]
    for headers in forged_scopes:
        resp = http.request(method, path, json=body, headers=headers)
        assert resp.status_code == 403, resp.text
        assert "error" in resp.json()
    assert http.get("/credits", headers=tenants[BOB]).json() == before


# ------------------------------------------------------------------ token validation


def _jwt(header: dict[str, Any], claims: dict[str, Any], sign: Any) -> str:
    signing_input = (b64url_encode(json.dumps(header).encode()) + "."
                     + b64url_encode(json.dumps(claims).encode()))
    return signing_input + "." + b64url_encode(sign(signing_input.encode()))


def _claims(stack: Any, **changes: Any) -> dict[str, Any]:
    now = int(time.time())
    authority = stack.authority
    claims: dict[str, Any] = {"iss": authority.issuer, "aud": authority.audiences[0],
                              "sub": ALICE, "iat": now, "nbf": now, "exp": now + 600,
                              "scope": "llmcredits/admin"}
    claims.update(changes)
    return {k: v for k, v in claims.items() if v is not None}


def bad_tokens(stack: Any, tmp_path: Path) -> dict[str, str]:
    authority: JwtAuthority = stack.authority
    now = int(time.time())
    other = JwtAuthority(key_path=tmp_path / "attacker.pem", issuer=authority.issuer,
                         audience=authority.audiences)
    valid = authority.sign(_claims(stack))
    head, payload, signature = valid.split(".")
    flipped = signature[:10] + ("A" if signature[10] != "A" else "B") + signature[11:]
    pem = authority.public_key_pem()
    return {
        "forged signature (attacker's key, same kid)": other.sign(
            _claims(stack), {"kid": authority.kid}),
        "forged signature (attacker's key)": other.sign(_claims(stack)),
        "tampered signature": f"{head}.{payload}.{flipped}",
        "tampered claims": head + "." + b64url_encode(json.dumps(
            _claims(stack, sub=BOB)).encode()) + "." + signature,
        "expired": authority.sign(_claims(stack, iat=now - 7200, nbf=now - 7200,
                                          exp=now - 3600)),
        "not yet valid": authority.sign(_claims(stack, nbf=now + 3600, exp=now + 7200)),
        "no expiry": authority.sign(_claims(stack, exp=None)),
        "wrong issuer": authority.sign(_claims(stack, iss="https://evil.example.com")),
        "wrong audience": authority.sign(_claims(stack, aud="someone-else")),
        "alg none": _jwt({"alg": "none", "typ": "JWT"}, _claims(stack), lambda _: b""),
        "alg none, signature kept": f"{_jwt({'alg': 'none'}, _claims(stack), lambda _: b'')}"
                                    f"{signature}",
        "HS256 with the public key": _jwt(
            {"alg": "HS256", "typ": "JWT", "kid": authority.kid}, _claims(stack),
            lambda data: hmac.new(pem, data, hashlib.sha256).digest()),
        "not a JWT": "not-a-jwt",
        "empty signature": f"{head}.{payload}.",
        "garbage segments": "e30." + base64.urlsafe_b64encode(b"{}").decode() + ".x",
    }


def test_invalid_tokens_are_refused_as_api_gateway_would(stack, http, tenants, tmp_path):
    before = balance(http, tenants[ALICE])
    for name, token in bad_tokens(stack, tmp_path).items():
        for method, path, body in (("GET", "/credits", None),
                                   ("GET", f"/admin/users/{BOB}", None),
                                   ("POST", f"/admin/users/{ALICE}/credits",
                                    {"amount": "100"})):
            resp = http.request(method, path, json=body, headers=bearer(token))
            assert resp.status_code == 401, (name, path, resp.text)
            assert resp.json()["error"]["code"] == "invalid_token", (name, resp.text)
    assert http.get("/credits").status_code == 401  # no token at all
    assert http.get("/credits", headers={"Authorization": "Basic YTpi"}).status_code == 401
    assert balance(http, tenants[ALICE]) == before
    # The same claims, signed properly, are accepted (so the refusals above are the checks).
    assert http.get("/credits", headers=bearer(stack.authority.sign(_claims(stack)))
                    ).status_code == 200


# ------------------------------------------------------------------------ body limits


def test_bodies_over_the_limit_are_413(http, tenants):
    alice = {**tenants[ALICE], "Content-Type": "application/json"}
    before = balance(http, alice)
    # Our own routes: 64 KiB.
    big_cap = b'{"monthly_cap": "1", "pad": "' + b"x" * (64 * 1024) + b'"}'
    assert_error(http.put("/credits/monthly-cap", content=big_cap, headers=alice), 413,
                 "request_too_large")
    big_key = json.dumps({"provider": "openai", "api_key": "sk-" + "k" * 70_000}).encode()
    assert_error(http.post("/byok/keys", content=big_key, headers=alice), 413)
    # Chat: up to 1 MB is the handler's to judge; over it, 413 before anything is reserved.
    message = {"role": "user", "content": "x" * 1_000_001}
    big_chat = json.dumps({"model": "auto", "messages": [message]}).encode()
    assert_error(http.post("/chat/completions", content=big_chat, headers=alice), 413,
                 "request_too_large")
    fits = json.dumps({"model": "auto", "max_tokens": 1,
                       "messages": [{"role": "user", "content": "y" * 100_000}]}).encode()
    assert http.post("/chat/completions", content=fits, headers=alice).status_code != 413
    # Over the REST API's 10 MB: the gateway answers (no function runs).
    huge = b"{" + b" " * (10 * 1024 * 1024 + 1) + b"}"
    resp = http.put("/credits/monthly-cap", content=huge, headers=alice)
    assert_error(resp, 413, "request_too_large")
    assert http.get("/credits", headers=alice).json()["monthly_cap"] is None
    assert Decimal(balance(http, alice)) <= Decimal(before)  # only the small chat charged
