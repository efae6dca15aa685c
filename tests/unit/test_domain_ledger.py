"""The pure ledger rules (no AWS)."""

from dataclasses import replace
from datetime import UTC, datetime
from decimal import Decimal

import pytest
from llmcredits.domain.ledger import (
    Account,
    LotSource,
    month_of,
    plan_clawback,
    plan_credit,
    plan_usage_debit,
    rolled_over,
    with_monthly_cap,
)
from llmcredits.errors import InsufficientCredits, MonthlyCapReached

NOW = datetime(2026, 11, 27, 8, 0, tzinfo=UTC)
D = Decimal


def account(**kw) -> Account:
    return replace(Account.new("u", NOW), **kw)


def test_new_account_is_free_and_empty():
    a = Account.new("u", NOW)
    assert (a.balance, a.held, a.tier.value, a.month) == (0, 0, "free", "2026-11")


def test_usage_cannot_overdraw():
    a = account(balance=D("1"), available=D("1"))
    with pytest.raises(InsufficientCredits):
        plan_usage_debit(a, D("1.000001"))
    m = plan_usage_debit(a, D("1"))
    assert m.balance_after == 0 and m.require_available == D("1") and m.capped is False


def test_usage_respects_held_credits():
    a = account(balance=D("5"), available=D("1"))  # 4 held by requests in flight
    with pytest.raises(InsufficientCredits):
        plan_usage_debit(a, D("2"))


def test_usage_cannot_pass_monthly_cap():
    a = with_monthly_cap(account(balance=D("100"), available=D("100"), month_spent=D("9")), D("10"))
    assert a.cap_headroom == D("1")
    with pytest.raises(MonthlyCapReached):
        plan_usage_debit(a, D("1.5"))
    m = plan_usage_debit(a, D("1"))
    assert m.capped is True and m.require_headroom == D("1") and m.headroom_delta == D("-1")


def test_clawback_may_go_negative_but_usage_may_not():
    a = account(balance=D("1"), available=D("1"))
    assert plan_clawback(a, D("5")).balance_after == D("-4")
    with pytest.raises(ValueError):
        plan_credit(a, D("0"), lot_id="l", created_at="t", source=LotSource.BONUS)


def test_month_rollover_restarts_spend_but_keeps_holds():
    a = with_monthly_cap(
        account(balance=D("50"), available=D("45"), month="2026-10", month_spent=D("20")),
        D("30"),
    )
    b = rolled_over(a, "2026-11")
    assert b.month_spent == 0 and b.cap_headroom == D("25")  # 30 cap - 5 still held
    assert rolled_over(b, "2026-11") is b


def test_month_of_is_utc():
    assert month_of(datetime(2026, 12, 1, 0, 30, tzinfo=UTC)) == "2026-12"
