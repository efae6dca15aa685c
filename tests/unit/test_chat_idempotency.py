"""Idempotency-Key on POST /chat/completions (DESIGN section 2), and history filters in
a bounded number of round trips."""

from __future__ import annotations

from decimal import Decimal

from llmcredits import bootstrap
from llmcredits.domain.ledger import EntryType, fingerprint

from tests.support import event, invoke
from tests.unit.test_chat_route import BALANCED, HELLO, account, chat, setup_user

BODY = {"model": BALANCED, "messages": HELLO}


def usage_entries(user):
    page = bootstrap.ledger_service().history(user, 200, None, EntryType.USAGE)
    return page.entries


def test_chat_sent_twice_with_one_key_is_answered_once_and_charged_once(upstream):
    setup_user("ida")
    first = chat("ida", BODY, headers={"Idempotency-Key": "k-1"})
    assert first[0] == 200, first[2]
    sent = len(upstream.requests)
    again = chat("ida", BODY, headers={"Idempotency-Key": "k-1"})
    assert again[0] == 200 and again[2] == first[2]
    assert again[1]["Idempotent-Replayed"] == "true"
    assert again[1]["X-Credits-Charged"] == first[1]["X-Credits-Charged"]
    assert len(upstream.requests) == sent  # not sent upstream again
    assert len(usage_entries("ida")) == 1
    charged = Decimal(first[1]["X-Credits-Charged"])
    assert account("ida")["balance"] == f"{Decimal(10) - charged:.6f}"
    # the key is the user's own: another user with the same key is a new request
    setup_user("ivy")
    assert chat("ivy", BODY, headers={"Idempotency-Key": "k-1"})[0] == 200
    assert len(usage_entries("ivy")) == 1


def test_same_key_with_another_body_is_409_and_charges_nothing(upstream):
    setup_user("jon")
    assert chat("jon", BODY, headers={"Idempotency-Key": "k-2"})[0] == 200
    other = {**BODY, "messages": [{"role": "user", "content": "Something else."}]}
    status, _, body = chat("jon", other, headers={"Idempotency-Key": "k-2"})
    assert status == 409 and body["error"]["code"] == "idempotency_conflict"
    assert len(usage_entries("jon")) == 1


def test_same_key_while_the_first_is_running_is_409_in_progress(upstream):
    from llmcredits.models_chat import ChatCompletionRequest

    setup_user("kim")
    request = ChatCompletionRequest.model_validate(BODY)
    claimed = bootstrap.ledger_service().claim_response(
        "kim", "k-3", fingerprint({"body": request.model_dump(mode="json"),
                                   "power_level": None}), 900)
    assert claimed is None  # as if a first request were running now
    status, _, body = chat("kim", BODY, headers={"Idempotency-Key": "k-3"})
    assert status == 409 and body["error"]["code"] == "idempotency_in_progress"
    assert usage_entries("kim") == []


def test_failed_request_frees_its_key_and_a_too_large_response_is_409(upstream, monkeypatch):
    from llmcredits.services import chat as chat_module

    setup_user("lou", amount="0")  # 402: nothing charged, the key is free again
    assert chat("lou", BODY, headers={"Idempotency-Key": "k-4"})[0] == 402
    setup_user("lou", amount="10")
    monkeypatch.setattr(chat_module, "MAX_STORED_RESPONSE_BYTES", 10)
    assert chat("lou", BODY, headers={"Idempotency-Key": "k-4"})[0] == 200
    status, _, body = chat("lou", BODY, headers={"Idempotency-Key": "k-4"})
    assert status == 409 and body["error"]["code"] == "idempotency_response_too_large"
    assert len(usage_entries("lou")) == 1


def test_bad_idempotency_key_is_400(upstream):
    setup_user("max")
    status, _, body = chat("max", BODY, headers={"Idempotency-Key": "x" * 300})
    assert status in (400, 422) and "error" in body


def test_history_type_filter_is_one_query_behind_300_other_entries(aws):
    from llmcredits.dal.aws import dynamodb_client

    ledger = bootstrap.ledger_service()
    ledger.grant("ned", Decimal("1"), EntryType.BONUS, "first", "ops")
    ledger.grant("ned", Decimal("400"), EntryType.ADJUSTMENT, "funds", "ops")
    for _ in range(300):
        ledger.debit_usage("ned", Decimal("0.01"))
    calls: list[str] = []

    def count(event_name: str, **_: object) -> None:
        calls.append(event_name.split(".")[-1])

    events = dynamodb_client().meta.events
    events.register("before-call.dynamodb.*", count)
    try:
        status, _, body = invoke("credits_history_get", event(
            "GET", "/api/v1/llm/credits/history", sub="ned",
            query={"type": "bonus", "limit": "1"}))
    finally:
        events.unregister("before-call.dynamodb.*", count)
    assert status == 200 and [i["amount"] for i in body["items"]] == ["1.000000"]
    print(f"GET /credits/history?type=bonus&limit=1 behind 301 entries: "
          f"{calls.count('Query')} Query, {len(calls)} DynamoDB calls in all")
    assert calls.count("Query") == 1 and len(calls) <= 2
