"""Usage aggregation (issue 6) on moto: stream records -> aggregates, GET /usage, reconcile.

The aggregator is driven with Lambda-shaped events built from the table's own stream.
The 500-entry, redelivery and poison-pill must-shows run again on DynamoDB Local in
tests/integration/test_usage_aggregation.py.
"""

from __future__ import annotations

import copy
import json
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

import boto3
import pytest
from aws_lambda_powertools.utilities.batch.exceptions import BatchProcessingError
from llmcredits import bootstrap
from llmcredits.cli import main as cli
from llmcredits.dal.dynamodb_ledger import DynamoLedgerStore, entry_to_item, to_item, user_pk
from llmcredits.dal.dynamodb_usage import (
    ENTRIES_PER_TRANSACTION,
    DynamoUsageStore,
    usage_from_stream_record,
    usage_sk,
)
from llmcredits.domain.ledger import EntryType, LedgerEntry
from llmcredits.openapi_doc import import_handler
from llmcredits.services.reconcile import reconcile_all, reconcile_usage
from llmcredits.services.usage import (
    PoisonRecord,
    UsageKey,
    UsageRecord,
    UsageTotals,
    group_records,
    sum_totals,
    usage_of_entry,
)

from tests.support import FUNCTIONS, ROOT, Context, event, invoke, usage_stream_records

TABLE = "llmcredits-test"
MODELS = [
    ("openai", "openai/gpt-4o"),
    ("together", "together_ai/meta-llama/Llama-3.3-70B-Instruct-Turbo"),
    ("groq", "groq/llama-3.1-8b-instant"),
]


# ------------------------------------------------------------------------ helpers


def client() -> Any:
    return boto3.client("dynamodb")


def ledger() -> Any:
    return bootstrap.ledger_service()


def store() -> DynamoUsageStore:
    return bootstrap.usage_store()


def aggregator() -> Any:
    return import_handler(FUNCTIONS / "usage_aggregator" / "app.py")


def run_batch(records: list[dict[str, Any]]) -> dict[str, Any]:
    return aggregator().lambda_handler({"Records": copy.deepcopy(records)}, Context())


def failed_seqs(response: dict[str, Any]) -> list[str]:
    return [f["itemIdentifier"] for f in response["batchItemFailures"]]


def stream_records() -> list[dict[str, Any]]:
    """Every usage insert of the table's stream so far, as the aggregator receives them."""
    return usage_stream_records(client(), TABLE, boto3.client("dynamodbstreams"))


def spend(user: str, n: int, *, start: int = 0) -> None:
    """``n`` usage debits for ``user`` spread over the three models."""
    svc = ledger()
    svc.grant(user, Decimal("1000"), EntryType.BONUS, "test", "ops")
    for i in range(start, start + n):
        provider, model = MODELS[i % 3]
        prompt, completion = 7 + i, 3 * i + 1
        svc.debit_usage(
            user, Decimal(f"0.{i + 1:06d}"), provider=provider, model=model,
            tokens=prompt + completion,
            metadata={"prompt_tokens": prompt, "completion_tokens": completion},
        )


def ledger_totals(user: str) -> dict[UsageKey, UsageTotals]:
    out: dict[UsageKey, UsageTotals] = {}
    for entry in store().usage_entries(user):
        rec = usage_of_entry(entry)
        out[rec.key] = out.get(rec.key, UsageTotals()) + rec.totals
    return out


def stored_totals(user: str) -> dict[UsageKey, UsageTotals]:
    return {a.key: a.totals for a in store().all_aggregates(user)}


def poison(record: dict[str, Any]) -> dict[str, Any]:
    bad = copy.deepcopy(record)
    bad["dynamodb"]["NewImage"]["metadata"] = {"S": "{not json"}
    bad["dynamodb"]["SequenceNumber"] = "9" + bad["dynamodb"]["SequenceNumber"]
    return bad


# --------------------------------------------------------------------- pure parts


