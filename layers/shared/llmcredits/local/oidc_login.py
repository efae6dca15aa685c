"""The local OIDC issuer's login page, so the console's sign-in runs locally as in AWS.

* ``GET /oidc/authorize`` (authorization code flow, PKCE S256 required): a form asking
  for a user name and an optional "admin" box; ``POST /oidc/authorize`` redirects to
  the client's ``redirect_uri`` with a one-time ``code`` (60 s) and the ``state``.
* ``POST /oidc/token`` (``grant_type=authorization_code``): checks the code, the client,
  the redirect URI and ``code_verifier`` against the challenge, and answers an access
  token signed with the dev key the local authorizer accepts (``llmcredits token``'s).

There is no password: this is a development issuer on loopback, for ``make dev`` only.
Redirect URIs must be loopback http(s) URLs. Importing this module registers its paths
with the local issuer (:func:`llmcredits.local.issuer.register_path`; the local stack
imports it when it exists), which then serves them and lists ``authorization_endpoint``,
``token_endpoint`` and ``code_challenge_methods_supported`` in its discovery document.
"""

from __future__ import annotations

import base64
import hashlib
import html
import json
import re
import secrets
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol
from urllib.parse import parse_qs, urlencode, urlsplit

from llmcredits.local import issuer as local_issuer
from llmcredits.local.template import LOCAL_JWT_AUDIENCE
from llmcredits.units import Seconds

AUTHORIZE_PATH = "/oidc/authorize"
TOKEN_PATH = "/oidc/token"  # noqa: S105 - a path, not a secret
STYLE_PATH = "/oidc/login.css"
#: The console's client id locally (the template's JwtAudience, as a Cognito app client).
LOCAL_CLIENT_ID = LOCAL_JWT_AUDIENCE
CODE_TTL_SECONDS = 60
TOKEN_TTL_SECONDS = 3600
USER_NAME = re.compile(r"^[A-Za-z0-9._@-]{1,64}$")
#: RFC 7636: a challenge is base64url(SHA-256(verifier)), 43 characters.
CHALLENGE = re.compile(r"^[A-Za-z0-9_-]{43}$")
VERIFIER = re.compile(r"^[A-Za-z0-9._~-]{43,128}$")
MAX_BODY_BYTES = 16 * 1024

Response = tuple[int, list[tuple[str, str]], bytes]

PAGE_CSP = (
    "default-src 'none'; style-src 'self'; form-action 'self' {redirect}; "
    "frame-ancestors 'none'; base-uri 'none'"
)
PAGE_HEADERS = [
    ("x-content-type-options", "nosniff"),
    ("x-frame-options", "DENY"),
    ("referrer-policy", "no-referrer"),
    ("cache-control", "no-store"),
]
STYLE = b"""body{font:16px/1.5 system-ui,sans-serif;margin:0;background:#f4f5f7;color:#1b1f24}
main{max-width:22rem;margin:4rem auto;padding:1.5rem;background:#fff;border-radius:8px;
box-shadow:0 1px 3px #0002}h1{font-size:1.3rem;margin-top:0}label{display:block;margin:.8rem 0}
input[type=text]{width:100%;box-sizing:border-box;padding:.5rem;font:inherit;
border:1px solid #6b7280;border-radius:4px}
button{font:inherit;padding:.5rem 1.2rem;background:#1d4ed8;color:#fff;border:0;
border-radius:4px;cursor:pointer}button:focus-visible,input:focus-visible{outline:3px solid #f59e0b}
.note{color:#4b5563;font-size:.9rem}.error{color:#b91c1c}
"""


class TokenIssuer(Protocol):
    def issue_token(self, sub: str, admin: bool = False, ttl: int = 3600) -> str: ...


@dataclass(frozen=True)
class PendingCode:
    client_id: str
    redirect_uri: str
    challenge: str
    sub: str
    admin: bool
    expires: Seconds


class LoginError(Exception):
    def __init__(self, error: str, description: str) -> None:
        super().__init__(description)
        self.error = error
        self.description = description


