"""Invariant 1 for metered chat under concurrency, on DynamoDB Local.

64 concurrent chat requests from a user who can afford about ten: the balance never
goes below zero, month spend never passes the cap, the ledger sums to the balance and
no hold is left afterwards.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal

import pytest
from llmcredits.dal.upstream import LiteLLMUpstream
from llmcredits.domain.ledger import EntryType, Tier
from llmcredits.domain.pricing import catalog, prompt_token_bound
from llmcredits.errors import InsufficientCredits, MonthlyCapReached
from llmcredits.local.dev_upstream import DevUpstream
from llmcredits.models_chat import ChatCompletionRequest
from llmcredits.services.chat import ChatService
from llmcredits.services.reconcile import reconcile_account

pytestmark = pytest.mark.dynamodb_local

MODEL = "together_ai/meta-llama/Llama-3.3-70B-Instruct-Turbo"
MESSAGES = [{"role": "user", "content": "Count the ways a ledger can stay exact."}]
MAX_TOKENS = 200


def one_hold(tier: str) -> Decimal:
    route = catalog().resolve(MODEL, None, tier)
    return catalog().charge(route, None, tier, prompt_token_bound(MESSAGES), MAX_TOKENS)


def run_64(local_ledger, user: str) -> tuple[int, list[Exception]]:
    with DevUpstream() as up:
        chat = ChatService(local_ledger, catalog(), LiteLLMUpstream(up.url, None))

        def send(i: int) -> Exception | None:
            request = ChatCompletionRequest.model_validate(
                {"model": MODEL, "messages": MESSAGES, "max_tokens": MAX_TOKENS}
            )
            try:
                chat.complete(user, request, power_level_header=None, request_id=f"r{i}")
            except (InsufficientCredits, MonthlyCapReached) as exc:
                return exc
            return None

        with ThreadPoolExecutor(max_workers=64) as pool:
            outcomes = list(pool.map(send, range(64)))
        upstream_calls = len(up.requests)
    refused = [o for o in outcomes if o is not None]
    assert upstream_calls == 64 - len(refused)  # a refused request never went upstream
    return 64 - len(refused), refused


def usage_entries(local_ledger, user):
    page = local_ledger.history(user, 200, None, EntryType.USAGE)
    return page.entries


def test_64_concurrent_chats_never_overdraw(local_ledger):
    user = "chatty"
    local_ledger.account(user)
    local_ledger._store.set_tier(user, Tier.PROFESSIONAL, "now")
    hold = one_hold("professional")
    local_ledger.grant(user, hold * 10 + hold / 2, EntryType.BONUS, "seed", actor="t")
    served, refused = run_64(local_ledger, user)
    assert served >= 10 and refused, (served, len(refused))
    assert all(isinstance(r, InsufficientCredits) for r in refused)
    account = local_ledger.account(user)
    assert account.balance >= 0 and account.held == 0
    entries = usage_entries(local_ledger, user)
    assert len(entries) == served
    assert all(e.balance_after >= 0 for e in entries)
    assert reconcile_account(local_ledger._store, user) == []


def test_64_concurrent_chats_never_pass_the_cap(local_ledger):
    user = "capped-chatty"
    local_ledger.account(user)
    local_ledger._store.set_tier(user, Tier.PROFESSIONAL, "now")
    hold = one_hold("professional")
    local_ledger.grant(user, Decimal(1000), EntryType.BONUS, "seed", actor="t")
    cap = (hold * 10).quantize(Decimal("0.000001"))
    local_ledger.set_monthly_cap(user, cap)
    served, refused = run_64(local_ledger, user)
    assert served >= 10 and refused
    assert all(isinstance(r, MonthlyCapReached) for r in refused)
    account = local_ledger.account(user)
    assert account.month_spent <= cap and account.held == 0
    assert account.cap_headroom == cap - account.month_spent
    assert reconcile_account(local_ledger._store, user) == []
