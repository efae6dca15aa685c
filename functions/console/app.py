"""GET /console/ and GET /console/{proxy+}: the self-service console's static files,
its sign-in configuration (config.json) and strict security headers."""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Any

from llmcredits.dal.oidc_discovery import fetch_discovery
from llmcredits.services.console_site import (
    ConsoleConfig,
    ConsoleSite,
    StaticFiles,
    config_from_env,
)

# `static` links to the repository's console/ folder; sam build copies its contents.
STATIC_ROOT = Path(__file__).resolve().parent / "static"


@functools.cache
def _config() -> ConsoleConfig:
    # Once per warm container: the issuer's endpoints do not change under us.
    return config_from_env(os.environ, fetch_discovery)


site = ConsoleSite(StaticFiles(STATIC_ROOT), _config)


def lambda_handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    # REST (v1) proxy event: `proxy` is absent on /console (and /console/, same resource).
    proxy = (event.get("pathParameters") or {}).get("proxy")
    path = str(event.get("path") or "")
    headers_in = {str(k).lower(): str(v) for k, v in (event.get("headers") or {}).items()}
    status, headers, body = site.respond(proxy, path, headers_in.get("if-none-match", ""))
    return {"statusCode": status, "headers": headers, "body": body, "isBase64Encoded": False}
