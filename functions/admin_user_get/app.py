"""GET /admin/users/{user_id}: an account, for operators."""

from llmcredits.bootstrap import ledger_service
from llmcredits.http.api import API_PREFIX, admin, entry_point, make_app
from llmcredits.http.openapi_responses import admin_errors, ok
from llmcredits.models import CreditsResponse
from llmcredits.views import account_view

app = make_app()


@app.get(
    f"{API_PREFIX}/admin/users/<user_id>",
    summary="A user's account",
    tags=["admin"],
    description="The account as GET /credits shows it to its owner; 404 if the user never "
    "called the API and was never granted anything.",
    responses={**ok("The account"),
               **admin_errors(401, (404, "No account for this user"))},
)
def admin_get_user(user_id: str) -> CreditsResponse:
    admin(app)
    return CreditsResponse(**account_view(ledger_service().find_account(user_id)))


lambda_handler = entry_point(app)
