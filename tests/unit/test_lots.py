"""Credit lots (DESIGN section 7) on the embedded store (moto): spending order, expiry
exactly once, holds open at expiry, accounts from before lots, tier promotion and
receipts. The same expiry scenario runs on DynamoDB Local in
tests/integration/test_lots_concurrency.py."""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import boto3
import pytest
from llmcredits.dal.dynamodb_ledger import DynamoLedgerStore
from llmcredits.domain.ledger import (
    Account,
    EntryType,
    Lot,
    LotSource,
    Tier,
    drawn,
    plan_credit,
    promoted_tier,
    spending_order,
)
from llmcredits.domain.ports import StaleRead
from llmcredits.errors import InvalidRequest
from llmcredits.services.ledger import LedgerService
from llmcredits.services.reconcile import reconcile_account

from tests.support import event, invoke

D = Decimal
ADMIN = {"sub": "ops", "scopes": ["llmcredits/admin"]}
START = datetime(2026, 11, 27, 8, 0, tzinfo=UTC)
PROMOTION = ((Tier.STARTER, D("5.00")), (Tier.PROFESSIONAL, D("100.00")))


class Clock:
    def __init__(self, now: datetime = START) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> None:
        self.now += timedelta(**delta)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def ledger(aws: None, clock: Clock) -> LedgerService:
    store = DynamoLedgerStore(boto3.client("dynamodb"), os.environ["TABLE_NAME"])
    return LedgerService(store, clock=clock, sleep=lambda _s: None,
                         promotion=lambda: PROMOTION)


def remaining(ledger: LedgerService, user: str) -> list[tuple[str, Decimal]]:
    """(source and expiry, remaining) of the user's lots, in spending order."""
    return [(f"{lot.source.value}@{lot.expires_at or 'never'}", lot.remaining)
            for lot in ledger.account(user).current_lots]


def all_entries(ledger: LedgerService, user: str) -> list[Any]:
    return list(ledger.history(user, 200, None, None).entries)


def books_balance(ledger: LedgerService, user: str) -> None:
    """Invariant 2 plus the lots check, as `llmcredits admin reconcile` runs them."""
    account = ledger.account(user)
    assert sum(e.amount for e in all_entries(ledger, user)) == account.balance
    assert reconcile_account(ledger._store, user) == []
    assert account.available >= 0


def spend(ledger: LedgerService, user: str, amount: str) -> None:
    """A chat request's hold and settle (the guard-free path)."""
    account = ledger.account(user)
    hold = ledger.reserve(account, D(amount), rate_limit=None)
    ledger.settle(ledger.account(user), hold, D(amount), provider="p", model="m",
                  tokens=1, metadata={})


def bonus(ledger: LedgerService, user: str, amount: str, *, seconds: float | None = None,
          days: int | None = None) -> None:
    expires = None if seconds is None else ledger._clock() + timedelta(seconds=seconds)
    ledger.grant(user, D(amount), EntryType.BONUS, "promo", actor="ops", expires_at=expires,
                 expires_in_days=days)


# -- the pure rules ------------------------------------------------------------------------


def lot(lot_id: str, amount: str, expires: str | None, created: str = "t0") -> Lot:
    return Lot(lot_id, D(amount), D(amount), LotSource.BONUS, created, expires)


def test_spending_order_is_soonest_expiry_first_and_never_expiring_last() -> None:
    lots = [lot("never-old", "1", None, "t1"), lot("late", "1", "2027"),
            lot("never-new", "1", None, "t2"), lot("soon", "1", "2026")]
    assert [x.id for x in sorted(lots, key=spending_order)] == [
        "soon", "late", "never-old", "never-new"]
    after, uncovered = drawn(lots, D("2.5"))
    assert [(x.id, x.remaining) for x in after] == [
        ("soon", 0), ("late", 0), ("never-old", D("0.5")), ("never-new", 1)]
    assert uncovered == 0
    assert drawn(lots, D(6))[1] == D(2)  # beyond every lot: a negative balance


