"""Composition root: wires services to their AWS adapters once per container."""

from __future__ import annotations

import os
import sys
from decimal import Decimal
from functools import cache
from typing import TYPE_CHECKING

import boto3

from llmcredits.dal.aws import dynamodb_client, table_name
from llmcredits.dal.dynamodb_ledger import DynamoLedgerStore
from llmcredits.domain.ledger import Tier
from llmcredits.services.ledger import LedgerService

if TYPE_CHECKING:
    from llmcredits.dal.dynamodb_alerts import DynamoAlertStore
    from llmcredits.dal.dynamodb_api_keys import DynamoApiKeyStore
    from llmcredits.dal.dynamodb_auto_topup import DynamoAutoTopupStore
    from llmcredits.dal.dynamodb_byok import DynamoByokStore
    from llmcredits.dal.dynamodb_usage import DynamoUsageStore
    from llmcredits.dal.kms_envelope import Envelope
    from llmcredits.dal.oidc import OidcJwtVerifier
    from llmcredits.domain.principal import ApiKeyAuthenticator
    from llmcredits.services.account_events import AccountEventsService
    from llmcredits.services.alerts import AlertService, LedgerExpiringLots
    from llmcredits.services.api_keys import ApiKeysService
    from llmcredits.services.authorize import Authorizer
    from llmcredits.services.auto_topup import AlertSink, AutoTopupService, AutoTopupWatcher
    from llmcredits.services.byok import ByokService
    from llmcredits.services.chat import ChatService
    from llmcredits.services.generations import GenerationsService
    from llmcredits.services.payments import PaymentsService
    from llmcredits.services.usage import UsageAggregator, UsageService


@cache
def ledger_service() -> LedgerService:
    return LedgerService(DynamoLedgerStore(dynamodb_client(), table_name()),
                         promotion=tier_promotion)


def tier_promotion() -> tuple[tuple[Tier, Decimal], ...]:
    """The catalog's promotion thresholds, read on a paid credit only (functions that
    never take payments do not load the catalog)."""
    from llmcredits.domain.pricing import catalog

    return catalog().promotion_thresholds()


@cache
def api_key_store() -> DynamoApiKeyStore:
    from llmcredits.dal.dynamodb_api_keys import DynamoApiKeyStore

    return DynamoApiKeyStore(dynamodb_client(), table_name())


@cache
def api_keys_service() -> ApiKeysService:
    from llmcredits.domain.pricing import catalog
    from llmcredits.services.api_keys import ApiKeysService

    return ApiKeysService(
        api_key_store(),
        ensure_account=ledger_service().account,
        tier_rate_limit=catalog().rate_limit,
        power_levels=list(catalog().power_levels),
    )


def api_key_authenticator() -> ApiKeyAuthenticator:
    """What the Lambda authorizer calls for an ``llmc-`` bearer (one GetItem by hash)."""
    return api_keys_service()


def reset() -> None:
    """Forget cached clients and services (tests and the local stack change env)."""
    ledger_service.cache_clear()
    api_key_store.cache_clear()
    api_keys_service.cache_clear()
    chat_service.cache_clear()
    payments_service.cache_clear()
    auto_topup_store.cache_clear()
    auto_topup_service.cache_clear()
    byok_store.cache_clear()
    byok_envelope.cache_clear()
    byok_service.cache_clear()
    envelope_module = sys.modules.get("llmcredits.dal.kms_envelope")
    if envelope_module is not None:  # never import cryptography just to reset
        envelope_module.kms_client.cache_clear()
    usage_store.cache_clear()
    alert_store.cache_clear()
    alert_envelope.cache_clear()
    alert_service.cache_clear()
    _webhook_sender.cache_clear()
    account_events_service.cache_clear()
    jwt_verifier.cache_clear()
    authorizer.cache_clear()
    dynamodb_client.cache_clear()
    # boto3's default session caches the credentials it resolved first; a changed
    # environment (another DynamoDB Local namespace, say) must be read again.
    boto3.DEFAULT_SESSION = None


@cache
def chat_service() -> ChatService:
    # Imported here so functions that never chat don't pay httpx/pricing at cold start.
    from llmcredits.dal.secrets import secret
    from llmcredits.dal.upstream import LiteLLMUpstream
    from llmcredits.domain.pricing import catalog
    from llmcredits.errors import NotConfigured
    from llmcredits.http.api import tracer
    from llmcredits.services.byok import ByokProviderKeys
    from llmcredits.services.chat import ChatService

    base_url = os.environ.get("LITELLM_PROXY_URL")
    if not base_url:
        raise NotConfigured("Chat is not configured on this deployment (LITELLM_PROXY_URL).")
    tracer.patch(["httpx"])  # trace upstream calls; only the chat function pays the import
    upstream = LiteLLMUpstream(
        base_url,
        secret("LITELLM_MASTER_KEY"),
        timeout_seconds=Decimal(os.environ.get("UPSTREAM_TIMEOUT_SECONDS", "50")),
        idle_seconds=Decimal(os.environ.get("UPSTREAM_IDLE_TIMEOUT_SECONDS")
                             or os.environ.get("UPSTREAM_TIMEOUT_SECONDS", "50")),
    )
    return ChatService(
        ledger_service(),
        catalog(),
        upstream,
        keys=ByokProviderKeys(byok_store(), byok_envelope),
        byok_fee_rate=Decimal(os.environ.get("BYOK_FEE_RATE", "0")),
    )


@cache
def byok_store() -> DynamoByokStore:
    from llmcredits.dal.dynamodb_byok import DynamoByokStore

    return DynamoByokStore(dynamodb_client(), table_name())


