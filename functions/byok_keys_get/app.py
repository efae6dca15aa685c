"""GET /byok/keys: the caller's stored keys, masked."""

from llmcredits.bootstrap import byok_service
from llmcredits.http.api import API_PREFIX, entry_point, make_app, require_jwt
from llmcredits.http.openapi_responses import JWT_ONLY, errors, ok
from llmcredits.models_byok import ByokKeyList, ByokKeyOut
from llmcredits.services.byok import key_view

app = make_app()


@app.get(
    f"{API_PREFIX}/byok/keys",
    summary="Your stored provider keys (masked)",
    tags=["byok"],
    description="Only the caller's keys; the plaintext is never shown again.",
    responses={**ok("Your keys, masked"), **errors(401, JWT_ONLY)},
)
def get_byok_keys() -> ByokKeyList:
    keys = byok_service().keys(require_jwt(app).user_id)
    return ByokKeyList(keys=[ByokKeyOut(**key_view(k)) for k in keys])


lambda_handler = entry_point(app)