def test_promotion_needs_the_crossing_and_never_demotes() -> None:
    assert promoted_tier(Tier.FREE, D(0), D(5), PROMOTION) is Tier.STARTER
    assert promoted_tier(Tier.FREE, D(0), D("4.99"), PROMOTION) is Tier.FREE
    assert promoted_tier(Tier.FREE, D(0), D(150), PROMOTION) is Tier.PROFESSIONAL
    assert promoted_tier(Tier.ENTERPRISE, D(0), D(150), PROMOTION) is Tier.ENTERPRISE
    # Cumulative 120 already, an operator put the account on starter: no new crossing.
    assert promoted_tier(Tier.STARTER, D(120), D(125), PROMOTION) is Tier.STARTER


def test_a_credit_is_a_lot_and_a_lot_must_expire_after_it_is_credited() -> None:
    account = Account.new("u", START)
    mutation = plan_credit(account, D(10), lot_id="e1", created_at="2026-11-27T08:00:00Z",
                           source=LotSource.BONUS, expires_at="2026-12-01T00:00:00Z")
    assert mutation.lots is not None
    assert [(x.id, x.remaining, x.expires_at) for x in mutation.lots.lots] == [
        ("e1", D(10), "2026-12-01T00:00:00Z")]
    assert mutation.lots.next_expiry == "2026-12-01T00:00:00Z"
    with pytest.raises(ValueError):
        plan_credit(account, D(10), lot_id="e2", created_at="2026-11-27T08:00:00Z",
                    source=LotSource.BONUS, expires_at="2026-11-27T07:00:00Z")


# -- spending order on the store --------------------------------------------------------


def test_usage_spends_the_soonest_expiring_lot_first_and_never_expiring_last(ledger):
    ledger.grant("u", D(5), EntryType.ADJUSTMENT, "never expires", actor="ops")
    bonus(ledger, "u", "3", days=30)
    bonus(ledger, "u", "2", days=7)
    spend(ledger, "u", "1.5")  # the settle path (no guard on the balance)
    assert [r for _, r in remaining(ledger, "u")] == [D("0.5"), D(3), D(5)]
    ledger.debit_usage("u", D("1"))  # the straight-from-balance path
    assert [r for _, r in remaining(ledger, "u")] == [D("2.5"), D(5)]
    spend(ledger, "u", "3")
    assert remaining(ledger, "u") == [("adjustment@never", D("4.5"))]
    books_balance(ledger, "u")


def test_a_new_lot_never_takes_over_what_was_spent_before_it(ledger):
    """Spend is attributed when it happens: a bonus granted after usage from a
    non-expiring lot starts full (the draw is materialized by the grant)."""
    ledger.grant("u", D(10), EntryType.ADJUSTMENT, "seed", actor="ops")
    spend(ledger, "u", "4")
    bonus(ledger, "u", "10", days=7)
    assert [r for _, r in remaining(ledger, "u")] == [D(10), D(6)]
    books_balance(ledger, "u")


def test_clawbacks_take_from_the_lots_spent_last(ledger):
    """A refund of a purchase leaves an expiring bonus expiring (it takes the
    non-expiring purchase credits first), and only what no lot covers goes negative."""
    ledger.credit("u", D(10), EntryType.PURCHASE, metadata={}, source=LotSource.PURCHASE)
    bonus(ledger, "u", "10", days=7)
    ledger.clawback("u", D(12), EntryType.REFUND, metadata={})
    assert [(s.split("@")[0], r) for s, r in remaining(ledger, "u")] == [("bonus", D(8))]
    ledger.clawback("u", D(10), EntryType.CHARGEBACK, metadata={})
    assert remaining(ledger, "u") == [] and ledger.account("u").balance == D(-2)
    # A later credit covers the debt first (balance 3 = the lot's remaining).
    ledger.credit("u", D(5), EntryType.REINSTATEMENT, metadata={},
                  source=LotSource.REINSTATEMENT)
    assert remaining(ledger, "u") == [("reinstatement@never", D(3))]
    books_balance(ledger, "u")


