"""The Lambda authorizer (functions/authorizer): PyJWT against an OIDC issuer's JWKS, the
API key port, and a policy that is exactly right for every route it is reused for.

The issuer here is the local stack's own (discovery document + JWKS over HTTP), so the
verifier reads keys as it does in AWS.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from llmcredits.dal.oidc import OidcJwtVerifier
from llmcredits.domain.access import ROUTES, Audience, RouteAccess, policy_document
from llmcredits.domain.principal import (
    ADMIN_SCOPE,
    KIND_API_KEY,
    KIND_JWT,
    InvalidCredential,
    KeyPrincipal,
    Principal,
)
from llmcredits.local import issuer
from llmcredits.local.gateway import method_arn, policy_allows
from llmcredits.local.issuer import JwtAuthority, b64url_encode, issue_token
from llmcredits.services.authorize import Authorizer

ISS, AUD = "llmcredits-local", "llmcredits"
METHOD_ARN = method_arn("us-east-1", "GET", "/api/v1/llm/credits")


@pytest.fixture(scope="module")
def authority(tmp_path_factory: pytest.TempPathFactory) -> JwtAuthority:
    return JwtAuthority(key_path=tmp_path_factory.mktemp("jwt") / "key.pem")


@pytest.fixture(scope="module")
def issuer_url(authority: JwtAuthority) -> Iterator[str]:
    """The local issuer's documents on a loopback port."""
    urls: dict[str, str] = {}

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            served = issuer.serve(authority, urls["base"], "GET", self.path, "", lambda: b"")
            status, headers, body = served or (404, [], b"{}")
            self.send_response(status)
            for name, value in headers:
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    urls["base"] = f"http://127.0.0.1:{server.server_address[1]}"
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield urls["base"]
    server.shutdown()
    server.server_close()


@pytest.fixture
def verifier(issuer_url: str) -> OidcJwtVerifier:
    return OidcJwtVerifier(ISS, AUD, issuer_url + issuer.DISCOVERY_PATH)


class FakeKeys:
    """The ApiKeyAuthenticator port, as the API keys store will implement it."""

    def __init__(self, keys: dict[str, KeyPrincipal]) -> None:
        self.keys = keys
        self.asked: list[str] = []

    def authenticate(self, secret: str) -> KeyPrincipal | None:
        self.asked.append(secret)
        return self.keys.get(secret)


def _claims(**changes: Any) -> dict[str, Any]:
    now = int(time.time())
    claims: dict[str, Any] = {"iss": ISS, "aud": AUD, "sub": "alice", "iat": now, "nbf": now,
                              "exp": now + 600}
    claims.update(changes)
    return {k: v for k, v in claims.items() if v is not None}


def _unsigned(header: dict[str, Any], claims: dict[str, Any]) -> str:
    return (b64url_encode(json.dumps(header).encode()) + "."
            + b64url_encode(json.dumps(claims).encode()))


def test_a_good_token_verifies_through_discovery_and_jwks(
    authority: JwtAuthority, verifier: OidcJwtVerifier
) -> None:
    claims = verifier.verify(authority.issue_token("alice", admin=True))
    assert claims["sub"] == "alice" and ADMIN_SCOPE in claims["scope"]


def test_bad_tokens_are_refused(authority: JwtAuthority, verifier: OidcJwtVerifier,
                                tmp_path: Path) -> None:
    now = int(time.time())
    other = JwtAuthority(key_path=tmp_path / "attacker.pem")
    pem = authority.public_key_pem()
    hs256 = _unsigned({"alg": "HS256", "typ": "JWT", "kid": authority.kid}, _claims())
    bad = {
        "forged (same kid)": other.sign(_claims(), {"kid": authority.kid}),
        "unknown kid": other.sign(_claims()),
        "alg none": _unsigned({"alg": "none", "typ": "JWT"}, _claims()) + ".",
        "HS256 with the public key": hs256 + "." + b64url_encode(
            hmac.new(pem, hs256.encode(), hashlib.sha256).digest()),
        "expired beyond the leeway": authority.sign(_claims(exp=now - 61, nbf=now - 600,
                                                            iat=now - 600)),
        "not yet valid beyond the leeway": authority.sign(_claims(nbf=now + 120)),
        "no expiry": authority.sign(_claims(exp=None)),
        "wrong issuer": authority.sign(_claims(iss="https://evil.example.com")),
        "wrong audience": authority.sign(_claims(aud="someone-else")),
        "no subject": authority.sign(_claims(sub=None)),
        "garbage": "not-a-jwt",
    }
    for name, token in bad.items():
        with pytest.raises(InvalidCredential):
            principal = Authorizer(verifier, FakeKeys({})).principal(token)
            pytest.fail(f"{name} accepted as {principal}")


def test_clock_skew_within_60_seconds_is_tolerated(
    authority: JwtAuthority, verifier: OidcJwtVerifier
) -> None:
    now = int(time.time())
    assert verifier.verify(authority.sign(_claims(exp=now - 30, nbf=now - 600)))["sub"]
    assert verifier.verify(authority.sign(_claims(nbf=now + 30)))["sub"]


