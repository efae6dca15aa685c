"""The local OIDC issuer: a dev signing key, tokens for it, and the documents the
authorizer reads through PyJWT as it reads a real issuer's.

The RS256 key pair is generated on first use and kept at ``<repo>/.dev/jwt-private-key.pem``
(override with env ``LLMCREDITS_DEV_JWT_KEY``), so tokens printed by ``llmcredits token``
are accepted by ``llmcredits dev``. The local stack serves, on its own port:

* ``GET /.well-known/openid-configuration`` — the discovery document (``issuer``,
  ``jwks_uri``, and ``authorization_endpoint``/``token_endpoint`` once a login module
  has registered them, see :func:`register_path`);
* ``GET /.well-known/jwks.json`` — the public key as a JWK set.

The authorizer function gets ``OIDC_DISCOVERY_URL`` pointing at the first (in AWS it is
derived from the issuer URL).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from llmcredits.local.template import LOCAL_JWT_AUDIENCE, LOCAL_JWT_ISSUER

ADMIN_SCOPE = "llmcredits/admin"
#: Repository root: three levels above the llmcredits package directory.
REPO_ROOT = Path(__file__).resolve().parents[4]
DEFAULT_KEY_PATH = REPO_ROOT / ".dev" / "jwt-private-key.pem"
DISCOVERY_PATH = "/.well-known/openid-configuration"
JWKS_PATH = "/.well-known/jwks.json"


def b64url_encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(text: str) -> bytes:
    if not text or any(
        c not in "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_" for c in text
    ):
        raise ValueError("not base64url")
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def default_key_path() -> Path:
    env = os.environ.get("LLMCREDITS_DEV_JWT_KEY")
    return Path(env) if env else DEFAULT_KEY_PATH


def _load_or_create_key(path: Path) -> rsa.RSAPrivateKey:
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".jwt-key-")
        try:
            os.write(fd, pem)
            os.close(fd)
            os.chmod(tmp, 0o600)
            with contextlib.suppress(FileExistsError):
                os.link(tmp, path)  # atomic; another process may have won the race
        finally:
            os.unlink(tmp)
    loaded = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(loaded, rsa.RSAPrivateKey):
        raise ValueError(f"{path}: not an RSA private key")
    return loaded


class JwtAuthority:
    """Issues and verifies local RS256 tokens."""

    def __init__(
        self,
        key_path: str | Path | None = None,
        issuer: str = LOCAL_JWT_ISSUER,
        audience: str | Iterable[str] = LOCAL_JWT_AUDIENCE,
    ) -> None:
        self.key_path = Path(key_path) if key_path else default_key_path()
        self.issuer = issuer
        self.audiences = [audience] if isinstance(audience, str) else list(audience)
        self._key: rsa.RSAPrivateKey | None = None
        self._lock = threading.Lock()

    @property
    def private_key(self) -> rsa.RSAPrivateKey:
        with self._lock:
            if self._key is None:
                self._key = _load_or_create_key(self.key_path)
            return self._key

    @property
    def kid(self) -> str:
        der = self.private_key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        return hashlib.sha256(der).hexdigest()[:16]

    def public_key_pem(self) -> bytes:
        return self.private_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    # -- issuing -------------------------------------------------------------
    def sign(self, claims: Mapping[str, Any], header: Mapping[str, Any] | None = None) -> str:
        hdr = {"alg": "RS256", "typ": "JWT", "kid": self.kid}
        hdr.update(header or {})
        signing_input = (
            b64url_encode(json.dumps(hdr, separators=(",", ":")).encode())
            + "."
            + b64url_encode(json.dumps(dict(claims), separators=(",", ":")).encode())
        )
        sig = self.private_key.sign(
            signing_input.encode("ascii"), padding.PKCS1v15(), hashes.SHA256()
        )
        return signing_input + "." + b64url_encode(sig)

    def issue_token(
        self,
        sub: str,
        admin: bool = False,
        ttl: int = 3600,
        scopes: Iterable[str] = (),
        extra_claims: Mapping[str, Any] | None = None,
    ) -> str:
        now = int(time.time())
        scope_list = list(scopes)
        if admin and ADMIN_SCOPE not in scope_list:
            scope_list.append(ADMIN_SCOPE)
        claims: dict[str, Any] = {
            "iss": self.issuer,
            "aud": self.audiences[0],
            "sub": sub,
            "iat": now,
            "nbf": now,
            "exp": now + int(ttl),
            "jti": b64url_encode(os.urandom(12)),
        }
        if scope_list:
            claims["scope"] = " ".join(scope_list)
        claims.update(extra_claims or {})
        return self.sign(claims)

    # -- publishing -------------------------------------------------------------
    def jwks(self) -> dict[str, Any]:
        """The public key as a JWK set (what an issuer's jwks_uri answers)."""
        from jwt.algorithms import RSAAlgorithm

        jwk = RSAAlgorithm.to_jwk(self.private_key.public_key(), as_dict=True)
        jwk.update({"kid": self.kid, "use": "sig", "alg": "RS256"})
        return {"keys": [jwk]}


_default_authority: JwtAuthority | None = None
_default_lock = threading.Lock()


def default_authority() -> JwtAuthority:
    global _default_authority
    with _default_lock:
        if _default_authority is None or _default_authority.key_path != default_key_path():
            _default_authority = JwtAuthority()
        return _default_authority


def issue_token(sub: str, admin: bool = False, ttl: int = 3600) -> str:
    """A bearer token the local server accepts (admin tokens carry llmcredits/admin)."""
    return default_authority().issue_token(sub, admin=admin, ttl=ttl)


# ------------------------------------------------------------------ the HTTP documents

#: Extra issuer paths ((method, path) → handler) that a login module registers, e.g.
#: ``local/oidc_login.py`` for the authorize and token endpoints (PKCE). A handler gets
#: (query string, body bytes, authority) and answers (status, headers, body bytes).
IssuerHandler = Callable[[str, bytes, "JwtAuthority"], tuple[int, list[tuple[str, str]], bytes]]
EXTRA_PATHS: dict[tuple[str, str], IssuerHandler] = {}
#: Discovery fields the login module adds (authorization_endpoint, token_endpoint, ...):
#: path values, made absolute against the stack's base URL.
DISCOVERY_ENDPOINTS: dict[str, str] = {}
#: Other discovery fields the login module adds as they are (code_challenge_methods_supported).
DISCOVERY_VALUES: dict[str, Any] = {}


def register_path(method: str, path: str, handler: IssuerHandler,
                  discovery_field: str | None = None) -> None:
    """Serve ``handler`` at ``path`` on the local stack (and name it in the discovery
    document as ``discovery_field``)."""
    EXTRA_PATHS[(method.upper(), path)] = handler
    if discovery_field:
        DISCOVERY_ENDPOINTS[discovery_field] = path


def register_discovery_value(name: str, value: Any) -> None:
    """Name ``value`` in the discovery document as ``name`` (what a login module supports)."""
    DISCOVERY_VALUES[name] = value


def discovery_document(authority: JwtAuthority, base_url: str) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "issuer": authority.issuer,
        "jwks_uri": base_url + JWKS_PATH,
        "id_token_signing_alg_values_supported": ["RS256"],
        "subject_types_supported": ["public"],
        "response_types_supported": ["code"],
        "scopes_supported": ["openid", ADMIN_SCOPE],
    }
    doc.update(DISCOVERY_VALUES)
    for name, path in DISCOVERY_ENDPOINTS.items():
        doc[name] = base_url + path
    return doc


def serve(authority: JwtAuthority, base_url: str, method: str, path: str, query: str,
          read_body: Callable[[], bytes | None]) -> tuple[int, list[tuple[str, str]], bytes] | None:
    """The issuer's answer to a request on the local stack, or None (not an issuer path:
    the body is then left unread)."""
    json_type = [("content-type", "application/json"), ("cache-control", "max-age=60")]
    if method == "GET" and path == DISCOVERY_PATH:
        return 200, json_type, json.dumps(discovery_document(authority, base_url)).encode()
    if method == "GET" and path == JWKS_PATH:
        return 200, json_type, json.dumps(authority.jwks()).encode()
    handler = EXTRA_PATHS.get((method, path))
    return handler(query, read_body() or b"", authority) if handler else None
