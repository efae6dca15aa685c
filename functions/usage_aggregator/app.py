"""DynamoDB stream -> usage aggregates (one write per user/day/provider/model per batch).

The event source mapping filters to usage ledger INSERTs. Two phases per batch:

1. Powertools BatchProcessor runs ``parse`` on each record: a record that cannot be
   read (a poison pill) fails alone; the others are collected.
2. The good records are grouped and each group is written once (aggregate ADD plus a
   marker per entry, in one transaction). A group whose write fails marks all of its
   records failed.

Failures go back as ``batchItemFailures``; Lambda retries from the lowest failed
sequence number, so later records come again too: the per-entry markers make that
harmless (an entry is counted once, however often it is delivered).
"""

from typing import Any

from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.batch import BatchProcessor, EventType
from aws_lambda_powertools.utilities.data_classes.dynamo_db_stream_event import DynamoDBRecord
from aws_lambda_powertools.utilities.typing import LambdaContext
from llmcredits.bootstrap import usage_aggregator
from llmcredits.dal.dynamodb_usage import usage_from_stream_record
from llmcredits.http.api import logger, metrics, tracer
from llmcredits.services.usage import UsageRecord

processor = BatchProcessor(event_type=EventType.DynamoDBStreams, logger=logger)


def parse(record: DynamoDBRecord) -> UsageRecord | None:
    """Phase 1, per record: raises PoisonRecord for an unreadable usage entry."""
    return usage_from_stream_record(record.raw_event)


@logger.inject_lambda_context
@tracer.capture_lambda_handler
@metrics.log_metrics(raise_on_empty_metrics=False)
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    records = event.get("Records") or []
    with processor(records=records, handler=parse):
        results = processor.process()
        poisoned = len(processor.fail_messages)
        good = [
            (usage, raw)
            for status, usage, raw in results
            if status == "success" and usage is not None
        ]
        outcome = usage_aggregator().apply(usage for usage, _ in good)
        for usage, raw in good:  # phase 2 failures: every record of a failed group
            exc = outcome.failed.get(usage.entry_id)
            if exc is not None:
                processor.success_messages.remove(raw)
                processor.failure_handler(DynamoDBRecord(raw), (type(exc), exc, exc.__traceback__))
    metrics.add_metric(name="UsageEntriesAggregated", unit=MetricUnit.Count, value=outcome.applied)
    metrics.add_metric(name="UsageEntriesDuplicate", unit=MetricUnit.Count,
                       value=outcome.duplicates)
    metrics.add_metric(name="UsageAggregateWrites", unit=MetricUnit.Count, value=outcome.groups)
    metrics.add_metric(name="UsageRecordsFailed", unit=MetricUnit.Count,
                       value=len(processor.fail_messages))
    if poisoned:
        metrics.add_metric(name="UsageRecordsPoisoned", unit=MetricUnit.Count, value=poisoned)
    logger.info("usage batch", extra={"records": len(records), "groups": outcome.groups,
                                      "applied": outcome.applied,
                                      "duplicates": outcome.duplicates,
                                      "failed": len(processor.fail_messages)})
    return processor.response()