_codes: dict[str, PendingCode] = {}
_codes_lock = threading.Lock()


def respond(
    issuer: TokenIssuer,
    method: str,
    path: str,
    query: str,
    header_items: Sequence[tuple[str, str]],
    body: bytes | None,
) -> Response:
    """One request under /oidc/: (status, headers, body)."""
    if path == STYLE_PATH and method in ("GET", "HEAD"):
        return 200, [("content-type", "text/css; charset=utf-8"), *PAGE_HEADERS], STYLE
    if path == AUTHORIZE_PATH and method in ("GET", "POST"):
        params = _form(query if method == "GET" else (body or b"").decode("utf-8", "replace"))
        return _authorize(method, params, body)
    if path == TOKEN_PATH and method == "POST":
        return _token(issuer, _form((body or b"").decode("utf-8", "replace")), body)
    return _json(404, {"error": "not_found", "error_description": f"No {method} {path}"})


def _form(text: str) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(text, keep_blank_values=True).items()}


def _json(status: int, doc: dict[str, object]) -> Response:
    headers = [("content-type", "application/json"), ("cache-control", "no-store"),
               ("pragma", "no-cache")]
    return status, headers, json.dumps(doc).encode()


def _loopback_uri(uri: str) -> bool:
    try:
        parts = urlsplit(uri)
        parts.port  # noqa: B018 - raises ValueError on a malformed port
    except ValueError:
        return False
    return (parts.scheme in ("http", "https") and parts.hostname in ("127.0.0.1", "localhost")
            and not parts.fragment and parts.username is None)


def _check_request(params: dict[str, str]) -> None:
    if params.get("response_type") != "code":
        raise LoginError("unsupported_response_type", "response_type must be 'code'.")
    if params.get("client_id") != LOCAL_CLIENT_ID:
        raise LoginError("unauthorized_client", f"Unknown client_id (use {LOCAL_CLIENT_ID!r}).")
    if not _loopback_uri(params.get("redirect_uri", "")):
        raise LoginError("invalid_request", "redirect_uri must be a loopback http(s) URL.")
    if params.get("code_challenge_method") != "S256" or not CHALLENGE.match(
        params.get("code_challenge", "")
    ):
        raise LoginError("invalid_request", "PKCE is required: code_challenge with S256.")


def _authorize(method: str, params: dict[str, str], body: bytes | None) -> Response:
    try:
        if body is not None and len(body) > MAX_BODY_BYTES:
            raise LoginError("invalid_request", "Request too large.")
        _check_request(params)
    except LoginError as exc:
        # Never redirect to a URI we could not check: show the error here.
        return _page(400, params, error=exc.description, form=False)
    if method == "GET":
        return _page(200, params)
    sub = params.get("username", "").strip()
    if not USER_NAME.match(sub):
        return _page(400, params, error="User name: 1-64 letters, digits or . _ @ -")
    code = secrets.token_urlsafe(32)
    pending = PendingCode(params["client_id"], params["redirect_uri"], params["code_challenge"],
                          sub, params.get("admin") == "on", time.time() + CODE_TTL_SECONDS)
    with _codes_lock:
        now = time.time()
        for stale in [c for c, p in _codes.items() if p.expires <= now]:
            del _codes[stale]
        _codes[code] = pending
    query = {"code": code}
    if params.get("state"):
        query["state"] = params["state"]
    separator = "&" if urlsplit(params["redirect_uri"]).query else "?"
    location = params["redirect_uri"] + separator + urlencode(query)
    return 302, [("location", location), *PAGE_HEADERS], b""


