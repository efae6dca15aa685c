"""The local JWT authorizer refuses what API Gateway's JWT authorizer refuses."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from pathlib import Path

import pytest
from llmcredits.local.authorizer import (
    ADMIN_SCOPE,
    AuthError,
    JwtAuthority,
    b64url_encode,
    issue_token,
)


@pytest.fixture(scope="module")
def authority(tmp_path_factory: pytest.TempPathFactory) -> JwtAuthority:
    return JwtAuthority(key_path=tmp_path_factory.mktemp("jwt") / "key.pem")


@pytest.fixture(scope="module")
def other(tmp_path_factory: pytest.TempPathFactory) -> JwtAuthority:
    return JwtAuthority(key_path=tmp_path_factory.mktemp("jwt-other") / "key.pem")


def _claims(**overrides: object) -> dict[str, object]:
    now = int(time.time())
    claims: dict[str, object] = {
        "iss": "llmcredits-local",
        "aud": "llmcredits",
        "sub": "alice",
        "iat": now,
        "exp": now + 600,
    }
    claims.update(overrides)
    return {k: v for k, v in claims.items() if v is not None}


def _unsigned(header: dict[str, object], claims: dict[str, object]) -> str:
    return (
        b64url_encode(json.dumps(header).encode())
        + "."
        + b64url_encode(json.dumps(claims).encode())
    )


def _refused(authority: JwtAuthority, token: str | None, status: int = 401) -> AuthError:
    with pytest.raises(AuthError) as info:
        authority.authorize(token, [])
    assert info.value.status == status
    return info.value


def test_good_token_is_accepted_with_string_claims(authority: JwtAuthority) -> None:
    token = authority.issue_token("alice", ttl=60)
    result = authority.authorize("Bearer " + token, [])
    assert result.claims["sub"] == "alice"
    assert result.claims["iss"] == "llmcredits-local"
    assert isinstance(result.claims["exp"], str) and result.claims["exp"].isdigit()
    assert result.scopes is None
    # API Gateway also accepts the token without the "Bearer " prefix.
    assert authority.authorize(token, []).claims["sub"] == "alice"


def test_admin_token_carries_admin_scope(authority: JwtAuthority) -> None:
    token = authority.issue_token("root", admin=True)
    result = authority.authorize(f"Bearer {token}", [ADMIN_SCOPE])
    assert result.scopes == [ADMIN_SCOPE]
    assert result.claims["scope"] == ADMIN_SCOPE


def test_scp_claim_counts_as_scope(authority: JwtAuthority) -> None:
    token = authority.sign(_claims(scp=["other", ADMIN_SCOPE]))
    assert authority.authorize(token, [ADMIN_SCOPE]).scopes == ["other", ADMIN_SCOPE]


def test_missing_scope_is_forbidden(authority: JwtAuthority) -> None:
    token = authority.issue_token("alice")
    with pytest.raises(AuthError) as info:
        authority.authorize(f"Bearer {token}", [ADMIN_SCOPE])
    assert info.value.status == 403
    assert info.value.code == "insufficient_scope"
    other_scope = authority.sign(_claims(scope="llmcredits/read something"))
    with pytest.raises(AuthError) as info:
        authority.authorize(other_scope, [ADMIN_SCOPE])
    assert info.value.status == 403


@pytest.mark.parametrize("header", [None, "", "Bearer ", "Bearer abc", "Bearer a.b", "Basic x.y.z"])
def test_missing_or_malformed_token(authority: JwtAuthority, header: str | None) -> None:
    err = _refused(authority, header)
    assert err.code == "invalid_token"


def test_garbage_segments_are_malformed(authority: JwtAuthority) -> None:
    _refused(authority, "Bearer !!!.???.***")
    _refused(authority, "Bearer " + b64url_encode(b"[1]") + "." + b64url_encode(b"{}") + ".AA")


def test_forged_signature(authority: JwtAuthority, other: JwtAuthority) -> None:
    # Same claims, signed by another key (kid stripped so only the signature differs).
    forged = other.sign(_claims(), header={"kid": authority.kid})
    err = _refused(authority, forged)
    assert "signature" in err.message.lower()
    # Claims tampered after signing.
    good = authority.issue_token("alice")
    head, _, sig = good.split(".")
    tampered = head + "." + b64url_encode(json.dumps(_claims(sub="mallory")).encode()) + "." + sig
    _refused(authority, tampered)


def test_token_from_unknown_key_id(authority: JwtAuthority, other: JwtAuthority) -> None:
    _refused(authority, other.issue_token("alice"))


def test_expired(authority: JwtAuthority) -> None:
    now = int(time.time())
    err = _refused(authority, authority.sign(_claims(iat=now - 100, exp=now - 1)))
    assert "expired" in err.message
    _refused(authority, authority.sign(_claims(exp=None)))  # exp is required
    _refused(authority, authority.sign(_claims(exp="tomorrow")))


def test_not_yet_valid(authority: JwtAuthority) -> None:
    now = int(time.time())
    err = _refused(authority, authority.sign(_claims(nbf=now + 300)))
    assert "not yet valid" in err.message
    _refused(authority, authority.sign(_claims(iat=now + 3600)))


def test_wrong_issuer(authority: JwtAuthority) -> None:
    _refused(authority, authority.sign(_claims(iss="https://evil.example")))
    _refused(authority, authority.sign(_claims(iss=None)))


def test_wrong_audience(authority: JwtAuthority) -> None:
    _refused(authority, authority.sign(_claims(aud="someone-else")))
    _refused(authority, authority.sign(_claims(aud=["a", "b"])))
    _refused(authority, authority.sign(_claims(aud=None)))
    # A list containing the audience is fine; so is client_id without aud (Cognito).
    authority.authorize(authority.sign(_claims(aud=["x", "llmcredits"])), [])
    authority.authorize(authority.sign(_claims(aud=None, client_id="llmcredits")), [])


def test_alg_none_is_refused(authority: JwtAuthority) -> None:
    token = _unsigned({"alg": "none", "typ": "JWT"}, _claims()) + "."
    _refused(authority, token)
    token = _unsigned({"alg": "none", "typ": "JWT"}, _claims()) + "." + b64url_encode(b"x")
    _refused(authority, token)


def test_hs256_with_public_key_as_secret_is_refused(authority: JwtAuthority) -> None:
    secret = authority.public_key_pem()
    signing_input = _unsigned({"alg": "HS256", "typ": "JWT"}, _claims())
    mac = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    err = _refused(authority, signing_input + "." + b64url_encode(mac))
    assert "algorithm" in err.message


def test_rs256_header_with_hmac_signature_is_refused(authority: JwtAuthority) -> None:
    signing_input = _unsigned({"alg": "RS256", "typ": "JWT"}, _claims())
    mac = hmac.new(authority.public_key_pem(), signing_input.encode(), hashlib.sha256).digest()
    _refused(authority, signing_input + "." + base64.urlsafe_b64encode(mac).decode().rstrip("="))


def test_key_is_created_once_and_shared(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    key = tmp_path / ".dev" / "jwt-private-key.pem"
    monkeypatch.setenv("LLMCREDITS_DEV_JWT_KEY", str(key))
    token = issue_token("bob", admin=True, ttl=120)
    assert key.exists() and oct(key.stat().st_mode & 0o777) == "0o600"
    # A fresh authority (as in another process) reads the same key and accepts it.
    result = JwtAuthority(key_path=key).authorize(token, [ADMIN_SCOPE])
    assert result.claims["sub"] == "bob"
    claims = json.loads(base64.urlsafe_b64decode(token.split(".")[1] + "=="))
    assert claims["exp"] - claims["iat"] == 120