# -- expiry -------------------------------------------------------------------------------


def test_a_bonus_expires_once_with_what_is_left_of_it(ledger, clock):
    bonus(ledger, "u", "10", seconds=3)
    spend(ledger, "u", "3")
    assert ledger.expire_due_lots().expired == []  # not due yet
    clock.advance(seconds=4)
    first = ledger.expire_due_lots()
    second = ledger.expire_due_lots()
    assert [e.amount for e in first.expired] == [D(-7)]
    assert second.expired == [] and second.deferred == []
    expiries = [e for e in all_entries(ledger, "u") if e.type is EntryType.EXPIRY]
    assert [(e.amount, e.balance_after) for e in expiries] == [(D(-7), D(0))]
    assert expiries[0].metadata["lot_source"] == "bonus"
    account = ledger.account("u")
    assert (account.balance, account.available, account.current_lots) == (0, 0, ())
    page = ledger.history("u", 10, None, EntryType.EXPIRY)
    assert [e.id for e in page.entries] == [expiries[0].id]
    books_balance(ledger, "u")


def test_a_hold_open_at_expiry_keeps_the_lot_spendable_until_it_settles(ledger, clock):
    bonus(ledger, "u", "10", seconds=3)
    spend(ledger, "u", "3")
    account = ledger.account("u")
    hold = ledger.reserve(account, D(2), rate_limit=None)  # in flight at expiry time
    clock.advance(seconds=4)
    deferred = ledger.expire_due_lots()
    assert deferred.expired == [] and [w.lot.remaining for w in deferred.deferred] == [D(7)]
    assert ledger.account("u").balance == D(7)
    ledger.settle(ledger.account("u"), hold, D("1.5"), provider="p", model="m", tokens=1,
                  metadata={})
    assert remaining(ledger, "u")[0][1] == D("5.5")  # the charge came out of the bonus
    after = ledger.expire_due_lots()
    assert [e.amount for e in after.expired] == [D("-5.5")]
    assert ledger.expire_due_lots().expired == []
    account = ledger.account("u")
    assert (account.balance, account.held, account.available) == (0, 0, 0)
    books_balance(ledger, "u")


def test_a_hold_open_at_expiry_with_other_credits_still_defers_only_that_lot(ledger, clock):
    ledger.grant("u", D(100), EntryType.ADJUSTMENT, "never expires", actor="ops")
    bonus(ledger, "u", "10", seconds=3)
    hold = ledger.reserve(ledger.account("u"), D(2), rate_limit=None)
    clock.advance(seconds=4)
    assert ledger.expire_due_lots().expired == []
    ledger.release(hold)
    assert [e.amount for e in ledger.expire_due_lots().expired] == [D(-10)]
    assert remaining(ledger, "u") == [("adjustment@never", D(100))]
    books_balance(ledger, "u")


def test_expiry_never_takes_available_below_zero(ledger, clock):
    """A hold made after the lot's expiry (so not deferring it) that reserves the lot's
    own credits: expiring them now would leave available < 0, so it waits."""
    bonus(ledger, "u", "10", seconds=3)
    clock.advance(seconds=4)
    hold = ledger.reserve(ledger.account("u"), D(4), rate_limit=None)
    report = ledger.expire_due_lots()
    assert report.expired == [] and len(report.deferred) == 1
    assert ledger.account("u").available == D(6)
    ledger.settle(ledger.account("u"), hold, D(1), provider="p", model="m", tokens=1,
                  metadata={})
    assert [e.amount for e in ledger.expire_due_lots().expired] == [D(-9)]
    books_balance(ledger, "u")


def test_a_due_lot_spent_meanwhile_is_dropped_without_an_entry(ledger, clock):
    bonus(ledger, "u", "2", seconds=3)
    ledger.grant("u", D(5), EntryType.ADJUSTMENT, "rest", actor="ops")
    spend(ledger, "u", "2")  # the bonus is gone; the index still lists its expiry
    clock.advance(seconds=4)
    report = ledger.expire_due_lots()
    assert report.expired == [] and report.tidied == 1
    assert ledger._store.accounts_with_expiry_before("9999", inclusive=True) == []
    assert not [e for e in all_entries(ledger, "u") if e.type is EntryType.EXPIRY]
    books_balance(ledger, "u")


