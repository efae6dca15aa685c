"""DynamoDB stream (account items only) -> the account watchers (alerts; auto top-up).

The event source mapping's filter passes only account items' INSERT/MODIFY records.
Records of one account come in order; at the first record that fails, this and every
later record of the batch are reported failed, so Lambda's retry starts there and the
watchers see the changes in order again (they are idempotent: a change seen twice
records nothing new).
"""

from typing import Any

from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.batch import BatchProcessor, EventType
from aws_lambda_powertools.utilities.data_classes.dynamo_db_stream_event import DynamoDBRecord
from aws_lambda_powertools.utilities.typing import LambdaContext
from llmcredits.bootstrap import account_events_service
from llmcredits.dal.account_stream import account_change_from_record
from llmcredits.http.api import logger, metrics, tracer

processor = BatchProcessor(event_type=EventType.DynamoDBStreams, logger=logger)


class EarlierRecordFailed(Exception):
    """Not tried: an earlier record of the batch failed (order is kept on retry)."""


def _handler() -> Any:
    failed = False

    def handle(record: DynamoDBRecord) -> None:
        nonlocal failed
        if failed:
            raise EarlierRecordFailed(record.dynamodb.sequence_number if record.dynamodb
                                      else "")
        try:
            account_events_service().handle(account_change_from_record(record.raw_event))
        except Exception:
            failed = True
            raise

    return handle


@logger.inject_lambda_context
@tracer.capture_lambda_handler
@metrics.log_metrics(raise_on_empty_metrics=False)
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    records = event.get("Records") or []
    with processor(records=records, handler=_handler()):
        processor.process()
    metrics.add_metric(name="AccountChangesHandled", unit=MetricUnit.Count,
                       value=len(processor.success_messages))
    if processor.fail_messages:
        metrics.add_metric(name="AccountChangesFailed", unit=MetricUnit.Count,
                           value=len(processor.fail_messages))
    return processor.response()