def entry(**kw: Any) -> LedgerEntry:
    base: dict[str, Any] = dict(
        id="e1", user_id="u", created_at="2026-11-27T23:59:59.999999Z", type=EntryType.USAGE,
        amount=Decimal("-0.000123"), balance_after=Decimal("1"), provider="openai",
        model="openai/gpt-4o", tokens=30, cost=Decimal("0.000123"),
        metadata={"prompt_tokens": 10, "completion_tokens": 20},
    )
    base.update(kw)
    return LedgerEntry(**base)


def test_usage_of_entry_maps_day_key_tokens_and_exact_cost():
    rec = usage_of_entry(entry())
    assert rec.key == UsageKey("u", "2026-11-27", "openai", "openai/gpt-4o")
    assert rec.totals == UsageTotals(1, 10, 20, 30, Decimal("0.000123"))
    # no usage reported upstream: counted as a request, cost from the amount
    rec = usage_of_entry(entry(tokens=None, cost=None, metadata={"usage_missing": True},
                               provider=None, model=None))
    assert rec.totals == UsageTotals(1, 0, 0, 0, Decimal("0.000123"))
    assert (rec.key.provider, rec.key.model) == ("unknown", "unknown")
    with pytest.raises(ValueError):
        usage_of_entry(entry(type=EntryType.BONUS))
    with pytest.raises(ValueError):
        usage_of_entry(entry(metadata={"prompt_tokens": -1}))
    with pytest.raises(ValueError):
        usage_of_entry(entry(created_at="yesterday"))


def test_grouping_dedupes_entry_ids_and_sums_decimal_exactly():
    a = UsageKey("u", "2026-11-27", "p", "m")
    b = UsageKey("u", "2026-11-27", "p", "m2")
    recs = [UsageRecord(f"e{i}", a if i % 2 else b, UsageTotals(1, 1, 2, 3, Decimal("0.1")))
            for i in range(10)]
    groups = group_records([*recs, recs[0], recs[1]])
    assert {k: len(v) for k, v in groups.items()} == {b: 5, a: 5}
    assert sum_totals(groups[a]).cost == Decimal("0.5")  # never 0.49999... (no float)
    assert sum_totals(recs) == UsageTotals(10, 10, 20, 30, Decimal("1.0"))


def test_aggregate_keys_keep_components_apart():
    one = usage_sk(UsageKey("u", "2026-11-27", "a#b", "c"))
    two = usage_sk(UsageKey("u", "2026-11-27", "a", "b#c"))
    assert one != two and one.count("#") == two.count("#") == 3


def test_stream_record_parsing(aws):
    spend("parse", 1)
    (record,) = stream_records()
    usage = usage_from_stream_record(record)
    assert usage is not None and usage.totals.requests == 1
    assert usage_from_stream_record({**record, "eventName": "MODIFY"}) is None
    other = copy.deepcopy(record)
    other["dynamodb"]["NewImage"]["type"] = {"S": "bonus"}
    assert usage_from_stream_record(other) is None
    with pytest.raises(PoisonRecord):
        usage_from_stream_record(poison(record))
    moved = copy.deepcopy(record)
    moved["dynamodb"]["NewImage"]["PK"] = {"S": user_pk("someone-else")}
    with pytest.raises(PoisonRecord):
        usage_from_stream_record(moved)
    with pytest.raises(PoisonRecord):
        usage_from_stream_record({"eventName": "INSERT", "dynamodb": {"SequenceNumber": "1"}})


# ------------------------------------------------------------------ the aggregator


def test_aggregates_equal_ledger_sums_and_a_redelivered_batch_changes_nothing(aws):
    # through the real ledger and the table's stream (moto slows down as its table grows,
    # so the volume runs on synthetic records below and on DynamoDB Local)
    for u in range(2):
        spend(f"user-{u}", 9)
    records = stream_records()
    assert len(records) == 18
    assert failed_seqs(run_batch(records[:10])) == []
    assert failed_seqs(run_batch(records[10:])) == []
    before = {u: stored_totals(f"user-{u}") for u in range(2)}
    for u in range(2):
        assert before[u] == ledger_totals(f"user-{u}") and len(before[u]) == 3
    # the same batches again, and a re-cut batch overlapping both
    assert failed_seqs(run_batch(records[:10])) == []
    assert failed_seqs(run_batch(records[10:])) == []
    assert failed_seqs(run_batch(records[5:15])) == []
    assert {u: stored_totals(f"user-{u}") for u in range(2)} == before


