"""The operator CLI as an operator runs it: ``.venv/bin/llmcredits admin ...`` in a
subprocess against DynamoDB Local (``--endpoint`` + ``--table``).

show, grant, adjust down (and refused past zero), tier and cap, history, CSV export,
reconcile clean and then, after a deliberately corrupted balance, reporting it (exit 1).
Plus the downward adjustment's guard under concurrency (moto is not atomic).
"""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from llmcredits.dal.dynamodb_ledger import to_item, user_pk
from llmcredits.domain.ledger import EntryType
from llmcredits.errors import InsufficientCredits
from llmcredits.services.reconcile import reconcile_account

pytestmark = pytest.mark.dynamodb_local

ROOT = Path(__file__).resolve().parents[2]


def llmcredits_bin() -> list[str]:
    exe = ROOT / ".venv" / "bin" / "llmcredits"
    if exe.exists():
        return [str(exe)]
    beside = Path(sys.executable).parent / "llmcredits"  # the venv running pytest
    if beside.exists():
        return [str(beside)]
    return [sys.executable, "-m", "llmcredits.cli"]


@pytest.fixture
def admin(local_table: tuple[Any, str], dynamodb_local_client_kwargs: dict[str, str]) -> Any:
    _, table = local_table
    dynamodb_local_endpoint = dynamodb_local_client_kwargs["endpoint_url"]
    env = operator_env(dynamodb_local_client_kwargs)

    def run(*argv: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
        cmd = [*llmcredits_bin(), "admin", *argv, "--endpoint", dynamodb_local_endpoint,
               "--table", table]
        return subprocess.run(cmd, input=stdin, capture_output=True, text=True, env=env,
                              timeout=60, check=False)

    return run


def operator_env(kwargs: dict[str, str]) -> dict[str, str]:
    """An operator's shell: no TABLE_NAME, USER set. DynamoDB Local keeps tables per
    access key and region, so the CLI uses the same dummy credentials as the fixture."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("TABLE_NAME", "DYNAMODB_ENDPOINT", "AWS_SESSION_TOKEN")}
    env.update(USER="ops-oncall", AWS_ACCESS_KEY_ID=kwargs["aws_access_key_id"],
               AWS_SECRET_ACCESS_KEY=kwargs["aws_secret_access_key"],
               AWS_REGION=kwargs["region_name"])
    return env


def ok(result: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert result.returncode == 0, result.stderr
    return result


def one_line_failure(result: subprocess.CompletedProcess[str], code: int, needle: str) -> None:
    assert result.returncode == code, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("llmcredits admin ") and needle in last, last


def test_operator_session(admin: Any, local_table: tuple[Any, str], tmp_path: Path) -> None:
    client, table = local_table

    one_line_failure(admin("show", "alice"), 1, "No account for user 'alice'")

    # grant: confirmation shown; refused without a terminal unless --yes
    refused = admin("grant", "alice", "25", "--type", "bonus", "--reason", "welcome")
    one_line_failure(refused, 1, "pass --yes")
    assert "it will be created with balance 25.000000" in refused.stderr
    one_line_failure(admin("show", "alice"), 1, "No account")
    granted = ok(admin("grant", "alice", "25", "--type", "bonus", "--reason", "welcome",
                       "--idempotency-key", "welcome-alice", "--yes", "--json"))
    assert json.loads(granted.stdout)["balance"] == "25.000000"
    again = ok(admin("grant", "alice", "25", "--type", "bonus", "--reason", "welcome",
                     "--idempotency-key", "welcome-alice", "--yes", "--json"))
    assert json.loads(again.stdout)["replayed"] is True
    one_line_failure(admin("grant", "alice", "2.5000001", "--type", "bonus", "--reason", "x",
                           "--yes"), 2, "at most 6 decimal places")

    shown = json.loads(ok(admin("show", "alice", "--json")).stdout)
    assert (shown["balance"], shown["available"], shown["tier"]) == ("25.000000", "25.000000",
                                                                     "free")

    # adjust down, and refused past zero
    down = ok(admin("adjust", "alice", "-5.25", "--reason", "duplicate bonus", "--yes",
                    "--json"))
    entry = json.loads(down.stdout)["entry"]
    assert (entry["type"], entry["amount"], entry["balance_after"]) == (
        "adjustment", "-5.250000", "19.750000")
    assert entry["metadata"] == {"by": "ops-oncall", "reason": "duplicate bonus"}
    too_far = admin("adjust", "alice", "-19.750001", "--reason", "x", "--yes")
    one_line_failure(too_far, 1, "below zero")
    assert json.loads(ok(admin("show", "alice", "--json")).stdout)["balance"] == "19.750000"

    # tier and cap
    assert "free -> starter" in ok(admin("set-tier", "alice", "starter", "--yes")).stderr
    capped = json.loads(ok(admin("set-cap", "alice", "40", "--yes", "--json")).stdout)
    assert (capped["tier"], capped["monthly_cap"]) == ("starter", "40.000000")
    one_line_failure(admin("set-cap", "alice", "-1", "--yes"), 2, "must not be negative")

    # history, newest first
    history = json.loads(ok(admin("history", "alice", "--json")).stdout)
    assert [(e["type"], e["amount"]) for e in history["items"]] == [
        ("adjustment", "-5.250000"), ("bonus", "25.000000")]
    text = ok(admin("history", "alice", "--limit", "1")).stdout
    assert "adjustment" in text and "-5.250000" in text and "more entries" in text

    # export: every user by a paged Scan, to a file; one user to stdout
    ok(admin("grant", "bob", "3", "--type", "refund", "--reason", "outage", "--yes"))
    out_file = tmp_path / "ledger.csv"
    exported = ok(admin("export-ledger", "--output", str(out_file)))
    assert "exported 3 ledger entries" in exported.stderr
    rows = list(csv.DictReader(out_file.open(newline="")))
    assert list(rows[0]) == ["id", "user_id", "created_at", "type", "amount", "balance_after",
                             "provider", "model", "tokens", "cost", "metadata"]
    assert sorted((r["user_id"], r["type"], r["amount"]) for r in rows) == [
        ("alice", "adjustment", "-5.250000"), ("alice", "bonus", "25.000000"),
        ("bob", "refund", "3.000000")]
    one_user = ok(admin("export-ledger", "--user", "alice", "--since", "2000-01-01"))
    assert [r["amount"] for r in csv.DictReader(io.StringIO(one_user.stdout))] == [
        "25.000000", "-5.250000"]  # oldest first

    # reconcile: clean, then a balance changed behind the ledger's back
    clean = ok(admin("reconcile", "--recheck-seconds", "0"))
    assert "2 account(s)" in clean.stderr and "0 discrepancy" in clean.stderr
    client.update_item(
        TableName=table, Key=to_item({"PK": user_pk("bob"), "SK": "ACCOUNT"}),
        UpdateExpression="SET balance = balance + :x, available = available + :x",
        ExpressionAttributeValues=to_item({":x": Decimal("0.5")}))
    broken = admin("reconcile", "--recheck-seconds", "0", "--json")
    assert broken.returncode == 1, broken.stderr
    report = json.loads(broken.stdout)
    assert not report["ok"]
    assert [(d["user_id"], d["what"], d["stored"], d["expected"])
            for d in report["discrepancies"]] == [
        ("bob", "balance", "3.5", "3"),
        # the lots did not change with the balance written behind the ledger's back
        ("bob", "lots remaining", "3", "3.5")]


def test_missing_table_is_one_line(dynamodb_local_client_kwargs: dict[str, str]) -> None:
    result = subprocess.run(
        [*llmcredits_bin(), "admin", "show", "alice", "--endpoint",
         dynamodb_local_client_kwargs["endpoint_url"], "--table", "no-such-table"],
        capture_output=True, text=True, env=operator_env(dynamodb_local_client_kwargs),
        timeout=60, check=False)
    one_line_failure(result, 1, "table 'no-such-table'")


def test_adjust_down_never_passes_zero_under_concurrency(local_ledger: Any) -> None:
    """30 concurrent downward corrections of 1 on 10 available: exactly 10 land."""
    local_ledger.grant("conc", Decimal(10), EntryType.BONUS, "seed", "test")

    def adjust(_: int) -> bool:
        try:
            local_ledger.adjust_down("conc", Decimal(1), "race", "test")
        except InsufficientCredits:
            return False
        return True

    with ThreadPoolExecutor(max_workers=16) as pool:
        landed = sum(pool.map(adjust, range(30)))
    assert landed == 10
    account = local_ledger.find_account("conc")
    assert account.balance == 0 and account.available == 0
    assert reconcile_account(local_ledger._store, "conc") == []
