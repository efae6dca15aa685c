"""PATCH /keys/{id}: rename, change the limit, reset window, expiry, levels or enable."""

from typing import Annotated

from aws_lambda_powertools.event_handler.openapi.params import Path
from llmcredits.bootstrap import api_keys_service
from llmcredits.http.api import API_PREFIX, entry_point, make_app, require_jwt
from llmcredits.http.openapi_responses import JWT_ONLY, errors, ok
from llmcredits.models_keys import KeyOut, KeyPatch
from llmcredits.services.api_keys import key_view

app = make_app()


@app.patch(
    f"{API_PREFIX}/keys/<id>",
    summary="Change an API key",
    tags=["keys"],
    description=(
        "Only the fields sent change; `null` removes a limit, expiry, level list or rate "
        "limit. A new limit binds from the next request (requests in flight settle within "
        "their holds); `enabled: false` refuses the key on its next chat request."
    ),
    responses={**ok("The key after the change (masked)"),
               **errors(400, 401, JWT_ONLY, (404, "You have no such key"), 413)},
)
def patch_key(id: Annotated[str, Path(max_length=64)], body: KeyPatch) -> KeyOut:
    key = api_keys_service().update(require_jwt(app).user_id, id, body.settings())
    return KeyOut(**key_view(key))


lambda_handler = entry_point(app)
