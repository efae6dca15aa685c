"""Faults on the money path (DESIGN invariant 7), on moto taught ClientRequestToken.

* a committed transaction whose response is lost, beyond botocore's own retries: the
  store re-sends it with the same ClientRequestToken and it is applied once;
* a settle that cannot commit: the settlement recorded on the hold (the outbox) is
  applied once by the settle worker; the sweeper never frees that hold.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import boto3
import pytest
from botocore.config import Config
from llmcredits.dal.dynamodb_ledger import DynamoLedgerStore
from llmcredits.domain.ledger import EntryType
from llmcredits.local.embedded import install_client_request_tokens
from llmcredits.services.ledger import LedgerService
from llmcredits.services.reconcile import reconcile_account

D = Decimal
TABLE = "llmcredits-test"


@pytest.fixture
def faults(aws: None) -> Iterator[dict[str, Any]]:
    """Inject into moto's TransactWriteItems: ``lose`` (commit, then answer 500) or
    ``fail`` (answer 500 without applying) for the next N calls matching ``match``."""
    from moto.core.exceptions import JsonRESTError
    from moto.dynamodb.responses import DynamoHandler

    install_client_request_tokens()
    plan: dict[str, Any] = {"lose": 0, "fail": 0, "match": "", "calls": 0}
    inner = DynamoHandler.transact_write_items

    def server_error() -> JsonRESTError:
        error = JsonRESTError("InternalServerError", "injected fault")
        error.code = 500
        return error

    def faulty(self: Any) -> Any:
        matches = plan["match"] in str(self.body["TransactItems"])
        if matches:
            plan["calls"] += 1
        if matches and plan["fail"] > 0:
            plan["fail"] -= 1
            raise server_error()
        result = inner(self)
        if matches and plan["lose"] > 0:
            plan["lose"] -= 1
            raise server_error()  # committed, but the caller never hears it
        return result

    DynamoHandler.transact_write_items = faulty  # type: ignore[method-assign]
    try:
        yield plan
    finally:
        DynamoHandler.transact_write_items = inner  # type: ignore[method-assign]


def service(clock: Any = None) -> tuple[LedgerService, DynamoLedgerStore]:
    # botocore gives up after 2 tries here, so the store's own re-send is exercised.
    client = boto3.client("dynamodb", config=Config(retries={"mode": "standard",
                                                             "max_attempts": 2}))
    store = DynamoLedgerStore(client, TABLE, sleep=lambda _s: None)
    kwargs = {"clock": clock} if clock else {}
    return LedgerService(store, sleep=lambda _s: None, **kwargs), store


def ledger_total(store: DynamoLedgerStore, user: str) -> Decimal:
    return sum((e.amount for e in store.list_entries(user, 200, None, None).entries), D(0))


def test_grant_whose_response_is_lost_past_botocore_retries_credits_once(faults):
    ledger, store = service()
    ledger.grant("gia", D("10"), EntryType.BONUS, "welcome", "ops")
    faults.update(lose=3, match="LEDGER#")  # commit, then 3 lost answers (2 botocore tries)
    result = ledger.grant("gia", D("5"), EntryType.BONUS, "again", "ops")
    assert result.status == 201 and faults["calls"] >= 4
    assert store.get_account("gia").balance == D("15")
    assert len(store.list_entries("gia", 200, None, None).entries) == 2
    assert reconcile_account(store, "gia") == []


def test_settle_whose_response_is_lost_is_charged_once_and_answered(faults):
    ledger, store = service()
    ledger.grant("sam", D("10"), EntryType.BONUS, "welcome", "ops")
    account = ledger.account("sam")
    hold = ledger.reserve(account, D("2"), rate_limit=None)
    faults.update(lose=3, match="HOLD#")
    settled = ledger.settle(account, hold, D("0.5"), provider="p", model="m", tokens=10,
                            metadata={})
    assert not settled.pending and settled.entry.balance_after == D("9.5")
    after = store.get_account("sam")
    assert (after.balance, after.held) == (D("9.5"), D(0))
    usage = store.list_entries("sam", 200, None, "usage").entries
    assert [e.amount for e in usage] == [D("-0.5")] and usage[0].balance_after == D("9.5")
    assert reconcile_account(store, "sam") == []


def test_settle_that_cannot_commit_is_applied_once_by_the_worker(faults):
    ledger, store = service()
    ledger.grant("wes", D("10"), EntryType.BONUS, "welcome", "ops")
    account = ledger.account("wes")
    hold = ledger.reserve(account, D("2"), rate_limit=None)
    faults.update(fail=100, match="HOLD#")  # DynamoDB refuses every settle for now
    settled = ledger.settle(account, hold, D("0.75"), provider="p", model="m", tokens=10,
                            metadata={})
    assert settled.pending and settled.entry.balance_after is None
    assert store.get_account("wes").balance == D("10")  # not charged yet ...
    recorded = store.get_hold("wes", hold.id)
    assert recorded is not None and recorded.settlement is not None  # ... but durable
    # The sweeper, even past its cutoff, never frees a hold whose answer exists.
    later = datetime.now(UTC) + timedelta(minutes=10)
    sweeper, _ = service(clock=lambda: later)
    faults.update(fail=0)
    swept = sweeper.sweep_holds(180)
    assert swept.released == [] and [h.id for h in swept.settled] == [hold.id]
    report = sweeper.apply_pending_settlements(20)  # nothing left; a second run is a no-op
    assert (report.applied, report.pending) == (0, 0)
    after = store.get_account("wes")
    assert (after.balance, after.held) == (D("9.25"), D(0))
    usage = store.list_entries("wes", 200, None, "usage").entries
    assert [(e.amount, e.balance_after) for e in usage] == [(D("-0.75"), D("9.25"))]
    assert reconcile_account(store, "wes") == []


def test_settle_worker_applies_a_recorded_settlement_and_reports_its_age(faults):
    ledger, store = service()
    ledger.grant("kai", D("10"), EntryType.BONUS, "welcome", "ops")
    account = ledger.account("kai")
    hold = ledger.reserve(account, D("2"), rate_limit=None)
    faults.update(fail=100, match="HOLD#")
    assert ledger.settle(account, hold, D("1"), provider="p", model="m", tokens=1,
                         metadata={}).pending
    faults.update(fail=0)
    later = datetime.now(UTC) + timedelta(seconds=90)
    worker, _ = service(clock=lambda: later)
    report = worker.apply_pending_settlements(20)
    assert (report.applied, report.pending, report.older_than_minute) == (1, 0, 1)
    assert report.oldest_seconds >= 89
    assert worker.apply_pending_settlements(20).applied == 0
    assert store.get_account("kai").balance == D("9")
    assert reconcile_account(store, "kai") == []


def test_release_refuses_a_hold_with_a_recorded_settlement(faults):
    from llmcredits.domain.ports import HoldAnswered

    ledger, store = service()
    ledger.grant("rio", D("10"), EntryType.BONUS, "welcome", "ops")
    account = ledger.account("rio")
    hold = ledger.reserve(account, D("2"), rate_limit=None)
    faults.update(fail=100, match="LEDGER#")
    ledger.settle(account, hold, D("1"), provider="p", model="m", tokens=1, metadata={})
    faults.update(fail=0)
    with pytest.raises(HoldAnswered):
        ledger.release(hold)
    assert store.get_account("rio").held == D("2")


def test_client_request_token_makes_a_repeat_a_success_without_applying(aws):
    install_client_request_tokens()
    client = boto3.client("dynamodb")
    items = [{"Update": {"TableName": TABLE, "Key": {"PK": {"S": "T"}, "SK": {"S": "T"}},
                         "UpdateExpression": "ADD n :one",
                         "ExpressionAttributeValues": {":one": {"N": "1"}}}}]
    for _ in range(2):
        client.transact_write_items(TransactItems=items, ClientRequestToken="tok-a")
    item = client.get_item(TableName=TABLE, Key={"PK": {"S": "T"}, "SK": {"S": "T"}})["Item"]
    assert item["n"] == {"N": "1"}
    items[0]["Update"]["ExpressionAttributeValues"][":one"] = {"N": "2"}
    with pytest.raises(client.exceptions.IdempotentParameterMismatchException):
        client.transact_write_items(TransactItems=items, ClientRequestToken="tok-a")
    client.transact_write_items(TransactItems=items, ClientRequestToken="tok-b")
    item = client.get_item(TableName=TABLE, Key={"PK": {"S": "T"}, "SK": {"S": "T"}})["Item"]
    assert item["n"] == {"N": "3"}




def test_the_settle_worker_moves_an_api_keys_spend_too(faults):
    """The key's part of a settle is stored with the settlement: a settlement the
    request could not commit still moves the key's held, usage and headroom later."""
    from llmcredits.dal.dynamodb_api_keys import DynamoApiKeyStore
    from llmcredits.domain.api_keys import KeyCredential, secret_hash
    from llmcredits.domain.pricing import catalog
    from llmcredits.services.api_keys import ApiKeysService, KeySettings

    ledger, store = service()
    keys = DynamoApiKeyStore(boto3.client("dynamodb"), TABLE)
    svc = ApiKeysService(keys, ensure_account=ledger.account,
                         tier_rate_limit=catalog().rate_limit,
                         power_levels=list(catalog().power_levels))
    ledger.grant("kwk", D("10"), EntryType.BONUS, "welcome", "ops")
    secret, key = svc.create("kwk", KeySettings(limit=D("5")))
    extras = svc.chat_extras("kwk", KeyCredential(key.id, secret_hash(secret)))
    account = ledger.account("kwk")
    hold = ledger.reserve(account, D("2"), rate_limit=None, key_id=key.id,
                          extra=lambda fresh: extras.on_reserve(fresh, D("2")))
    faults.update(fail=100, match="HOLD#")
    assert ledger.settle(account, hold, D("1"), provider="p", model="m", tokens=1,
                         metadata={}, extra=extras.on_settle(hold, D("1"))).pending
    faults.update(fail=0)
    stored = keys.get_key("kwk", key.id)
    assert stored is not None and (stored.held, stored.usage) == (D("2"), D(0))
    later = datetime.now(UTC) + timedelta(seconds=90)
    worker, _ = service(clock=lambda: later)
    assert worker.apply_pending_settlements(20).applied == 1
    stored = keys.get_key("kwk", key.id)
    assert stored is not None
    assert (stored.held, stored.usage, stored.period_spent, stored.headroom) == (
        D(0), D(1), D(1), D(4))
    [entry] = store.list_entries("kwk", 10, None, "usage", key.id).entries
    assert entry.key_id == key.id and entry.amount == D(-1)
    assert reconcile_account(store, "kwk") == []


