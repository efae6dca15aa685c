"""Benchmark of the metered chat path. Prints figures; asserts nothing about timing.

1. DynamoDB (and KMS) calls per paid chat request, by operation, counted with botocore
   events on the clients the handlers use (embedded store, warm container).
2. Median latency of a chat request through the local stack versus a direct call to
   the same dev upstream, as a ratio measured in one run.
3. On DynamoDB Local, in one run: req/s and p50/p95/p99 latency for 16 and 64 clients
   on as many accounts and on ONE account, the ratios, settle re-plans and transaction
   re-sends, for the ledger itself (ChatService) and through the local stack's HTTP
   server; every account reconciled (ledger == balance, nothing held).
4. A fault run: injected DynamoDB errors and lost responses on settle; charges
   expected (sum of X-Credits-Charged) vs charged (sum of usage entries).
5. Streaming (issue 12), with the openai SDK: time to the first and to the last token
   through the local stack vs direct to the same paced dev upstream (20 tokens, 50 ms
   apart), as ratios in one run, and the goal TTFT <= 1.5 x direct + 50 ms.

Run: make bench  (or .venv/bin/python bench/chat.py [--requests 200] 2>/dev/null;
``--stream-only`` runs item 5 alone)
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from pathlib import Path
from typing import Any

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
    print(f"  {'total round trips':22} {total / requests:.2f}  (read, reserve, record the "
          "settlement, settle, read + stamp balance_after)")
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


class Counters:
    """Settle re-plans (a guard failed: counted on the store class, so the local stack's
    handlers count too) and transaction re-sends (one ClientRequestToken sent again:
    counted with botocore events on the given clients)."""

    def __init__(self, clients: list[Any]) -> None:
        from llmcredits.dal.dynamodb_ledger import DynamoLedgerStore
        from llmcredits.domain.ports import StaleRead

        self.replans = 0
        self.tokens: Counter[str] = Counter()
        self._cls = DynamoLedgerStore
        self._settle = DynamoLedgerStore.settle
        self._clients = clients
        counters = self

        def settle(store: Any, *args: Any, **kwargs: Any) -> None:
            try:
                counters._settle(store, *args, **kwargs)
            except StaleRead:
                counters.replans += 1
                raise

        DynamoLedgerStore.settle = settle  # type: ignore[method-assign]
        for client in clients:
            client.meta.events.register("before-call.dynamodb.TransactWriteItems", self._sent)

    def _sent(self, params: dict[str, Any], **_: Any) -> None:
        token = params.get("ClientRequestToken")
        if token:
            self.tokens[token] += 1

    @property
    def resends(self) -> int:
        return sum(n - 1 for n in self.tokens.values())

    def close(self) -> None:
        self._cls.settle = self._settle  # type: ignore[method-assign]
        for client in self._clients:
            client.meta.events.unregister("before-call.dynamodb.TransactWriteItems",
                                          self._sent)


def percentile(values: list[float], p: int) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[p - 1]


def run_clients(label: str, clients: int, accounts: list[str], per_client: int,
                send: Callable[[str, int], int]) -> dict[str, float]:
    """``clients`` threads, each sending ``per_client`` requests round-robin over accounts."""
    latencies: list[float] = []
    codes: Counter[int] = Counter()

    def client(c: int) -> None:
        for k in range(per_client):
            t = time.perf_counter()
            status = send(accounts[(c + k * clients) % len(accounts)], c * per_client + k)
            latencies.append(time.perf_counter() - t)
            codes[status] += 1

    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=clients) as pool:
        list(pool.map(client, range(clients)))
    elapsed = time.perf_counter() - start
    total = clients * per_client
    figures = {"rps": total / elapsed, "p50": percentile(latencies, 50) * 1000,
               "p95": percentile(latencies, 95) * 1000, "p99": percentile(latencies, 99) * 1000}
    print(f"  {label:34} {figures['rps']:7.1f} req/s  p50 {figures['p50']:6.1f}  "
          f"p95 {figures['p95']:6.1f}  p99 {figures['p99']:6.1f} ms  statuses {dict(codes)}")
    return figures


def contention_runs(title: str, make_account: Callable[[str], None],
                    send: Callable[[str, int], int], check: Callable[[list[str]], str],
                    requests: int, clients_to_count: list[Any]) -> None:
    print(title)
    counters = Counters(clients_to_count)
    try:
        results = {}
        for clients in (16, 64):
            for many in (True, False):
                names = [f"{title[:4]}-{clients}-{'many' if many else 'one'}-{i}"
                         for i in range(clients if many else 1)]
                for name in names:
                    make_account(name)
                for name in names:  # warm every path once (not timed)
                    send(name, -1)
                label = (f"{clients} clients on {clients} accounts" if many
                         else f"{clients} clients on ONE account")
                per_client = max(1, requests // clients)
                results[(clients, many)] = run_clients(label, clients, names, per_client, send)
                print(f"    {check(names)}")
            one, spread = results[(clients, False)], results[(clients, True)]
            print(f"  {clients} clients, one account vs {clients} accounts: "
                  f"req/s ratio {one['rps'] / spread['rps']:.2f} (target >= 0.8), "
                  f"p95 ratio {one['p95'] / spread['p95']:.2f} (target <= 1.5)")
        print(f"  settle re-plans (StaleRead): {counters.replans}; "
              f"transaction re-sends: {counters.resends}")
    finally:
        counters.close()


def _service_stack(endpoint: str) -> tuple[Any, Any, Any]:
    import boto3
    from botocore.config import Config
    from llmcredits.dal.dynamodb_ledger import DynamoLedgerStore
    from llmcredits.services.ledger import LedgerService

    from tests.support import create_table_from_template

    client = boto3.client("dynamodb", endpoint_url=endpoint,
                          config=Config(max_pool_connections=128))
    table = f"bench-{uuid.uuid4().hex[:8]}"
    create_table_from_template(client, table)
    store = DynamoLedgerStore(client, table)
    return client, table, LedgerService(store)


def service_runs(endpoint: str, requests: int) -> None:
    """The ledger itself: ChatService on DynamoDB Local and the dev upstream."""
    from llmcredits.dal.upstream import LiteLLMUpstream
    from llmcredits.domain.ledger import EntryType, Tier
    from llmcredits.domain.pricing import catalog
    from llmcredits.errors import ApiError
    from llmcredits.local.dev_server import StandInServer
    from llmcredits.local.dev_upstream import DevUpstream
    from llmcredits.models_chat import ChatCompletionRequest
    from llmcredits.services.chat import ChatService

    StandInServer.request_queue_size = 128  # 64 simultaneous connects
    client, _, ledger = _service_stack(endpoint)
    with DevUpstream() as up:
        upstream = LiteLLMUpstream(up.url, None, client=httpx.Client(
            timeout=30, limits=httpx.Limits(max_connections=128,
                                            max_keepalive_connections=128)))
        chat = ChatService(ledger, catalog(), upstream)
        request = ChatCompletionRequest.model_validate(BODY)

        def make_account(user: str) -> None:
            ledger.account(user)
            ledger._store.set_tier(user, Tier.ENTERPRISE, "bench")
            ledger.grant(user, Decimal(1000), EntryType.BONUS, "bench", "bench")

        def send(user: str, i: int) -> int:
            try:
                return chat.complete(user, request, power_level_header=None,
                                     request_id=f"b{i}").status
            except ApiError as err:
                return err.status

        contention_runs("Service on DynamoDB Local (ChatService, no HTTP):", make_account,
                        send, lambda names: _reconciled(ledger, names), requests, [client])


def _reconciled(ledger: Any, names: list[str]) -> str:
    from llmcredits.services.reconcile import reconcile_account

    bad = [n for n in names if reconcile_account(ledger._store, n)]
    held = sum(ledger.account(n).held for n in names)
    return (f"reconcile: {len(names) - len(bad)}/{len(names)} accounts ledger == balance, "
            f"held {held}")


def http_runs(stack: LocalStack, requests: int) -> None:
    """The same through the local stack's HTTP server (authorizer, handlers, JSON)."""
    from llmcredits.dal.aws import dynamodb_client

    limits = httpx.Limits(max_connections=128, max_keepalive_connections=128)
    with httpx.Client(base_url=stack.base_url, timeout=60, limits=limits) as client:
        headers: dict[str, dict] = {}

        def make_account(user: str) -> None:
            headers[user] = setup_user(client, stack, user, "1000")

        def send(user: str, i: int) -> int:
            return client.post(f"{API}/chat/completions", json=BODY,
                               headers=headers[user]).status_code

        def check(names: list[str]) -> str:
            checks = [_ledger_consistent(client, headers[n]) for n in names]
            ok = sum(1 for good, _ in checks if good)
            return f"ledger == balance and nothing held on {ok}/{len(names)} accounts"

        contention_runs("Through the local stack's HTTP server on DynamoDB Local:",
                        make_account, send, check, requests, [dynamodb_client()])


