"""GET /credits/alerts: the caller's alert settings (never the signing secret)."""

from llmcredits.bootstrap import alert_service
from llmcredits.http.api import API_PREFIX, entry_point, make_app, require_jwt
from llmcredits.http.openapi_responses import JWT_ONLY, errors, ok
from llmcredits.models_alerts import AlertsResponse

app = make_app()


@app.get(
    f"{API_PREFIX}/credits/alerts",
    summary="Your alert settings",
    tags=["credits"],
    description="Low-balance and monthly-cap alerts and the webhook they are POSTed to.",
    responses={**ok("Your alert settings"), **errors(401, JWT_ONLY, 503)},
)
def get_alerts() -> AlertsResponse:
    view = alert_service().settings(require_jwt(app).user_id)
    return AlertsResponse(**view.as_dict())


lambda_handler = entry_point(app)
