"""JSON with exact numbers: decode numbers as Decimal, encode Decimal as a JSON number.

Upstream chat responses pass through us; their numbers (and our ``usage.cost``) must
survive without ever becoming a float.

Decoding is strict, for request bodies and upstream answers alike (the rules are in
the README's "Input limits"):

* ``NaN``, ``Infinity`` and ``-Infinity`` are refused: they are not JSON (RFC 8259), and
  Python's encoder would pass them on as invalid JSON.
* Every number must fit the 64-bit value a JSON peer stores it in: an integer in
  [-2**63, 2**63 - 1]; any other number within the range of a finite IEEE-754 double
  (so ``1e999`` is refused, not turned into infinity by the next parser); and at most
  :data:`MAX_NUMBER_CHARS` characters long.
* Arrays and objects nest at most :data:`MAX_DEPTH` deep. The depth is checked before
  decoding, without recursion: CPython's decoder recurses once per level, and a body
  nested a few thousand levels deep would otherwise end in a RecursionError (a 500).

:func:`loads` raises :class:`JsonRefused` (a ValueError) naming the offending value's
path, e.g. ``messages.0.temperature`` (the dotted form pydantic errors use);
:func:`loads_request` turns every decoding problem into a 400 in the OpenAI error shape.
"""

from __future__ import annotations

import json
import re
import uuid
from decimal import Decimal
from typing import Any

from llmcredits.errors import InvalidRequest

#: The deepest nesting of arrays and objects accepted (an OpenAI chat request with
#: tools and a JSON schema response format nests well under 20).
MAX_DEPTH = 64
#: The longest number literal accepted: a double needs at most 17 significant digits, a
#: sign, a point and an exponent; an int64 at most 20 characters.
MAX_NUMBER_CHARS = 64
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
#: The largest finite IEEE-754 double and the smallest positive normal one.
DOUBLE_MAX = Decimal("1.7976931348623157e308")
DOUBLE_MIN_NORMAL = Decimal("2.2250738585072014e-308")

# A JSON string (escapes included) or one bracket: strings are skipped so that brackets
# inside them do not count. Unrolled-loop form: linear, no backtracking blow-up.
_DEPTH_TOKENS = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"|[\[\]{}]', re.DOTALL)


class JsonRefused(ValueError):
    """A JSON text we refuse to decode. ``path``: where, when one value is at fault."""

    def __init__(self, message: str, path: str | None = None, *, code: str = "invalid_json"):
        super().__init__(message)
        self.message = message
        self.path = path
        self.code = code


class _Refused:
    """Stands in for a refused number while decoding, until the walk finds its path."""

    __slots__ = ("literal", "reason")

    def __init__(self, literal: str, reason: str) -> None:
        self.literal = literal
        self.reason = reason


def _check_depth(text: str, max_depth: int) -> None:
    if text.count("[") + text.count("{") <= max_depth:
        return  # cannot be deeper (the common case: no scan at all)
    depth = 0
    for match in _DEPTH_TOKENS.finditer(text):
        char = text[match.start()]  # a bracket, or the opening quote of a skipped string
        if char in "[{":
            depth += 1
            if depth > max_depth:
                raise JsonRefused(
                    f"The JSON body nests arrays/objects more than {max_depth} levels deep.",
                    code="json_too_deep",
                )
        elif char in "]}":
            depth -= 1


def loads(text: str | bytes, *, max_depth: int = MAX_DEPTH) -> Any:
    """Decode ``text`` (numbers as Decimal or int) under the rules of the module doc."""
    if isinstance(text, bytes | bytearray):
        text = text.decode("utf-8")  # UnicodeDecodeError is a ValueError, as json's own
    _check_depth(text, max_depth)
    refused: list[_Refused] = []

    def refuse(literal: str, reason: str) -> _Refused:
        marker = _Refused(literal, reason)
        refused.append(marker)
        return marker

    def parse_int(literal: str) -> int | _Refused:
        if len(literal) > MAX_NUMBER_CHARS:
            return refuse(literal, "has too many digits")
        value = int(literal)
        if not INT64_MIN <= value <= INT64_MAX:
            return refuse(literal, "is outside the 64-bit integer range")
        return value

    def parse_float(literal: str) -> Decimal | _Refused:
        if len(literal) > MAX_NUMBER_CHARS:
            return refuse(literal, "has too many digits")
        value = Decimal(literal)
        magnitude = abs(value)
        if magnitude > DOUBLE_MAX or (magnitude and magnitude < DOUBLE_MIN_NORMAL):
            return refuse(literal, "is outside the range of a 64-bit floating-point number")
        return value

    def parse_constant(literal: str) -> _Refused:
        return refuse(literal, "is not a JSON number (NaN and Infinity are not allowed)")

    try:
        value = json.loads(text, parse_int=parse_int, parse_float=parse_float,
                           parse_constant=parse_constant)
    except RecursionError as exc:  # a backstop: the depth check should make it impossible
        raise JsonRefused("The JSON body nests too deeply.", code="json_too_deep") from exc
    if refused:
        path, marker = _first_refused(value)
        raise JsonRefused(
            f"{path + ': ' if path else ''}{_shorten(marker.literal)} {marker.reason}.",
            path or None,
            code="invalid_number",
        )
    return value


def _first_refused(value: Any) -> tuple[str, _Refused]:
    """The dotted path of the first refused number, found without recursion."""
    stack: list[tuple[Any, str]] = [(value, "")]
    while stack:
        node, path = stack.pop()
        if isinstance(node, _Refused):
            return path, node
        if isinstance(node, dict):
            items = list(node.items())
        elif isinstance(node, list):
            items = list(enumerate(node))
        else:
            continue
        # Reversed so that the first member is examined first (document order).
        for key, child in reversed(items):
            stack.append((child, f"{path}.{key}" if path else str(key)))
    raise AssertionError("a refused number was recorded but not found")  # pragma: no cover


def _shorten(literal: str) -> str:
    return literal if len(literal) <= 24 else literal[:12] + "..." + literal[-8:]


def loads_request(text: str | bytes) -> Any:
    """A request body, decoded by :func:`loads`; any problem is a 400 (InvalidRequest)
    whose ``param`` names the offending field when one is at fault."""
    try:
        return loads(text)
    except JsonRefused as exc:
        raise InvalidRequest(exc.message, param=exc.path, code=exc.code) from None
    except ValueError as exc:  # json.JSONDecodeError, UnicodeDecodeError
        detail = f" ({exc.msg} at line {exc.lineno} column {exc.colno})" if isinstance(
            exc, json.JSONDecodeError) else ""
        raise InvalidRequest(f"The request body is not valid JSON{detail}.",
                             code="invalid_json") from None


def dumps(value: Any) -> str:
    """Like json.dumps, but a Decimal is written as its exact decimal literal."""
    marker = uuid.uuid4().hex
    literals: dict[str, str] = {}

    def swap(node: Any) -> Any:
        if isinstance(node, Decimal):
            if not node.is_finite():
                raise ValueError("non-finite number")
            token = f"{marker}{len(literals)}"
            literals[token] = format(node, "f")
            return token
        if isinstance(node, dict):
            return {k: swap(v) for k, v in node.items()}
        if isinstance(node, list | tuple):
            return [swap(v) for v in node]
        return node

    text = json.dumps(swap(value), separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    for token, literal in literals.items():
        text = text.replace(f'"{token}"', literal)
    return text