def synthetic(n_users: int, per_user: int) -> tuple[list[LedgerEntry], list[dict[str, Any]]]:
    """Usage entries and their stream records, without writing the entries."""
    entries, records = [], []
    for u in range(n_users):
        for i in range(per_user):
            provider, model = MODELS[i % 3]
            e = entry(id=f"s{u}-{i}", user_id=f"syn-{u}", provider=provider, model=model,
                      cost=Decimal(f"0.{(u * per_user + i) % 997 + 1:06d}"),
                      metadata={"prompt_tokens": i, "completion_tokens": 2 * i},
                      tokens=3 * i)
            seq = f"{len(records) + 1:021d}"
            entries.append(e)
            records.append({
                "eventID": seq, "eventName": "INSERT", "eventSource": "aws:dynamodb",
                "eventVersion": "1.1", "awsRegion": "us-east-1",
                "dynamodb": {"NewImage": entry_to_item(e), "SequenceNumber": seq,
                             "StreamViewType": "NEW_AND_OLD_IMAGES"},
                "eventSourceARN": "arn:aws:dynamodb:us-east-1:123456789012:table/t/stream/x",
            })
    return entries, records


def test_synthetic_volume_five_users_three_models_redelivered(aws):
    entries, records = synthetic(5, 40)
    expected: dict[UsageKey, UsageTotals] = {}
    for e in entries:
        rec = usage_of_entry(e)
        expected[rec.key] = expected.get(rec.key, UsageTotals()) + rec.totals
    for start in range(0, 200, 100):
        assert failed_seqs(run_batch(records[start : start + 100])) == []
    stored = {k: v for u in range(5) for k, v in stored_totals(f"syn-{u}").items()}
    assert stored == expected and len(stored) == 15
    for start in range(0, 200, 100):  # delivered again: nothing changes
        assert failed_seqs(run_batch(records[start : start + 100])) == []
    assert failed_seqs(run_batch(records[::-3])) == []
    assert {k: v for u in range(5) for k, v in stored_totals(f"syn-{u}").items()} == expected


def test_a_poisoned_record_fails_alone_and_the_others_are_applied(aws):
    spend("pp", 6)
    records = stream_records()
    bad = poison(records[2])
    batch = [*records[:2], bad, *records[2:]]
    assert failed_seqs(run_batch(batch)) == [bad["dynamodb"]["SequenceNumber"]]
    assert stored_totals("pp") == ledger_totals("pp")
    # Lambda retries from the poisoned record: the later ones come again, harmlessly
    assert failed_seqs(run_batch(batch[2:])) == [bad["dynamodb"]["SequenceNumber"]]
    assert stored_totals("pp") == ledger_totals("pp")


def test_a_failed_group_write_fails_that_group_only(aws, monkeypatch):
    spend("gw", 9)
    records = stream_records()
    real = DynamoUsageStore.apply_group

    def flaky(self: DynamoUsageStore, key: UsageKey, recs: Any) -> int:
        if key.model == MODELS[0][1]:
            raise RuntimeError("throttled")
        return real(self, key, recs)

    monkeypatch.setattr(DynamoUsageStore, "apply_group", flaky)
    failed = failed_seqs(run_batch(records))
    expected = [r["dynamodb"]["SequenceNumber"] for r in records
                if r["dynamodb"]["NewImage"]["model"]["S"] == MODELS[0][1]]
    assert sorted(failed) == sorted(expected) and len(failed) == 3
    assert {k.model for k in stored_totals("gw")} == {MODELS[1][1], MODELS[2][1]}
    monkeypatch.setattr(DynamoUsageStore, "apply_group", real)
    assert failed_seqs(run_batch(records)) == []  # the retry completes it, exactly
    assert stored_totals("gw") == ledger_totals("gw")


