"""GET /usage: the caller's usage of the last N days, from the stream-built aggregates."""

from typing import Annotated

from aws_lambda_powertools.event_handler.openapi.params import Query
from llmcredits.bootstrap import usage_service
from llmcredits.http.api import API_PREFIX, caller, entry_point, make_app
from llmcredits.http.openapi_responses import errors, ok
from llmcredits.models_usage import UsageResponse
from llmcredits.services.usage import MAX_DAYS

app = make_app()


@app.get(
    f"{API_PREFIX}/usage",
    summary="Usage totals and breakdowns by provider, model and day",
    tags=["usage"],
    description="Built from the usage ledger by the stream aggregator (eventually "
    "consistent: a request shows up within seconds).",
    responses={**ok("Your usage over the last `days` days"),
               **errors((400, "days outside 1..366"), 401)},
)
def get_usage(days: Annotated[int, Query(ge=1, le=MAX_DAYS)] = 30) -> UsageResponse:
    return usage_service().report(caller(app).user_id, days)


lambda_handler = entry_point(app)