def test_the_sweeper_gives_a_dead_requests_hold_back_to_its_api_key(faults):
    """A request that died after its reserve: the sweeper's release applies the key's
    release writes kept on the hold, so the key's headroom is not lost."""
    from llmcredits.dal.dynamodb_api_keys import DynamoApiKeyStore
    from llmcredits.domain.api_keys import KeyCredential, secret_hash
    from llmcredits.domain.pricing import catalog
    from llmcredits.services.api_keys import ApiKeysService, KeySettings

    ledger, _ = service()
    keys = DynamoApiKeyStore(boto3.client("dynamodb"), TABLE)
    svc = ApiKeysService(keys, ensure_account=ledger.account,
                         tier_rate_limit=catalog().rate_limit,
                         power_levels=list(catalog().power_levels))
    ledger.grant("kdd", D("10"), EntryType.BONUS, "welcome", "ops")
    secret, key = svc.create("kdd", KeySettings(limit=D("5")))
    extras = svc.chat_extras("kdd", KeyCredential(key.id, secret_hash(secret)))
    ledger.reserve(ledger.account("kdd"), D("2"), rate_limit=None, key_id=key.id,
                   extra=lambda fresh: extras.on_reserve(fresh, D("2")),
                   release_extra=extras.on_release)
    later = datetime.now(UTC) + timedelta(hours=1)
    sweeper, _ = service(clock=lambda: later)
    assert len(sweeper.sweep_holds(180).released) == 1
    stored = keys.get_key("kdd", key.id)
    assert stored is not None and (stored.held, stored.headroom) == (D(0), D(5))