class FaultyClient:
    """A DynamoDB client whose settle transactions fail: before reaching DynamoDB (an
    error, nothing written) or after committing (the response lost), as when botocore's
    own retries are used up. Everything else passes through."""

    def __init__(self, client: Any, error_rate: float, lost_rate: float) -> None:
        self._client = client
        self._error_rate, self._lost_rate = error_rate, lost_rate
        self._random = random.Random(7)  # a reproducible fault pattern
        self.errors = self.lost = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)

    def transact_write_items(self, **kwargs: Any) -> Any:
        from botocore.exceptions import ClientError, ReadTimeoutError

        is_settle = "HOLD#" in str(kwargs["TransactItems"]) and \
            "LEDGER#" in str(kwargs["TransactItems"])
        roll = self._random.random() if is_settle else 1.0
        if roll < self._error_rate:
            self.errors += 1
            raise ClientError({"Error": {"Code": "InternalServerError",
                                         "Message": "injected"}}, "TransactWriteItems")
        result = self._client.transact_write_items(**kwargs)
        if roll < self._error_rate + self._lost_rate:
            self.lost += 1
            raise ReadTimeoutError(endpoint_url="injected")
        return result


def fault_run(endpoint: str, requests: int) -> None:
    """Every answered request is charged exactly once despite injected settle faults."""
    from llmcredits.dal.dynamodb_ledger import DynamoLedgerStore
    from llmcredits.dal.upstream import LiteLLMUpstream
    from llmcredits.domain.ledger import EntryType, Tier
    from llmcredits.domain.pricing import catalog
    from llmcredits.errors import ApiError
    from llmcredits.local.dev_upstream import DevUpstream
    from llmcredits.models_chat import ChatCompletionRequest
    from llmcredits.services.chat import ChatService
    from llmcredits.services.ledger import LedgerService
    from llmcredits.services.reconcile import reconcile_account

    client, table, _ = _service_stack(endpoint)
    faulty = FaultyClient(client, error_rate=0.15, lost_rate=0.15)
    ledger = LedgerService(DynamoLedgerStore(faulty, table))
    user = "bench-faults"
    ledger.account(user)
    ledger._store.set_tier(user, Tier.ENTERPRISE, "bench")
    ledger.grant(user, Decimal(1000), EntryType.BONUS, "bench", "bench")
    expected = Decimal(0)
    codes: Counter[int] = Counter()
    pending = 0
    with DevUpstream() as up:
        chat = ChatService(ledger, catalog(), LiteLLMUpstream(up.url, None))
        request = ChatCompletionRequest.model_validate(BODY)

        def send(i: int) -> tuple[int, Decimal, bool]:
            try:
                result = chat.complete(user, request, power_level_header=None,
                                       request_id=f"f{i}")
            except ApiError as err:
                return err.status, Decimal(0), False
            return (result.status, Decimal(result.headers["X-Credits-Charged"]),
                    "X-Credits-Settlement" in result.headers)

        with ThreadPoolExecutor(max_workers=16) as pool:
            for status, charged, was_pending in pool.map(send, range(requests)):
                codes[status] += 1
                expected += charged
                pending += was_pending
    worker = LedgerService(DynamoLedgerStore(client, table))
    later = worker.apply_pending_settlements(0)
    entries, cursor = [], None
    while True:
        page = worker.history(user, 200, cursor, EntryType.USAGE)
        entries.extend(page.entries)
        if not (cursor := page.next_cursor):
            break
    charged_total = -sum((e.amount for e in entries), Decimal(0))
    account = worker.account(user)
    ok = (charged_total == expected and len(entries) == codes[200] and account.held == 0
          and not reconcile_account(worker._store, user))
    print(f"Fault run on DynamoDB Local, {requests} requests from 16 clients, injected on "
          f"settle: {faulty.errors} DynamoDB errors, {faulty.lost} lost responses")
    print(f"  statuses {dict(codes)}; {pending} answered as pending (settle unconfirmed), "
          f"{later.applied} applied by the settle worker afterwards")
    print(f"  charges expected {expected:.6f} ({codes[200]} answers) vs charged "
          f"{charged_total:.6f} ({len(entries)} usage entries); held {account.held}; "
          f"{'EXACTLY ONCE' if ok else 'MISMATCH'}")