def test_lots_expiring_before_lists_what_is_left_of_each(ledger, clock):
    bonus(ledger, "a", "10", days=3)
    bonus(ledger, "a", "4", days=20)
    bonus(ledger, "b", "6", days=5)
    ledger.grant("c", D(50), EntryType.BONUS, "never", actor="ops")
    spend(ledger, "a", "1")
    found = ledger.lots_expiring_before(clock() + timedelta(days=7))
    assert sorted((f.user_id, f.lot.remaining) for f in found) == [("a", D(9)), ("b", D(6))]


def test_a_stale_lot_list_is_refused_even_when_the_balance_is_back(ledger):
    """The list's version guards it: credit +5 then usage -5 restores the balance, yet a
    change planned from the read before them must not overwrite the new list."""
    ledger.grant("u", D(10), EntryType.ADJUSTMENT, "seed", actor="ops")
    stale = ledger.account("u")
    bonus(ledger, "u", "5", days=7)
    ledger.debit_usage("u", D(5))
    assert ledger.account("u").balance == stale.balance
    mutation = plan_credit(stale, D(1), lot_id="x", created_at="2026-11-27T08:00:01Z",
                           source=LotSource.BONUS)
    with pytest.raises(StaleRead):
        ledger._store.commit("u", mutation, None, "now", token="stale-test")


def test_reconcile_reports_lots_that_do_not_add_up_to_the_balance(ledger):
    ledger.grant("u", D(10), EntryType.ADJUSTMENT, "seed", actor="ops")
    boto3.client("dynamodb").update_item(
        TableName=os.environ["TABLE_NAME"], Key={"PK": {"S": "USER#u"}, "SK": {"S": "ACCOUNT"}},
        UpdateExpression="SET lot_draw = :d", ExpressionAttributeValues={":d": {"N": "1"}})
    found = reconcile_account(ledger._store, "u")
    assert [(d.what, d.stored, d.expected) for d in found] == [("lots remaining", D(9), D(10))]


# -- accounts from before lots ----------------------------------------------------------


def test_an_account_from_before_lots_reads_as_one_non_expiring_lot(ledger, clock):
    ledger.grant("old", D(20), EntryType.ADJUSTMENT, "seed", actor="ops")
    boto3.client("dynamodb").update_item(  # as every account was before this change
        TableName=os.environ["TABLE_NAME"],
        Key={"PK": {"S": "USER#old"}, "SK": {"S": "ACCOUNT"}},
        UpdateExpression="REMOVE lots, lot_draw, lots_version, paid_total, next_expiry, "
                         "lot_shard")
    assert remaining(ledger, "old") == [("migrated@never", D(20))]
    spend(ledger, "old", "2")
    assert remaining(ledger, "old") == [("migrated@never", D(18))]
    books_balance(ledger, "old")
    bonus(ledger, "old", "5", seconds=3)  # the first rewrite stores the migrated lot
    spend(ledger, "old", "1")
    assert [r for _, r in remaining(ledger, "old")] == [D(4), D(18)]
    clock.advance(seconds=4)
    assert [e.amount for e in ledger.expire_due_lots().expired] == [D(-4)]
    assert remaining(ledger, "old") == [("migrated@never", D(18))]
    books_balance(ledger, "old")


# -- grants with an expiry, through the admin route and GET /credits ---------------------


def grant_route(user: str, body: dict[str, Any], key: str | None = None):
    headers = {"Idempotency-Key": key} if key else {}
    return invoke("admin_user_credits_post",
                  event("POST", f"/api/v1/llm/admin/users/{user}/credits", body=body,
                        headers=headers, path_params={"user_id": user}, **ADMIN))


