"""PUT /credits/auto-topup: enable, disable or change auto top-up."""

from llmcredits.bootstrap import auto_topup_service
from llmcredits.http.api import API_PREFIX, entry_point, make_app, require_jwt
from llmcredits.http.openapi_responses import JWT_ONLY, errors, ok
from llmcredits.models_auto_topup import AutoTopupRequest, AutoTopupResponse
from llmcredits.services.auto_topup import SettingsUpdate, settings_view

app = make_app()


@app.put(
    f"{API_PREFIX}/credits/auto-topup",
    summary="Set auto top-up",
    tags=["credits"],
    description="When usage leaves available credits below threshold, the saved card is "
    "charged amount (off-session), at most one top-up at a time and never past "
    "monthly_limit in a month. Omitted amounts keep their stored values.",
    responses={**ok("The new settings", AutoTopupResponse),
               **errors((400, "Invalid input, or enabling without a saved card"), 401,
                        JWT_ONLY, 413, 503)},
)
def put_auto_topup(body: AutoTopupRequest) -> AutoTopupResponse:
    config = auto_topup_service().update_settings(
        require_jwt(app).user_id,
        SettingsUpdate(body.enabled, body.threshold, body.amount, body.monthly_limit))
    return AutoTopupResponse(**settings_view(config))


lambda_handler = entry_point(app)
