"""jsonexact: strict decoding (no NaN/Infinity, numbers in 64-bit range, bounded depth)."""

from __future__ import annotations

from decimal import Decimal

import pytest
from llmcredits import jsonexact
from llmcredits.errors import InvalidRequest
from llmcredits.jsonexact import MAX_DEPTH, JsonRefused


def refused(text: str) -> JsonRefused:
    with pytest.raises(JsonRefused) as info:
        jsonexact.loads(text)
    return info.value


@pytest.mark.parametrize(
    ("text", "path"),
    [
        ('{"temperature": NaN}', "temperature"),
        ('{"max_tokens": Infinity}', "max_tokens"),
        ('{"a": [1, {"b": -Infinity}]}', "a.1.b"),
        ('{"max_tokens": 1e999}', "max_tokens"),
        ('{"x": -1E+309}', "x"),
        ('{"x": 1e-400}', "x"),  # would underflow to 0 in the next parser
        ('{"n": 9223372036854775808}', "n"),  # 2**63
        ('{"n": -9223372036854775809}', "n"),
        ('{"n": 100000000000000000000000000000}', "n"),
        ('{"seed": ' + "1" * 5000 + "}", "seed"),  # Python's own int() would refuse too
        ('{"t": 0.' + "1" * 100 + "}", "t"),
        ("[NaN]", "0"),
        ('{"messages": [{"role": "user", "content": [{"type": "text", "w": NaN}]}]}',
         "messages.0.content.0.w"),
    ],
)
def test_non_finite_and_out_of_range_numbers_are_refused_with_their_path(text, path):
    err = refused(text)
    assert err.path == path and err.code == "invalid_number"
    assert err.message.startswith(f"{path}: ")


def test_the_first_refused_value_in_document_order_is_named():
    assert refused('{"a": 1, "b": [2, NaN], "c": Infinity}').path == "b.1"


def test_numbers_in_range_are_exact():
    value = jsonexact.loads('{"t": 0.7, "n": -3, "big": 9223372036854775807, "e": 1.5e300,'
                            ' "small": 2.3e-308, "zero": 0.0, "neg": -0}')
    assert value == {"t": Decimal("0.7"), "n": -3, "big": 2**63 - 1,
                     "e": Decimal("1.5e300"), "small": Decimal("2.3e-308"),
                     "zero": Decimal("0.0"), "neg": 0}
    assert isinstance(value["t"], Decimal) and isinstance(value["n"], int)


def nested(depth: int) -> str:
    return "[" * depth + "]" * depth


def test_nesting_up_to_the_limit_is_accepted_and_deeper_is_refused():
    assert jsonexact.loads(nested(MAX_DEPTH)) is not None
    assert jsonexact.loads('{"a":' * (MAX_DEPTH - 1) + "[]" + "}" * (MAX_DEPTH - 1))
    err = refused(nested(MAX_DEPTH + 1))
    assert err.code == "json_too_deep" and str(MAX_DEPTH) in err.message
    assert refused('{"a":' * MAX_DEPTH + "[]" + "}" * MAX_DEPTH).code == "json_too_deep"


@pytest.mark.parametrize("depth", [5_000, 100_000])
def test_very_deep_nesting_is_refused_without_recursion(depth):
    # json.loads itself would raise RecursionError here (a 500 before this check).
    with pytest.raises(RecursionError):
        import json
        json.loads(nested(depth))
    assert refused(nested(depth)).code == "json_too_deep"


def test_brackets_inside_strings_do_not_count_as_nesting():
    text = '{"content": "' + "[{" * 500 + '\\" [[[ \\\\", "x": ["]]]]"]}'
    assert jsonexact.loads(text)["x"] == ["]]]]"]


def test_syntax_errors_stay_value_errors():
    with pytest.raises(ValueError):
        jsonexact.loads('{"model": ')
    with pytest.raises(ValueError):
        jsonexact.loads(b"\xff\xfe")


def test_request_bodies_raise_a_400_naming_the_field():
    with pytest.raises(InvalidRequest) as info:
        jsonexact.loads_request('{"temperature": NaN}')
    assert (info.value.status, info.value.param, info.value.code) == (
        400, "temperature", "invalid_number")
    with pytest.raises(InvalidRequest) as info:
        jsonexact.loads_request(nested(5000))
    assert info.value.code == "json_too_deep" and info.value.param is None
    with pytest.raises(InvalidRequest) as info:
        jsonexact.loads_request('{"model": ')
    assert info.value.code == "invalid_json" and "line 1" in info.value.message


def test_dumps_never_writes_a_non_finite_number():
    assert jsonexact.dumps({"a": Decimal("0.70"), "b": [1, Decimal("-2.5")]}) == (
        '{"a":0.70,"b":[1,-2.5]}')
    for bad in (Decimal("NaN"), Decimal("Infinity"), float("nan"), float("-inf")):
        with pytest.raises(ValueError):
            jsonexact.dumps({"x": bad})
