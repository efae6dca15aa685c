"""The console function: files from console/, config.json, CSP and security headers."""

from __future__ import annotations

import json
import re

import pytest
from llmcredits.services.console_site import (
    ConsoleConfig,
    ConsoleSite,
    SignInNotConfigured,
    StaticFiles,
    config_from_env,
    content_security_policy,
)

from tests.support import FUNCTIONS, ROOT

ENV = {"CONSOLE_OIDC_ISSUER": "https://issuer.example.com", "CONSOLE_CLIENT_ID": "console-app",
       "CONSOLE_AUTHORIZATION_ENDPOINT": "https://login.example.com/oauth2/authorize",
       "CONSOLE_TOKEN_ENDPOINT": "https://login.example.com/oauth2/token"}


def no_discovery(url: str) -> dict:
    raise AssertionError(f"discovery not expected: {url}")


def site(env: dict[str, str] = ENV) -> ConsoleSite:
    return ConsoleSite(StaticFiles(ROOT / "console"), lambda: config_from_env(env, no_discovery))


def test_the_function_serves_the_repository_console_folder():
    assert (FUNCTIONS / "console" / "static").resolve() == (ROOT / "console").resolve()
    names = StaticFiles(FUNCTIONS / "console" / "static").names()
    assert {"index.html", "styles.css", "js/main.js", "favicon.svg"} <= set(names)


def test_page_and_assets_carry_a_strict_policy():
    for proxy, kind in ((None, "text/html"), ("js/main.js", "text/javascript"),
                        ("styles.css", "text/css")):
        status, headers, body = site().respond(proxy)
        assert status == 200 and headers["Content-Type"].startswith(kind) and body
        csp = headers["Content-Security-Policy"]
        assert "default-src 'self'" in csp and "script-src 'self'" in csp
        assert "'unsafe-inline'" not in csp and "'unsafe-eval'" not in csp
        assert "require-trusted-types-for 'script'" in csp
        # the token exchange is a fetch to the issuer: exactly its origin, nothing more
        assert "connect-src 'self' https://login.example.com;" in csp
        assert headers["X-Frame-Options"] == "DENY"
        assert headers["Referrer-Policy"] == "no-referrer"
        assert headers["X-Content-Type-Options"] == "nosniff"


def test_no_inline_script_or_style_in_the_page():
    _, _, html = site().respond(None)
    assert "<script>" not in html.replace('<script type="module" src=', "")
    assert " style=" not in html and "<style" not in html
    assert re.search(r"\son[a-z]+\s*=", html) is None  # no inline event handlers


@pytest.mark.parametrize("proxy", ["../template.yaml", "js/../../template.yaml", "/etc/passwd",
                                   "js\\main.js", "nothing.js", ".hidden", "js/./main.js",
                                   "index.html\x00.js"])
def test_paths_outside_the_console_or_unknown_are_404(proxy):
    status, headers, _ = site().respond(proxy)
    assert status == 404 and "Content-Security-Policy" in headers


def test_config_json_names_the_issuer_and_client():
    status, headers, body = site().respond("config.json")
    assert status == 200 and headers["Content-Type"] == "application/json"
    assert json.loads(body) == {
        "issuer": "https://issuer.example.com", "client_id": "console-app",
        "authorization_endpoint": "https://login.example.com/oauth2/authorize",
        "token_endpoint": "https://login.example.com/oauth2/token", "scope": "openid"}


def test_missing_endpoints_come_from_the_discovery_document():
    seen = []

    def discover(url: str) -> dict:
        seen.append(url)
        return {"authorization_endpoint": "https://idp.example.com/authorize",
                "token_endpoint": "https://idp.example.com/token"}

    env = {"CONSOLE_OIDC_ISSUER": "https://idp.example.com/", "CONSOLE_CLIENT_ID": "c"}
    config = config_from_env(env, discover)
    assert seen == ["https://idp.example.com/.well-known/openid-configuration"]
    assert config.token_endpoint == "https://idp.example.com/token"


def test_unconfigured_sign_in_is_a_clear_503_not_a_500():
    def broken(url: str) -> dict:
        raise OSError("unreachable")

    for env in ({"CONSOLE_CLIENT_ID": ""},
                {"CONSOLE_CLIENT_ID": "c", "CONSOLE_OIDC_ISSUER": "not-a-url"},
                {"CONSOLE_CLIENT_ID": "c", "CONSOLE_OIDC_ISSUER": "https://down.example.com"}):
        with pytest.raises(SignInNotConfigured):
            config_from_env(env, broken)
        s = ConsoleSite(StaticFiles(ROOT / "console"), lambda e=env: config_from_env(e, broken))
        status, _, body = s.respond("config.json")
        assert status == 503 and json.loads(body)["error"]["code"] == "signin_not_configured"
        assert s.respond(None)[0] == 200  # the page itself still loads and says so


def test_plain_http_endpoints_are_refused_except_on_loopback():
    env = {**ENV, "CONSOLE_TOKEN_ENDPOINT": "http://login.example.com/token"}
    with pytest.raises(SignInNotConfigured):
        config_from_env(env, no_discovery)
    local = {**ENV, "CONSOLE_AUTHORIZATION_ENDPOINT": "/oidc/authorize",
             "CONSOLE_TOKEN_ENDPOINT": "http://127.0.0.1:3000/oidc/token"}
    assert config_from_env(local, no_discovery).authorization_endpoint == "/oidc/authorize"


def test_a_same_origin_token_endpoint_adds_no_origin_to_connect_src():
    config = ConsoleConfig("i", "c", "/oidc/authorize", "/oidc/token")
    assert "connect-src 'self';" in content_security_policy(config)


def test_the_page_without_its_slash_redirects_relatively():
    """Relative to /Prod/console this is /Prod/console/: right under any stage prefix."""
    status, headers, _ = site().respond(None, "/console")
    assert status == 308 and headers["Location"] == "console/"
    assert site().respond(None, "/console/")[0] == 200
    assert site().respond("js/main.js", "/console/js/main.js")[0] == 200


def test_files_revalidate_with_an_etag():
    status, headers, body = site().respond("styles.css")
    assert status == 200 and body and headers["ETag"].startswith('"')
    status, again, body = site().respond("styles.css", if_none_match=headers["ETag"])
    assert status == 304 and body == "" and again["ETag"] == headers["ETag"]
    assert site().respond("styles.css", if_none_match='"stale"')[0] == 200