#: The paced stream of the streaming benchmark: N tokens, G ms apart.
PACE_TOKENS, PACE_GAP_MS = 20, 50


def _sdk_stream_times(client: Any, model: str, messages: list[dict[str, str]]
                      ) -> tuple[float, float]:
    """Seconds to the first and to the last content token, as the SDK delivers them."""
    started = time.perf_counter()
    first = last = 0.0
    for chunk in client.chat.completions.create(model=model, messages=messages, stream=True):
        if chunk.choices and chunk.choices[0].delta.content:
            last = time.perf_counter() - started
            first = first or last
    return first, last


def stream_ttft(stack: LocalStack, runs: int) -> None:
    import openai
    from llmcredits.domain.pricing import catalog

    up = stack.dev_upstream
    with httpx.Client(base_url=stack.base_url, timeout=30) as client:
        setup_user(client, stack, "bench-stream", "100")
    ours = openai.OpenAI(base_url=stack.base_url + API, max_retries=0,
                         api_key=stack.issue_token("bench-stream", ttl=7200))
    direct = openai.OpenAI(base_url=up.url, api_key=up.master_key, max_retries=0)
    upstream_model = catalog().resolve(MODEL, None, "enterprise").upstream_model
    messages = [{"role": "user",
                 "content": f"Count [[dev-upstream-pace:{PACE_TOKENS},{PACE_GAP_MS}]]"}]
    _sdk_stream_times(ours, MODEL, messages)  # cold starts out of the figures
    _sdk_stream_times(direct, upstream_model, messages)
    through, straight = [], []
    for _ in range(runs):
        straight.append(_sdk_stream_times(direct, upstream_model, messages))
        through.append(_sdk_stream_times(ours, MODEL, messages))
    ttft = statistics.median(t for t, _ in through)
    ttft_direct = statistics.median(t for t, _ in straight)
    ttlt = statistics.median(t for _, t in through)
    ttlt_direct = statistics.median(t for _, t in straight)
    goal = 1.5 * ttft_direct + 0.050
    print(f"Streaming ({PACE_TOKENS} tokens, {PACE_GAP_MS} ms apart, openai SDK, median of "
          f"{runs}): time to first token through the stack {ttft * 1000:.1f} ms, direct "
          f"{ttft_direct * 1000:.1f} ms (ratio {ttft / ttft_direct:.2f}x); to the last token "
          f"{ttlt * 1000:.1f} ms vs {ttlt_direct * 1000:.1f} ms (ratio "
          f"{ttlt / ttlt_direct:.3f}x); goal TTFT <= 1.5 x direct + 50 ms = "
          f"{goal * 1000:.1f} ms: {'met' if ttft <= goal else 'MISSED'}")


