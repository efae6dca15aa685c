"""Who a credential stands for, and the port that turns an API key secret into one.

The Lambda authorizer verifies a login JWT itself (``JwtVerifier``) and asks an
``ApiKeyAuthenticator`` about our own ``llmc-`` keys; both answer a :class:`Principal`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

ADMIN_SCOPE = "llmcredits/admin"
KIND_JWT = "jwt"
KIND_API_KEY = "api_key"
#: Our API keys start with this; anything else in the Authorization header is a JWT.
API_KEY_PREFIX = "llmc-"


@dataclass(frozen=True)
class KeyPrincipal:
    """What the key store knows of an API key secret. ``allowed`` is False for a key
    that exists but may not be used (revoked, disabled, expired, rotated out)."""

    user_id: str
    key_id: str
    allowed: bool


class ApiKeyAuthenticator(Protocol):
    def authenticate(self, secret: str) -> KeyPrincipal | None:
        """The key behind ``secret`` (one hashed lookup), or None when there is none."""
        ...


class JwtVerifier(Protocol):
    def verify(self, token: str) -> Mapping[str, Any]:
        """The claims of a valid token; raises :class:`InvalidCredential` otherwise."""
        ...


class InvalidCredential(Exception):
    """A credential that proves nothing (API Gateway answers 401). The message is for
    our logs only: API Gateway never shows it to the client."""


@dataclass(frozen=True)
class Principal:
    user_id: str
    kind: str
    scopes: frozenset[str]
    key_id: str | None = None

    @property
    def is_admin(self) -> bool:
        return self.kind == KIND_JWT and ADMIN_SCOPE in self.scopes


def scopes_of(claims: Mapping[str, Any]) -> frozenset[str]:
    """OAuth scopes from ``scope`` (space-separated, RFC 8693) or ``scp`` (a list, or a
    space-separated string as some issuers send it)."""
    found: set[str] = set()
    for name in ("scope", "scp"):
        value = claims.get(name)
        if isinstance(value, str):
            found.update(value.split())
        elif isinstance(value, list):
            found.update(str(v) for v in value)
    return frozenset(found)


def jwt_principal(claims: Mapping[str, Any]) -> Principal:
    sub = claims.get("sub")
    if not isinstance(sub, str) or not sub:
        raise InvalidCredential("token has no subject")
    return Principal(user_id=sub, kind=KIND_JWT, scopes=scopes_of(claims))


def key_principal(found: KeyPrincipal | None) -> Principal:
    if found is None:
        raise InvalidCredential("unknown API key")
    if not found.allowed:
        raise InvalidCredential("API key revoked, disabled or expired")
    return Principal(user_id=found.user_id, kind=KIND_API_KEY, scopes=frozenset(),
                     key_id=found.key_id)
