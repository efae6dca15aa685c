"""Invariant 1 for an API key's limit under concurrency, on DynamoDB Local.

64 concurrent chat requests through one key whose limit is worth about ten requests, on
an account with plenty of credit: the key's spend never passes its limit, the others get
402 ``key_limit_reached``, the ledger sums to the balance and no hold is left.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal

import pytest
from llmcredits.dal.dynamodb_api_keys import DynamoApiKeyStore
from llmcredits.dal.dynamodb_ledger import DynamoLedgerStore
from llmcredits.dal.upstream import LiteLLMUpstream
from llmcredits.domain.api_keys import KeyCredential, secret_hash
from llmcredits.domain.ledger import EntryType, Tier
from llmcredits.domain.pricing import catalog, prompt_token_bound
from llmcredits.errors import KeyLimitReached
from llmcredits.local.dev_upstream import DevUpstream
from llmcredits.models_chat import ChatCompletionRequest
from llmcredits.services.api_keys import ApiKeysService, KeySettings
from llmcredits.services.chat import ChatService
from llmcredits.services.ledger import LedgerService
from llmcredits.services.reconcile import reconcile_account

pytestmark = pytest.mark.dynamodb_local

MODEL = "together_ai/meta-llama/Llama-3.3-70B-Instruct-Turbo"
MESSAGES = [{"role": "user", "content": "Count the ways a key budget can stay exact."}]
MAX_TOKENS = 200


def test_64_concurrent_chats_through_one_key_never_pass_its_limit(local_table):
    client, name = local_table
    keys = DynamoApiKeyStore(client, name)
    ledger = LedgerService(DynamoLedgerStore(client, name))
    service = ApiKeysService(keys, ensure_account=ledger.account,
                             tier_rate_limit=catalog().rate_limit,
                             power_levels=list(catalog().power_levels))
    user = "keyed"
    ledger.account(user)
    ledger._store.set_tier(user, Tier.PROFESSIONAL, "now")
    ledger.grant(user, Decimal(1000), EntryType.BONUS, "seed", actor="t")
    route = catalog().resolve(MODEL, None, "professional")
    hold = catalog().charge(route, None, "professional", prompt_token_bound(MESSAGES), MAX_TOKENS)
    limit = (hold * 10).quantize(Decimal("0.000001"))
    secret, key = service.create(user, KeySettings(limit=limit))
    credential = KeyCredential(key.id, secret_hash(secret))

    with DevUpstream() as up:
        chat = ChatService(ledger, catalog(), LiteLLMUpstream(up.url, None))

        def send(i: int) -> Exception | None:
            request = ChatCompletionRequest.model_validate(
                {"model": MODEL, "messages": MESSAGES, "max_tokens": MAX_TOKENS})
            try:
                extras = service.chat_extras(user, credential)
                chat.complete(user, request, power_level_header=None, request_id=f"r{i}",
                              extras=extras, key=extras.key)
            except KeyLimitReached as exc:
                return exc
            return None

        with ThreadPoolExecutor(max_workers=64) as pool:
            outcomes = list(pool.map(send, range(64)))
        upstream_calls = len(up.requests)

    refused = [o for o in outcomes if o is not None]
    served = 64 - len(refused)
    assert served >= 10 and refused, (served, len(refused))
    assert upstream_calls == served  # a refused request never went upstream
    stored = keys.get_key(user, key.id)
    assert stored is not None
    assert stored.period_spent <= limit and stored.held == 0
    assert stored.headroom == limit - stored.period_spent
    entries = ledger.history(user, 200, None, EntryType.USAGE, key.id).entries
    assert len(entries) == served
    assert sum(-e.amount for e in entries) == stored.usage == stored.period_spent
    account = ledger.account(user)
    assert account.held == 0
    assert reconcile_account(ledger._store, user) == []


def test_64_concurrent_reserves_on_one_key_hold_at_most_its_limit(local_table):
    """The reserve write alone, without the chat path's per-minute account counter (which
    serialises the first wave of chat requests): the key's headroom condition is all that
    stops 64 plans made from reads taken at the same moment."""
    client, name = local_table
    keys = DynamoApiKeyStore(client, name)
    ledger = LedgerService(DynamoLedgerStore(client, name))
    service = ApiKeysService(keys, ensure_account=ledger.account,
                             tier_rate_limit=catalog().rate_limit,
                             power_levels=list(catalog().power_levels))
    user = "keyed-holds"
    ledger.grant(user, Decimal(1000), EntryType.BONUS, "seed", actor="t")
    secret, key = service.create(user, KeySettings(limit=Decimal(10)))
    credential = KeyCredential(key.id, secret_hash(secret))

    def reserve(_: int):
        extras = service.chat_extras(user, credential)
        try:
            hold = ledger.reserve(ledger.account(user), Decimal(1), rate_limit=None,
                                  extra=lambda fresh: extras.on_reserve(fresh, Decimal(1)),
                                  key_id=extras.key_id)
        except KeyLimitReached:
            return None
        return hold, extras

    with ThreadPoolExecutor(max_workers=64) as pool:
        held = [h for h in pool.map(reserve, range(64)) if h is not None]
    holds = [hold for hold, _ in held]
    stored = keys.get_key(user, key.id)
    assert stored is not None
    assert len(holds) == 10 and stored.held == 10 and stored.headroom == 0
    for hold, extras in held:
        assert ledger.release(hold, None, extras.on_release(hold))
    stored = keys.get_key(user, key.id)
    assert stored is not None and stored.held == 0 and stored.headroom == 10
    assert reconcile_account(ledger._store, user) == []
