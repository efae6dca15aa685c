from decimal import Decimal

import pytest
from llmcredits.money import MoneyError, format_money, parse_money, quantize


@pytest.mark.parametrize(
    ("raw", "expected"),
    [("10", "10"), ("12.5", "12.5"), ("0.000001", "0.000001"), (Decimal("3.25"), "3.25"),
     (7, "7"), ("1.5000000000", "1.5"), (" 2.50 ", "2.50"), ("-4", "-4")],
)
def test_parse_money_exact(raw, expected):
    assert parse_money(raw) == Decimal(expected)


@pytest.mark.parametrize(
    "raw",
    ["abc", "", "1e400", "NaN", "Infinity", "0.0000001", 1.5, True, None, [], "1" * 41,
     "99999999999"],
)
def test_parse_money_rejects(raw):
    with pytest.raises(MoneyError):
        parse_money(raw)


def test_format_is_six_places_half_up():
    assert format_money(Decimal("10")) == "10.000000"
    assert format_money(Decimal("0.0000005")) == "0.000001"
    assert quantize(Decimal("0.0000004999")) == Decimal("0.000000")
    assert format_money(Decimal("-1.5")) == "-1.500000"
