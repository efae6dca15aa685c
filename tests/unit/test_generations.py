"""GET /generations/{request_id}: the caller's charge for one request, on moto.

Through the real handlers (chat, then GET) and, for the states a chat passes through
too quickly to catch (an open hold, a recorded settlement not yet committed, a hold the
sweeper freed before the answer), through the ledger service with the chat's request id.
"""

from __future__ import annotations

import json
import uuid
from decimal import Decimal
from typing import Any

import boto3
import pytest
from llmcredits import bootstrap
from llmcredits.dal.dynamodb_ledger import DynamoLedgerStore
from llmcredits.domain.generations import GenerationStatus, generation_of
from llmcredits.domain.ledger import EntryType, Hold, LedgerEntry, Settlement, hold_id_for
from llmcredits.domain.pricing import catalog
from llmcredits.services.generations import GenerationsService

from tests.support import event, invoke, response_headers
from tests.unit.stack_fixture import module_stack

stack, upstream = module_stack()

P = "/api/v1/llm"
ADMIN = {"sub": "ops", "scopes": ["llmcredits/admin"]}
BALANCED = "together_ai/meta-llama/Llama-3.3-70B-Instruct-Turbo"
HELLO = [{"role": "user", "content": "Say hello to the generation lookup, please."}]
LONG = [{"role": "user", "content": "Please repeat these words back to me in order: "
         + " ".join(f"word{i}" for i in range(40))}]
TABLE = "llmcredits-test"


def setup_user(user: str, amount: str = "10", tier: str = "starter") -> None:
    invoke("credits_get", event("GET", f"{P}/credits", sub=user))
    invoke("admin_user_patch", event("PATCH", f"{P}/admin/users/{user}",
                                     path_params={"user_id": user}, body={"tier": tier}, **ADMIN))
    invoke("admin_user_credits_post", event(
        "POST", f"{P}/admin/users/{user}/credits", body={"amount": amount},
        path_params={"user_id": user}, **ADMIN))


def chat(user: str, body: dict[str, Any], **caller: Any) -> tuple[int, dict[str, str], Any]:
    """The chat handler's answer; an error's headers get the event's request id (API
    Gateway sends it as ``x-amzn-RequestId`` on every answer)."""
    from llmcredits.openapi_doc import import_handler

    from tests.support import FUNCTIONS, Context

    evt = event("POST", f"{P}/chat/completions", body=body, sub=user, **caller)
    resp = import_handler(FUNCTIONS / "chat_completions" / "app.py").lambda_handler(
        evt, Context())
    headers = response_headers(resp)
    if resp["statusCode"] == 200:
        assert headers["X-Request-Id"] == evt["requestContext"]["requestId"]
    else:
        headers["X-Request-Id"] = evt["requestContext"]["requestId"]
    return resp["statusCode"], headers, resp["body"]


def generation(user: str, request_id: str, **caller: Any) -> tuple[int, Any]:
    status, _, body = invoke("generation_get", event(
        "GET", f"{P}/generations/{request_id}", path_params={"request_id": request_id},
        sub=user, **caller))
    return status, body


def balance(user: str) -> Decimal:
    return Decimal(invoke("credits_get", event("GET", f"{P}/credits", sub=user))[2]["balance"])


# ------------------------------------------------------------------ through the handlers


def test_a_completion_reads_back_settled_with_exactly_its_charge(upstream):
    setup_user("gen-ann")
    status, headers, raw = chat("gen-ann", {"model": BALANCED, "messages": HELLO})
    assert status == 200, raw
    request_id = headers["X-Request-Id"]
    status, body = generation("gen-ann", request_id)
    assert status == 200, body
    data = body["data"]
    usage = json.loads(raw)["usage"]
    route = catalog().resolve(BALANCED, None, "starter")
    assert data["id"] == request_id and data["status"] == "settled"
    assert data["cost"] == headers["X-Credits-Charged"]
    assert Decimal(data["cost"]) == catalog().charge(route, None, "starter",
                                                      usage["prompt_tokens"],
                                                      usage["completion_tokens"])
    assert (data["prompt_tokens"], data["completion_tokens"], data["total_tokens"]) == (
        usage["prompt_tokens"], usage["completion_tokens"], usage["total_tokens"])
    assert (data["model"], data["provider"], data["power_level"]) == (
        BALANCED, "together", "balanced")
    assert data["byok"] is False and data["key_id"] is None and data["usage_missing"] is False
    assert isinstance(data["latency_ms"], int) and data["latency_ms"] >= 0
    assert Decimal(data["hold"]) >= Decimal(data["cost"])  # the bound it was held at
    assert balance("gen-ann") == Decimal(10) - Decimal(data["cost"])


