"""The self-service console: its static files, its sign-in configuration and the
security headers every console response carries.

The console is a static single page that calls only the public API. It is served by
one function on the API itself (``GET /console/`` and ``GET /console/{proxy+}``), so it
shares the API's origin: no CORS, and the API base is a relative URL.

Sign-in settings come from the environment (template parameters); when the
authorization or token endpoint is not given, it is read from the issuer's OIDC
discovery document once per warm container (server side, so the browser needs no CORS
on the issuer and the Content-Security-Policy can name the exact token endpoint).
"""

from __future__ import annotations

import hashlib
import json
import posixpath
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".json": "application/json",
    ".txt": "text/plain; charset=utf-8",
}
CONFIG_FILE = "config.json"
INDEX_FILE = "index.html"
DEFAULT_SCOPE = "openid"


class NotFound(Exception):
    """No console file at this path."""


class SignInNotConfigured(Exception):
    """The console has no usable issuer (a deployment setting is missing)."""


@dataclass(frozen=True)
class ConsoleConfig:
    issuer: str
    client_id: str
    authorization_endpoint: str
    token_endpoint: str
    scope: str = DEFAULT_SCOPE

    def as_json(self) -> dict[str, str]:
        return {
            "issuer": self.issuer,
            "client_id": self.client_id,
            "authorization_endpoint": self.authorization_endpoint,
            "token_endpoint": self.token_endpoint,
            "scope": self.scope,
        }


Discover = Callable[[str], Mapping[str, Any]]


def config_from_env(env: Mapping[str, str], discover: Discover) -> ConsoleConfig:
    """CONSOLE_OIDC_ISSUER, CONSOLE_CLIENT_ID, CONSOLE_AUTHORIZATION_ENDPOINT,
    CONSOLE_TOKEN_ENDPOINT (both optional: discovered), CONSOLE_OIDC_SCOPE."""
    issuer = env.get("CONSOLE_OIDC_ISSUER", "").strip()
    client_id = env.get("CONSOLE_CLIENT_ID", "").strip()
    authorize = env.get("CONSOLE_AUTHORIZATION_ENDPOINT", "").strip()
    token = env.get("CONSOLE_TOKEN_ENDPOINT", "").strip()
    scope = env.get("CONSOLE_OIDC_SCOPE", "").strip() or DEFAULT_SCOPE
    if not client_id:
        raise SignInNotConfigured("CONSOLE_CLIENT_ID is not set")
    if not (authorize and token):
        if not issuer.startswith("https://") and not issuer.startswith("http://"):
            raise SignInNotConfigured(
                "set CONSOLE_AUTHORIZATION_ENDPOINT and CONSOLE_TOKEN_ENDPOINT, or an "
                "issuer URL with a discovery document"
            )
        try:
            doc = discover(issuer.rstrip("/") + "/.well-known/openid-configuration")
        except Exception as exc:  # any failure to read it means: not configured (yet)
            raise SignInNotConfigured(
                f"the issuer's discovery document could not be read ({type(exc).__name__})"
            ) from exc
        authorize = authorize or str(doc.get("authorization_endpoint") or "")
        token = token or str(doc.get("token_endpoint") or "")
        if not (authorize and token):
            raise SignInNotConfigured("the issuer's discovery document has no endpoints")
    for url in (authorize, token):
        _check_endpoint(url)
    return ConsoleConfig(issuer, client_id, authorize, token, scope)


def _check_endpoint(url: str) -> None:
    """https URLs, or same-origin paths (the local issuer of ``make dev``)."""
    if url.startswith("/") and not url.startswith("//"):
        return
    parts = urlsplit(url)
    local = parts.hostname in ("127.0.0.1", "localhost")
    if parts.scheme == "https" or (parts.scheme == "http" and local):
        return
    raise SignInNotConfigured(f"sign-in endpoint must be an https URL: {url!r}")


def _origin(url: str) -> str | None:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}" if parts.scheme and parts.netloc else None


