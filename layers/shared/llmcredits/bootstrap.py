"""Composition root: wires services to their AWS adapters once per container."""

from __future__ import annotations

from functools import cache

from llmcredits.dal.aws import dynamodb_client, table_name
from llmcredits.dal.dynamodb_ledger import DynamoLedgerStore
from llmcredits.services.ledger import LedgerService


@cache
def ledger_service() -> LedgerService:
    return LedgerService(DynamoLedgerStore(dynamodb_client(), table_name()))


def reset() -> None:
    """Forget cached clients and services (tests and the local stack change env)."""
    ledger_service.cache_clear()
    dynamodb_client.cache_clear()