def test_a_stream_that_fails_partway_reads_back_partial(upstream):
    setup_user("gen-partial")
    upstream.inject("stream-error")
    status, headers, _ = chat("gen-partial", {"model": BALANCED, "messages": LONG,
                                              "stream": True})
    assert status == 200
    status, body = generation("gen-partial", headers["X-Request-Id"])
    assert status == 200, body
    data = body["data"]
    assert data["status"] == "partial"
    # A stream's charge is no header (sent before it is known): it is the entry's.
    assert "X-Credits-Charged" not in headers
    assert Decimal(0) < Decimal(data["cost"]) < Decimal(data["hold"])


def test_another_users_id_and_an_unknown_id_get_the_same_404(upstream):
    setup_user("gen-owner")
    setup_user("gen-other")
    status, headers, _ = chat("gen-owner", {"model": BALANCED, "messages": HELLO})
    assert status == 200
    mine = headers["X-Request-Id"]
    assert generation("gen-owner", mine)[0] == 200
    theirs = generation("gen-other", mine)
    unknown = generation("gen-other", str(uuid.uuid4()))
    assert theirs[0] == unknown[0] == 404
    assert theirs[1]["error"]["code"] == "generation_not_found"
    assert theirs[1] == unknown[1]  # no oracle: nothing tells "someone's" from "nobody's"


def test_a_request_that_failed_and_charged_nothing_is_404(upstream):
    setup_user("gen-failed")
    upstream.inject("500")
    status, headers, _ = chat("gen-failed", {"model": BALANCED, "messages": HELLO})
    assert status == 502
    status, body = generation("gen-failed", headers["X-Request-Id"])
    assert status == 404 and body["error"]["code"] == "generation_not_found"
    assert balance("gen-failed") == Decimal(10)


def test_an_api_key_reads_its_own_request_with_its_key_id(upstream):
    setup_user("gen-key")
    status, _, created = invoke("keys_post", event("POST", f"{P}/keys", body={"name": "ci"},
                                                   sub="gen-key"))
    assert status == 201
    as_key = {"kind": "api_key", "key_id": created["id"],
              "headers": {"Authorization": f"Bearer {created['key']}"}}
    status, headers, raw = chat("gen-key", {"model": BALANCED, "messages": HELLO}, **as_key)
    assert status == 200, raw
    status, body = generation("gen-key", headers["X-Request-Id"], **as_key)
    assert status == 200, body
    assert body["data"]["key_id"] == created["id"]
    assert body["data"]["cost"] == headers["X-Credits-Charged"]
    # the same user's login token reads it too (it is the user's charge)
    assert generation("gen-key", headers["X-Request-Id"])[1] == body


@pytest.mark.parametrize("request_id", ["a b", "x" * 129, "%2F..%2F", "semi;colon"])
def test_a_malformed_request_id_is_400(upstream, request_id):
    status, body = generation("gen-bad", request_id)
    assert status == 400, body
    assert body["error"]["param"] == "request_id"


# ------------------------------------------------------------------ states between


def ledger_and_account(user: str) -> tuple[Any, Any]:
    setup_user(user)
    ledger = bootstrap.ledger_service()
    return ledger, ledger.account(user)


def get(user: str, request_id: str) -> dict[str, Any]:
    status, body = generation(user, request_id)
    assert status == 200, body
    return dict(body["data"])


def test_an_open_hold_is_pending_then_its_recorded_answer_then_settled(upstream):
    ledger, account = ledger_and_account("gen-pending")
    request_id = str(uuid.uuid4())
    hold = ledger.reserve(account, Decimal("2"), rate_limit=None, request_id=request_id,
                          model=BALANCED)
    assert hold.id == hold_id_for("gen-pending", request_id)
    running = get("gen-pending", request_id)
    assert running["status"] == "pending" and running["hold"] == "2.000000"
    assert running["cost"] is None and running["prompt_tokens"] is None
    assert running["model"] == BALANCED and running["created_at"] == hold.created_at

    # Answered, the settlement recorded on the hold (the outbox) but not committed yet.
    settlement = Settlement(entry_id=uuid.uuid4().hex, created_at="2026-12-01T00:00:00.000000Z",
                            cost=Decimal("0.5"), provider="together", model=BALANCED,
                            tokens=30, metadata={"request_id": request_id,
                                                 "prompt_tokens": 10, "completion_tokens": 20,
                                                 "power_level": "balanced", "byok": False,
                                                 "latency_ms": 7})
    store = DynamoLedgerStore(boto3.client("dynamodb"), TABLE)
    assert store.record_settlement(hold, settlement)
    answered = get("gen-pending", request_id)
    assert answered["status"] == "pending" and answered["cost"] == "0.500000"
    assert (answered["prompt_tokens"], answered["completion_tokens"]) == (10, 20)
    assert balance("gen-pending") == Decimal(10)  # not charged yet

    report = ledger.apply_pending_settlements(0)  # the settle worker
    assert report.applied == 1
    settled = get("gen-pending", request_id)
    assert settled == {**answered, "status": "settled"}
    assert balance("gen-pending") == Decimal("9.5")


