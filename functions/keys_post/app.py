"""POST /keys: create an API key; the secret is in this response only."""

from aws_lambda_powertools.event_handler import Response
from llmcredits.bootstrap import api_keys_service
from llmcredits.http.api import API_PREFIX, entry_point, json_response, make_app, require_jwt
from llmcredits.http.openapi_responses import JWT_ONLY, created, errors
from llmcredits.models_keys import KeyCreate, KeyCreated
from llmcredits.services.api_keys import key_view

app = make_app()


@app.post(
    f"{API_PREFIX}/keys",
    summary="Create an API key",
    tags=["keys"],
    description=(
        "`key` is the secret (`llmc-...`): shown only in this response, stored only as a "
        "hash. Optional budget (`limit` per `limit_reset` window), expiry, allowed power "
        "levels and a rate limit up to the tier's. Login tokens only: an API key cannot "
        "mint keys. Up to 50 active keys per user."
    ),
    responses={**created("The key, with its secret (once)", KeyCreated),
               **errors(JWT_ONLY, (400, "Invalid input, or too many keys (`too_many_keys`)"),
                        401, 413)},
)
def post_key(body: KeyCreate) -> Response[KeyCreated]:
    secret, key = api_keys_service().create(require_jwt(app).user_id, body.settings())
    return json_response(201, {**key_view(key), "key": secret})


lambda_handler = entry_point(app)