def throughput(requests: int) -> None:
    sys.path.insert(0, str(ROOT / "scripts"))
    import dynamodb_local

    if not dynamodb_local.java_available():
        print("RPS on DynamoDB Local: skipped (no Java)")
        return
    ddb = dynamodb_local.start()
    try:
        service_runs(ddb.endpoint, requests)
        fault_run(ddb.endpoint, requests)
        os.environ["DYNAMODB_ENDPOINT"] = ddb.endpoint
        from llmcredits import bootstrap

        bootstrap.reset()
        with LocalStack(ROOT / "template.yaml", port=0, workers=False) as stack:
            http_runs(stack, requests)
    finally:
        os.environ.pop("DYNAMODB_ENDPOINT", None)
        ddb.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--skip-dynamodb-local", action="store_true")
    parser.add_argument("--skip-embedded", action="store_true",
                        help="only the DynamoDB Local runs")
    parser.add_argument("--stream-only", action="store_true",
                        help="only the streaming TTFT run (item 5)")
    parser.add_argument("--stream-runs", type=int, default=10)
    args = parser.parse_args()
    if args.stream_only:
        with LocalStack(ROOT / "template.yaml", port=0, workers=False) as stack:
            stream_ttft(stack, args.stream_runs)
        return
    if not args.skip_embedded:
        with LocalStack(ROOT / "template.yaml", port=0, workers=False) as stack:
            count_calls(stack, min(args.requests, 50))
            count_byok_kms_calls(stack, 20)
            latency_ratio(stack, args.requests)
            stream_ttft(stack, args.stream_runs)
    if not args.skip_dynamodb_local:
        throughput(args.requests)


if __name__ == "__main__":
    main()
