"""The local issuer's login page: authorization code + PKCE S256, one-time codes, and
tokens the local authorizer accepts."""

from __future__ import annotations

import secrets
from urllib.parse import parse_qs, urlencode, urlsplit

import jwt
import pytest
from llmcredits.local import issuer, oidc_login
from llmcredits.local.issuer import ADMIN_SCOPE, JwtAuthority
from llmcredits.local.template import LOCAL_JWT_AUDIENCE, LOCAL_JWT_ISSUER

REDIRECT = "http://127.0.0.1:3000/console/"


@pytest.fixture
def authority(tmp_path) -> JwtAuthority:
    return JwtAuthority(key_path=tmp_path / "key.pem")


def authorize(params: dict[str, str], method: str = "POST") -> tuple[int, dict[str, str], bytes]:
    body = urlencode(params).encode()
    status, headers, page = oidc_login.respond(
        None, method, oidc_login.AUTHORIZE_PATH, "" if method == "POST" else body.decode(),  # type: ignore[arg-type]
        [], body if method == "POST" else b"")
    return status, dict(headers), page


def request(verifier: str, **extra: str) -> dict[str, str]:
    return {"response_type": "code", "client_id": oidc_login.LOCAL_CLIENT_ID,
            "redirect_uri": REDIRECT, "state": "st4te", "code_challenge": oidc_login.s256(verifier),
            "code_challenge_method": "S256", "username": "alice", **extra}


def token(authority: JwtAuthority, **params: str) -> tuple[int, dict]:
    import json

    status, _, body = oidc_login.respond(authority, "POST", oidc_login.TOKEN_PATH, "", [],
                                         urlencode(params).encode())
    return status, json.loads(body)


def verified_claims(authority: JwtAuthority, token: str) -> dict:
    """As the authorizer checks a login JWT: the issuer's key, the iss and aud it expects."""
    key = jwt.PyJWK(authority.jwks()["keys"][0])
    return jwt.decode(token, key, algorithms=["RS256"], audience=LOCAL_JWT_AUDIENCE,
                      issuer=LOCAL_JWT_ISSUER, options={"require": ["exp", "iss", "aud", "sub"]})


def code_for(verifier: str, **extra: str) -> str:
    status, headers, _ = authorize(request(verifier, **extra))
    assert status == 302
    location = urlsplit(headers["location"])
    assert location.geturl().startswith(REDIRECT)
    query = parse_qs(location.query)
    assert query["state"] == ["st4te"]
    return query["code"][0]


def exchange(authority: JwtAuthority, code: str, verifier: str, **overrides: str):
    params = {"grant_type": "authorization_code", "code": code, "redirect_uri": REDIRECT,
              "client_id": oidc_login.LOCAL_CLIENT_ID, "code_verifier": verifier, **overrides}
    return token(authority, **params)


def test_the_form_escapes_what_it_echoes_and_has_a_strict_policy():
    params = request("v" * 43, state='"><script>alert(1)</script>')
    params.pop("username")
    status, headers, page = authorize(params, method="GET")
    assert status == 200
    assert b"<script>" not in page and b"&lt;script&gt;" in page
    assert "script-src" not in headers["content-security-policy"]  # default-src 'none'
    assert "default-src 'none'" in headers["content-security-policy"]
    assert b'name="admin"' in page and b'id="username"' in page


def test_code_and_pkce_give_a_token_the_authorizer_accepts(authority):
    verifier = secrets.token_urlsafe(48)
    status, doc = exchange(authority, code_for(verifier), verifier)
    assert status == 200 and doc["token_type"] == "Bearer" and doc["expires_in"] == 3600
    claims = verified_claims(authority, doc["access_token"])
    assert claims["sub"] == "alice" and "scope" not in claims


def test_the_admin_box_gives_the_admin_scope(authority):
    verifier = secrets.token_urlsafe(48)
    _, doc = exchange(authority, code_for(verifier, admin="on"), verifier)
    claims = verified_claims(authority, doc["access_token"])
    assert claims["sub"] == "alice" and ADMIN_SCOPE in claims["scope"].split()


