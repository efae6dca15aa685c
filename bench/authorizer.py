#!/usr/bin/env python3
"""Authorizer figures through the local stack: first JWT (discovery + JWKS), then new
tokens (JWKS cached in the warm container), then the same token (API Gateway's cache)."""
import statistics
import time
import warnings

import httpx
from llmcredits.local.server import LocalStack

warnings.filterwarnings("ignore")

with LocalStack(port=0, workers=False) as s:
    c = httpx.Client(base_url=s.base_url + "/api/v1/llm")
    c.get("/health")

    def cred(token: str) -> float:
        started = time.perf_counter()
        resp = c.get("/models", headers={"Authorization": "Bearer " + token})
        assert resp.status_code == 200, resp.text
        return (time.perf_counter() - started) * 1000

    first = cred(s.issue_token("fig-0"))
    fresh = [cred(s.issue_token(f"fig-{i}")) for i in range(1, 21)]
    tok = s.issue_token("fig-same")
    same = [cred(tok) for _ in range(20)]
    assert s.api is not None
    auth = s.api.authorizers["CredentialAuthorizer"]
    print(f"first JWT (discovery+JWKS fetch, cold authorizer): {first:.1f} ms")
    print(f"new JWT, JWKS cached: median {statistics.median(fresh):.1f} ms")
    print(f"same JWT, authorizer answer cached: median {statistics.median(same):.1f} ms")
    print(f"authorizer invocations for {1+20+20} requests: {auth.invocations}")
