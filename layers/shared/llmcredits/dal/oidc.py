"""Login JWTs from the configured OIDC issuer, verified with PyJWT.

The issuer's discovery document names its JWKS; PyJWT's ``PyJWKClient`` fetches the
key set and caches it in the warm container for ``JWKS_LIFESPAN_SECONDS`` (refetching
early for an unknown ``kid``, so a key rotation needs no deploy; no per-key cache, which
would trust a key the issuer withdrew forever). Only RS256 and ES256 are accepted: ``alg: none`` and
HS256 signed with the public key (algorithm confusion) never verify, because the
algorithm list is ours, not the token's.
"""

from __future__ import annotations

import json
import threading
import urllib.request
from collections.abc import Mapping
from typing import Any

import jwt

from llmcredits.domain.principal import InvalidCredential

ALGORITHMS = ("RS256", "ES256")
#: Clock skew allowed on exp/nbf/iat (the issue allows at most 60 s).
LEEWAY_SECONDS = 60
DISCOVERY_SUFFIX = "/.well-known/openid-configuration"
#: Discovery and JWKS each; the authorizer function has 5 s in all.
HTTP_TIMEOUT_SECONDS = 2
#: How long fetched signing keys are trusted before the JWKS is read again.
JWKS_LIFESPAN_SECONDS = 3600


class OidcJwtVerifier:
    def __init__(self, issuer: str, audience: str, discovery_url: str | None = None) -> None:
        self.issuer = issuer
        self.audience = audience
        self.discovery_url = discovery_url or issuer.rstrip("/") + DISCOVERY_SUFFIX
        self._jwks: jwt.PyJWKClient | None = None
        self._lock = threading.Lock()

    def _jwks_client(self) -> jwt.PyJWKClient:
        if not self.issuer or not self.audience:
            # A deployment error, not a bad token: the authorizer fails (500), loudly.
            raise RuntimeError("OIDC_ISSUER and OIDC_AUDIENCE must be configured")
        with self._lock:
            if self._jwks is None:
                with urllib.request.urlopen(  # noqa: S310 - the configured issuer's URL
                    self.discovery_url, timeout=HTTP_TIMEOUT_SECONDS
                ) as resp:
                    discovery = json.loads(resp.read())
                jwks_uri = discovery.get("jwks_uri") if isinstance(discovery, dict) else None
                if not isinstance(jwks_uri, str) or not jwks_uri:
                    raise RuntimeError(f"{self.discovery_url}: no jwks_uri")
                self._jwks = jwt.PyJWKClient(jwks_uri, lifespan=JWKS_LIFESPAN_SECONDS,
                                             timeout=HTTP_TIMEOUT_SECONDS)
            return self._jwks

    def verify(self, token: str) -> Mapping[str, Any]:
        try:
            header = jwt.get_unverified_header(token)
            if header.get("alg") not in ALGORITHMS:
                raise InvalidCredential(f"algorithm {header.get('alg')!r} not accepted")
            signing_key = self._jwks_client().get_signing_key_from_jwt(token)
            claims: dict[str, Any] = jwt.decode(
                token,
                key=signing_key,
                algorithms=list(ALGORITHMS),
                audience=self.audience,
                issuer=self.issuer,
                leeway=LEEWAY_SECONDS,
                options={"require": ["exp", "iss", "aud", "sub"]},
            )
        except jwt.PyJWKClientConnectionError:
            # The issuer is unreachable: that proves nothing about the token. Let the
            # authorizer fail (API Gateway: AUTHORIZER_FAILURE, 503, not cached).
            raise
        except (jwt.PyJWTError, ValueError) as exc:
            raise InvalidCredential(f"invalid token: {exc}") from exc
        return claims
