"""GET /generations/{request_id}: the caller's own charge for one chat request."""

from typing import Annotated

from aws_lambda_powertools.event_handler.openapi.params import Path
from llmcredits.bootstrap import generations_service
from llmcredits.http.api import API_PREFIX, caller, entry_point, make_app
from llmcredits.http.openapi_responses import errors, ok
from llmcredits.models_generations import GenerationResponse, generation_out

app = make_app()


@app.get(
    f"{API_PREFIX}/generations/<request_id>",
    summary="The charge for one chat request",
    tags=["chat"],
    description="`request_id` is the chat response's `X-Request-Id` (also every stream "
    "chunk's `id`). `pending` until the charge is committed, then `settled`, or `partial` "
    "for a stream that ended early. Any of your credentials may read any of your "
    "requests; an id that is not yours, or a request that charged nothing, is 404.",
    responses={**ok("The request's charge"),
               **errors((400, "The request id is not a valid id"), 401,
                        (404, "No charge for this request id on your account "
                              "(`generation_not_found`)"))},
)
def get_generation(
    request_id: Annotated[str, Path(min_length=1, max_length=128,
                                    pattern=r"^[A-Za-z0-9._~-]+$")],
) -> GenerationResponse:
    generation = generations_service().get(caller(app).user_id, request_id)
    return GenerationResponse(data=generation_out(generation))


lambda_handler = entry_point(app)
