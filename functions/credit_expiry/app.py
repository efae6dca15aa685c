"""Scheduled: expire what is left of each due credit lot, once, as one ``expiry`` entry.

Each expiry is a conditional transaction like every other balance change (the lot
leaves the account's lot list in it, under the list's version), so a second run, or a
concurrent one, finds nothing left to expire. A lot that holds open at its expiry time
may still be charged against stays spendable until they settle (``deferred``).
Then ``credits.expiring`` is recorded once per lot that expires within 7 days (the
alert deliverer publishes and POSTs it).
"""

from typing import Any

from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.typing import LambdaContext
from llmcredits.bootstrap import alert_service, expiring_lots, ledger_service
from llmcredits.http.api import logger, metrics, tracer


@logger.inject_lambda_context
@tracer.capture_lambda_handler
@metrics.log_metrics(raise_on_empty_metrics=False)
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    report = ledger_service().expire_due_lots()
    for entry in report.expired:
        logger.info("credit lot expired", extra={"user_id": entry.user_id,
                                                 "entry_id": entry.id,
                                                 "lot_id": entry.metadata.get("lot_id"),
                                                 "amount": str(entry.amount)})
    for waiting in report.deferred:
        logger.info("credit lot expiry deferred (holds open)",
                    extra={"user_id": waiting.user_id, "lot_id": waiting.lot.id})
    metrics.add_metric(name="CreditLotsExpired", unit=MetricUnit.Count,
                       value=len(report.expired))
    metrics.add_metric(name="CreditLotsDeferred", unit=MetricUnit.Count,
                       value=len(report.deferred))
    warned = alert_service().warn_expiring(expiring_lots(), deliver=False)
    metrics.add_metric(name="CreditsExpiringAlerts", unit=MetricUnit.Count, value=warned)
    return {"expired": len(report.expired), "deferred": len(report.deferred),
            "tidied": report.tidied, "expiring_alerts": warned}
