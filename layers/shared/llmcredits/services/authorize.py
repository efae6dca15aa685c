"""The Lambda REQUEST authorizer's use case: a bearer credential → a policy.

A login JWT is verified against the OIDC issuer's keys; an ``llmc-`` API key is looked
up (hashed) by the key store. The answer lists every route the principal may call
(API Gateway reuses it for the cache TTL, whatever the route). A credential that proves
nothing raises :class:`InvalidCredential`; the handler turns it into API Gateway's
"Unauthorized" (401). A valid caller on a route it may not use gets 403 from API
Gateway because the route is not in the policy.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from llmcredits.domain.access import authorizer_context, policy_document
from llmcredits.domain.principal import (
    API_KEY_PREFIX,
    ApiKeyAuthenticator,
    InvalidCredential,
    JwtVerifier,
    Principal,
    jwt_principal,
    key_principal,
)


def bearer_credential(headers: Mapping[str, Any] | None) -> str:
    """The credential of ``Authorization: Bearer <credential>`` (header name in any case)."""
    value = next((str(v) for k, v in (headers or {}).items()
                  if str(k).lower() == "authorization"), "")
    scheme, _, credential = value.strip().partition(" ")
    if scheme.lower() != "bearer" or not credential.strip():
        raise InvalidCredential("no bearer credential")
    return credential.strip()


class Authorizer:
    def __init__(self, jwt_verifier: JwtVerifier, api_keys: ApiKeyAuthenticator) -> None:
        self.jwt_verifier = jwt_verifier
        self.api_keys = api_keys

    def principal(self, credential: str) -> Principal:
        if credential.startswith(API_KEY_PREFIX):
            return key_principal(self.api_keys.authenticate(credential))
        return jwt_principal(self.jwt_verifier.verify(credential))

    def authorize(self, event: Mapping[str, Any]) -> dict[str, Any]:
        """The authorizer's answer to a REQUEST event (``methodArn``, ``headers``)."""
        principal = self.principal(bearer_credential(event.get("headers")))
        return {
            "principalId": principal.user_id,
            "policyDocument": policy_document(principal, str(event.get("methodArn") or "")),
            "context": authorizer_context(principal),
        }
