"""Composition root: wires services to their AWS adapters once per container."""

from __future__ import annotations

import os
from decimal import Decimal
from functools import cache
from typing import TYPE_CHECKING

from llmcredits.dal.aws import dynamodb_client, table_name
from llmcredits.dal.dynamodb_ledger import DynamoLedgerStore
from llmcredits.services.ledger import LedgerService

if TYPE_CHECKING:
    from llmcredits.services.chat import ChatService


@cache
def ledger_service() -> LedgerService:
    return LedgerService(DynamoLedgerStore(dynamodb_client(), table_name()))


def reset() -> None:
    """Forget cached clients and services (tests and the local stack change env)."""
    ledger_service.cache_clear()
    chat_service.cache_clear()
    dynamodb_client.cache_clear()


@cache
def chat_service() -> ChatService:
    # Imported here so functions that never chat don't pay httpx/pricing at cold start.
    from llmcredits.dal.secrets import secret
    from llmcredits.dal.upstream import LiteLLMUpstream
    from llmcredits.domain.pricing import catalog
    from llmcredits.services.chat import ChatService

    base_url = os.environ.get("LITELLM_PROXY_URL")
    if not base_url:
        raise RuntimeError("LITELLM_PROXY_URL is not configured")
    upstream = LiteLLMUpstream(
        base_url,
        secret("LITELLM_MASTER_KEY"),
        timeout_seconds=Decimal(os.environ.get("UPSTREAM_TIMEOUT_SECONDS", "50")),
    )
    return ChatService(
        ledger_service(),
        catalog(),
        upstream,
        byok_fee_rate=Decimal(os.environ.get("BYOK_FEE_RATE", "0")),
    )
