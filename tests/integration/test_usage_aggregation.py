"""Invariant 4 on DynamoDB Local: usage aggregates equal the usage ledger, however the
stream delivers it (issue 6 must-shows).

500 usage entries (5 users x 3 models) are written through the ledger; the table's own
stream is read and cut into Lambda batches of 100, which the aggregator function
handles exactly as Lambda would invoke it.
"""

from __future__ import annotations

import copy
import random
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from typing import Any

import boto3
import pytest
from llmcredits import bootstrap
from llmcredits.cli import main as cli
from llmcredits.dal.dynamodb_ledger import DynamoLedgerStore, to_item, user_pk
from llmcredits.dal.dynamodb_usage import DynamoUsageStore, usage_from_stream_record
from llmcredits.domain.ledger import EntryType
from llmcredits.openapi_doc import import_handler
from llmcredits.services.ledger import LedgerService
from llmcredits.services.reconcile import reconcile_all
from llmcredits.services.usage import UsageAggregator, UsageKey, UsageTotals, usage_of_entry

from tests.support import FUNCTIONS, Context, usage_stream_records

pytestmark = pytest.mark.dynamodb_local

USERS = [f"user-{i}" for i in range(5)]
MODELS = [
    ("openai", "openai/gpt-4o"),
    ("together", "together_ai/meta-llama/Llama-3.3-70B-Instruct-Turbo"),
    ("groq", "groq/llama-3.1-8b-instant"),
]


@pytest.fixture
def env(local_table, dynamodb_local_client_kwargs, monkeypatch):
    """The functions' environment pointed at the test table on DynamoDB Local (whose
    tables are per access key and region)."""
    client, name = local_table
    kw = dynamodb_local_client_kwargs
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", kw["aws_access_key_id"])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", kw["aws_secret_access_key"])
    monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)
    monkeypatch.setenv("AWS_REGION", kw["region_name"])
    monkeypatch.setenv("DYNAMODB_ENDPOINT", kw["endpoint_url"])
    monkeypatch.setenv("TABLE_NAME", name)
    bootstrap.reset()
    yield client, name
    bootstrap.reset()


def write_usage(ledger: LedgerService, per_user: int) -> None:
    """``per_user`` usage debits for every user, users in parallel."""

    def one_user(user: str) -> None:
        rnd = random.Random(user)
        ledger.grant(user, Decimal("1000"), EntryType.BONUS, "test", "ops")
        for i in range(per_user):
            provider, model = MODELS[i % 3]
            prompt, completion = rnd.randint(1, 4000), rnd.randint(0, 4000)
            cost = Decimal(rnd.randint(0, 2_000_000)).scaleb(-6)  # up to 2.000000, 6 places
            ledger.debit_usage(
                user, cost, provider=provider, model=model, tokens=prompt + completion,
                metadata={"prompt_tokens": prompt, "completion_tokens": completion},
            )

    with ThreadPoolExecutor(len(USERS)) as pool:
        list(pool.map(one_user, USERS))


def read_stream(client: Any, table: str, endpoint: str) -> list[dict[str, Any]]:
    """The table's stream so far, as Lambda records, through the mapping's filter."""
    streams = boto3.client(
        "dynamodbstreams", endpoint_url=endpoint, region_name="us-east-1",
        aws_access_key_id="test", aws_secret_access_key="test",
    )
    return usage_stream_records(client, table, streams)


def handler() -> Any:
    return import_handler(FUNCTIONS / "usage_aggregator" / "app.py").lambda_handler


def deliver(batch: list[dict[str, Any]]) -> list[str]:
    """Invoke the aggregator with ``batch``; the sequence numbers it reported failed."""
    resp = handler()({"Records": copy.deepcopy(batch)}, Context())
    return [f["itemIdentifier"] for f in resp["batchItemFailures"]]


def ledger_sums(store: DynamoUsageStore) -> dict[UsageKey, UsageTotals]:
    sums: dict[UsageKey, UsageTotals] = {}
    for user in USERS:
        for entry in store.usage_entries(user):
            rec = usage_of_entry(entry)
            sums[rec.key] = sums.get(rec.key, UsageTotals()) + rec.totals
    return sums


def aggregates(store: DynamoUsageStore) -> dict[UsageKey, UsageTotals]:
    return {a.key: a.totals for user in USERS for a in store.all_aggregates(user)}


