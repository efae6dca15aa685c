"""POST /chat/completions: OpenAI-compatible, metered per token, never overdrawn.

Served in REST API response-streaming mode (``stream_handler``, see
``llmcredits.lambda_streaming``): a streamed answer goes to the client chunk by chunk;
a non-streamed one is sent whole when complete (so it may take longer than 29 s)."""

from collections.abc import Generator, Iterator
from typing import Annotated

from aws_lambda_powertools.event_handler import Response
from aws_lambda_powertools.event_handler.openapi.params import Header
from aws_lambda_powertools.metrics import MetricUnit
from llmcredits.bootstrap import api_keys_service, chat_service
from llmcredits.domain.api_keys import credential_of
from llmcredits.errors import ApiError
from llmcredits.http.api import (
    API_PREFIX,
    KIND_API_KEY,
    caller,
    entry_point,
    header,
    logger,
    make_app,
    metrics,
    record_chat_completion,
    record_chat_failure,
)
from llmcredits.http.openapi_responses import chat_completion_ok, errors
from llmcredits.http.streaming import StreamSlot, streaming_handlers
from llmcredits.models_chat import ChatCompletionRequest
from llmcredits.services.chat import StreamOutcome

MAX_BODY_BYTES = 1_000_000

app = make_app()
streamed_body = StreamSlot()


@app.post(
    f"{API_PREFIX}/chat/completions",
    summary="Create a chat completion (metered)",
    tags=["chat"],
    description=(
        "OpenAI-compatible. The charge is in `usage.cost` and the headers "
        "`X-Credits-Charged` and `X-Credits-Remaining`. With `stream: true` each chunk "
        "is sent as the model produces it (server-sent events, `data: [DONE]` last); the "
        "usage chunk (`choices: []`, with `cost`) only with `stream_options.include_usage`."
    ),
    responses={
        **chat_completion_ok(),
        **errors(
            (400, "Invalid request: a malformed body, an unknown model or power level, a "
                  "field that may not be set (api_key, api_base, ...), or one the provider "
                  "rejected (`upstream_rejected`)"),
            401, 402,
            (403, "The model or power level is above your tier (`permission_error`)"),
            (409, "The Idempotency-Key was used with another body, its request is still "
                  "running (`idempotency_in_progress`), or its response was too large to "
                  "keep (`idempotency_response_too_large`)"),
            413, 429, 502, 503, 504,
        ),
    },
)
def chat_completions(
    body: ChatCompletionRequest,
    x_power_level: Annotated[str | None, Header(alias="X-Power-Level", max_length=32)] = None,
    idempotency_key: Annotated[
        str | None,
        Header(alias="Idempotency-Key", max_length=255,
               description="Retry-safe key, per user for 24 h: the same key and body get "
                           "the first response and one charge."),
    ] = None,
) -> Response[str]:
    who = caller(app)
    metrics.add_metric(name="ChatRequests", unit=MetricUnit.Count, value=1)
    try:
        # An API key's state and budget bind in the reserve write, not in the authorizer.
        key = (api_keys_service().chat_extras(
                   who.user_id, credential_of(who.key_id, header(app, "Authorization")))
               if who.kind == KIND_API_KEY else None)
        result = chat_service().complete(
            who.user_id,
            body,
            power_level_header=x_power_level,
            request_id=app.current_event.request_context.request_id,
            idempotency_key=idempotency_key,
            extras=key,
            key=key.key if key is not None else None,
        )
    except ApiError as err:
        record_chat_failure(err)  # 402s are counted by the shared error handler
        raise
    if result.stream is not None:
        streamed_body.put(_metered(result.stream, result.outcome, who.user_id))
        return Response(status_code=result.status, content_type=result.content_type,
                        body="", headers=result.headers)
    record_chat_completion(result.cost, result.upstream_ms)
    logger.info("chat completion", extra={"user_id": who.user_id,
                                          "charged": result.headers.get("X-Credits-Charged"),
                                          "upstream_ms": result.upstream_ms})
    return Response(
        status_code=result.status,
        content_type=result.content_type,
        body=result.body,
        headers=result.headers,
    )


def _metered(events: Generator[str, None, None], outcome: StreamOutcome,
             user_id: str) -> Iterator[bytes]:
    """The event stream as bytes; once settled (also when the client left), its metrics
    are emitted (the handler returned long before)."""
    try:
        for event in events:
            yield event.encode()
    finally:
        events.close()
        if outcome.settled:
            record_chat_completion(outcome.cost, outcome.upstream_ms)
            logger.info("chat completion (streamed)",
                        extra={"user_id": user_id, "charged": str(outcome.cost),
                               "partial": outcome.partial, "upstream_ms": outcome.upstream_ms})
        metrics.flush_metrics()


stream_handler, lambda_handler = streaming_handlers(
    entry_point(app, max_body_bytes=MAX_BODY_BYTES), streamed_body)