def content_security_policy(config: ConsoleConfig | None) -> str:
    """No inline script or style, nothing from other origins except the token endpoint
    (the code exchange is a fetch), and Trusted Types so that no string can ever reach
    innerHTML or another DOM sink: untrusted text can only be rendered as text."""
    connect = ["'self'"]
    if config is not None:
        token_origin = _origin(config.token_endpoint)
        if token_origin:
            connect.append(token_origin)
    return "; ".join([
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self'",
        f"connect-src {' '.join(connect)}",
        "form-action 'self'",
        "frame-ancestors 'none'",
        "base-uri 'none'",
        "object-src 'none'",
        "require-trusted-types-for 'script'",
        "trusted-types 'none'",
    ])


def security_headers(config: ConsoleConfig | None) -> dict[str, str]:
    return {
        "Content-Security-Policy": content_security_policy(config),
        "X-Content-Type-Options": "nosniff",
        "X-Frame-Options": "DENY",
        # The callback URL carries the authorization code: never send it onwards.
        "Referrer-Policy": "no-referrer",
        "Strict-Transport-Security": "max-age=31536000; includeSubDomains",
        "Cross-Origin-Opener-Policy": "same-origin",
        "Cross-Origin-Resource-Policy": "same-origin",
        "Permissions-Policy": "camera=(), microphone=(), geolocation=(), payment=(), usb=()",
        "Cache-Control": "no-cache",
    }


@dataclass(frozen=True)
class ConsoleFile:
    content_type: str
    body: str

    @property
    def etag(self) -> str:
        return '"' + hashlib.sha256(self.body.encode("utf-8")).hexdigest()[:32] + '"'


class StaticFiles:
    """The console's files, read once (a few tens of KB) and served from memory."""

    def __init__(self, root: Path) -> None:
        self.root = root.resolve()
        self._files: dict[str, ConsoleFile] = {}
        for path in sorted(self.root.rglob("*")):
            kind = CONTENT_TYPES.get(path.suffix)
            if not path.is_file() or kind is None or path.name.startswith("."):
                continue
            name = path.relative_to(self.root).as_posix()
            self._files[name] = ConsoleFile(kind, path.read_text(encoding="utf-8"))

    def names(self) -> list[str]:
        return sorted(self._files)

    def get(self, proxy: str | None) -> ConsoleFile:
        """The file for the ``{proxy+}`` part of ``/console/{proxy+}`` ("" is the page)."""
        name = (proxy or "").strip("/") or INDEX_FILE
        if "\\" in name or "\x00" in name or posixpath.normpath(name) != name:
            raise NotFound(name)
        found = self._files.get(name)
        if found is None:
            raise NotFound(name)
        return found


class ConsoleSite:
    """Answers console requests: (status, headers, body) for a ``{proxy+}`` value."""

    def __init__(self, files: StaticFiles, config: Callable[[], ConsoleConfig]) -> None:
        self.files = files
        self._config = config

    def respond(
        self, proxy: str | None, request_path: str = "", if_none_match: str = ""
    ) -> tuple[int, dict[str, str], str]:
        """``request_path`` is the path asked for: ``.../console`` without its slash is
        redirected, since the page's relative URLs (js/, ../api/v1/llm) need it."""
        if not proxy and request_path and not request_path.endswith("/"):
            headers = security_headers(None)
            headers["Location"] = request_path.rsplit("/", 1)[-1] + "/"
            headers["Content-Type"] = CONTENT_TYPES[".txt"]
            return 308, headers, "Moved to console/\n"
        try:
            config: ConsoleConfig | None = self._config()
            config_error = None
        except SignInNotConfigured as exc:
            config, config_error = None, str(exc)
        headers = security_headers(config)
        name = (proxy or "").strip("/")
        if name == CONFIG_FILE:
            headers["Content-Type"] = CONTENT_TYPES[".json"]
            if config is None:
                body = {"error": {"message": f"Sign-in is not configured: {config_error}",
                                  "type": "server_error", "code": "signin_not_configured",
                                  "param": None}}
                return 503, headers, json.dumps(body)
            return 200, headers, json.dumps(config.as_json())
        try:
            found = self.files.get(name)
        except NotFound:
            headers["Content-Type"] = CONTENT_TYPES[".txt"]
            return 404, headers, "Not found\n"
        headers["Content-Type"] = found.content_type
        # no-cache + ETag: browsers revalidate each load and get a bodiless 304.
        headers["ETag"] = found.etag
        if found.etag in [tag.strip() for tag in if_none_match.split(",")]:
            return 304, headers, ""
        return 200, headers, found.body
