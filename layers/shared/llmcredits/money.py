"""Money is Decimal with 6 places, from the request to DynamoDB and back. Never float."""

from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal, InvalidOperation

MONEY_PLACES = 6
MONEY_QUANTUM = Decimal(1).scaleb(-MONEY_PLACES)  # 0.000001
ZERO = Decimal(0)
# DynamoDB numbers carry 38 significant digits; a cap keeps us far from that edge.
MAX_AMOUNT = Decimal("1000000000")


class MoneyError(ValueError):
    """An input that is not an acceptable amount of money."""


def quantize(value: Decimal) -> Decimal:
    """Round to 6 places, half up (the pricing rule)."""
    return value.quantize(MONEY_QUANTUM, rounding=ROUND_HALF_UP)


def format_money(value: Decimal) -> str:
    """The wire form: a decimal string with exactly 6 places."""
    return f"{quantize(value):f}"


def parse_money(raw: object, *, max_places: int = MONEY_PLACES) -> Decimal:
    """Parse a client-supplied amount exactly.

    Accepts a decimal string, an int, or a Decimal (JSON numbers are decoded as Decimal,
    never float). Rejects bool, float, NaN/Infinity, exponents that hide precision, and
    more than ``max_places`` decimal places (no silent rounding of money).
    """
    if isinstance(raw, (bool, float)):
        raise MoneyError("must be a decimal string such as \"12.50\"")
    if isinstance(raw, int):
        value = Decimal(raw)
    elif isinstance(raw, Decimal):
        value = raw
    elif isinstance(raw, str):
        text = raw.strip()
        if not text or len(text) > 40:
            raise MoneyError("must be a decimal string such as \"12.50\"")
        try:
            value = Decimal(text)
        except InvalidOperation as exc:
            raise MoneyError("must be a decimal string such as \"12.50\"") from exc
    else:
        raise MoneyError("must be a decimal string such as \"12.50\"")
    if not value.is_finite():
        raise MoneyError("must be a finite decimal")
    exponent = value.normalize().as_tuple().exponent  # "1.500000000" is still 6 places
    if isinstance(exponent, int) and exponent < -max_places:
        raise MoneyError(f"must have at most {max_places} decimal places")
    if abs(value) > MAX_AMOUNT:
        raise MoneyError(f"must not exceed {MAX_AMOUNT}")
    return value + ZERO  # normalises -0 to 0
