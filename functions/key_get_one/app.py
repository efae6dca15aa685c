"""GET /keys/{id}: one of the caller's API keys."""

from typing import Annotated

from aws_lambda_powertools.event_handler.openapi.params import Path
from llmcredits.bootstrap import api_keys_service
from llmcredits.http.api import API_PREFIX, entry_point, make_app, require_jwt
from llmcredits.http.openapi_responses import JWT_ONLY, errors, ok
from llmcredits.models_keys import KeyOut
from llmcredits.services.api_keys import key_view

app = make_app()


@app.get(
    f"{API_PREFIX}/keys/<id>",
    summary="One of your API keys",
    tags=["keys"],
    responses={**ok("The key (masked)"),
               **errors(400, 401, JWT_ONLY, (404, "You have no such key (or it was revoked)"))},
)
def get_key(id: Annotated[str, Path(max_length=64)]) -> KeyOut:
    return KeyOut(**key_view(api_keys_service().get(require_jwt(app).user_id, id)))


lambda_handler = entry_point(app)