def test_an_entirely_failed_batch_is_a_function_error_so_lambda_bisects(aws):
    spend("all-bad", 2)
    records = [poison(r) for r in stream_records()]
    with pytest.raises(BatchProcessingError):
        run_batch(records)


def test_one_write_per_group_per_batch_and_big_groups_split(aws):
    entries, records = synthetic(1, 3 * (ENTRIES_PER_TRANSACTION + 5))
    big = [r for r in records if r["dynamodb"]["NewImage"]["model"]["S"] == MODELS[0][1]]
    calls: list[str] = []
    bootstrap.usage_store()._client.meta.events.register(
        "before-call.dynamodb.*", lambda model, **_: calls.append(model.name))
    assert failed_seqs(run_batch(big)) == []
    assert calls == ["TransactWriteItems", "TransactWriteItems"]  # 99 + 5 entries
    ((key, agg),) = stored_totals("syn-0").items()
    assert agg == sum_totals(usage_of_entry(e) for e in entries if e.model == MODELS[0][1])
    assert agg.requests == ENTRIES_PER_TRANSACTION + 5
    calls.clear()
    assert failed_seqs(run_batch(big[:30])) == []  # redelivered: cancelled, read, nothing new
    assert calls == ["TransactWriteItems", "BatchGetItem"]
    assert stored_totals("syn-0") == {key: agg}


def test_sample_stream_event_is_processed_without_failures(aws):
    evt = json.loads((ROOT / "events" / "usage_aggregator.json").read_text())
    assert all(r["eventSource"] == "aws:dynamodb" for r in evt["Records"])
    assert run_batch(evt["Records"]) == {"batchItemFailures": []}
    (agg,) = stored_totals("user-123").values()
    assert agg.requests == 2 and agg.cost == Decimal("0.000101")


# ----------------------------------------------------------------------- GET /usage


def usage(user: str, **query: str) -> tuple[int, Any]:
    status, _, body = invoke("usage_get", event("GET", "/api/v1/llm/usage", sub=user,
                                                 query=query or None))
    return status, body


def test_get_usage_reports_totals_and_breakdowns_from_aggregates(aws):
    spend("rep", 6)
    spend("other", 3)
    assert failed_seqs(run_batch(stream_records())) == []
    # an aggregate from 10 days ago: inside days=30, outside days=7
    today = datetime.now(UTC).date()
    old = UsageKey("rep", date.fromordinal(today.toordinal() - 10).isoformat(), "openai",
                   "openai/gpt-4o")
    store().apply_group(old, [UsageRecord("old-1", old, UsageTotals(1, 5, 5, 10,
                                                                     Decimal("1.5")))])
    status, body = usage("rep", days="7")
    assert status == 200, body
    expected = sum_totals(usage_of_entry(e) for e in store().usage_entries("rep"))
    assert body["totals"] == {
        "requests": 6, "prompt_tokens": expected.prompt_tokens,
        "completion_tokens": expected.completion_tokens,
        "total_tokens": expected.total_tokens, "cost": f"{expected.cost:.6f}",
    }
    assert body["days"] == 7 and len(body["by_day"]) == 7
    assert body["by_day"][-1]["date"] == today.isoformat() == body["end_date"]
    assert body["by_day"][-1]["requests"] == 6
    assert sorted(p["provider"] for p in body["by_provider"]) == ["groq", "openai", "together"]
    assert {m["model"] for m in body["by_model"]} == {m for _, m in MODELS}
    costs = [Decimal(m["cost"]) for m in body["by_model"]]
    assert costs == sorted(costs, reverse=True)
    assert sum(costs) == expected.cost
    status, month = usage("rep", days="30")
    assert month["totals"]["requests"] == 7
    assert Decimal(month["totals"]["cost"]) == expected.cost + Decimal("1.5")
    # another user's usage never shows
    assert usage("nobody")[1]["totals"]["requests"] == 0


