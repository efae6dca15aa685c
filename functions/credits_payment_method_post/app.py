"""POST /credits/payment-method: a Stripe Checkout Session in setup mode that saves a card
for auto top-up (the user's Stripe customer is created once)."""

from aws_lambda_powertools.event_handler import Response
from llmcredits.bootstrap import auto_topup_service
from llmcredits.http.api import API_PREFIX, entry_point, json_response, make_app, require_jwt
from llmcredits.http.openapi_responses import JWT_ONLY, created, errors
from llmcredits.models_auto_topup import PaymentMethodRequest, PaymentMethodResponse

app = make_app()


@app.post(
    f"{API_PREFIX}/credits/payment-method",
    summary="Save a card for auto top-up",
    description="Open the returned checkout_url to save a card (Stripe Checkout, setup "
    "mode); the card is saved when Stripe confirms it by webhook.",
    tags=["credits"],
    responses={
        **created("Checkout Session (setup mode) created", PaymentMethodResponse),
        **errors(JWT_ONLY, (400, "Invalid input: a URL not on the allow-list"), 401, 413,
                 (502, "Stripe refused or could not be reached"), 503),
    },
)
def payment_method(body: PaymentMethodRequest) -> Response[PaymentMethodResponse]:
    url = auto_topup_service().start_payment_method(
        require_jwt(app).user_id, body.success_url, body.cancel_url)
    return json_response(201, {"checkout_url": url})


lambda_handler = entry_point(app)