def test_two_users_with_one_request_id_each_reserve_and_read_their_own(upstream):
    from llmcredits.local.embedded import install_client_request_tokens

    install_client_request_tokens()  # DynamoDB's tokens are per account, not per item
    request_id = str(uuid.uuid4())
    holds = []
    for user, amount in (("gen-twin-a", "1"), ("gen-twin-b", "2")):
        ledger, account = ledger_and_account(user)
        holds.append(ledger.reserve(account, Decimal(amount), rate_limit=None,
                                    request_id=request_id))
    assert holds[0].id != holds[1].id
    assert get("gen-twin-a", request_id)["hold"] == "1.000000"
    assert get("gen-twin-b", request_id)["hold"] == "2.000000"


def test_a_hold_freed_by_the_sweeper_then_answered_reads_back_its_balance_charge(upstream):
    ledger, account = ledger_and_account("gen-lost")
    request_id = str(uuid.uuid4())
    hold = ledger.reserve(account, Decimal("2"), rate_limit=None, request_id=request_id,
                          model=BALANCED)
    assert ledger.release(hold)  # the sweeper's cutoff passed before the answer came
    settled = ledger.settle(account, hold, Decimal("0.25"), provider="together",
                            model=BALANCED, tokens=5,
                            metadata={"request_id": request_id, "prompt_tokens": 2,
                                      "completion_tokens": 3})
    assert not settled.pending
    data = get("gen-lost", request_id)
    assert data["status"] == "settled" and data["cost"] == "0.250000"
    assert (data["prompt_tokens"], data["completion_tokens"]) == (2, 3)
    assert balance("gen-lost") == Decimal("9.75")


class RecordingClient:
    """A boto3 DynamoDB client that records each call's operation and arguments."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self.calls: list[tuple[str, dict[str, Any]]] = []

    def __getattr__(self, name: str) -> Any:
        method = getattr(self._inner, name)

        def recorded(**kwargs: Any) -> Any:
            self.calls.append((name, kwargs))
            return method(**kwargs)
        return recorded


@pytest.mark.parametrize("state", ["pending", "settled", "unknown"])
def test_the_lookup_is_at_most_three_consistent_getitems(upstream, state):
    user = f"gen-reads-{state}"
    ledger, account = ledger_and_account(user)
    request_id = str(uuid.uuid4())
    if state != "unknown":
        hold = ledger.reserve(account, Decimal("1"), rate_limit=None, request_id=request_id)
        if state == "settled":
            ledger.settle(account, hold, Decimal("0.1"), provider="p", model="m", tokens=1,
                          metadata={"request_id": request_id})
    client = RecordingClient(boto3.client("dynamodb"))
    service = GenerationsService(DynamoLedgerStore(client, TABLE))
    if state == "unknown":
        with pytest.raises(Exception, match="No charge for this request id"):
            service.get(user, request_id)
    else:
        assert service.get(user, request_id).status.value == state
    assert {name for name, _ in client.calls} == {"get_item"}
    assert len(client.calls) == {"pending": 1, "settled": 3, "unknown": 2}[state]
    assert all(kwargs["ConsistentRead"] is True for _, kwargs in client.calls)
    # The hold first: a settle removes it and writes the marker atomically, so a hold
    # read as absent means its settle (if any) is visible to the reads that follow.
    assert client.calls[0][1]["Key"]["SK"]["S"].startswith("HOLD#")
    assert all(kwargs["Key"]["PK"] == {"S": f"USER#{user}"} for _, kwargs in client.calls)


# ------------------------------------------------------------------ the domain rule


def test_a_hold_or_entry_of_another_request_id_is_no_generation():
    hold = Hold(id=hold_id_for("u", "req-a"), user_id="u", amount=Decimal(1),
                created_at="2026-12-01T00:00:00.000000Z", request_id="req-a")
    assert generation_of("req-a", hold, None) is not None
    assert generation_of("req-b", hold, None) is None  # a hash collision is not a match
    pending = generation_of("req-a", hold, None)
    assert pending is not None and pending.status is GenerationStatus.PENDING
    entry = LedgerEntry(id="e", user_id="u", created_at="2026-12-01T00:00:01.000000Z",
                        type=EntryType.USAGE, amount=Decimal("-0.1"), balance_after=None,
                        cost=Decimal("0.1"), metadata={"request_id": "req-a"})
    settled = generation_of("req-a", None, entry)
    assert settled is not None and settled.status is GenerationStatus.SETTLED
    assert generation_of("req-b", None, entry) is None


def test_hold_ids_derive_from_request_ids_and_stay_shardable():
    first, again = hold_id_for("ann", "r-1"), hold_id_for("ann", "r-1")
    assert first == again != hold_id_for("ann", "r-2") != hold_id_for("bob", "r-1")
    assert len(first) == 32 and int(first, 16) >= 0  # hex: HoldsByAge shards read [:8]
    assert hold_id_for("ann", "") != hold_id_for("ann", "")  # no request id: a random hold id