def test_a_wrong_verifier_is_refused_and_the_code_is_spent(authority):
    verifier = secrets.token_urlsafe(48)
    code = code_for(verifier)
    status, doc = exchange(authority, code, secrets.token_urlsafe(48))
    assert status == 400 and doc["error"] == "invalid_grant"
    status, doc = exchange(authority, code, verifier)  # the right one, too late
    assert status == 400 and doc["error"] == "invalid_grant"


def test_a_code_works_once(authority):
    verifier = secrets.token_urlsafe(48)
    code = code_for(verifier)
    assert exchange(authority, code, verifier)[0] == 200
    assert exchange(authority, code, verifier)[0] == 400


def test_the_redirect_uri_and_client_must_match_the_request(authority):
    verifier = secrets.token_urlsafe(48)
    status, _ = exchange(authority, code_for(verifier), verifier,
                         redirect_uri="http://127.0.0.1:3000/other/")
    assert status == 400
    status, _ = exchange(authority, code_for(verifier), verifier, client_id="someone-else")
    assert status == 400


def test_an_expired_code_is_refused(authority, monkeypatch):
    verifier = secrets.token_urlsafe(48)
    code = code_for(verifier)
    later = oidc_login.time.time() + oidc_login.CODE_TTL_SECONDS + 1
    monkeypatch.setattr(oidc_login.time, "time", lambda: later)
    assert exchange(authority, code, verifier)[0] == 400


@pytest.mark.parametrize("change", [
    {"code_challenge_method": "plain"}, {"code_challenge": ""}, {"response_type": "token"},
    {"client_id": "other"}, {"redirect_uri": "https://evil.example.com/cb"},
    {"redirect_uri": "javascript:alert(1)"}, {"username": "<b>x</b>"}, {"username": ""},
])
def test_bad_authorization_requests_never_redirect(change):
    status, headers, _ = authorize(request("v" * 43, **change))
    assert status == 400 and "location" not in headers


def test_other_grants_are_refused(authority):
    status, doc = token(authority, grant_type="password", username="a", password="b")
    assert status == 400 and doc["error"] == "unsupported_grant_type"


def test_it_registers_its_paths_with_the_issuer_and_discovery_names_them(authority):
    assert set(issuer.EXTRA_PATHS) == {
        ("GET", oidc_login.AUTHORIZE_PATH), ("POST", oidc_login.AUTHORIZE_PATH),
        ("POST", oidc_login.TOKEN_PATH), ("GET", oidc_login.STYLE_PATH),
        ("HEAD", oidc_login.STYLE_PATH)}
    doc = issuer.discovery_document(authority, "http://127.0.0.1:3000")
    assert doc["authorization_endpoint"] == "http://127.0.0.1:3000/oidc/authorize"
    assert doc["token_endpoint"] == "http://127.0.0.1:3000/oidc/token"
    assert doc["code_challenge_methods_supported"] == ["S256"]
    assert doc["jwks_uri"] == "http://127.0.0.1:3000" + issuer.JWKS_PATH  # still the issuer's


def test_the_issuer_serves_the_token_endpoint_through_its_hook(authority):
    verifier = secrets.token_urlsafe(48)
    body = urlencode({"grant_type": "authorization_code", "code": code_for(verifier),
                      "redirect_uri": REDIRECT, "client_id": oidc_login.LOCAL_CLIENT_ID,
                      "code_verifier": verifier}).encode()
    served = issuer.serve(authority, "http://127.0.0.1:3000", "POST", oidc_login.TOKEN_PATH, "",
                          lambda: body)
    assert served is not None and served[0] == 200
    import json

    assert verified_claims(authority, json.loads(served[2])["access_token"])["sub"] == "alice"
    assert issuer.serve(authority, "", "GET", oidc_login.TOKEN_PATH, "", lambda: b"") is None
