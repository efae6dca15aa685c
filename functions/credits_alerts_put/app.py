"""PUT /credits/alerts: replace the caller's alert settings; a new webhook signing
secret is in this answer only."""

from llmcredits.bootstrap import alert_service
from llmcredits.http.api import API_PREFIX, entry_point, make_app, require_jwt
from llmcredits.http.openapi_responses import JWT_ONLY, errors, ok
from llmcredits.models_alerts import AlertsPutResponse, AlertsRequest

app = make_app()


@app.put(
    f"{API_PREFIX}/credits/alerts",
    summary="Set your alerts",
    tags=["credits"],
    description="Replaces the settings (missing fields: off). The webhook signing secret "
    "is returned when it is made (first webhook_url, or rotate_secret) and never again.",
    responses={**ok("Your alert settings"), **errors(400, 401, JWT_ONLY, 413, 503)},
)
def put_alerts(body: AlertsRequest) -> AlertsPutResponse:
    view, secret = alert_service().update(
        require_jwt(app).user_id, body.low_balance, list(body.cap_percent), body.webhook_url,
        body.rotate_secret)
    return AlertsPutResponse(**view.as_dict(), webhook_secret=secret)


lambda_handler = entry_point(app)