def test_api_keys_go_to_the_port_and_refused_keys_are_401(verifier: OidcJwtVerifier) -> None:
    keys = FakeKeys({"llmc-good": KeyPrincipal("u1", "k1", True),
                     "llmc-revoked": KeyPrincipal("u1", "k2", False)})
    auth = Authorizer(verifier, keys)
    answer = auth.authorize({"methodArn": METHOD_ARN,
                             "headers": {"authorization": "Bearer llmc-good"}})
    assert answer["principalId"] == "u1"
    assert answer["context"] == {"user_id": "u1", "kind": KIND_API_KEY, "key_id": "k1",
                                 "scopes": ""}
    for secret in ("llmc-revoked", "llmc-unknown"):
        with pytest.raises(InvalidCredential):
            auth.principal(secret)
    for header in ({}, {"Authorization": "Basic YTpi"}, {"Authorization": "Bearer "}):
        with pytest.raises(InvalidCredential):
            auth.authorize({"methodArn": METHOD_ARN, "headers": header})
    assert keys.asked == ["llmc-good", "llmc-revoked", "llmc-unknown"]


def test_the_handler_raises_unauthorized_for_api_gateway(monkeypatch: pytest.MonkeyPatch) -> None:
    from llmcredits import bootstrap
    from llmcredits.openapi_doc import import_handler

    from tests.support import FUNCTIONS, Context

    class Refuse:
        def principal(self, _: str) -> Principal:
            raise InvalidCredential("nope")

        def authorize(self, _: Any) -> dict[str, Any]:
            raise InvalidCredential("nope")

    monkeypatch.setattr(bootstrap, "authorizer", Refuse)
    handler = import_handler(FUNCTIONS / "authorizer" / "app.py").lambda_handler
    with pytest.raises(Exception, match=r"^Unauthorized$"):
        handler({"methodArn": METHOD_ARN, "headers": {"Authorization": "Bearer x"}}, Context())


def test_the_bootstrap_default_refuses_every_api_key() -> None:
    from llmcredits import bootstrap

    assert bootstrap.api_key_authenticator().authenticate("llmc-anything") is None


# --------------------------------------------------------------------- the policy


def _sample_path(route: RouteAccess) -> str:
    return "/".join("some-id" if s.startswith("{") else s for s in route.path.split("/"))


PRINCIPALS = {
    "user": Principal("alice", KIND_JWT, frozenset()),
    "admin": Principal("ops", KIND_JWT, frozenset({ADMIN_SCOPE})),
    "api key": Principal("alice", KIND_API_KEY, frozenset({ADMIN_SCOPE}), key_id="k1"),
}
MAY = {
    "user": {Audience.KEY_OR_JWT, Audience.JWT},
    "admin": {Audience.KEY_OR_JWT, Audience.JWT, Audience.ADMIN},
    "api key": {Audience.KEY_OR_JWT},
}


@pytest.mark.parametrize("who", sorted(PRINCIPALS))
def test_one_cached_policy_is_exactly_right_for_every_route(who: str) -> None:
    """API Gateway reuses the answer for every route: evaluate it on each of them."""
    policy = policy_document(PRINCIPALS[who], METHOD_ARN)
    for route in ROUTES:
        if route.audience is Audience.PUBLIC:
            continue  # no authorizer on these
        arn = method_arn("us-east-1", route.method, _sample_path(route))
        assert policy_allows(policy, arn) == (route.audience in MAY[who]), (who, route)
    # nothing beyond the routes: another method, a path below a route, another API
    assert not policy_allows(policy, method_arn("us-east-1", "DELETE", "/api/v1/llm/credits"))
    assert not policy_allows(policy, METHOD_ARN.replace(":local/", ":other-api/"))


def test_no_route_of_the_same_method_lies_below_a_path_parameter() -> None:
    """Why ``*`` (which also matches "/") for a path parameter is exact."""
    for route in ROUTES:
        if "{" not in route.path:
            continue
        prefix = route.path[: route.path.index("{")]
        below = [r for r in ROUTES if r is not route and r.method == route.method
                 and r.path.startswith(prefix) and r.path.count("/") > route.path.count("/")]
        assert not below, (route, below)


def test_dev_tokens_are_signed_with_the_persisted_key(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    key = tmp_path / "dev.pem"
    monkeypatch.setenv("LLMCREDITS_DEV_JWT_KEY", str(key))
    token = issue_token("bob", admin=True, ttl=120)
    assert key.exists() and oct(key.stat().st_mode & 0o777) == "0o600"
    jwk = JwtAuthority(key_path=key).jwks()["keys"][0]
    import jwt

    claims = jwt.decode(token, jwt.PyJWK(jwk), algorithms=["RS256"], audience=AUD, issuer=ISS)
    assert claims["sub"] == "bob" and ADMIN_SCOPE in claims["scope"]


def test_a_login_module_adds_its_endpoints_to_the_issuer(
    authority: JwtAuthority, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The hook local/oidc_login.py uses (authorize + token endpoints with PKCE)."""
    monkeypatch.setattr(issuer, "EXTRA_PATHS", {})
    monkeypatch.setattr(issuer, "DISCOVERY_ENDPOINTS", {})
    assert "authorization_endpoint" not in issuer.discovery_document(authority, "http://h")
    issuer.register_path("GET", "/oauth2/authorize", lambda q, b, a: (200, [], b"login:" + b),
                         discovery_field="authorization_endpoint")
    doc = issuer.discovery_document(authority, "http://h")
    assert doc["authorization_endpoint"] == "http://h/oauth2/authorize"
    assert doc["jwks_uri"] == "http://h" + issuer.JWKS_PATH and doc["issuer"] == ISS
    served = issuer.serve(authority, "http://h", "GET", "/oauth2/authorize", "", lambda: b"x")
    assert served == (200, [], b"login:x")
    assert issuer.serve(authority, "http://h", "GET", "/elsewhere", "", lambda: b"") is None
