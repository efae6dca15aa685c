"""Was the answer produced by the model we routed to? (pure; DESIGN section 4, issue 10.7)

The upstream reports the model that answered in ``model`` (the body, or each stream
chunk). A proxy-side fallback, a misconfigured alias or a provider substitution could
answer a cheap request with an expensive model (or the reverse), so an answer whose
model is another one is refused: **502 ``upstream_model_mismatch``, the hold released,
nothing charged, the answer not delivered.** Charging "the higher price" instead was
rejected: the hold was sized for the routed model, so a dearer answer could not be
charged in full, and the caller did not ask for that model.

Providers name models their own way, so "the same model" means, comparing
case-insensitively after trimming:

* the names are equal; or
* one is the other without leading path segments: ``together_ai/meta-llama/Llama-3.3-X``
  is answered as ``meta-llama/Llama-3.3-X`` or ``Llama-3.3-X``; or
* they differ only by a snapshot suffix on the last segment (``-2024-08-06``,
  ``-20241022``, ``-latest``, ``-v1``, ``-001``): ``gpt-4o`` answered as
  ``gpt-4o-2024-08-06``, but never as ``gpt-4o-mini``; or
* the answered name is one of the catalog's ``answered_as`` names for the model.

An answer without a ``model`` (or an empty one) is no evidence of another model and is
accepted.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from llmcredits.domain.pricing import Route
from llmcredits.errors import UpstreamError

MODEL_MISMATCH = "upstream_model_mismatch"
#: The code of the error event that ends a stream the upstream broke off partway.
STREAM_INTERRUPTED = "upstream_stream_interrupted"

# A trailing snapshot/version tag: a date (2024-08-06, 20241022, 2407), "latest",
# "v1"/"v1.5"/"v2:0", or a three-digit revision (gemini-1.5-pro-001).
_SNAPSHOT = re.compile(r"-(?:\d{4}-\d{2}-\d{2}|\d{8}|\d{4}|\d{3}|latest|v\d+(?:[.:]\d+)*)$")


def _segments(name: str) -> list[str]:
    return [s for s in name.strip().lower().split("/") if s]


def _without_snapshot(segment: str) -> str:
    return _SNAPSHOT.sub("", segment)


def _same(routed: list[str], answered: list[str]) -> bool:
    if not routed or not answered:
        return False
    shorter, longer = sorted((routed, answered), key=len)
    tail = longer[len(longer) - len(shorter):]
    if tail[:-1] != shorter[:-1]:
        return False
    return (tail[-1] == shorter[-1]
            or _without_snapshot(tail[-1]) == _without_snapshot(shorter[-1]))


def answered_by_routed_model(route: Route, answered: object) -> bool:
    """Whether ``answered`` (an answer's ``model``) names the model ``route`` went to."""
    if answered is None or answered == "":
        return True
    if not isinstance(answered, str):
        return False
    got = _segments(answered)
    if any(got == _segments(alias) for alias in route.answered_as):
        return True
    return any(_same(_segments(name), got) for name in (route.upstream_model, route.model))


def ensure_routed_model(route: Route, answered: Iterable[object]) -> None:
    """Raise UpstreamError (502, ``upstream_model_mismatch``) when any of the models an
    answer reports is not the routed one (see the module doc)."""
    for name in answered:
        if not answered_by_routed_model(route, name):
            shown = str(name)[:120]
            raise UpstreamError(
                f"The model provider answered with model {shown!r}, not {route.model!r} as "
                "routed; the answer was discarded and nothing was charged.",
                code=MODEL_MISMATCH,
            )


def interrupted_event(reason: str) -> dict[str, object]:
    """The OpenAI-style error event that ends a stream the upstream broke off (never the
    provider's own text, which may echo a BYOK key)."""
    return {"error": {
        "message": f"The model provider's stream failed partway ({reason}); you were "
                   "charged only for what was delivered (see GET /generations/{request_id}).",
        "type": "upstream_error", "code": STREAM_INTERRUPTED, "param": None}}
