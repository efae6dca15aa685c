"""POST /credits/purchase: open a Stripe Checkout Session for the caller's purchase."""

from typing import Annotated

from aws_lambda_powertools.event_handler import Response
from aws_lambda_powertools.event_handler.openapi.params import Header
from llmcredits.bootstrap import payments_service
from llmcredits.http.api import API_PREFIX, entry_point, json_response, make_app, require_jwt
from llmcredits.http.openapi_responses import JWT_ONLY, REPLAY_HEADERS, created, errors
from llmcredits.models_payments import PurchaseRequest, PurchaseResponse

app = make_app()


@app.post(
    f"{API_PREFIX}/credits/purchase",
    summary="Buy credits with Stripe Checkout",
    description="Pay the returned checkout_url; credits land when Stripe confirms the "
    "payment by webhook. A retry with the same Idempotency-Key returns the same session.",
    tags=["credits"],
    responses={
        **created("Checkout Session created (or the first result of this Idempotency-Key)",
                  PurchaseResponse, REPLAY_HEADERS),
        **errors(JWT_ONLY, (400, "Invalid input: an amount outside the allowed bounds or with more "
                       "than 2 places, or a URL not on the allow-list"),
                 401, 409, 413,
                 (502, "Stripe refused or could not be reached; nothing was charged"), 503),
    },
)
def purchase(
    body: PurchaseRequest,
    idempotency_key: Annotated[str | None, Header(alias="Idempotency-Key", min_length=1,
                                                  max_length=255)] = None,
) -> Response[PurchaseResponse]:
    started = payments_service().start_purchase(
        require_jwt(app).user_id,
        body.amount,
        body.success_url,
        body.cancel_url,
        idempotency_key=idempotency_key,
    )
    headers = {"Idempotent-Replayed": "true"} if started.replayed else None
    return json_response(
        201, {"checkout_url": started.checkout_url, "session_id": started.session_id}, headers
    )


lambda_handler = entry_point(app)
