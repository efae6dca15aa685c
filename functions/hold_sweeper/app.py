"""Scheduled: release holds of chat requests that died before settling.

A hold older than the chat function's timeout plus a margin cannot belong to a live
request, so giving it back is safe; each release is conditional on the hold existing
and having no recorded settlement: a hold whose answer exists is settled instead.
"""

import os
from typing import Any

from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.typing import LambdaContext
from llmcredits.bootstrap import ledger_service
from llmcredits.http.api import logger, metrics, tracer


@logger.inject_lambda_context
@tracer.capture_lambda_handler
@metrics.log_metrics(raise_on_empty_metrics=False)
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    max_age = int(os.environ.get("HOLD_MAX_AGE_SECONDS", "960"))
    result = ledger_service().sweep_holds(max_age)
    released = result.released
    for hold in released:
        logger.warning("released a stale hold", extra={"user_id": hold.user_id,
                                                       "hold_id": hold.id,
                                                       "amount": str(hold.amount),
                                                       "request_id": hold.request_id})
    metrics.add_metric(name="StaleHoldsReleased", unit=MetricUnit.Count, value=len(released))
    metrics.add_metric(name="StaleHoldsSettled", unit=MetricUnit.Count,
                       value=len(result.settled))
    return {"released": len(released), "settled": len(result.settled)}
