"""DynamoDB stream -> off-session PaymentIntents for claimed auto top-ups.

The event source mapping delivers only auto top-up items whose ``state`` is
``claimed`` (the watcher's claim, one per account at a time). Each record creates the
claim's PaymentIntent with the top-up's idempotency key, so a redelivered record or a
retry makes no second payment. Stripe unreachable: the record fails (partial batch
response) and the mapping retries it; after its retries it goes to the on-failure queue.
This is a mapping of its own so a slow Stripe never holds back the alerts' stream.
"""

from typing import Any

from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.batch import BatchProcessor, EventType
from aws_lambda_powertools.utilities.data_classes.dynamo_db_stream_event import DynamoDBRecord
from aws_lambda_powertools.utilities.typing import LambdaContext
from llmcredits.bootstrap import auto_topup_service
from llmcredits.http.api import logger, metrics, tracer

processor = BatchProcessor(event_type=EventType.DynamoDBStreams, logger=logger)


def charge_claim(record: DynamoDBRecord) -> str:
    image = (record.raw_event.get("dynamodb") or {}).get("NewImage") or {}
    user_id = (image.get("user_id") or {}).get("S")
    topup_id = (image.get("topup_id") or {}).get("S")
    if not user_id or not topup_id:
        return "ignored"  # not a claim (the filter should not let it through)
    outcome = auto_topup_service().process_claim(user_id, topup_id)
    metrics.add_metric(name=f"AutoTopup_{outcome}", unit=MetricUnit.Count, value=1)
    return outcome


@logger.inject_lambda_context
@tracer.capture_lambda_handler
@metrics.log_metrics(raise_on_empty_metrics=False)
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    with processor(records=event.get("Records") or [], handler=charge_claim):
        processor.process()
    return processor.response()
