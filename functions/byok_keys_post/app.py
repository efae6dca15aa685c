"""POST /byok/keys: store (or replace) the caller's key for a provider, encrypted."""

from typing import Annotated

from aws_lambda_powertools.event_handler import Response
from aws_lambda_powertools.event_handler.openapi.params import Query
from llmcredits.bootstrap import byok_service
from llmcredits.http.api import API_PREFIX, entry_point, json_response, make_app, require_jwt
from llmcredits.http.openapi_responses import JWT_ONLY, created, errors
from llmcredits.models_byok import ByokKeyCreate, ByokKeyOut
from llmcredits.services.byok import key_view

app = make_app()


@app.post(
    f"{API_PREFIX}/byok/keys",
    summary="Store your own provider key (replaces an existing one)",
    tags=["byok"],
    description=(
        "Chat requests routed to this provider then use your key and are charged only "
        "the BYOK fee. `?verify=true` first asks the provider whether it accepts the key. "
        "The response shows the masked key only."
    ),
    responses={**created("Stored (masked)", ByokKeyOut),
               **errors(JWT_ONLY, (400, "Invalid input, an unsupported provider, or (with "
                              "`?verify=true`) a key the provider refused"), 401, 413, 503)},
)
def post_byok_key(
    body: ByokKeyCreate,
    verify: Annotated[bool, Query(description="Check the key with the provider first")] = False,
) -> Response[ByokKeyOut]:
    record = byok_service().store_key(
        require_jwt(app).user_id, body.provider, body.api_key.get_secret_value(), verify=verify
    )
    return json_response(201, key_view(record))


lambda_handler = entry_point(app)
