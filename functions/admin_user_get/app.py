"""GET /admin/users/{user_id}: an account, for operators."""

from llmcredits.bootstrap import ledger_service
from llmcredits.http.api import API_PREFIX, admin, entry_point, make_app
from llmcredits.models import CreditsResponse
from llmcredits.views import account_view

app = make_app()


@app.get(f"{API_PREFIX}/admin/users/<user_id>", summary="A user's account", tags=["admin"])
def admin_get_user(user_id: str) -> CreditsResponse:
    admin(app)
    return CreditsResponse(**account_view(ledger_service().find_account(user_id)))


lambda_handler = entry_point(app)
