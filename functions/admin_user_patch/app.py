"""PATCH /admin/users/{user_id}: set a user's tier and/or monthly cap."""

from llmcredits.bootstrap import ledger_service
from llmcredits.domain.ledger import Tier
from llmcredits.errors import InvalidRequest
from llmcredits.http.api import API_PREFIX, admin, entry_point, make_app
from llmcredits.http.openapi_responses import admin_errors, ok
from llmcredits.models import AdminPatchRequest, CreditsResponse
from llmcredits.views import account_view

app = make_app()


@app.patch(
    f"{API_PREFIX}/admin/users/<user_id>",
    summary="Set tier or monthly cap",
    tags=["admin"],
    description="Give `tier` and/or `monthly_cap` (null removes the cap). Creates the "
    "account if the user never called the API.",
    responses={**ok("The account after the change"),
               **admin_errors(400, 401, 413, 503)},
)
def admin_patch_user(user_id: str, body: AdminPatchRequest) -> CreditsResponse:
    admin(app)
    fields = body.model_fields_set
    if not fields:
        raise InvalidRequest("Give tier and/or monthly_cap.")
    if "tier" in fields and body.tier is None:
        raise InvalidRequest("tier cannot be null.", param="tier")
    service = ledger_service()
    account = service.account(user_id)
    if body.tier is not None:
        account = service.set_tier(user_id, Tier(body.tier))
    if "monthly_cap" in fields:
        account = service.set_monthly_cap(user_id, body.monthly_cap)
    return CreditsResponse(**account_view(account))


lambda_handler = entry_point(app)
