"""Integration fixtures: a fresh ledger table on DynamoDB Local per test."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from llmcredits.dal.dynamodb_ledger import DynamoLedgerStore
from llmcredits.services.ledger import LedgerService

from tests.support import create_table_from_template


@pytest.fixture
def local_table(dynamodb_local_client_kwargs: dict[str, str]) -> Iterator[tuple[Any, str]]:
    client = boto3.client(
        "dynamodb",
        config=boto3.session.Config(max_pool_connections=64),
        **dynamodb_local_client_kwargs,
    )
    name = f"ledger-{uuid.uuid4().hex[:8]}"
    create_table_from_template(client, name)
    yield client, name
    client.delete_table(TableName=name)


@pytest.fixture
def local_ledger(local_table: tuple[Any, str]) -> LedgerService:
    client, name = local_table
    return LedgerService(DynamoLedgerStore(client, name))
