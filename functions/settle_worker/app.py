"""Scheduled: commit settlements that answered requests recorded on their holds but
could not commit themselves (contention, throttling, an outage, the function dying).

Each is applied exactly once: the transaction deletes the hold and carries a
ClientRequestToken derived from it. ``OldestPendingSettlementSeconds`` and
``SettlementsOlderThanMinute`` feed the alarm "settlements older than a minute".
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
    # Younger holds may still be settling in their own request (harmless, but wasted).
    older_than = int(os.environ.get("SETTLE_AFTER_SECONDS", "20"))
    report = ledger_service().apply_pending_settlements(older_than)
    if report.pending:
        logger.warning("settlements still pending", extra={"pending": report.pending,
                                                           "oldest_s": report.oldest_seconds})
    metrics.add_metric(name="SettlementsApplied", unit=MetricUnit.Count, value=report.applied)
    metrics.add_metric(name="SettlementsPending", unit=MetricUnit.Count, value=report.pending)
    metrics.add_metric(name="SettlementsOlderThanMinute", unit=MetricUnit.Count,
                       value=report.older_than_minute)
    metrics.add_metric(name="OldestPendingSettlementSeconds", unit=MetricUnit.Seconds,
                       value=report.oldest_seconds)
    return {"applied": report.applied, "pending": report.pending,
            "older_than_minute": report.older_than_minute,
            "oldest_seconds": report.oldest_seconds}
