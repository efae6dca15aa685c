"""POST /keys/{id}/rotate: a new secret; the old one works for `grace_seconds`."""

from typing import Annotated

from aws_lambda_powertools.event_handler import Response
from aws_lambda_powertools.event_handler.openapi.params import Path
from llmcredits.bootstrap import api_keys_service
from llmcredits.http.api import API_PREFIX, entry_point, json_response, make_app, require_jwt
from llmcredits.http.openapi_responses import JWT_ONLY, created, errors
from llmcredits.models_keys import KeyCreated, KeyRotate
from llmcredits.services.api_keys import key_view

app = make_app()


@app.post(
    f"{API_PREFIX}/keys/<id>/rotate",
    summary="Rotate an API key's secret",
    tags=["keys"],
    description="Same key id, limit and usage; `key` is the new secret (shown once). The "
    "previous secret keeps working for `grace_seconds` (0..86400), then is refused.",
    responses={**created("The key, with its new secret (once)", KeyCreated),
               **errors(400, 401, JWT_ONLY, (404, "You have no such key"), 413)},
)
def rotate_key(
    id: Annotated[str, Path(max_length=64)],
    body: KeyRotate,
) -> Response[KeyCreated]:
    secret, key = api_keys_service().rotate(require_jwt(app).user_id, id, body.grace_seconds)
    return json_response(201, {**key_view(key), "key": secret})


lambda_handler = entry_point(app)
