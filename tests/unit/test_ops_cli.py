"""The operator CLI (``llmcredits admin ...``, issue 7) on moto, in-process.

The same commands run as a subprocess against DynamoDB Local in
tests/integration/test_ops_cli_dynamodb_local.py.
"""

from __future__ import annotations

import csv
import io
import json
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError, NoCredentialsError
from botocore.stub import Stubber
from llmcredits import ops
from llmcredits.cli import main as cli
from llmcredits.dal.dynamodb_ledger import DynamoLedgerStore, to_item, user_pk
from llmcredits.domain.ledger import Account, EntryType, plan_adjustment_debit
from llmcredits.errors import InsufficientCredits
from llmcredits.services.ledger import LedgerService

TABLE = "llmcredits-test"
D = Decimal
T = ["--table", TABLE]


class FakeTTY(io.StringIO):
    def isatty(self) -> bool:
        return True


def ledger(clock: Any = None) -> LedgerService:
    store = DynamoLedgerStore(boto3.client("dynamodb"), TABLE)
    return LedgerService(store, clock=clock) if clock else LedgerService(store)


def run(capsys: Any, *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = cli(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def show(capsys: Any, user: str) -> dict[str, Any]:
    code, out, _ = run(capsys, "admin", "show", user, *T, "--json")
    assert code == 0
    return json.loads(out)


def entries(user: str) -> list[Any]:
    return ledger().history(user, 200, None, None).entries


@pytest.fixture(autouse=True)
def operator_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    monkeypatch.setenv("USER", "ops-alice")
    monkeypatch.setattr("sys.stdin", io.StringIO(""))  # no terminal unless a test says so
    # A developer's running `make dev` must not become these tests' table.
    monkeypatch.setenv(ops.STACK_FILE_ENV, str(tmp_path / "no-stack.json"))


def one_line_error(err: str, *needles: str) -> None:
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) >= 1 and lines[-1].startswith("llmcredits admin ")
    for needle in needles:
        assert needle in lines[-1], lines[-1]


# ------------------------------------------------------------------------ domain


def account(balance: str, available: str | None = None) -> Account:
    a = Account.new("u", datetime(2026, 3, 1, tzinfo=UTC))
    return Account(**{**a.__dict__, "balance": D(balance),
                      "available": D(available if available is not None else balance)})


def test_plan_adjustment_debit_keeps_available_at_or_above_zero() -> None:
    m = plan_adjustment_debit(account("10", "4"), D("4"))
    assert (m.balance_delta, m.available_delta, m.balance_after) == (D("-4"), D("-4"), D("6"))
    assert m.require_available == D("4")  # checked by the write, not only here
    assert m.spend_delta == 0 and m.headroom_delta == 0  # a correction is not spend
    with pytest.raises(InsufficientCredits):
        plan_adjustment_debit(account("10", "4"), D("4.000001"))
    forced = plan_adjustment_debit(account("10", "4"), D("15"), allow_negative=True)
    assert forced.balance_after == D("-5") and forced.require_available is None
    for bad in ("0", "-1"):
        with pytest.raises(ValueError):
            plan_adjustment_debit(account("10"), D(bad))


# ------------------------------------------------------------------------ show


def test_show_prints_the_account_and_unknown_user_is_one_line(aws: None, capsys: Any) -> None:
    ledger().grant("alice", D("12.5"), EntryType.BONUS, "welcome", "test")
    code, out, _ = run(capsys, "admin", "show", "alice", *T)
    assert code == 0
    assert "balance" in out and "12.500000" in out and "free" in out
    body = show(capsys, "alice")
    assert body["balance"] == "12.500000" and body["available"] == "12.500000"
    assert body["monthly_cap"] is None and body["tier"] == "free"

    code, out, err = run(capsys, "admin", "show", "nobody", *T)
    assert code == 1 and out == ""
    one_line_error(err, "No account for user 'nobody'")


# ------------------------------------------------------------------------ grant


def test_grant_credits_once_per_idempotency_key(aws: None, capsys: Any) -> None:
    args = ["admin", "grant", "bob", "10.25", "--type", "bonus", "--reason", "welcome",
            "--idempotency-key", "k1", "--yes", "--json", *T]
    code, out, err = run(capsys, *args)
    assert code == 0
    first = json.loads(out)
    assert first["balance"] == "10.250000" and first["replayed"] is False
    assert first["entry"]["type"] == "bonus" and first["entry"]["amount"] == "10.250000"
    assert first["entry"]["metadata"] == {"reason": "welcome", "by": "ops-alice"}
    assert "no account yet" in err  # the confirmation text says it will be created

    code, out, _ = run(capsys, *args)
    assert code == 0 and json.loads(out)["replayed"] is True
    assert show(capsys, "bob")["balance"] == "10.250000"
    assert len(entries("bob")) == 1

    # same key, different request: a conflict, nothing changes
    conflict = [a if a != "10.25" else "11" for a in args]
    code, _, err = run(capsys, *conflict)
    assert code == 1
    one_line_error(err, "Idempotency-Key")
    assert show(capsys, "bob")["balance"] == "10.250000"


def test_grant_text_output_and_actor_flag(aws: None, capsys: Any) -> None:
    code, out, _ = run(capsys, "admin", "grant", "carol", "3", "--type", "refund",
                         "--reason", "outage", "--actor", "oncall-bob", "--yes", *T)
    assert code == 0
    assert "granted 3.000000 (refund) for 'carol': balance 3.000000" in out
    assert entries("carol")[0].metadata == {"reason": "outage", "by": "oncall-bob"}


def test_grant_with_an_expiry_makes_an_expiring_lot(aws: None, capsys: Any) -> None:
    args = ["admin", "grant", "erin", "4", "--type", "bonus", "--reason", "promo",
            "--expires-in-days", "7", "--idempotency-key", "e1", "--yes", *T]
    code, _, err = run(capsys, *args)
    assert code == 0, err
    assert "the lot expires at " in err  # the confirmation names the expiry
    assert run(capsys, *args)[0] == 0  # a retry replays (the days, not the date, match)
    view = show(capsys, "erin")
    assert [(lot["source"], lot["remaining"]) for lot in view["lots"]] == [
        ("bonus", "4.000000")]
    assert view["lots"][0]["expires_at"] > datetime.now(UTC).strftime("%Y-%m-%dT%H")
    code, _, err = run(capsys, "admin", "grant", "erin", "1", "--type", "bonus", "--reason",
                       "x", "--expires-at", "2020-01-01T00:00:00Z", "--yes", *T)
    assert code == 2
    one_line_error(err, "expires_at must be in the future")
    code, _, err = run(capsys, "admin", "grant", "erin", "1", "--type", "bonus", "--reason",
                       "x", "--expires-at", "2030-01-01T00:00:00", "--yes", *T)
    assert code == 2
    one_line_error(err, "time zone")
    assert len(entries("erin")) == 1


@pytest.mark.parametrize("amount", ["-5", "0", "1.1234567", "abc", "1e-7", "NaN", "1e12"])
def test_bad_amount_is_a_usage_error_and_changes_nothing(
    aws: None, capsys: Any, amount: str
) -> None:
    code, _, err = run(capsys, "admin", "grant", "dave", amount, "--type", "bonus",
                       "--reason", "x", "--yes", *T)
    assert code == 2
    one_line_error(err, "amount")
    assert ledger()._store.get_account("dave") is None


def test_grant_type_and_reason_are_checked(aws: None, capsys: Any) -> None:
    with pytest.raises(SystemExit) as exc:
        cli(["admin", "grant", "dave", "1", "--type", "purchase", "--reason", "x", *T])
    assert exc.value.code == 2
    code, _, err = run(capsys, "admin", "grant", "dave", "1", "--type", "bonus",
                       "--reason", "  ", "--yes", *T)
    assert code == 2
    one_line_error(err, "--reason")


def test_actor_is_required(aws: None, capsys: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("USER")
    monkeypatch.delenv("USERNAME", raising=False)
    code, _, err = run(capsys, "admin", "grant", "dave", "1", "--type", "bonus",
                       "--reason", "x", "--yes", *T)
    assert code == 2
    one_line_error(err, "--actor")


# ------------------------------------------------------------------------ confirmation


def test_money_moves_only_after_confirmation(
    aws: None, capsys: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    ledger().grant("erin", D("5"), EntryType.BONUS, "seed", "test")
    grant = ["admin", "grant", "erin", "2", "--type", "bonus", "--reason", "r", *T]

    # no terminal, no --yes: refused
    code, _, err = run(capsys, *grant)
    assert code == 1
    assert "balance 5.000000 -> 7.000000" in err
    one_line_error(err, "pass --yes")

    monkeypatch.setattr("sys.stdin", FakeTTY("n\n"))
    code, _, err = run(capsys, *grant)
    assert code == 1
    one_line_error(err, "aborted: nothing changed")
    assert show(capsys, "erin")["balance"] == "5.000000"

    monkeypatch.setattr("sys.stdin", FakeTTY("y\n"))
    code, _, err = run(capsys, *grant)
    assert code == 0 and "Proceed? [y/N]" in err
    assert show(capsys, "erin")["balance"] == "7.000000"

    for argv in (["set-tier", "erin", "starter"], ["set-cap", "erin", "5"],
                 ["adjust", "erin", "-1", "--reason", "r"]):
        monkeypatch.setattr("sys.stdin", io.StringIO("y\n"))  # not a terminal
        code, _, err = run(capsys, "admin", *argv, *T)
        assert code == 1, argv
        one_line_error(err, "--yes")
    body = show(capsys, "erin")
    assert (body["tier"], body["monthly_cap"], body["balance"]) == ("free", None, "7.000000")


# ------------------------------------------------------------------------ adjust


def test_adjust_down_and_refused_past_zero(aws: None, capsys: Any) -> None:
    ledger().grant("frank", D("10"), EntryType.BONUS, "seed", "test")
    code, out, err = run(capsys, "admin", "adjust", "frank", "-4.5", "--reason", "double grant",
                         "--yes", "--json", *T)
    assert code == 0
    body = json.loads(out)
    assert body["balance"] == "5.500000"
    assert body["entry"]["type"] == "adjustment" and body["entry"]["amount"] == "-4.500000"
    assert body["entry"]["metadata"] == {"reason": "double grant", "by": "ops-alice"}
    assert "balance 10.000000 -> 5.500000" in err

    code, out, err = run(capsys, "admin", "adjust", "frank", "-5.500001", "--reason", "x",
                         "--yes", *T)
    assert code == 1 and out == ""
    one_line_error(err, "refused", "--allow-negative")
    assert show(capsys, "frank")["balance"] == "5.500000"
    assert len(entries("frank")) == 2

    code, out, _ = run(capsys, "admin", "adjust", "frank", "-6", "--reason", "fraud",
                       "--allow-negative", "--yes", "--json", *T)
    assert code == 0 and json.loads(out)["balance"] == "-0.500000"
    assert entries("frank")[0].metadata["allow_negative"] is True

    # up: an adjustment credit
    code, out, _ = run(capsys, "admin", "adjust", "frank", "+1.5", "--reason", "fix",
                       "--yes", "--json", *T)
    assert code == 0 and json.loads(out)["entry"]["amount"] == "1.500000"
    assert show(capsys, "frank")["balance"] == "1.000000"


def test_adjust_down_counts_open_holds(aws: None, capsys: Any) -> None:
    service = ledger()
    service.grant("gina", D("10"), EntryType.BONUS, "seed", "test")
    service.reserve(service.account("gina"), D("7"), rate_limit=None)
    code, _, err = run(capsys, "admin", "adjust", "gina", "-4", "--reason", "x", "--yes", *T)
    assert code == 1
    one_line_error(err, "refused", "3.000000 available, 7.000000 held")
    code, _, _ = run(capsys, "admin", "adjust", "gina", "-3", "--reason", "x", "--yes", *T)
    assert code == 0
    body = show(capsys, "gina")
    assert (body["balance"], body["held"], body["available"]) == ("7.000000", "7.000000",
                                                                 "0.000000")


def test_adjust_down_refused_by_the_service_when_the_preview_was_stale(aws: None) -> None:
    service = ledger()
    service.grant("ken", D("2"), EntryType.BONUS, "seed", "test")
    operator = ops.Operator(boto3.client("dynamodb"), TABLE)
    operator.describe_adjust("ken", D("-2"), "x", "t", False)  # fine at preview time
    service.reserve(service.account("ken"), D("1"), rate_limit=None)  # then a hold lands
    with pytest.raises(ops.OpsError, match=r"refused: Adjusting 'ken' down by 2\.000000"):
        operator.adjust("ken", D("-2"), "x", "t", allow_negative=False, idempotency_key=None)
    assert service.find_account("ken").balance == D("2")


def test_adjust_down_of_unknown_user_creates_nothing(aws: None, capsys: Any) -> None:
    code, _, err = run(capsys, "admin", "adjust", "ghost", "-1", "--reason", "x", "--yes", *T)
    assert code == 1
    one_line_error(err, "No account for user 'ghost'")
    assert ledger()._store.get_account("ghost") is None
    code, _, err = run(capsys, "admin", "adjust", "ghost", "0", "--reason", "x", "--yes", *T)
    assert code == 2


def test_adjust_down_is_idempotent(aws: None, capsys: Any) -> None:
    ledger().grant("hank", D("10"), EntryType.BONUS, "seed", "test")
    argv = ["admin", "adjust", "hank", "-2", "--reason", "x", "--idempotency-key", "a1",
            "--yes", "--json", *T]
    assert run(capsys, *argv)[0] == 0
    code, out, _ = run(capsys, *argv)
    assert code == 0 and json.loads(out)["replayed"] is True
    assert show(capsys, "hank")["balance"] == "8.000000"


# ------------------------------------------------------------------------ tier and cap


def test_set_tier_and_cap(aws: None, capsys: Any) -> None:
    ledger().account("ivy")
    code, out, err = run(capsys, "admin", "set-tier", "ivy", "professional", "--yes", *T)
    assert code == 0 and "professional" in out and "free -> professional" in err
    code, out, err = run(capsys, "admin", "set-cap", "ivy", "50", "--yes", "--json", *T)
    assert code == 0 and json.loads(out)["monthly_cap"] == "50.000000"
    assert "none -> 50.000000" in err
    code, out, _ = run(capsys, "admin", "set-cap", "ivy", "none", "--yes", "--json", *T)
    assert code == 0 and json.loads(out)["monthly_cap"] is None
    body = show(capsys, "ivy")
    assert body["tier"] == "professional" and body["monthly_cap"] is None

    for bad in ("-1", "lots", "1.0000001"):
        code, _, err = run(capsys, "admin", "set-cap", "ivy", bad, "--yes", *T)
        assert code == 2, bad
        one_line_error(err, "monthly cap")
    with pytest.raises(SystemExit) as exc:
        cli(["admin", "set-tier", "ivy", "platinum", "--yes", *T])
    assert exc.value.code == 2


# ------------------------------------------------------------------------ history


def test_history_reads_page_after_page_newest_first(
    aws: None, capsys: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("llmcredits.services.ledger.HISTORY_MAX_LIMIT", 3)  # small pages
    service = ledger()
    for i in range(1, 8):
        service.grant("jan", D(i), EntryType.BONUS if i % 2 else EntryType.REFUND, f"g{i}", "t")
    code, out, _ = run(capsys, "admin", "history", "jan", "--limit", "5", "--json", *T)
    assert code == 0
    body = json.loads(out)
    assert [e["amount"] for e in body["items"]] == [f"{i}.000000" for i in (7, 6, 5, 4, 3)]
    assert body["more"] is True
    code, out, _ = run(capsys, "admin", "history", "jan", "--all", "--json", *T)
    body = json.loads(out)
    assert len(body["items"]) == 7 and body["more"] is False
    code, out, _ = run(capsys, "admin", "history", "jan", "--type", "refund", "--json", *T)
    assert [e["amount"] for e in json.loads(out)["items"]] == ["6.000000", "4.000000",
                                                               "2.000000"]
    code, out, _ = run(capsys, "admin", "history", "jan", "--limit", "2", *T)
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split() == ["created_at", "type", "amount", "balance_after", "details"]
    assert "+7.000000" in lines[1] and "28.000000" in lines[1] and "reason='g7'" in lines[1]
    assert "more entries" in lines[-1]

    code, _, err = run(capsys, "admin", "history", "nobody", *T)
    assert code == 1
    one_line_error(err, "No account")
    code, _, err = run(capsys, "admin", "history", "jan", "--limit", "0", *T)
    assert code == 2


# ------------------------------------------------------------------------ export


def clock_at(*when: int) -> Any:
    return lambda: datetime(*when, tzinfo=UTC)


def test_export_ledger_csv(aws: None, capsys: Any, tmp_path: Any) -> None:
    ledger(clock_at(2026, 1, 15, 12)).grant("kim", D("2"), EntryType.BONUS, "old", "t")
    ledger(clock_at(2026, 2, 1, 0)).grant("kim", D("1.5"), EntryType.REFUND, "new", "t")
    ledger(clock_at(2026, 2, 2)).debit_usage(
        "kim", D("0.000123"), provider="groq", model="groq/llama", tokens=42
    )
    ledger(clock_at(2026, 2, 3)).grant("lee", D("7"), EntryType.BONUS, "welcome, \"hi\"", "t")

    out_file = tmp_path / "ledger.csv"
    code, out, err = run(capsys, "admin", "export-ledger", "--output", str(out_file), *T)
    assert code == 0 and out == "" and "exported 4 ledger entries" in err
    rows = list(csv.DictReader(out_file.open(newline="")))
    assert list(rows[0]) == list(ops.EXPORT_COLUMNS)
    assert sorted(r["amount"] for r in rows) == ["-0.000123", "1.500000", "2.000000",
                                                 "7.000000"]
    usage = next(r for r in rows if r["type"] == "usage")
    assert (usage["provider"], usage["model"], usage["tokens"], usage["cost"],
            usage["balance_after"]) == ("groq", "groq/llama", "42", "0.000123", "3.499877")
    lee = next(r for r in rows if r["user_id"] == "lee")
    assert json.loads(lee["metadata"]) == {"by": "t", "reason": "welcome, \"hi\""}
    assert lee["tokens"] == "" and lee["cost"] == "" and lee["provider"] == ""
    assert not list(tmp_path.glob(".*partial"))

    # one user, oldest first, from a day on, to stdout
    code, out, _ = run(capsys, "admin", "export-ledger", "--user", "kim", "--since",
                       "2026-02-01", *T)
    assert code == 0
    rows = list(csv.DictReader(io.StringIO(out)))
    assert [r["amount"] for r in rows] == ["1.500000", "-0.000123"]
    assert rows[0]["created_at"] == "2026-02-01T00:00:00.000000Z"
    code, out, _ = run(capsys, "admin", "export-ledger", "--user", "kim", "--until",
                       "2026-02-01", *T)
    assert [r["amount"] for r in csv.DictReader(io.StringIO(out))] == ["2.000000"]
    # all users, a window
    code, out, err = run(capsys, "admin", "export-ledger", "--since", "2026-02-02",
                         "--until", "2026-02-03", "--json", *T)
    # --json: the entries as a JSON array on stdout (it printed CSV), the summary on stderr
    (usage_row,) = json.loads(out)
    assert (usage_row["user_id"], usage_row["amount"], usage_row["tokens"],
            usage_row["model"]) == ("kim", "-0.000123", 42, "groq/llama")
    assert json.loads(err)["rows"] == 1
    code, out, _ = run(capsys, "admin", "export-ledger", "--user", "lee", "--json", *T)
    assert code == 0 and json.loads(out)[0]["metadata"] == {"by": "t",
                                                             "reason": "welcome, \"hi\""}
    code, out, _ = run(capsys, "admin", "export-ledger", "--user", "kim", "--since",
                       "2026-03-01", "--json", *T)
    assert code == 0 and json.loads(out) == []

    code, _, err = run(capsys, "admin", "export-ledger", "--since", "02/01/2026", *T)
    assert code == 2
    one_line_error(err, "YYYY-MM-DD")
    code, _, err = run(capsys, "admin", "export-ledger", "--user", "nobody", *T)
    assert code == 1
    code, _, err = run(capsys, "admin", "export-ledger", "-o", str(tmp_path / "no/such/x.csv"),
                       *T)
    assert code == 1
    one_line_error(err, "cannot write")


def test_export_scan_follows_pages(aws: None) -> None:
    service = ledger()
    for user in ("m1", "m2", "m3"):
        for i in range(3):
            service.grant(user, D(i + 1), EntryType.BONUS, "x", "t")
    client = boto3.client("dynamodb")
    scans: list[int] = []

    def small_pages(params: dict[str, Any], **_: Any) -> None:
        params["Limit"] = 2
        scans.append(1)

    client.meta.events.register("provide-client-params.dynamodb.Scan", small_pages)
    got = list(ops.Operator(client, TABLE).ledger_entries(None, None, None))
    assert len(got) == 9 and len(scans) > 4
    by_user: dict[str, list[Decimal]] = {}
    for entry in got:
        by_user.setdefault(entry.user_id, []).append(entry.balance_after)
    assert by_user == {u: [D(1), D(3), D(6)] for u in ("m1", "m2", "m3")}  # oldest first


# ------------------------------------------------------------------------ where the table is


class FakeCloudFormation:
    """DescribeStacks as CloudFormation answers it (moto's cloudformation needs extras
    this project does not install)."""

    def __init__(self, stacks: dict[str, list[dict[str, str]] | None]) -> None:
        self.stacks = stacks
        self.calls: list[str] = []

    def describe_stacks(self, StackName: str) -> dict[str, Any]:
        self.calls.append(StackName)
        if StackName not in self.stacks:
            raise ClientError({"Error": {"Code": "ValidationError",
                                         "Message": f"Stack with id {StackName} does not exist"}},
                              "DescribeStacks")
        stack: dict[str, Any] = {"StackName": StackName, "StackStatus": "CREATE_COMPLETE"}
        if self.stacks[StackName] is not None:
            stack["Outputs"] = self.stacks[StackName]
        return {"Stacks": [stack]}


def test_table_from_the_stack_outputs(
    aws: None, capsys: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("TABLE_NAME")
    from tests.support import create_table_from_template

    create_table_from_template(boto3.client("dynamodb"), "stack-ledger")
    cfn = FakeCloudFormation({
        "llmcredits-prod": [{"OutputKey": "ApiUrl", "OutputValue": "https://x"},
                            {"OutputKey": "TableName", "OutputValue": "stack-ledger"}],
        "other": None,
    })
    real_session = ops._session

    class Session:
        def __init__(self, region: str | None) -> None:
            self._real = real_session(region)
            self.region_name = self._real.region_name

        def client(self, service: str, **kwargs: Any) -> Any:
            return cfn if service == "cloudformation" else self._real.client(service, **kwargs)

    monkeypatch.setattr(ops, "_session", Session)
    S = ["--stack", "llmcredits-prod"]

    code, _, _ = run(capsys, "admin", "grant", "nia", "4", "--type", "bonus", "--reason", "r",
                     "--yes", *S)
    assert code == 0
    code, out, _ = run(capsys, "admin", "show", "nia", "--json", *S)
    assert code == 0 and json.loads(out)["balance"] == "4.000000"
    store = DynamoLedgerStore(boto3.client("dynamodb"), "stack-ledger")
    assert store.get_account("nia") is not None  # the stack's table, not TABLE_NAME's
    assert DynamoLedgerStore(boto3.client("dynamodb"), TABLE).get_account("nia") is None
    assert run(capsys, "admin", "reconcile", *S)[0] == 0
    assert cfn.calls == ["llmcredits-prod"] * 3

    code, _, err = run(capsys, "admin", "show", "nia", "--stack", "missing")
    assert code == 1
    one_line_error(err, "stack 'missing' not found in region us-east-1")
    code, _, err = run(capsys, "admin", "show", "nia", "--stack", "other")
    assert code == 1
    one_line_error(err, "has no TableName output")
    code, _, err = run(capsys, "admin", "show", "nia", *S, *T)
    assert code == 2
    one_line_error(err, "not both")
    code, _, err = run(capsys, "admin", "show", "nia")
    assert code == 2
    one_line_error(err, "no table")


def test_resolve_target_with_a_stubbed_describe_stacks() -> None:
    cfn = boto3.client("cloudformation", region_name="eu-west-1")
    stub = Stubber(cfn)
    stub.add_response("describe_stacks", {"Stacks": [{
        "StackName": "s", "CreationTime": datetime(2026, 1, 1, tzinfo=UTC),
        "StackStatus": "UPDATE_COMPLETE",
        "Outputs": [{"OutputKey": "ApiUrl", "OutputValue": "https://x"},
                    {"OutputKey": "TableName", "OutputValue": "s-LedgerTable-ABC"}],
    }]}, {"StackName": "s"})
    stub.activate()

    class Session:
        region_name = None

        def client(self, service: str, **_: Any) -> Any:
            assert service == "cloudformation"
            return cfn

    target = ops.resolve_target(table=None, stack="s", endpoint=None, region="eu-west-1",
                                environ={}, session_factory=lambda _r: Session())
    assert target == ops.Target("s-LedgerTable-ABC", "eu-west-1", None, "s")
    env = {"TABLE_NAME": "t1", "AWS_REGION": "ap-south-1"}
    assert ops.resolve_target(table=None, stack=None, endpoint=None, region=None,
                              environ=env) == ops.Target("t1", "ap-south-1")
    local = ops.resolve_target(table=None, stack=None, endpoint="http://127.0.0.1:8000",
                               region="us-east-1", environ={})
    # the table the local stack creates (stack llmcredits-local, logical id LedgerTable)
    assert local.table == "llmcredits-local-LedgerTable"
    assert local.endpoint == "http://127.0.0.1:8000"


# ------------------------------------------------------------------------ AWS failures


def test_missing_table_and_access_denied_are_one_line(
    aws: None, capsys: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    code, _, err = run(capsys, "admin", "show", "x", "--table", "nope")
    assert code == 1
    one_line_error(err, "table 'nope'", "not found")
    code, _, err = run(capsys, "admin", "export-ledger", "--table", "nope")
    assert code == 1
    one_line_error(err, "not found")

    denied = boto3.client("dynamodb")
    stub = Stubber(denied)
    stub.add_client_error("get_item", "AccessDeniedException",
                          "User: arn:aws:iam::1:user/x is not authorized to perform GetItem")
    stub.activate()
    monkeypatch.setattr(ops, "dynamodb_client", lambda _target: denied)
    code, _, err = run(capsys, "admin", "show", "x", *T)
    assert code == 1
    one_line_error(err, "AWS access denied (AccessDeniedException)", "not authorized")


def test_explain_maps_expected_failures() -> None:
    target = ops.Target("t", "us-east-1")
    creds = ops.explain(NoCredentialsError(), target)
    assert creds is not None and creds.exit_code == 1 and "credentials" in creds.message
    throttled = ClientError({"Error": {"Code": "ThrottlingException", "Message": "slow"}}, "Q")
    failure = ops.explain(throttled, target)
    assert failure is not None and failure.message.startswith("AWS error ThrottlingException")
    assert ops.explain(RuntimeError("a bug"), target) is None  # bugs keep their traceback


def test_reconcile_reports_a_corrupted_balance(aws: None, capsys: Any) -> None:
    ledger().grant("oz", D("5"), EntryType.BONUS, "seed", "test")
    assert run(capsys, "admin", "reconcile", *T, "--recheck-seconds", "0")[0] == 0
    boto3.client("dynamodb").update_item(
        TableName=TABLE, Key=to_item({"PK": user_pk("oz"), "SK": "ACCOUNT"}),
        UpdateExpression="SET balance = balance + :x, available = available + :x",
        ExpressionAttributeValues=to_item({":x": D("1")}))
    code, out, _ = run(capsys, "admin", "reconcile", *T, "--recheck-seconds", "0")
    assert code == 1 and "DISCREPANCY oz: balance is 6" in out


# ------------------------------------------------------------------------ issue 15 defects


def test_since_not_before_until_is_a_clear_usage_error(aws: None, capsys: Any) -> None:
    ledger().grant("oli", D("1"), EntryType.BONUS, "x", "t")
    for since, until in (("2026-02-01", "2026-01-01"), ("2026-01-01", "2026-01-01")):
        code, out, err = run(capsys, "admin", "export-ledger", "--since", since,
                             "--until", until, *T)
        assert code == 2 and out == ""
        one_line_error(err, f"--since {since} is not before --until {until}")


class ClosedPipe(io.StringIO):
    """stdout whose reader left after the first line (`... | head -1`)."""

    def __init__(self) -> None:
        super().__init__()
        self.lines = 0

    def write(self, text: str) -> int:
        self.lines += text.count("\n")
        if self.lines > 1:
            raise BrokenPipeError(32, "Broken pipe")
        return super().write(text)

    def fileno(self) -> int:
        return self._fd

    _fd = -1


def test_export_into_a_closed_pipe_exits_quietly(
    aws: None, capsys: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    for i in range(3):
        ledger().grant("pip", D(i + 1), EntryType.BONUS, "x", "t")
    pipe = ClosedPipe()
    sink = (tmp_path / "sink").open("w")
    pipe._fd = sink.fileno()  # main() points it at /dev/null: not the test's real stdout
    monkeypatch.setattr("sys.stdout", pipe)
    code = cli(["admin", "export-ledger", "--user", "pip", *T])
    sink.close()
    err = capsys.readouterr().err
    assert code == 141 and "Traceback" not in err and "BrokenPipe" not in err
    assert pipe.getvalue().startswith("id,user_id,")


def test_replayed_grant_says_replay_up_front_and_asks_nothing(
    aws: None, capsys: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    grant = ["admin", "grant", "rae", "3", "--type", "bonus", "--reason", "r",
             "--idempotency-key", "rk"]
    code, _, err = run(capsys, *grant, "--yes", *T)
    assert code == 0 and "balance 0.000000" not in err  # a new account: created with 3
    monkeypatch.setattr("sys.stdin", FakeTTY("n\n"))  # would abort if it asked
    code, out, err = run(capsys, *grant, *T)
    assert code == 0
    assert err.startswith("replay: idempotency key 'rk' was already used")
    assert "->" not in err and "Proceed?" not in err  # no preview of a change, no prompt
    assert "replayed" in out and show(capsys, "rae")["balance"] == "3.000000"
    # same for a downward adjustment
    adjust = ["admin", "adjust", "rae", "-1", "--reason", "fix", "--idempotency-key", "ak"]
    assert run(capsys, *adjust, "--yes", *T)[0] == 0
    code, _, err = run(capsys, *adjust, *T)
    assert code == 0 and err.startswith("replay: idempotency key 'ak'")
    assert show(capsys, "rae")["balance"] == "2.000000"
    # a different body under the same key is still a conflict, not a replay
    code, _, err = run(capsys, "admin", "grant", "rae", "4", "--type", "bonus", "--reason",
                       "r", "--idempotency-key", "rk", "--yes", *T)
    assert code == 1
    one_line_error(err, "different request body")


def test_history_names_a_prefixed_model_once(aws: None, capsys: Any) -> None:
    ledger().grant("hal", D("1"), EntryType.BONUS, "x", "t")
    ledger().debit_usage("hal", D("0.01"), provider="openai", model="openai/gpt-4o-mini",
                         tokens=9)
    ledger().debit_usage("hal", D("0.01"), provider="groq", model="llama-3.1-8b", tokens=9)
    code, out, _ = run(capsys, "admin", "history", "hal", *T)
    assert code == 0
    assert "openai/openai/" not in out and " openai/gpt-4o-mini 9 tokens" in out
    assert " groq/llama-3.1-8b 9 tokens" in out
    assert ops.model_label(None, "auto") == "auto"


def test_byok_rotate_with_no_keys_calls_no_kms(
    aws: None, capsys: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_kms(_target: Any) -> Any:
        raise AssertionError("KMS must not be called when no key is stored")

    monkeypatch.setattr(ops, "kms_client", no_kms)
    code, out, err = run(capsys, "admin", "byok-rotate", "--new-kms-key-id", "alias/x", *T)
    assert code == 0 and "no BYOK keys stored" in out and "Proceed" not in err


def test_kms_unreachable_is_reported_as_kms_not_the_table() -> None:
    from botocore.exceptions import EndpointConnectionError

    target = ops.Target("t", "us-east-1", "http://127.0.0.1:8000")
    down = EndpointConnectionError(endpoint_url="https://kms.us-east-1.amazonaws.com/")
    failure = ops.explain(down, target)
    assert failure is not None and failure.message.startswith("cannot reach KMS in region")
    denied = ClientError({"Error": {"Code": "AccessDeniedException", "Message": "no"}},
                         "GenerateDataKey")
    failure = ops.explain(denied, target)
    assert failure is not None and "for KMS in region us-east-1" in failure.message
    table_down = EndpointConnectionError(endpoint_url="http://127.0.0.1:8000/")
    failure = ops.explain(table_down, target)
    assert failure is not None and "cannot reach table 't'" in failure.message


def test_running_local_stack_is_found_through_its_stack_file(tmp_path: Any) -> None:
    import os

    path = tmp_path / "stack.json"
    env = {ops.STACK_FILE_ENV: str(path), "AWS_REGION": "us-east-1"}
    info = {"pid": os.getpid(), "table": "llmcredits-local-LedgerTable", "region": "us-east-1",
            "dynamodb_endpoint": "http://127.0.0.1:1234", "kms_endpoint": "http://127.0.0.1:1234"}
    ops.write_stack_file(path, info)
    target = ops.resolve_target(table=None, stack=None, endpoint=None, region=None, environ=env)
    assert target.local_stack and target.table == "llmcredits-local-LedgerTable"
    assert target.endpoint == target.kms_endpoint == "http://127.0.0.1:1234"
    assert "the running local stack" in target.where
    # flags and TABLE_NAME still win over the local stack
    assert ops.resolve_target(table="x", stack=None, endpoint=None, region=None,
                              environ=env).table == "x"
    # a stack file left by a killed server (its pid is gone) is ignored
    ops.write_stack_file(path, {**info, "pid": 2**22 + 12345})
    with pytest.raises(ops.UsageError, match="make dev"):
        ops.resolve_target(table=None, stack=None, endpoint=None, region=None, environ=env)
    ops.remove_stack_file(path, os.getpid())  # not ours: kept
    assert path.exists()
    ops.remove_stack_file(path, 2**22 + 12345)
    assert not path.exists()
