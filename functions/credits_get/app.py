"""GET /credits: the caller's account (created on first use)."""

from llmcredits.bootstrap import ledger_service
from llmcredits.http.api import API_PREFIX, caller, entry_point, make_app
from llmcredits.http.openapi_responses import errors, ok
from llmcredits.models import CreditsResponse
from llmcredits.views import account_view

app = make_app()


@app.get(
    f"{API_PREFIX}/credits",
    summary="Balance, holds, tier and monthly cap",
    tags=["credits"],
    description="The caller's account; created on first use with balance 0, tier free.",
    responses={**ok("Your account"), **errors(401, 503)},
)
def get_credits() -> CreditsResponse:
    account = ledger_service().account(caller(app).user_id)
    return CreditsResponse(**account_view(account))


lambda_handler = entry_point(app)
