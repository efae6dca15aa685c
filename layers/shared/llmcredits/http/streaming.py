"""A resolver route whose body is streamed (the chat route, REST API streaming mode).

The route hands its body iterator to a :class:`StreamSlot` and returns an empty
Powertools ``Response`` carrying the status and headers; :func:`streaming_handlers`
then makes two Lambda handlers of the resolver's entry point:

* ``stream_handler`` (the template's ``Handler``, run by ``llmcredits.lambda_streaming``
  on AWS and by the local stack): a :class:`~llmcredits.lambda_streaming.StreamingResponse`
  when the route streamed, else the proxy dict (sent as prelude + body at once);
* ``lambda_handler``: the same, buffered into one proxy dict (``sam local invoke``, the
  sample events, unit tests).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

from llmcredits.lambda_streaming import StreamingResponse


class StreamSlot:
    """The body a route streams, for the entry point to pick up (one request at a time
    per execution environment, as Lambda runs them)."""

    def __init__(self) -> None:
        self._body: Iterator[bytes] | None = None

    def put(self, body: Iterator[bytes]) -> None:
        self._body = body

    def take(self) -> Iterator[bytes] | None:
        body, self._body = self._body, None
        return body


def single_value_headers(result: dict[str, Any]) -> dict[str, str]:
    """A proxy answer's ``headers`` and ``multiValueHeaders`` as one value each."""
    merged = {str(k): ",".join(str(v) for v in (vs if isinstance(vs, list) else [vs]))
              for k, vs in (result.get("multiValueHeaders") or {}).items()}
    merged.update({str(k): str(v) for k, v in (result.get("headers") or {}).items()})
    return merged


def streaming_handlers(
    entry: Callable[[dict[str, Any], Any], dict[str, Any]], slot: StreamSlot
) -> tuple[Callable[[dict[str, Any], Any], Any], Callable[[dict[str, Any], Any], dict[str, Any]]]:
    def stream_handler(event: dict[str, Any], context: Any) -> StreamingResponse | dict[str, Any]:
        slot.take()  # nothing left over from an invocation that failed midway
        result = entry(event, context)
        body = slot.take()
        if body is None:
            return result
        return StreamingResponse(int(result["statusCode"]), single_value_headers(result), body)

    def lambda_handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
        result = stream_handler(event, context)
        if not isinstance(result, StreamingResponse):
            return result
        return {"statusCode": result.status_code, "headers": result.headers,
                "body": b"".join(_drain(result.body)).decode(), "isBase64Encoded": False}

    return stream_handler, lambda_handler


def _drain(body: Iterable[bytes]) -> Iterator[bytes]:
    yield from body
