"""What the Lambda authorizer learns from an API key (the port it calls)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class KeyPrincipal:
    """A usable API key: its owner, its id, and the power levels it may use
    (``allowed``; empty means every level the owner's tier allows)."""

    user_id: str
    key_id: str
    allowed: frozenset[str]


class ApiKeyAuthenticator(Protocol):
    def authenticate(self, secret: str) -> KeyPrincipal | None:
        """The key's principal, or None for an unknown, revoked, disabled, expired or
        rotated-out (past grace) secret."""
        ...
