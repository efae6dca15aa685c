"""Scheduled: deliver alert events that are due (first attempts that failed, retries
with backoff for 24 h), to the EventBridge bus and the users' signed webhooks."""

from typing import Any

from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.typing import LambdaContext
from llmcredits.bootstrap import alert_service
from llmcredits.http.api import logger, metrics, tracer


@logger.inject_lambda_context
@tracer.capture_lambda_handler
@metrics.log_metrics(raise_on_empty_metrics=False)
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    report = alert_service().deliver_due()
    metrics.add_metric(name="AlertsDelivered", unit=MetricUnit.Count, value=report.delivered)
    metrics.add_metric(name="AlertsRetrying", unit=MetricUnit.Count, value=report.retrying)
    metrics.add_metric(name="AlertsGivenUp", unit=MetricUnit.Count, value=report.failed)
    return {"delivered": report.delivered, "published": report.published,
            "retrying": report.retrying, "failed": report.failed, "busy": report.busy}
