"""Local stack for ``make dev``: API Gateway REST API + Lambda + AWS emulation.

* :mod:`llmcredits.local.template` — reads ``template.yaml`` (CloudFormation tags).
* :mod:`llmcredits.local.gateway` — the REST API: routes, the Lambda authorizer and its
  cache, policies, gateway responses, v1 events; :mod:`~llmcredits.local.http_server`.
* :mod:`llmcredits.local.lambda_runtime` — execution environments of the functions.
* :mod:`llmcredits.local.streams`, :mod:`~llmcredits.local.schedules` — event sources.
* :mod:`llmcredits.local.issuer` — the local OIDC issuer (discovery, JWKS) and dev tokens.
* :mod:`llmcredits.local.embedded` — moto in-process (serialized DynamoDB) or DynamoDB Local.
* :mod:`llmcredits.local.server` — :class:`~llmcredits.local.server.LocalStack`.

Imports are lazy so that ``llmcredits token`` does not load moto.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from llmcredits.local.issuer import JwtAuthority, issue_token
    from llmcredits.local.server import LocalStack

__all__ = ["JwtAuthority", "LocalStack", "issue_token"]


def __getattr__(name: str) -> Any:
    if name == "LocalStack":
        from llmcredits.local.server import LocalStack

        return LocalStack
    if name in ("JwtAuthority", "issue_token"):
        from llmcredits.local import issuer

        return getattr(issuer, name)
    raise AttributeError(name)
