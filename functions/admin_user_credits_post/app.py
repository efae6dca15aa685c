"""POST /admin/users/{user_id}/credits: grant credits (bonus, refund, adjustment), once per key."""

from typing import Annotated

from aws_lambda_powertools.event_handler import Response
from aws_lambda_powertools.event_handler.openapi.params import Header
from llmcredits.bootstrap import ledger_service
from llmcredits.domain.ledger import EntryType
from llmcredits.http.api import API_PREFIX, admin, entry_point, json_response, make_app
from llmcredits.models import AdminGrantRequest, AdminGrantResponse

app = make_app()


@app.post(
    f"{API_PREFIX}/admin/users/<user_id>/credits",
    summary="Grant credits",
    tags=["admin"],
    responses={201: {"description": "Granted (or the first result of this Idempotency-Key)",
                     "content": {"application/json": {"model": AdminGrantResponse}}}},
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
    )
    headers = {"Idempotent-Replayed": "true"} if result.replayed else None
    return json_response(result.status, result.body, headers)


lambda_handler = entry_point(app)
