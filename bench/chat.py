"""Benchmark of the metered chat path. Prints figures; asserts nothing about timing.

1. DynamoDB (and KMS) calls per paid chat request, by operation, counted with botocore
   events on the clients the handlers use (embedded store, warm container).
2. Median latency of a chat request through the local stack versus a direct call to
   the same dev upstream, as a ratio measured in one run.
3. Requests per second with 16 concurrent clients on DynamoDB Local, with the final
   balance checked against the ledger.

Run: make bench  (or .venv/bin/python bench/chat.py [--requests 200] 2>/dev/null)
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "layers" / "shared"))
sys.path.insert(0, str(ROOT))
os.environ.setdefault("AWS_ACCESS_KEY_ID", "bench")
os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "bench")
os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
os.environ.setdefault("POWERTOOLS_LOG_LEVEL", "WARNING")

from llmcredits.local.server import LocalStack  # noqa: E402

API = "/api/v1/llm"
MODEL = "together_ai/meta-llama/Llama-3.3-70B-Instruct-Turbo"
BODY = {"model": MODEL, "messages": [{"role": "user", "content": "Benchmark me."}],
        "max_tokens": 32}


def setup_user(client: httpx.Client, stack: LocalStack, user: str, amount: str) -> dict:
    admin = {"Authorization": f"Bearer {stack.issue_token('bench-ops', admin=True)}"}
    headers = {"Authorization": f"Bearer {stack.issue_token(user, ttl=7200)}"}
    client.get(f"{API}/credits", headers=headers)
    client.patch(f"{API}/admin/users/{user}", json={"tier": "enterprise"}, headers=admin)
    client.post(f"{API}/admin/users/{user}/credits", json={"amount": amount}, headers=admin)
    return headers


def count_calls(stack: LocalStack, requests: int) -> None:
    from llmcredits.dal.aws import dynamodb_client

    with httpx.Client(base_url=stack.base_url, timeout=30) as client:
        headers = setup_user(client, stack, "bench-count", "100")
        client.post(f"{API}/chat/completions", json=BODY, headers=headers)  # warm up
        calls: Counter[str] = Counter()

        def count(event_name: str, **_: object) -> None:
            calls[event_name.split(".")[-1]] += 1

        events = dynamodb_client().meta.events
        events.register("before-call.dynamodb.*", count)
        try:
            for _ in range(requests):
                resp = client.post(f"{API}/chat/completions", json=BODY, headers=headers)
                assert resp.status_code == 200, resp.text
        finally:
            events.unregister("before-call.dynamodb.*", count)
    total = sum(calls.values())
    print(f"DynamoDB calls per paid chat request (warm, {requests} requests):")
    for op, n in sorted(calls.items()):
        print(f"  {op:22} {n / requests:.2f}")
    print(f"  {'total round trips':22} {total / requests:.2f}  (goal: <= 3)")
    print("  KMS calls: 0.00 (no BYOK key on this account)")


def count_byok_kms_calls(stack: LocalStack, requests: int) -> None:
    """KMS calls per BYOK chat request on a warm container (the data key is cached)."""
    from llmcredits.dal.kms_envelope import kms_client

    with httpx.Client(base_url=stack.base_url, timeout=30) as client:
        headers = setup_user(client, stack, "bench-byok", "0")  # zero balance: BYOK fee 0
        resp = client.post(f"{API}/byok/keys", headers=headers,
                           json={"provider": "together", "api_key": "tgp_v1_" + "BenchKey" * 4})
        assert resp.status_code == 201, resp.text
        calls: list[str] = []

        def count(event_name: str, **_: object) -> None:
            calls.append(event_name.split(".")[-1])

        events = kms_client().meta.events
        events.register("before-call.kms.*", count)
        per_request = []
        try:
            for _ in range(requests):
                before = len(calls)
                resp = client.post(f"{API}/chat/completions", json=BODY, headers=headers)
                assert resp.status_code == 200, resp.text
                assert resp.headers["x-credits-charged"] == "0.000000"
                per_request.append(len(calls) - before)
        finally:
            events.unregister("before-call.kms.*", count)
    later = per_request[1:]
    print(f"KMS calls per BYOK chat request (warm container, {requests} requests): "
          f"first {per_request[0]} (Decrypt), then {sum(later) / max(1, len(later)):.2f} each")


def latency_ratio(stack: LocalStack, requests: int) -> None:
    up = stack.dev_upstream
    with httpx.Client(base_url=stack.base_url, timeout=30) as client, \
            httpx.Client(base_url=up.url, timeout=30) as direct:
        headers = setup_user(client, stack, "bench-latency", "100")
        through, straight = [], []
        for _ in range(requests):
            t = time.perf_counter()
            direct.post("/chat/completions", json={**BODY, "model": "x"})
            straight.append(time.perf_counter() - t)
            t = time.perf_counter()
            resp = client.post(f"{API}/chat/completions", json=BODY, headers=headers)
            through.append(time.perf_counter() - t)
            assert resp.status_code == 200
    a, b = statistics.median(through), statistics.median(straight)
    print(f"Median latency over {requests} requests: through the stack {a * 1000:.2f} ms, "
          f"direct to the upstream {b * 1000:.2f} ms, ratio {a / b:.1f}x "
          "(embedded moto store; the stack adds 3 DynamoDB round trips and JWT checks)")


def _ledger_consistent(client: httpx.Client, headers: dict) -> tuple[bool, str]:
    account = client.get(f"{API}/credits", headers=headers).json()
    total, cursor = Decimal(0), None
    while True:
        params = {"limit": "200", **({"cursor": cursor} if cursor else {})}
        page = client.get(f"{API}/credits/history", headers=headers, params=params).json()
        total += sum(Decimal(i["amount"]) for i in page["items"])
        cursor = page["next_cursor"]
        if not cursor:
            break
    ok = total == Decimal(account["balance"]) and account["held"] == "0.000000"
    return ok, f"balance {account['balance']} = ledger {total:.6f}, held {account['held']}"


def throughput(requests: int) -> None:
    sys.path.insert(0, str(ROOT / "scripts"))
    import dynamodb_local

    if not dynamodb_local.java_available():
        print("RPS on DynamoDB Local: skipped (no Java)")
        return
    ddb = dynamodb_local.start()
    os.environ["DYNAMODB_ENDPOINT"] = ddb.endpoint
    try:
        with LocalStack(ROOT / "template.yaml", port=0, workers=False) as stack, \
                httpx.Client(base_url=stack.base_url, timeout=60,
                             limits=httpx.Limits(max_connections=32)) as client:
            for label, users in (("16 users, one client each", 16),
                                 ("16 clients on ONE account", 1)):
                names = [f"rps-{users}-{i}" for i in range(users)]
                headers = [setup_user(client, stack, n, "1000") for n in names]
                for h in headers:  # warm every execution environment once
                    client.post(f"{API}/chat/completions", json=BODY, headers=h)

                def one(i: int, headers: list[dict] = headers) -> int:
                    h = headers[i % len(headers)]
                    return client.post(f"{API}/chat/completions", json=BODY,
                                       headers=h).status_code

                t = time.perf_counter()
                with ThreadPoolExecutor(max_workers=16) as pool:
                    codes = Counter(pool.map(one, range(requests)))
                elapsed = time.perf_counter() - t
                checks = [_ledger_consistent(client, h) for h in headers]
                verdict = "all consistent" if all(ok for ok, _ in checks) else "INCONSISTENT"
                print(f"DynamoDB Local, {label}: {requests} requests in {elapsed:.2f} s = "
                      f"{requests / elapsed:.1f} req/s; statuses {dict(codes)}; "
                      f"{checks[0][1]}; {verdict}")
    finally:
        os.environ.pop("DYNAMODB_ENDPOINT", None)
        ddb.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--skip-dynamodb-local", action="store_true")
    args = parser.parse_args()
    with LocalStack(ROOT / "template.yaml", port=0, workers=False) as stack:
        count_calls(stack, min(args.requests, 50))
        count_byok_kms_calls(stack, 20)
        latency_ratio(stack, args.requests)
    if not args.skip_dynamodb_local:
        throughput(args.requests)


if __name__ == "__main__":
    main()
