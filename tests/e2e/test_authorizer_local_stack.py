"""The real Lambda authorizer through the local stack (the REST API emulation): who may
call what, API key principals through the ApiKeyAuthenticator port, unknown routes.

A fake authenticator stands in for the key store here (injected where bootstrap wires
the real one); tests/e2e/test_api_key_local_stack.py uses real keys from POST /keys.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from llmcredits import bootstrap
from llmcredits.domain.principal import KeyPrincipal

API = "/api/v1/llm"
pytestmark = pytest.mark.filterwarnings("ignore:No application metrics:UserWarning")


class FakeKeys:
    def __init__(self) -> None:
        self.keys = {"llmc-e2e-good-key": KeyPrincipal("key-owner", "key-1", True),
                     "llmc-e2e-revoked-key": KeyPrincipal("key-owner", "key-2", False)}

    def authenticate(self, secret: str) -> KeyPrincipal | None:
        return self.keys.get(secret)


@pytest.fixture(scope="module")
def http(stack: Any) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=stack.base_url + API, timeout=30) as client:
        yield client


@pytest.fixture
def api_keys(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setattr(bootstrap, "api_key_authenticator", FakeKeys)
    bootstrap.authorizer.cache_clear()
    yield
    bootstrap.authorizer.cache_clear()


def bearer(credential: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {credential}"}


def error_of(resp: httpx.Response, status: int) -> dict[str, Any]:
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "code", "param"}
    return dict(body["error"])


@pytest.mark.usefixtures("api_keys")
def test_an_api_key_reads_credits_but_may_not_purchase_or_administer(http: httpx.Client) -> None:
    key = bearer("llmc-e2e-good-key")
    credits = http.get("/credits", headers=key)
    assert credits.status_code == 200 and credits.json()["user_id"] == "key-owner"
    assert http.get("/models", headers=key).status_code == 200
    purchase = http.post("/credits/purchase", headers=key, json={
        "amount": "25.00", "success_url": "https://app.example.com/ok",
        "cancel_url": "https://app.example.com/no"})
    # "forbidden" is the gateway's ACCESS_DENIED: the authorizer's policy left the route
    # out (the function's own check would say "jwt_required")
    assert error_of(purchase, 403)["code"] == "forbidden"
    for method, path in (("PUT", "/credits/monthly-cap"), ("GET", "/byok/keys"),
                         ("GET", "/admin/users/key-owner")):
        resp = http.request(method, path, headers=key, json={})
        assert error_of(resp, 403)["code"] == "forbidden", path


@pytest.mark.usefixtures("api_keys")
def test_revoked_and_unknown_keys_are_401(http: httpx.Client) -> None:
    for secret in ("llmc-e2e-revoked-key", "llmc-e2e-unknown"):
        assert error_of(http.get("/credits", headers=bearer(secret)), 401)["code"] == (
            "invalid_token")


def test_without_the_fake_an_unknown_api_key_is_401(http: httpx.Client) -> None:
    bootstrap.authorizer.cache_clear()
    assert http.get("/credits", headers=bearer("llmc-never-wired")).status_code == 401


def test_a_login_token_without_the_admin_scope_gets_403_on_admin_routes(
    stack: Any, http: httpx.Client
) -> None:
    user = bearer(stack.issue_token("plain-user"))
    assert http.get("/credits", headers=user).status_code == 200
    denied = http.get("/admin/users/plain-user", headers=user)
    assert error_of(denied, 403)["code"] == "forbidden"
    admin = bearer(stack.issue_token("ops", admin=True))
    assert http.get("/admin/users/plain-user", headers=admin).status_code == 200


@pytest.mark.parametrize(("method", "path"), [
    ("GET", f"{API}/nope"), ("TRACE", f"{API}/credits"), ("DELETE", f"{API}/credits"),
    ("GET", "/credits"), ("GET", "/"), ("POST", f"{API}/health"),
])
def test_unknown_routes_and_methods_are_404_in_the_openai_shape(
    stack: Any, method: str, path: str
) -> None:
    resp = httpx.request(method, stack.base_url + path, timeout=30)
    error = error_of(resp, 404)
    assert error["code"] == "route_not_found" and "/api/v1/llm/" in error["message"]
    assert "Missing Authentication Token" not in resp.text


def test_the_issuer_documents_are_served_for_the_authorizer(stack: Any) -> None:
    discovery = httpx.get(stack.base_url + "/.well-known/openid-configuration").json()
    assert discovery["issuer"] == stack.authority.issuer
    jwks = httpx.get(discovery["jwks_uri"]).json()
    assert jwks["keys"][0]["kid"] == stack.authority.kid and jwks["keys"][0]["kty"] == "RSA"
