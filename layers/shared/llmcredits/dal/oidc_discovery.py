"""Reads an OIDC issuer's discovery document (``/.well-known/openid-configuration``)."""

from __future__ import annotations

import json
import urllib.request
from typing import Any

DISCOVERY_TIMEOUT_SECONDS = 3


def fetch_discovery(url: str) -> dict[str, Any]:
    if not url.startswith(("https://", "http://")):
        raise ValueError(f"not an http(s) URL: {url!r}")
    # The scheme is checked above: no file: or custom schemes reach urlopen.
    request = urllib.request.Request(url, headers={"Accept": "application/json"})  # noqa: S310
    with urllib.request.urlopen(request, timeout=DISCOVERY_TIMEOUT_SECONDS) as resp:  # noqa: S310
        doc = json.loads(resp.read(256 * 1024))
    if not isinstance(doc, dict):
        raise ValueError("the discovery document is not a JSON object")
    return doc