def _page(status: int, params: dict[str, str], error: str = "", form: bool = True) -> Response:
    esc = html.escape
    hidden = "".join(
        f'<input type="hidden" name="{esc(k)}" value="{esc(params.get(k, ""))}">'
        for k in ("response_type", "client_id", "redirect_uri", "state", "code_challenge",
                  "code_challenge_method", "scope")
    )
    message = f'<p class="error" role="alert">{esc(error)}</p>' if error else ""
    fields = (
        f'<form method="post" action="{AUTHORIZE_PATH}">{hidden}'
        '<label for="username">User name</label>'
        '<input type="text" id="username" name="username" autocomplete="username" required '
        'autofocus maxlength="64" pattern="[A-Za-z0-9._@\\-]{1,64}">'
        '<label><input type="checkbox" name="admin"> Admin (scope llmcredits/admin)</label>'
        '<button type="submit">Sign in</button></form>'
        if form else ""
    )
    page = (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width,initial-scale=1">'
        "<title>Sign in - llmcredits local issuer</title>"
        f'<link rel="stylesheet" href="{STYLE_PATH}">'
        '</head><body><main><h1>Sign in (local issuer)</h1>'
        '<p class="note">Development issuer of <code>make dev</code>: no password.</p>'
        f"{message}{fields}</main></body></html>"
    )
    redirect = params.get("redirect_uri", "")
    origin = ""
    if _loopback_uri(redirect):
        parts = urlsplit(redirect)
        origin = f"{parts.scheme}://{parts.netloc}"
    headers = [("content-type", "text/html; charset=utf-8"),
               ("content-security-policy", PAGE_CSP.format(redirect=origin).replace("  ", " ")),
               *PAGE_HEADERS]
    return status, headers, page.encode()


def s256(verifier: str) -> str:
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def _token(issuer: TokenIssuer, params: dict[str, str], body: bytes | None) -> Response:
    if body is not None and len(body) > MAX_BODY_BYTES:
        return _json(400, {"error": "invalid_request", "error_description": "Request too large."})
    if params.get("grant_type") != "authorization_code":
        return _json(400, {"error": "unsupported_grant_type",
                           "error_description": "grant_type must be authorization_code."})
    with _codes_lock:
        # Single use: the code is gone whatever the outcome (RFC 6749 4.1.2).
        pending = _codes.pop(params.get("code", ""), None)
    verifier = params.get("code_verifier", "")
    problem = None
    if pending is None or pending.expires <= time.time():
        problem = "The authorization code is unknown, used or expired."
    elif params.get("client_id") != pending.client_id:
        problem = "The code was issued to another client."
    elif params.get("redirect_uri") != pending.redirect_uri:
        problem = "redirect_uri differs from the authorization request."
    elif not VERIFIER.match(verifier) or not secrets.compare_digest(s256(verifier),
                                                                    pending.challenge):
        problem = "code_verifier does not match the code_challenge."
    if problem is not None or pending is None:
        return _json(400, {"error": "invalid_grant", "error_description": problem})
    token = issuer.issue_token(pending.sub, admin=pending.admin, ttl=TOKEN_TTL_SECONDS)
    scope = "openid llmcredits/admin" if pending.admin else "openid"
    return _json(200, {"access_token": token, "token_type": "Bearer",
                       "expires_in": TOKEN_TTL_SECONDS, "scope": scope})


def _issuer_handler(method: str, path: str) -> local_issuer.IssuerHandler:
    def handle(query: str, body: bytes, authority: local_issuer.JwtAuthority) -> Response:
        return respond(authority, method, path, query, (), body)

    return handle


def register() -> None:
    """Serve the login page, token endpoint and style sheet on the local issuer."""
    for method, path, field in (
        ("GET", AUTHORIZE_PATH, "authorization_endpoint"),
        ("POST", AUTHORIZE_PATH, None),
        ("POST", TOKEN_PATH, "token_endpoint"),
        ("GET", STYLE_PATH, None),
        ("HEAD", STYLE_PATH, None),
    ):
        local_issuer.register_path(method, path, _issuer_handler(method, path),
                                   discovery_field=field)
    local_issuer.register_discovery_value("code_challenge_methods_supported", ["S256"])
    local_issuer.register_discovery_value("grant_types_supported", ["authorization_code"])
    local_issuer.register_discovery_value("token_endpoint_auth_methods_supported", ["none"])


register()