@cache
def byok_envelope() -> Envelope:
    """KMS envelope for BYOK keys (imports cryptography: only call when sealing/opening)."""
    from llmcredits.dal.kms_envelope import Envelope, kms_client

    return Envelope(kms_client(), os.environ.get("BYOK_KMS_KEY_ID") or None)


@cache
def byok_service() -> ByokService:
    from llmcredits.services.byok import ByokService

    return ByokService(byok_store(), byok_envelope, ensure_account=ledger_service().account)


@cache
def usage_store() -> DynamoUsageStore:
    """Usage aggregates on the ledger table (the aggregator, GET /usage, reconcile)."""
    from llmcredits.dal.dynamodb_usage import DynamoUsageStore

    return DynamoUsageStore(dynamodb_client(), table_name())


def usage_service() -> UsageService:
    from llmcredits.services.usage import UsageService

    return UsageService(usage_store())


def usage_aggregator() -> UsageAggregator:
    from llmcredits.services.usage import UsageAggregator

    return UsageAggregator(usage_store())


@cache
def payments_service() -> PaymentsService:
    # Imported here so only the purchase and webhook functions load stripe.
    from llmcredits.http.api import tracer

    tracer.patch(["requests"])  # stripe's HTTP client
    from llmcredits.dal.stripe_checkout import StripeCheckout
    from llmcredits.services.payments import PaymentsService, PurchaseConfig

    return PaymentsService(ledger_service(), StripeCheckout.from_env(), PurchaseConfig.from_env(),
                           topups=auto_topup_service())


@cache
def auto_topup_store() -> DynamoAutoTopupStore:
    from llmcredits.dal.dynamodb_auto_topup import DynamoAutoTopupStore

    return DynamoAutoTopupStore(dynamodb_client(), table_name())


def alert_sink() -> AlertSink:
    """Where ``topup.failed`` goes: the alerts outbox (once per event id); the deliverer
    publishes it to the bus and POSTs the user's webhook."""
    from llmcredits.services.alerts import QueuedAlerts

    return QueuedAlerts(alert_service())


@cache
def auto_topup_service() -> AutoTopupService:
    # stripe is imported by the adapter's methods only, when a call needs it.
    from llmcredits.dal.stripe_topups import StripeTopups
    from llmcredits.services.auto_topup import AutoTopupService
    from llmcredits.services.payments import PurchaseConfig

    return AutoTopupService(ledger_service(), auto_topup_store(), StripeTopups.from_env(),
                            PurchaseConfig.from_env(), alert_sink())


def auto_topup_watcher() -> AutoTopupWatcher:
    """The account-events watcher for auto top-up (registered with the stream consumer)."""
    from llmcredits.services.auto_topup import AutoTopupWatcher

    return AutoTopupWatcher(auto_topup_service())


@cache
def jwt_verifier() -> OidcJwtVerifier:
    """One per container: its JWKS cache lives as long as the warm container."""
    from llmcredits.dal.oidc import OidcJwtVerifier

    return OidcJwtVerifier(os.environ.get("OIDC_ISSUER", ""), os.environ.get("OIDC_AUDIENCE", ""),
                           os.environ.get("OIDC_DISCOVERY_URL") or None)


@cache
def authorizer() -> Authorizer:
    from llmcredits.services.authorize import Authorizer

    return Authorizer(jwt_verifier(), api_key_authenticator())


def generations_service() -> GenerationsService:
    from llmcredits.services.generations import GenerationsService

    return GenerationsService(DynamoLedgerStore(dynamodb_client(), table_name()))


@cache
def alert_store() -> DynamoAlertStore:
    from llmcredits.dal.dynamodb_alerts import DynamoAlertStore

    return DynamoAlertStore(dynamodb_client(), table_name())


@cache
def alert_envelope() -> Envelope:
    """KMS envelope of webhook signing secrets (context: user_id + purpose)."""
    from llmcredits.dal.kms_envelope import Envelope, kms_client

    return Envelope(kms_client(), os.environ.get("WEBHOOK_KMS_KEY_ID") or None,
                    context_name="purpose")


def _event_publisher() -> object:
    from llmcredits.dal.events import EventBridgePublisher

    return EventBridgePublisher.from_env()


@cache
def _webhook_sender() -> object:
    from llmcredits.dal.webhook_http import HttpWebhookSender

    return HttpWebhookSender()


@cache
def alert_service() -> AlertService:
    from llmcredits.services.alerts import AlertService

    publisher = cache(_event_publisher)
    return AlertService(
        alert_store(), ledger_service().account, alert_envelope, publisher,  # type: ignore[arg-type]
        _webhook_sender,  # type: ignore[arg-type]
        # The local stack (and `sam local`) set AWS_SAM_LOCAL: http to a loopback host
        # is allowed there only, so a receiver on this machine needs no certificate.
        allow_loopback_http=os.environ.get("AWS_SAM_LOCAL") == "true",
    )


def expiring_lots() -> LedgerExpiringLots:
    """The ledger's lots expiring soon, for the ``credits.expiring`` alert."""
    from llmcredits.services.alerts import LedgerExpiringLots

    return LedgerExpiringLots(ledger_service())


@cache
def account_events_service() -> AccountEventsService:
    """The watchers of account changes (the stream consumer's one service)."""
    from llmcredits.services.account_events import AccountEventsService
    from llmcredits.services.alerts import AlertWatcher

    return AccountEventsService([AlertWatcher(alert_service()), auto_topup_watcher()])
