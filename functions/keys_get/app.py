"""GET /keys: the caller's API keys (masked, with usage and what remains of the limit)."""

from llmcredits.bootstrap import api_keys_service
from llmcredits.http.api import API_PREFIX, entry_point, make_app, require_jwt
from llmcredits.http.openapi_responses import JWT_ONLY, errors, ok
from llmcredits.models_keys import KeyList, KeyOut
from llmcredits.services.api_keys import key_view

app = make_app()


@app.get(
    f"{API_PREFIX}/keys",
    summary="Your API keys",
    tags=["keys"],
    description="Active keys, newest first; masked (the secret is never shown again).",
    responses={**ok("Your keys"), **errors(401, JWT_ONLY)},
)
def get_keys() -> KeyList:
    keys = api_keys_service().list(require_jwt(app).user_id)
    return KeyList(keys=[KeyOut(**key_view(k)) for k in keys])


lambda_handler = entry_point(app)