def test_500_entries_aggregate_exactly_and_redelivery_changes_nothing(
    env, local_ledger, dynamodb_local_endpoint
):
    client, table = env
    write_usage(local_ledger, per_user=100)
    records = read_stream(client, table, dynamodb_local_endpoint)
    assert len(records) == 500  # grants, account updates and holds were filtered out
    store = DynamoUsageStore(client, table)

    for start in range(0, 500, 100):
        assert deliver(records[start : start + 100]) == []
    expected = ledger_sums(store)
    assert len(expected) == 15  # 5 users x 3 models x 1 day
    assert sum(t.requests for t in expected.values()) == 500
    assert aggregates(store) == expected

    # at-least-once: every batch again, then batches cut differently, then shuffled
    for start in range(0, 500, 100):
        assert deliver(records[start : start + 100]) == []
    for start in range(37, 500, 73):
        assert deliver(records[start : start + 73]) == []
    shuffled = random.Random(6).sample(records, 100)
    assert deliver(shuffled) == []
    assert aggregates(store) == expected

    report = reconcile_all(DynamoLedgerStore(client, table), store)
    assert report.ok and report.accounts == 5, [str(d) for d in report.discrepancies]


def test_a_poisoned_record_fails_alone_while_the_others_are_applied(
    env, local_ledger, dynamodb_local_endpoint
):
    client, table = env
    write_usage(local_ledger, per_user=12)
    records = read_stream(client, table, dynamodb_local_endpoint)
    store = DynamoUsageStore(client, table)
    bad = copy.deepcopy(records[20])
    bad["dynamodb"]["NewImage"]["cost"] = {"N": "not-a-number"}
    bad["dynamodb"]["SequenceNumber"] = records[20]["dynamodb"]["SequenceNumber"] + "0"
    batch = [*records[:20], bad, *records[20:]]

    assert deliver(batch) == [bad["dynamodb"]["SequenceNumber"]]
    assert aggregates(store) == ledger_sums(store)  # all 60 good records applied
    # Lambda retries from the lowest failed sequence number: the rest come again
    assert deliver(batch[20:]) == [bad["dynamodb"]["SequenceNumber"]]
    assert aggregates(store) == ledger_sums(store)
    with pytest.raises(ValueError):
        usage_from_stream_record(bad)


def test_concurrent_duplicate_deliveries_count_each_entry_once(
    env, local_ledger, dynamodb_local_endpoint
):
    """Two pollers (or a replay racing the live mapping) on the same records."""
    client, table = env
    write_usage(local_ledger, per_user=30)
    records = read_stream(client, table, dynamodb_local_endpoint)
    parsed = [usage_from_stream_record(r) for r in records]
    store = DynamoUsageStore(client, table)

    def run(seed: int) -> int:
        batch = random.Random(seed).sample(parsed, len(parsed))
        result = UsageAggregator(store).apply(r for r in batch if r is not None)
        assert not result.failed, result.failed
        return result.applied

    with ThreadPoolExecutor(8) as pool:
        applied = list(pool.map(run, range(8)))
    assert sum(applied) == 150  # each entry applied by exactly one of the eight
    assert aggregates(store) == ledger_sums(store)


def test_reconcile_cli_reports_a_corrupted_balance_and_passes_when_clean(
    env, local_ledger, dynamodb_local_endpoint, capsys
):
    client, table = env
    write_usage(local_ledger, per_user=6)
    for start in range(0, 30, 10):
        deliver(read_stream(client, table, dynamodb_local_endpoint)[start : start + 10])
    args = ["admin", "reconcile", "--endpoint", dynamodb_local_endpoint, "--table", table]
    assert cli(args) == 0
    client.update_item(
        TableName=table, Key=to_item({"PK": user_pk("user-3"), "SK": "ACCOUNT"}),
        UpdateExpression="SET balance = balance + :x, available = available + :x",
        ExpressionAttributeValues=to_item({":x": Decimal("0.000001")}),
    )
    capsys.readouterr()
    assert cli(args) == 1
    out = capsys.readouterr().out.strip().splitlines()
    # the balance, and the lots that no longer add up to it
    assert len(out) == 2 and out[0].startswith("DISCREPANCY user-3: balance is ")
    assert out[1].startswith("DISCREPANCY user-3: lots remaining is ")
    assert cli([*args, "--user", "user-2"]) == 0