def test_admin_grant_takes_an_expiry_and_get_credits_shows_the_lots(aws):
    status, _, body = grant_route("g", {"amount": "10.00", "expires_in_days": 7}, key="k1")
    assert status == 201, body
    assert grant_route("g", {"amount": "10.00", "expires_in_days": 7}, key="k1")[0] == 201
    status, _, body = grant_route("g", {"amount": "4.00", "type": "refund",
                                        "expires_at": "2030-01-01T00:00:00+01:00"})
    assert status == 201, body
    grant_route("g", {"amount": "1.50"})
    status, _, view = invoke("credits_get", event("GET", "/api/v1/llm/credits", sub="g"))
    assert status == 200, view
    assert view["balance"] == "15.500000"
    assert [(x["source"], x["amount"], x["remaining"]) for x in view["lots"]] == [
        ("bonus", "10.000000", "10.000000"), ("refund", "4.000000", "4.000000"),
        ("bonus", "1.500000", "1.500000")]
    assert view["lots"][1]["expires_at"] == "2029-12-31T23:00:00.000000Z"
    assert view["lots"][2]["expires_at"] is None
    status, _, admin_view = invoke("admin_user_get", event(
        "GET", "/api/v1/llm/admin/users/g", path_params={"user_id": "g"}, **ADMIN))
    assert status == 200 and admin_view["lots"] == view["lots"]


@pytest.mark.parametrize("body, param", [
    ({"amount": "1", "expires_at": "2020-01-01T00:00:00Z"}, "expires_at"),
    ({"amount": "1", "expires_at": "2099-01-01T00:00:00"}, "expires_at"),
    ({"amount": "1", "expires_in_days": 0}, "expires_in_days"),
    ({"amount": "1", "expires_in_days": 3}, None),  # with expires_at below: both
])
def test_bad_expiries_are_400_and_grant_nothing(aws, body, param):
    if param is None:
        body = {**body, "expires_at": "2099-01-01T00:00:00Z"}
    status, _, answer = grant_route("bad", body)
    assert status == 400, answer
    assert set(answer["error"]) == {"message", "type", "code", "param"}
    status, _, _ = invoke("admin_user_get", event(
        "GET", "/api/v1/llm/admin/users/bad", path_params={"user_id": "bad"}, **ADMIN))
    assert status == 404  # nothing was written, not even the account


def test_grant_expiry_is_checked_by_the_service(ledger):
    with pytest.raises(InvalidRequest):
        bonus(ledger, "u", "1", seconds=-1)
    with pytest.raises(InvalidRequest):
        bonus(ledger, "u", "1", days=3651)


# -- the scheduled function ---------------------------------------------------------------


def test_the_credit_expiry_function_expires_a_due_lot(aws):
    from llmcredits.openapi_doc import import_handler

    from tests.support import FUNCTIONS, ROOT, Context

    status, _, body = grant_route("f", {"amount": "3.00",
                                        "expires_at": "2030-01-01T00:00:00Z"})
    assert status == 201, body
    # Move the lot's expiry into the past as time would (the item, as stored).
    client = boto3.client("dynamodb")
    key = {"PK": {"S": "USER#f"}, "SK": {"S": "ACCOUNT"}}
    item = client.get_item(TableName=os.environ["TABLE_NAME"], Key=key)["Item"]
    item["lots"]["L"][0]["M"]["expires_at"] = {"S": "2020-01-01T00:00:00.000000Z"}
    item["next_expiry"] = {"S": "2020-01-01T00:00:00.000000Z"}
    client.put_item(TableName=os.environ["TABLE_NAME"], Item=item)
    handler = import_handler(FUNCTIONS / "credit_expiry" / "app.py").lambda_handler
    sample = (ROOT / "events" / "credit_expiry.json").read_text()
    import json

    assert handler(json.loads(sample), Context()) == {"expired": 1, "deferred": 0, "tidied": 0,
                                                      "expiring_alerts": 0}
    assert handler(json.loads(sample), Context()) == {"expired": 0, "deferred": 0, "tidied": 0,
                                                      "expiring_alerts": 0}
    _, _, view = invoke("credits_get", event("GET", "/api/v1/llm/credits", sub="f"))
    assert view["balance"] == "0.000000" and view["lots"] == []


