"""POST /chat/completions: OpenAI-compatible, metered per token, never overdrawn."""

from typing import Annotated

from aws_lambda_powertools.event_handler import Response
from aws_lambda_powertools.event_handler.openapi.params import Header
from aws_lambda_powertools.metrics import MetricUnit
from llmcredits.bootstrap import chat_service
from llmcredits.http.api import API_PREFIX, caller, entry_point, make_app, metrics
from llmcredits.models_chat import ChatCompletionRequest

MAX_BODY_BYTES = 1_000_000

app = make_app()


@app.post(
    f"{API_PREFIX}/chat/completions",
    summary="Create a chat completion (metered)",
    tags=["chat"],
    description=(
        "OpenAI-compatible. The charge is in `usage.cost` and the headers "
        "`X-Credits-Charged` and `X-Credits-Remaining`. With `stream: true` the whole "
        "event stream is returned at once (HTTP API buffers responses)."
    ),
)
def chat_completions(
    body: ChatCompletionRequest,
    x_power_level: Annotated[str | None, Header(alias="X-Power-Level", max_length=32)] = None,
) -> Response[str]:
    who = caller(app)
    result = chat_service().complete(
        who.user_id,
        body,
        power_level_header=x_power_level,
        request_id=app.current_event.request_context.request_id,
    )
    metrics.add_metric(name="ChatCompletions", unit=MetricUnit.Count, value=1)
    return Response(
        status_code=result.status,
        content_type=result.content_type,
        body=result.body,
        headers=result.headers,
    )


lambda_handler = entry_point(app, max_body_bytes=MAX_BODY_BYTES)
