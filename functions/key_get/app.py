"""GET /key: the calling API key's own record (as OpenRouter's /key)."""

from llmcredits.bootstrap import api_keys_service
from llmcredits.errors import InvalidRequest
from llmcredits.http.api import API_PREFIX, KIND_API_KEY, caller, entry_point, make_app
from llmcredits.http.openapi_responses import errors, ok
from llmcredits.models_keys import KeyOut, OwnKey
from llmcredits.services.api_keys import key_view

app = make_app()


@app.get(
    f"{API_PREFIX}/key",
    summary="The calling API key",
    tags=["keys"],
    description="Its limit, usage and what remains. Call it with the API key itself; a "
    "login token has no key (400, `api_key_required`).",
    responses={**ok("The calling key (masked)"),
               **errors((400, "Called with a login token, not an API key"), 401,
                        (404, "The key was revoked"))},
)
def get_own_key() -> OwnKey:
    who = caller(app)
    if who.kind != KIND_API_KEY or not who.key_id:
        raise InvalidRequest("GET /key describes the API key you call it with; this request "
                             "used a login token. See GET /keys.", code="api_key_required")
    return OwnKey(data=KeyOut(**key_view(api_keys_service().own(who.user_id, who.key_id))))


lambda_handler = entry_point(app)
