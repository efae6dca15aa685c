"""Scheduled: check DESIGN invariants 2 and 4 for every account, log each discrepancy.

A key (user, day, provider, model) with usage younger than RECONCILE_GRACE_SECONDS is
skipped this run (its stream records may still be in flight); an inconsistent account
is re-read once before it is reported.
"""

import os
import time
from typing import Any

from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.typing import LambdaContext
from llmcredits.bootstrap import usage_store
from llmcredits.dal.aws import dynamodb_client, table_name
from llmcredits.dal.dynamodb_ledger import DynamoLedgerStore
from llmcredits.http.api import logger, metrics, tracer
from llmcredits.services.reconcile import reconcile_all
from llmcredits.units import Seconds


@logger.inject_lambda_context
@tracer.capture_lambda_handler
@metrics.log_metrics(raise_on_empty_metrics=False)
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    report = reconcile_all(
        DynamoLedgerStore(dynamodb_client(), table_name()),
        usage_store(),
        grace_seconds=int(os.environ.get("RECONCILE_GRACE_SECONDS", "300")),
        recheck=lambda: time.sleep(Seconds(os.environ.get("RECONCILE_RECHECK_SECONDS", "1"))),
    )
    for found in report.discrepancies:
        logger.error("invariant violated", extra={"user_id": found.user_id, "what": found.what,
                                                  "stored": str(found.stored),
                                                  "expected": str(found.expected),
                                                  "detail": str(found)})
    metrics.add_metric(name="ReconciledAccounts", unit=MetricUnit.Count, value=report.accounts)
    metrics.add_metric(name="ReconcileDiscrepancies", unit=MetricUnit.Count,
                       value=len(report.discrepancies))
    return {"accounts": report.accounts, "discrepancies": len(report.discrepancies)}
