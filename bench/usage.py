"""Benchmark of the usage aggregator: DynamoDB writes per 100 usage records.

100 usage ledger entries (5 users x 3 models, one UTC day) are written through the
ledger; the table's stream is read and delivered to the aggregator function as one
Lambda batch, then delivered again (at-least-once). DynamoDB calls are counted with
botocore events (``before-call.dynamodb.*``) on the client the function uses. Prints
figures; asserts nothing about timing.

Run: .venv/bin/python bench/usage.py [--endpoint http://127.0.0.1:8000]   (default: moto)
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import uuid
from collections import Counter
from decimal import Decimal
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "layers" / "shared"))
sys.path.insert(0, str(ROOT))
os.environ.setdefault("AWS_ACCESS_KEY_ID", "bench")
os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "bench")
os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
os.environ.setdefault("AWS_REGION", "us-east-1")
os.environ.setdefault("POWERTOOLS_METRICS_DISABLED", "true")
os.environ.setdefault("POWERTOOLS_TRACE_DISABLED", "true")
os.environ.setdefault("POWERTOOLS_LOG_LEVEL", "WARNING")

import boto3  # noqa: E402

USERS = 5
MODELS = [
    ("openai", "openai/gpt-4o"),
    ("together", "together_ai/meta-llama/Llama-3.3-70B-Instruct-Turbo"),
    ("groq", "groq/llama-3.1-8b-instant"),
]
RECORDS = 100
WRITES = {"TransactWriteItems", "PutItem", "UpdateItem", "DeleteItem", "BatchWriteItem"}


class Context:
    function_name = "usage-bench"
    memory_limit_in_mb = 512
    invoked_function_arn = "arn:aws:lambda:us-east-1:123456789012:function:usage-bench"
    aws_request_id = "bench"

    def get_remaining_time_in_millis(self) -> int:
        return 60_000


def write_usage(table: str, client: Any) -> None:
    from llmcredits.dal.dynamodb_ledger import DynamoLedgerStore
    from llmcredits.domain.ledger import EntryType
    from llmcredits.services.ledger import LedgerService

    ledger = LedgerService(DynamoLedgerStore(client, table))
    for u in range(USERS):
        ledger.grant(f"bench-{u}", Decimal("100"), EntryType.BONUS, "bench", "ops")
    for i in range(RECORDS):
        provider, model = MODELS[(i // USERS) % 3]
        ledger.debit_usage(
            f"bench-{i % USERS}", Decimal("0.000123") * (i + 1), provider=provider,
            model=model, tokens=30 + i,
            metadata={"prompt_tokens": 10 + i, "completion_tokens": 20},
        )


def stream_batch(table: str, client: Any, endpoint: str | None) -> list[dict[str, Any]]:
    from tests.support import usage_stream_records

    streams = boto3.client("dynamodbstreams", endpoint_url=endpoint)
    return usage_stream_records(client, table, streams)


def run(endpoint: str | None) -> None:
    from llmcredits import bootstrap
    from llmcredits.openapi_doc import import_handler

    from tests.support import create_table_from_template

    table = f"usage-bench-{uuid.uuid4().hex[:8]}"
    os.environ["TABLE_NAME"] = table
    if endpoint:
        os.environ["DYNAMODB_ENDPOINT"] = endpoint
    bootstrap.reset()
    client = boto3.client("dynamodb", endpoint_url=endpoint)
    create_table_from_template(client, table)
    try:
        write_usage(table, client)
        batch = stream_batch(table, client, endpoint)
        assert len(batch) == RECORDS, len(batch)
        handler = import_handler(ROOT / "functions" / "usage_aggregator" / "app.py")
        calls: Counter[str] = Counter()
        fn_client = bootstrap.usage_store()._client
        fn_client.meta.events.register(
            "before-call.dynamodb.*", lambda model, **_: calls.update([model.name])
        )
        items: Counter[str] = Counter()

        def count_items(params: dict[str, Any], **_: Any) -> None:
            for item in params.get("TransactItems", []):
                items.update(list(item))

        fn_client.meta.events.register(
            "before-parameter-build.dynamodb.TransactWriteItems", count_items
        )

        where = endpoint or "moto (in-process)"
        print(f"usage aggregator on {where}: {RECORDS} usage records, "
              f"{USERS} users x {len(MODELS)} models, one day, one Lambda batch")
        for label in ("first delivery", "same batch again (every transaction cancelled)"):
            calls.clear()
            items.clear()
            response = handler.lambda_handler({"Records": batch}, Context())
            assert response == {"batchItemFailures": []}, response
            writes = sum(n for op, n in calls.items() if op in WRITES)
            per_100 = writes * 100 / len(batch)
            print(f"  {label}: {writes} write requests -> {per_100:g} per 100 usage records "
                  f"(goal <= 20); calls {dict(sorted(calls.items()))}; "
                  f"items in transactions {dict(sorted(items.items()))}")
        from llmcredits.dal.dynamodb_ledger import DynamoLedgerStore
        from llmcredits.dal.dynamodb_usage import DynamoUsageStore
        from llmcredits.services.reconcile import reconcile_all

        report = reconcile_all(DynamoLedgerStore(client, table), DynamoUsageStore(client, table))
        print(f"  reconcile after both deliveries: {report.accounts} accounts, "
              f"{len(report.discrepancies)} discrepancies (aggregates == ledger sums)")
    finally:
        with contextlib.suppress(Exception):
            client.delete_table(TableName=table)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--endpoint", help="DynamoDB endpoint (DynamoDB Local); default moto")
    args = parser.parse_args()
    if args.endpoint:
        run(args.endpoint)
        return 0
    from moto import mock_aws

    with mock_aws():
        run(None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