def test_the_credit_expiry_function_warns_once_of_a_lot_expiring_within_7_days(aws):
    import json

    from llmcredits.openapi_doc import import_handler

    from tests.support import FUNCTIONS, ROOT, Context

    soon = (datetime.now(UTC) + timedelta(days=3)).strftime("%Y-%m-%dT%H:%M:%SZ")
    later = (datetime.now(UTC) + timedelta(days=30)).strftime("%Y-%m-%dT%H:%M:%SZ")
    for user, expires in (("w", soon), ("x", later)):
        status, _, body = grant_route(user, {"amount": "4.00", "expires_at": expires})
        assert status == 201, body
    handler = import_handler(FUNCTIONS / "credit_expiry" / "app.py").lambda_handler
    sample = json.loads((ROOT / "events" / "credit_expiry.json").read_text())
    assert handler(sample, Context())["expiring_alerts"] == 1
    assert handler(sample, Context())["expiring_alerts"] == 0  # once per lot
    client = boto3.client("dynamodb")
    for user, count in (("w", 1), ("x", 0)):
        items = client.query(
            TableName=os.environ["TABLE_NAME"],
            KeyConditionExpression="PK = :pk AND begins_with(SK, :sk)",
            ExpressionAttributeValues={":pk": {"S": f"USER#{user}"},
                                       ":sk": {"S": "ALERTEVENT#"}})["Items"]
        assert [i["type"]["S"] for i in items] == ["credits.expiring"] * count


# -- tier promotion -----------------------------------------------------------------------


def test_a_first_purchase_over_the_threshold_promotes_free_to_starter(ledger):
    ledger.account("p")
    result = ledger.credit("p", D(25), EntryType.PURCHASE, metadata={},
                           source=LotSource.PURCHASE)
    account = ledger.account("p")
    assert (account.tier, account.paid_total) == (Tier.STARTER, D(25))
    assert result.body["balance"] == "25.000000"
    ledger.credit("p", D(80), EntryType.PURCHASE, metadata={}, source=LotSource.AUTO_TOPUP)
    assert ledger.account("p").tier is Tier.PROFESSIONAL  # cumulative 105


def test_no_automatic_demotion_and_an_operators_lower_tier_stays(ledger):
    ledger.credit("p", D(150), EntryType.PURCHASE, metadata={}, source=LotSource.PURCHASE)
    assert ledger.account("p").tier is Tier.PROFESSIONAL
    ledger.clawback("p", D(150), EntryType.REFUND, metadata={})
    assert ledger.account("p").tier is Tier.PROFESSIONAL  # never demoted automatically
    ledger.set_tier("p", Tier.STARTER)  # an admin PATCH to a lower tier
    ledger.credit("p", D(5), EntryType.PURCHASE, metadata={}, source=LotSource.PURCHASE)
    assert ledger.account("p").tier is Tier.STARTER


def test_bonuses_do_not_count_as_paid(ledger):
    ledger.grant("p", D(500), EntryType.BONUS, "promo", actor="ops")
    ledger.credit("p", D(3), EntryType.REINSTATEMENT, metadata={},
                  source=LotSource.REINSTATEMENT)
    account = ledger.account("p")
    assert (account.tier, account.paid_total) == (Tier.FREE, D(0))


def test_a_tier_changed_by_an_operator_after_the_read_is_not_overwritten(ledger):
    ledger.account("p")
    stale = ledger.account("p")
    ledger.set_tier("p", Tier.ENTERPRISE)
    mutation = plan_credit(stale, D(10), lot_id="x", created_at="2026-11-27T08:00:01Z",
                           source=LotSource.PURCHASE, promotion=PROMOTION)
    assert mutation.tier_change == (Tier.FREE, Tier.STARTER)
    with pytest.raises(StaleRead):
        ledger._store.commit("p", mutation, None, "now", token="tier-test")
    assert ledger.account("p").tier is Tier.ENTERPRISE