@pytest.mark.parametrize("days", ["0", "367", "x", "-1"])
def test_get_usage_rejects_days_out_of_range(aws, days):
    status, body = usage("u", days=days)
    assert status == 400 and body["error"]["param"] == "days", body


def test_get_usage_reads_one_query(aws):
    spend("q", 3)
    run_batch(stream_records())
    calls: list[str] = []
    bootstrap.usage_store()._client.meta.events.register(
        "before-call.dynamodb.*", lambda model, **_: calls.append(model.name))
    assert usage("q", days="366")[0] == 200
    assert calls == ["Query"]


# ------------------------------------------------------------------ reconciliation


def test_reconcile_passes_on_a_clean_table_and_reports_corruption(aws, capsys):
    for u in ("r1", "r2"):
        spend(u, 4)
    run_batch(stream_records())
    report = reconcile_all(DynamoLedgerStore(client(), TABLE), store())
    assert report.ok and report.accounts == 2
    assert cli(["admin", "reconcile", "--table", TABLE]) == 0

    # invariant 2: a balance changed behind the ledger's back
    client().update_item(TableName=TABLE, Key=to_item({"PK": user_pk("r1"), "SK": "ACCOUNT"}),
                         UpdateExpression="SET balance = balance + :x, available = available + :x",
                         ExpressionAttributeValues=to_item({":x": Decimal("5")}))
    # invariant 4: an aggregate that lost a request
    key = next(iter(stored_totals("r2")))
    client().update_item(TableName=TABLE, Key=to_item({"PK": user_pk("r2"), "SK": usage_sk(key)}),
                         UpdateExpression="ADD requests :x",
                         ExpressionAttributeValues=to_item({":x": -1}))
    capsys.readouterr()
    assert cli(["admin", "reconcile", "--table", TABLE]) == 1
    out = capsys.readouterr().out
    assert "DISCREPANCY r1: balance is" in out
    assert f"DISCREPANCY r2: usage {key.day} {key.provider} {key.model} requests" in out
    assert cli(["admin", "reconcile", "--table", TABLE, "--user", "r1", "--json"]) == 1
    body = json.loads(capsys.readouterr().out)
    assert not body["ok"] and body["accounts"] == 1
    # The same corruption leaves the lots short of the balance (reconcile checks lots too).
    assert [d["what"] for d in body["discrepancies"]] == ["balance", "lots remaining"]


def test_reconcile_usage_missing_aggregate_and_grace(aws):
    spend("late", 2)  # the stream has not been applied yet
    found = reconcile_usage(store(), "late")
    assert {d.what.rsplit(" ", 1)[1] for d in found} >= {"requests", "cost"}
    assert reconcile_usage(store(), "late", grace_seconds=600) == []  # still in flight
    run_batch(stream_records())
    assert reconcile_usage(store(), "late") == []


def test_reconcile_function_and_sample_event(aws):
    spend("fn", 2)
    run_batch(stream_records())
    evt = json.loads((ROOT / "events" / "reconcile.json").read_text())
    assert evt["source"] == "aws.events"
    fn = import_handler(FUNCTIONS / "reconcile" / "app.py")
    assert fn.lambda_handler(evt, Context()) == {"accounts": 1, "discrepancies": 0}
    client().update_item(TableName=TABLE, Key=to_item({"PK": user_pk("fn"), "SK": "ACCOUNT"}),
                         UpdateExpression="SET available = available - :x",
                         ExpressionAttributeValues=to_item({":x": Decimal("1")}))
    assert fn.lambda_handler(evt, Context()) == {"accounts": 1, "discrepancies": 1}


def test_sample_usage_get_event_is_served(aws):
    evt = json.loads((ROOT / "events" / "usage_get.json").read_text())
    status, _, body = invoke("usage_get", evt)
    assert status == 200 and body["days"] == 30, body
