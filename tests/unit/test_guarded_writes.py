"""The hook for other adapters: GuardedWrite items in reserve/settle/release
transactions (e.g. an API key's limit and spend), and the settlement outbox values."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import boto3
import pytest
from llmcredits.dal.dynamodb_ledger import DynamoLedgerStore
from llmcredits.domain.ledger import (
    Account,
    Condition,
    EntryType,
    GuardedWrite,
    Hold,
    Settlement,
    operation_token,
    plan_settle,
)
from llmcredits.errors import PaymentRequired
from llmcredits.services.ledger import LedgerService
from llmcredits.services.reconcile import reconcile_account

D = Decimal
TABLE = "llmcredits-test"


class KeyLimitReached(PaymentRequired):
    code = "key_limit_reached"


def key_item(client, user="kit"):
    item = client.get_item(TableName=TABLE, Key={"PK": {"S": f"USER#{user}"},
                                                 "SK": {"S": "KEY#k1"}}).get("Item")
    return item


def test_settle_needs_no_balance_guard_and_rejects_more_than_the_hold():
    account = Account.new("u", datetime.now(UTC))
    hold = Hold(id="h" * 32, user_id="u", amount=D("2"), created_at="t")
    mutation = plan_settle(account, hold, D("0.5"))
    assert mutation.expected_balance is None
    assert (mutation.balance_delta, mutation.available_delta) == (D("-0.5"), D("1.5"))
    with pytest.raises(ValueError):
        plan_settle(account, hold, D("2.000001"))


def test_settlement_and_guarded_write_survive_the_outbox_round_trip():
    write = GuardedWrite(owner="u", sort_key="KEY#k1", add={"spent": D("0.25"), "uses": 1},
                         set={"last": "now"},
                         conditions=(Condition("limit_left", ">=", D("0.25")),
                                     Condition("enabled", "exists")))
    settlement = Settlement(entry_id="e1", created_at="2026-12-01T00:00:00.000000Z",
                            cost=D("0.25"), provider="p", model="m", tokens=3,
                            metadata={"a": 1}, extra=(write,))
    back = Settlement.from_json(settlement.to_json())
    assert back == settlement and isinstance(back.extra[0].add["uses"], int)
    with pytest.raises(ValueError):
        GuardedWrite(owner="u", sort_key="x", add={"n": 1}, conditions=(Condition("n", "~"),))


def test_operation_token_is_stable_per_operation_and_fits_dynamodb():
    token = operation_token("settle", "a" * 32, "2026-12", "False")
    assert token == operation_token("settle", "a" * 32, "2026-12", "False")
    assert token != operation_token("settle", "a" * 32, "2027-01", "False")
    assert token != operation_token("release", "a" * 32, "2026-12", "False")
    assert len(token) <= 36


def test_guarded_writes_join_reserve_and_settle_and_their_error_is_raised(aws):
    client = boto3.client("dynamodb")
    ledger = LedgerService(DynamoLedgerStore(client, TABLE), sleep=lambda _s: None)
    ledger.grant("kit", D("10"), EntryType.BONUS, "seed", "ops")
    client.put_item(TableName=TABLE, Item={"PK": {"S": "USER#kit"}, "SK": {"S": "KEY#k1"},
                                           "left": {"N": "1"}, "spent": {"N": "0"}})

    def limit(amount):
        return [GuardedWrite(owner="kit", sort_key="KEY#k1", add={"left": -amount},
                             conditions=(Condition("left", ">=", amount),),
                             error=KeyLimitReached("This API key's limit is reached."))]

    account = ledger.account("kit")
    hold = ledger.reserve(account, D("0.75"), rate_limit=None, extra=limit(D("0.75")))
    assert key_item(client)["left"] == {"N": "0.25"}
    with pytest.raises(KeyLimitReached):
        ledger.reserve(ledger.account("kit"), D("0.5"), rate_limit=None, extra=limit(D("0.5")))
    assert ledger.account("kit").held == D("0.75")  # the refused reserve wrote nothing
    spend = [GuardedWrite(owner="kit", sort_key="KEY#k1",
                          add={"spent": D("0.5"), "left": D("0.25")},
                          conditions=(Condition("spent", "exists"),))]
    settled = ledger.settle(account, hold, D("0.5"), provider="p", model="m", tokens=1,
                            metadata={}, extra=spend)
    assert not settled.pending and settled.entry.balance_after == D("9.5")
    item = key_item(client)
    assert (D(item["spent"]["N"]), D(item["left"]["N"])) == (D("0.5"), D("0.5"))
    assert reconcile_account(ledger._store, "kit") == []
