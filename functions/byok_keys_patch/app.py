"""PATCH /byok/keys/{provider}: enable or disable the caller's stored key."""

from llmcredits.bootstrap import byok_service
from llmcredits.http.api import API_PREFIX, entry_point, make_app, require_jwt
from llmcredits.http.openapi_responses import JWT_ONLY, errors, ok
from llmcredits.models_byok import ByokKeyOut, ByokKeyPatch
from llmcredits.services.byok import key_view

app = make_app()


@app.patch(
    f"{API_PREFIX}/byok/keys/<provider>",
    summary="Enable or disable your key",
    tags=["byok"],
    description="Only the caller's own key for `provider` is ever affected.",
    responses={**ok("The key after the change (masked)"),
               **errors(400, 401, JWT_ONLY,
                        (404, "You have no stored key for this provider"), 413)},
)
def patch_byok_key(provider: str, body: ByokKeyPatch) -> ByokKeyOut:
    record = byok_service().set_enabled(require_jwt(app).user_id, provider, body.enabled)
    return ByokKeyOut(**key_view(record))


lambda_handler = entry_point(app)
