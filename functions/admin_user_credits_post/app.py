"""POST /admin/users/{user_id}/credits: grant credits (bonus, refund, adjustment), once per key."""

from typing import Annotated

from aws_lambda_powertools.event_handler import Response
from aws_lambda_powertools.event_handler.openapi.params import Header
from llmcredits.bootstrap import ledger_service
from llmcredits.domain.ledger import EntryType
from llmcredits.http.api import API_PREFIX, admin, entry_point, json_response, make_app
from llmcredits.http.openapi_responses import REPLAY_HEADERS, admin_errors, created
from llmcredits.models import AdminGrantRequest, AdminGrantResponse

app = make_app()


@app.post(
    f"{API_PREFIX}/admin/users/<user_id>/credits",
    summary="Grant credits",
    tags=["admin"],
    description="Adds a positive amount to the user's balance with one ledger entry and "
    "one lot (the account is created if the user never called the API). The lot expires "
    "at `expires_at` or `expires_in_days` from now (one of them; default never). A retry "
    "with the same "
    "Idempotency-Key returns the first result (header Idempotent-Replayed: true) and "
    "changes nothing.",
    responses={
        **created("Granted (or the first result of this Idempotency-Key)", AdminGrantResponse,
                  REPLAY_HEADERS),
        **admin_errors(400, 401, 409, 413, 503),
    },
)
def admin_grant(
    user_id: str,
    body: AdminGrantRequest,
    idempotency_key: Annotated[str | None, Header(alias="Idempotency-Key", max_length=255)] = None,
) -> Response[AdminGrantResponse]:
    who = admin(app)
    result = ledger_service().grant(
        user_id,
        body.amount,
        EntryType(body.type),
        body.reason,
        actor=who.user_id,
        idempotency_key=idempotency_key,
        expires_at=body.expires_at,
        expires_in_days=body.expires_in_days,
    )
    headers = {"Idempotent-Replayed": "true"} if result.replayed else None
    return json_response(result.status, result.body, headers)


lambda_handler = entry_point(app)
