"""JSON with exact numbers: decode numbers as Decimal, encode Decimal as a JSON number.

Upstream chat responses pass through us; their numbers (and our ``usage.cost``) must
survive without ever becoming a float.
"""

from __future__ import annotations

import json
import uuid
from decimal import Decimal
from typing import Any


def loads(text: str | bytes) -> Any:
    return json.loads(text, parse_float=Decimal)


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

    text = json.dumps(swap(value), separators=(",", ":"), ensure_ascii=False)
    for token, literal in literals.items():
        text = text.replace(f'"{token}"', literal)
    return text
