"""boto3 clients, created once per container and reused across warm invocations."""

from __future__ import annotations

import os
from functools import cache
from typing import Any

import boto3
from botocore.config import Config

_CONFIG = Config(retries={"mode": "standard", "max_attempts": 3}, connect_timeout=2, read_timeout=5)


def region() -> str:
    return os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"


@cache
def dynamodb_client() -> Any:
    """DynamoDB, or DynamoDB Local / any endpoint when DYNAMODB_ENDPOINT is set."""
    return boto3.client(
        "dynamodb",
        region_name=region(),
        endpoint_url=os.environ.get("DYNAMODB_ENDPOINT") or None,
        config=_CONFIG,
    )


def table_name() -> str:
    return os.environ.get("TABLE_NAME", "llmcredits-local")
