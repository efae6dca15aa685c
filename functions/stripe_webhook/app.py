"""POST /stripe/webhook: Stripe events, verified on the raw body (no JWT on this route).

Any 2xx tells Stripe the event landed; anything else makes it retry for days, which is
what we want for our own failures (and for a refund that overtook its purchase).
"""

from aws_lambda_powertools.event_handler import Response
from aws_lambda_powertools.metrics import MetricUnit
from llmcredits.bootstrap import payments_service
from llmcredits.http.api import API_PREFIX, entry_point, header, json_response, make_app, metrics
from llmcredits.http.openapi_responses import (
    STRIPE_EVENT_BODY,
    STRIPE_SIGNATURE_PARAMETER,
    errors,
    ok,
)
from llmcredits.models_payments import WebhookResponse
from llmcredits.services.payments import IGNORED_METRICS

app = make_app()

# Checkout Session and Charge events are a few KB; leave ample room over that.
MAX_BODY_BYTES = 1024 * 1024


@app.post(
    f"{API_PREFIX}/stripe/webhook",
    summary="Stripe webhook",
    description="Signed by Stripe (Stripe-Signature over the raw body, 300 s tolerance). "
    "Applies each event and each Checkout Session at most once.",
    tags=["payments"],
    # The handler reads the raw body (the signature covers its exact bytes), so the
    # body and the signature header are documented here, not by a model.
    openapi_extensions={
        "parameters": [STRIPE_SIGNATURE_PARAMETER],
        "requestBody": STRIPE_EVENT_BODY,
    },
    responses={
        **ok("Received (applied now, earlier, or not relevant)", WebhookResponse),
        **errors((400, "Missing or invalid Stripe-Signature, or not a Stripe event"), 413,
                 (503, "Busy, or a refund/dispute whose purchase is not credited yet: Stripe "
                       "retries it")),
    },
)
def stripe_webhook() -> Response[WebhookResponse]:
    # The signature covers the exact bytes Stripe sent: never a re-serialised model.
    # decoded_body undoes API Gateway's base64 for non-text content types.
    payload = app.current_event.decoded_body or ""
    outcome = payments_service().handle_webhook(payload, header(app, "Stripe-Signature"))
    metric = IGNORED_METRICS.get(outcome.outcome)
    if metric:  # a payment that is not ours: acknowledged, counted (and alarmed)
        metrics.add_metric(name=metric, unit=MetricUnit.Count, value=1)
    return json_response(200, outcome.body())


lambda_handler = entry_point(app, max_body_bytes=MAX_BODY_BYTES)
