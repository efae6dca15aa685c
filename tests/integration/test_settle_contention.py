"""Many clients on ONE account, on DynamoDB Local: settles carry no balance guard, so
they never retry each other; balance_after still forms one exact chain."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal

import pytest
from llmcredits.dal.upstream import LiteLLMUpstream
from llmcredits.domain.ledger import EntryType, Tier
from llmcredits.domain.ports import StaleRead
from llmcredits.domain.pricing import catalog
from llmcredits.errors import ApiError
from llmcredits.local.dev_upstream import DevUpstream
from llmcredits.models_chat import ChatCompletionRequest
from llmcredits.services.chat import ChatService
from llmcredits.services.reconcile import reconcile_account

pytestmark = pytest.mark.dynamodb_local

MODEL = "together_ai/meta-llama/Llama-3.3-70B-Instruct-Turbo"


def all_entries(ledger, user):
    page = ledger.history(user, 200, None, None)
    entries = list(page.entries)
    while page.next_cursor:
        page = ledger.history(user, 200, page.next_cursor, None)
        entries.extend(page.entries)
    return entries


def assert_exact_chain(entries, balance: Decimal) -> None:
    """Each entry's balance_after minus its amount is the previous entry's balance_after
    (or 0 for the first): one serial order explains every recorded balance."""
    after = {e.balance_after for e in entries}
    assert len(after) == len(entries)  # no two changes claim the same resulting balance
    befores = sorted(e.balance_after - e.amount for e in entries)
    assert befores == sorted((after - {balance}) | {Decimal(0)})


@pytest.mark.parametrize("clients", [16, 64])
def test_clients_on_one_account_settle_without_retries(local_ledger, clients, monkeypatch):
    from llmcredits.local.dev_server import StandInServer

    # 64 simultaneous connects overflow the stand-in's default listen backlog of 5.
    monkeypatch.setattr(StandInServer, "request_queue_size", 128)
    user = f"busy-{clients}"
    local_ledger.account(user)
    local_ledger._store.set_tier(user, Tier.ENTERPRISE, "now")
    local_ledger.grant(user, Decimal(100), EntryType.BONUS, "seed", actor="t")
    store = local_ledger._store
    stale = []
    settle = store.settle

    def counted(*args, **kwargs):
        try:
            return settle(*args, **kwargs)
        except StaleRead:
            stale.append(1)
            raise

    store.settle = counted
    with DevUpstream() as up:
        chat = ChatService(local_ledger, catalog(), LiteLLMUpstream(up.url, None))

        def send(i: int) -> int:
            request = ChatCompletionRequest.model_validate(
                {"model": MODEL, "messages": [{"role": "user", "content": f"hi {i}"}],
                 "max_tokens": 50 + i})
            try:
                result = chat.complete(user, request, power_level_header=None,
                                       request_id=f"r{i}")
            except ApiError as err:
                return err.status
            assert "X-Credits-Settlement" not in result.headers  # committed, not pending
            return result.status

        with ThreadPoolExecutor(max_workers=clients) as pool:
            statuses = list(pool.map(send, range(clients * 3)))
    assert set(statuses) <= {200, 402, 429}, statuses
    assert statuses.count(200) > 0
    assert stale == []  # no settle re-planned: nothing to retry without a balance guard
    account = local_ledger.account(user)
    assert account.held == 0 and store.sum_open_holds(user) == 0
    entries = all_entries(local_ledger, user)
    assert len([e for e in entries if e.type is EntryType.USAGE]) == statuses.count(200)
    assert sum(e.amount for e in entries) == account.balance
    assert_exact_chain(entries, account.balance)
    assert reconcile_account(store, user) == []
