"""PUT /credits/monthly-cap: the caller's own monthly spending cap."""

from llmcredits.bootstrap import ledger_service
from llmcredits.http.api import API_PREFIX, entry_point, make_app, require_jwt
from llmcredits.http.openapi_responses import JWT_ONLY, errors, ok
from llmcredits.models import CreditsResponse, MonthlyCapRequest
from llmcredits.views import account_view

app = make_app()


@app.put(
    f"{API_PREFIX}/credits/monthly-cap",
    summary="Set or remove your monthly cap",
    tags=["credits"],
    description="Usage in a calendar month (UTC) never goes above the cap; null removes it.",
    responses={**ok("Your account with the new cap"), **errors(400, 401, JWT_ONLY, 413, 503)},
)
def put_monthly_cap(body: MonthlyCapRequest) -> CreditsResponse:
    account = ledger_service().set_monthly_cap(require_jwt(app).user_id, body.monthly_cap)
    return CreditsResponse(**account_view(account))


lambda_handler = entry_point(app)
