"""DELETE /keys/{id}: revoke an API key (its next request is refused, cache or not)."""

from typing import Annotated

from aws_lambda_powertools.event_handler import Response
from aws_lambda_powertools.event_handler.openapi.params import Path
from llmcredits.bootstrap import api_keys_service
from llmcredits.http.api import API_PREFIX, entry_point, make_app, require_jwt
from llmcredits.http.openapi_responses import JWT_ONLY, errors, no_content

app = make_app()


@app.delete(
    f"{API_PREFIX}/keys/<id>",
    summary="Revoke an API key",
    tags=["keys"],
    description="Chat refuses the key at once (the reserve checks it); read routes may "
    "accept it until the authorizer's cache expires. Usage history keeps its key id.",
    responses={**no_content("Revoked"),
               **errors(400, 401, JWT_ONLY, (404, "You have no such key"))},
)
def delete_key(id: Annotated[str, Path(max_length=64)]) -> Response[None]:
    api_keys_service().revoke(require_jwt(app).user_id, id)
    return Response(status_code=204, body=None)


lambda_handler = entry_point(app)
