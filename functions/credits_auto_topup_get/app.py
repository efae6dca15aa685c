"""GET /credits/auto-topup: the caller's auto top-up settings and state."""

from llmcredits.bootstrap import auto_topup_service
from llmcredits.http.api import API_PREFIX, entry_point, make_app, require_jwt
from llmcredits.http.openapi_responses import JWT_ONLY, errors, ok
from llmcredits.models_auto_topup import AutoTopupResponse
from llmcredits.services.auto_topup import settings_view

app = make_app()


@app.get(
    f"{API_PREFIX}/credits/auto-topup",
    summary="Your auto top-up settings",
    tags=["credits"],
    responses={**ok("Settings, saved card and this month's top-ups", AutoTopupResponse),
               **errors(401, JWT_ONLY, 503)},
)
def get_auto_topup() -> AutoTopupResponse:
    config = auto_topup_service().settings(require_jwt(app).user_id)
    return AutoTopupResponse(**settings_view(config))


lambda_handler = entry_point(app)
