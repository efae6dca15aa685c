"""Local emulation of the HTTP API JWT authorizer (RS256), with a dev key pair.

The key pair is generated on first use and kept at ``<repo>/.dev/jwt-private-key.pem``
(override with env ``LLMCREDITS_DEV_JWT_KEY``), so tokens printed by
``llmcredits token`` are accepted by ``llmcredits dev``.

Verification follows API Gateway: the token (``Bearer`` prefix optional) must be a
compact JWS with ``alg`` RS256 and a valid signature; ``exp`` must be present and in
the future, ``nbf``/``iat`` (if present) not in the future, ``iss`` equal to the
issuer, and ``aud`` (or, without ``aud``, ``client_id``) containing the audience.
Route scopes: when a route lists AuthorizationScopes, the token's ``scope``/``scp``
must contain at least one of them (else 403).
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import json
import os
import tempfile
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from llmcredits.local.template import LOCAL_JWT_AUDIENCE, LOCAL_JWT_ISSUER
from llmcredits.units import Seconds

ADMIN_SCOPE = "llmcredits/admin"
#: Repository root: three levels above the llmcredits package directory.
REPO_ROOT = Path(__file__).resolve().parents[4]
DEFAULT_KEY_PATH = REPO_ROOT / ".dev" / "jwt-private-key.pem"
#: Allowed clock skew for iat (seconds); exp/nbf are exact as in API Gateway.
IAT_SKEW_SECONDS = 60


class AuthError(Exception):
    """A request the authorizer refuses: 401 (bad token) or 403 (scope)."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


@dataclass(frozen=True)
class AuthResult:
    claims: dict[str, Any]
    scopes: list[str] | None


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


def _token_scopes(claims: Mapping[str, Any]) -> list[str] | None:
    found: list[str] = []
    present = False
    for name in ("scope", "scp"):
        value = claims.get(name)
        if value is None:
            continue
        present = True
        if isinstance(value, str):
            found.extend(value.split())
        elif isinstance(value, list):
            found.extend(str(v) for v in value)
    return found if present else None


def _claim_string(value: Any) -> str:
    """Claim values as API Gateway passes them to the function: strings."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return "[" + " ".join(_claim_string(v) for v in value) + "]"
    if isinstance(value, dict):
        return json.dumps(value, separators=(",", ":"))
    if value is None:
        return ""
    return str(value)


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

    # -- verifying -------------------------------------------------------------
    def verify(self, token: str | None, now: Seconds | None = None) -> dict[str, Any]:
        """Claims of a valid token; raises :class:`AuthError` (401) otherwise."""
        if token is None or not token.strip():
            raise AuthError(401, "invalid_token", "Missing bearer token")
        token = token.strip()
        if token[:7].lower() == "bearer ":
            token = token[7:].strip()
        parts = token.split(".")
        if len(parts) != 3:
            raise AuthError(401, "invalid_token", "Malformed token")
        try:
            header = json.loads(b64url_decode(parts[0]))
            claims = json.loads(b64url_decode(parts[1]))
            signature = b64url_decode(parts[2])
        except (ValueError, binascii.Error, UnicodeDecodeError):
            raise AuthError(401, "invalid_token", "Malformed token") from None
        if not isinstance(header, dict) or not isinstance(claims, dict):
            raise AuthError(401, "invalid_token", "Malformed token")
        if header.get("alg") != "RS256":
            raise AuthError(401, "invalid_token", "Unsupported token algorithm")
        if "kid" in header and header["kid"] != self.kid:
            raise AuthError(401, "invalid_token", "Unknown signing key")
        try:
            self.private_key.public_key().verify(
                signature,
                (parts[0] + "." + parts[1]).encode("ascii"),
                padding.PKCS1v15(),
                hashes.SHA256(),
            )
        except InvalidSignature:
            raise AuthError(401, "invalid_token", "Invalid token signature") from None
        self._check_claims(claims, time.time() if now is None else now)
        return claims

    def _check_claims(self, claims: Mapping[str, Any], now: Seconds) -> None:
        def number(name: str) -> Seconds | None:
            value = claims.get(name)
            if value is None:
                return None
            if isinstance(value, bool) or not isinstance(value, int | Seconds):
                raise AuthError(401, "invalid_token", f"Invalid '{name}' claim")
            return value

        exp = number("exp")
        if exp is None:
            raise AuthError(401, "invalid_token", "Token has no expiry")
        if exp <= now:
            raise AuthError(401, "invalid_token", "Token has expired")
        nbf = number("nbf")
        if nbf is not None and nbf > now:
            raise AuthError(401, "invalid_token", "Token is not yet valid")
        iat = number("iat")
        if iat is not None and iat > now + IAT_SKEW_SECONDS:
            raise AuthError(401, "invalid_token", "Token issued in the future")
        if claims.get("iss") != self.issuer:
            raise AuthError(401, "invalid_token", "Token issuer is not accepted")
        aud = claims.get("aud", claims.get("client_id"))
        auds = aud if isinstance(aud, list) else [aud]
        if not any(a in self.audiences for a in auds if isinstance(a, str)):
            raise AuthError(401, "invalid_token", "Token audience is not accepted")

    def authorize(self, authorization: str | None, required_scopes: Iterable[str]) -> AuthResult:
        """Verify the Authorization header value and the route scopes."""
        claims = self.verify(authorization)
        scopes = _token_scopes(claims)
        required = list(required_scopes)
        if required and not set(required) & set(scopes or []):
            raise AuthError(403, "insufficient_scope", "The token does not carry a required scope")
        return AuthResult(claims={k: _claim_string(v) for k, v in claims.items()}, scopes=scopes)


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
