"""GET /models: the catalog in the OpenAI list shape, with prices for the caller's tier."""

from typing import Annotated

from aws_lambda_powertools.event_handler.openapi.params import Query
from llmcredits.bootstrap import ledger_service
from llmcredits.domain.pricing import catalog
from llmcredits.http.api import API_PREFIX, caller, entry_point, make_app
from llmcredits.http.openapi_responses import errors, ok
from llmcredits.models_catalog import ModelList, model_view

app = make_app()


@app.get(
    f"{API_PREFIX}/models",
    summary="Models, their power levels and prices",
    tags=["models"],
    description="The OpenAI list shape; each model also shows its provider, power levels, "
    "the price for the caller's tier and whether that tier may use it. `?power_level=` "
    "keeps the models of one level (priced at it).",
    responses={**ok("The catalog"), **errors((400, "Unknown power_level"), 401, 503)},
)
def list_models(
    power_level: Annotated[str | None, Query(max_length=64)] = None,
) -> ModelList:
    user_id = caller(app).user_id
    prices = catalog()
    models = prices.models_in(power_level)  # an unknown power level is a 400
    tier = ledger_service().account(user_id).tier.value
    return ModelList(data=[model_view(prices, m, tier, power_level) for m in models])


lambda_handler = entry_point(app)