# -- purchases through the webhook: receipt, promotion, expiry parameter --------------------


@pytest.fixture
def stripe(aws, monkeypatch):
    from llmcredits import bootstrap

    from tests.fakes.stripe_api import FakeStripe

    with FakeStripe() as fake:
        monkeypatch.setenv("STRIPE_SECRET_KEY", "sk_test_lots")
        monkeypatch.setenv("STRIPE_API_BASE", fake.url)
        monkeypatch.setenv("STRIPE_WEBHOOK_SECRET", "whsec_lots")
        monkeypatch.delenv("PURCHASE_EXPIRES_IN_DAYS", raising=False)
        bootstrap.reset()
        yield fake
        bootstrap.reset()


def buy(stripe: Any, user: str, amount: str) -> dict[str, Any]:
    from tests.fakes.stripe_api import event as stripe_event
    from tests.fakes.stripe_api import payload, sign, webhook_request

    status, _, body = invoke("credits_purchase_post", event(
        "POST", "/api/v1/llm/credits/purchase", sub=user,
        body={"amount": amount, "success_url": "http://localhost/ok",
              "cancel_url": "http://localhost/no"}))
    assert status == 201, body
    session, _ = stripe.pay(body["session_id"])
    raw = payload(stripe_event("checkout.session.completed", session))
    status, _, answer = invoke("stripe_webhook",
                               webhook_request(raw, sign(raw, "whsec_lots")))
    assert status == 200 and answer["outcome"] == "credited", answer
    return session


def test_a_purchase_records_its_receipt_and_promotes_through_the_catalog(stripe):
    session = buy(stripe, "buyer", "25.00")
    _, _, page = invoke("credits_history_get",
                        event("GET", "/api/v1/llm/credits/history", sub="buyer"))
    (item,) = page["items"]
    charge_id = next(p.charge_id for p in stripe._payments.values()
                     if p.payment_intent == session["payment_intent"])
    assert item["type"] == "purchase"
    assert item["receipt_url"] == stripe.receipt_url(charge_id)
    assert any(r.path == f"/v1/payment_intents/{session['payment_intent']}"
               for r in stripe.requests)
    _, _, view = invoke("credits_get", event("GET", "/api/v1/llm/credits", sub="buyer"))
    assert view["tier"] == "starter"  # catalog default: starter after 5.00 paid
    assert [(x["source"], x["expires_at"]) for x in view["lots"]] == [("purchase", None)]


def test_purchases_expire_only_when_the_deployment_says_so(stripe, monkeypatch):
    from llmcredits import bootstrap

    monkeypatch.setenv("PURCHASE_EXPIRES_IN_DAYS", "30")
    bootstrap.reset()
    buy(stripe, "buyer", "10.00")
    _, _, view = invoke("credits_get", event("GET", "/api/v1/llm/credits", sub="buyer"))
    (lot_view,) = view["lots"]
    expires = datetime.strptime(lot_view["expires_at"], "%Y-%m-%dT%H:%M:%S.%fZ")
    assert timedelta(days=29) < expires.replace(tzinfo=UTC) - datetime.now(UTC) \
        <= timedelta(days=30)


def test_a_receipt_lookup_that_fails_still_credits(stripe):
    stripe.fail_with = None
    original = stripe._payment_intent

    def broken(*_a: Any, **_k: Any) -> Any:
        from llmcredits.local.dev_stripe import DevStripeError, stripe_error

        raise DevStripeError(500, stripe_error("api_error", "down"))

    stripe._payment_intent = broken
    try:
        buy(stripe, "buyer", "10.00")
    finally:
        stripe._payment_intent = original
    _, _, page = invoke("credits_history_get",
                        event("GET", "/api/v1/llm/credits/history", sub="buyer"))
    assert page["items"][0]["receipt_url"] is None
