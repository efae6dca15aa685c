"""POST /chat/completions with the caller's own provider key (BYOK)."""

from __future__ import annotations

import json
from decimal import Decimal

import boto3
import pytest
from llmcredits import bootstrap
from llmcredits.domain.pricing import catalog
from llmcredits.errors import InvalidRequest

from tests.support import event, invoke
from tests.unit.test_byok import assert_absent

BALANCED = "together_ai/meta-llama/Llama-3.3-70B-Instruct-Turbo"  # provider: together
HELLO = [{"role": "user", "content": "Say hello to the metering layer, please."}]
TOGETHER_KEY = "tgp_v1_ChatUserOwnKey0123456789abcdefXYZ"
ADMIN = {"sub": "ops", "scopes": ["llmcredits/admin"]}


@pytest.fixture
def upstream(upstream, monkeypatch):
    """The shared dev upstream, plus a KMS key for BYOK."""
    key_id = boto3.client("kms").create_key(Description="byok test")["KeyMetadata"]["KeyId"]
    monkeypatch.setenv("BYOK_KMS_KEY_ID", key_id)
    bootstrap.reset()
    return upstream


def chat(user, body=None, headers=None):
    return invoke("chat_completions", event(
        "POST", "/api/v1/llm/chat/completions",
        body=body or {"model": BALANCED, "messages": HELLO}, headers=headers, sub=user))


def setup_user(user, amount="0", tier="starter"):
    invoke("credits_get", event("GET", "/api/v1/llm/credits", sub=user))
    invoke("admin_user_patch", event("PATCH", f"/api/v1/llm/admin/users/{user}",
                                     path_params={"user_id": user}, body={"tier": tier},
                                     **ADMIN))
    if Decimal(amount) > 0:
        invoke("admin_user_credits_post", event(
            "POST", f"/api/v1/llm/admin/users/{user}/credits", body={"amount": amount},
            path_params={"user_id": user}, **ADMIN))


def store_key(user, provider="together", api_key=TOGETHER_KEY):
    status, _, body = invoke("byok_keys_post", event(
        "POST", "/api/v1/llm/byok/keys", body={"provider": provider, "api_key": api_key},
        sub=user))
    assert status == 201, body


def set_enabled(user, enabled, provider="together"):
    status, _, body = invoke("byok_keys_patch", event(
        "PATCH", f"/api/v1/llm/byok/keys/{provider}", body={"enabled": enabled},
        path_params={"provider": provider}, sub=user))
    assert status == 200, body


def usage_entries(user):
    return invoke("credits_history_get", event("GET", "/api/v1/llm/credits/history",
                                               sub=user, query={"type": "usage"}))[2]["items"]


def kms_calls():
    from llmcredits.dal.kms_envelope import kms_client

    calls: list[str] = []
    kms_client().meta.events.register(
        "before-call.kms.*", lambda event_name, **_: calls.append(event_name.split(".")[-1]))
    return calls


def test_byok_request_uses_the_users_key_and_charges_the_fee(upstream):
    setup_user("ann")  # balance 0
    store_key("ann")
    status, headers, body = chat("ann")
    assert status == 200, body
    sent = upstream.requests[-1]
    assert sent.api_key == TOGETHER_KEY  # the user's key, in LiteLLM's body field
    assert sent.headers["authorization"] == "Bearer sk-master"
    assert headers["X-Credits-Charged"] == "0.000000"  # BYOK fee rate 0 by default
    assert headers["X-Credits-Remaining"] == "0.000000"
    assert body["usage"]["cost"] == 0
    assert_absent(TOGETHER_KEY, json.dumps(body) + json.dumps(headers))
    [entry] = usage_entries("ann")
    assert entry["metadata"]["byok"] is True
    assert entry["provider"] == "together" and entry["amount"] == "0.000000"
    assert_absent(TOGETHER_KEY, json.dumps(entry))

    # disabled: the platform path again, and its 402 at zero balance
    set_enabled("ann", False)
    before = len(upstream.requests)
    status, _, body = chat("ann")
    assert status == 402 and body["error"]["code"] == "insufficient_credits"
    assert len(upstream.requests) == before  # nothing went upstream

    # enabled again: BYOK again; deleted: platform again
    set_enabled("ann", True)
    assert chat("ann")[0] == 200 and upstream.requests[-1].api_key == TOGETHER_KEY
    invoke("byok_keys_delete", event("DELETE", "/api/v1/llm/byok/keys/together",
                                     path_params={"provider": "together"}, sub="ann"))
    assert chat("ann")[0] == 402


def test_platform_path_with_a_disabled_key_charges_the_price(upstream):
    setup_user("bea", amount="10")
    store_key("bea")
    set_enabled("bea", False)
    status, headers, body = chat("bea")
    assert status == 200
    assert upstream.requests[-1].api_key is None
    route = catalog().resolve(BALANCED, None, "starter")
    usage = body["usage"]
    expected = catalog().charge(route, None, "starter", usage["prompt_tokens"],
                                usage["completion_tokens"])
    assert expected > 0 and headers["X-Credits-Charged"] == f"{expected:.6f}"
    assert usage_entries("bea")[0]["metadata"]["byok"] is False


def test_a_key_for_another_provider_is_not_used(upstream):
    setup_user("cid", amount="0")
    store_key("cid", "groq", "gsk_Q8wE4rT1yU7iO3pA9sD6fG2hJ5kL0zXc")
    assert chat("cid")[0] == 402  # the model's provider is together
    assert upstream.requests == []


def test_byok_fee_rate_is_a_fraction_of_the_price(upstream, monkeypatch):
    monkeypatch.setenv("BYOK_FEE_RATE", "0.25")
    bootstrap.reset()
    setup_user("dov", amount="1")
    store_key("dov")
    status, headers, body = chat("dov")
    assert status == 200
    route = catalog().resolve(BALANCED, None, "starter")
    usage = body["usage"]
    price = catalog().charge(route, None, "starter", usage["prompt_tokens"],
                             usage["completion_tokens"])
    fee = (price * Decimal("0.25")).quantize(Decimal("0.000001"))
    assert fee > 0 and headers["X-Credits-Charged"] == f"{fee:.6f}"
    assert upstream.requests[-1].api_key == TOGETHER_KEY


def test_stream_with_byok(upstream):
    setup_user("eda")
    store_key("eda")
    from llmcredits.openapi_doc import import_handler

    from tests.support import FUNCTIONS, Context

    evt = event("POST", "/api/v1/llm/chat/completions",
                body={"model": BALANCED, "messages": HELLO, "stream": True}, sub="eda")
    resp = import_handler(FUNCTIONS / "chat_completions" / "app.py").lambda_handler(
        evt, Context())
    assert resp["statusCode"] == 200
    assert resp["body"].endswith("data: [DONE]\n\n")
    # A stream's charge is in the ledger (its headers went out before it was known).
    (entry,) = usage_entries("eda")
    assert entry["cost"] == "0.000000" and entry["metadata"]["byok"] is True
    assert upstream.requests[-1].api_key == TOGETHER_KEY


def test_kms_calls_per_request_on_a_warm_container(upstream, capsys):
    setup_user("fox")
    store_key("fox")
    calls = kms_calls()
    per_request = []
    for _ in range(5):
        before = len(calls)
        assert chat("fox")[0] == 200
        per_request.append(calls[before:])
    assert per_request[0] == ["Decrypt"]
    assert all(c == [] for c in per_request[1:])
    with capsys.disabled():
        print(f"\nKMS calls per BYOK chat request (warm container): "
              f"{[len(c) for c in per_request]}")


def test_no_byok_read_and_no_kms_for_accounts_without_keys(upstream):
    from llmcredits.dal.aws import dynamodb_client

    setup_user("gia", amount="10")
    assert chat("gia")[0] == 200  # warm
    reads: list[str] = []

    def record(params, **_):
        if "Key" in params:
            reads.append(params["Key"]["SK"]["S"])

    dynamodb_client().meta.events.register("provide-client-params.dynamodb.GetItem", record)
    calls = kms_calls()
    assert chat("gia")[0] == 200
    # The account read, then the settle's read of the balance it recorded (to stamp
    # balance_after): no BYOK record read.
    assert reads == ["ACCOUNT", "ACCOUNT"] and calls == []


def test_an_unreadable_stored_key_fails_clearly_and_charges_nothing(upstream):
    setup_user("hal", amount="10")
    setup_user("ivy", amount="10")
    store_key("hal", api_key="tgp_v1_HalsOwnKeyHalsOwnKey0123456789")
    store_key("ivy")
    client = boto3.client("dynamodb")
    hal = client.get_item(TableName="llmcredits-test",
                          Key={"PK": {"S": "USER#hal"}, "SK": {"S": "BYOK#together"}})["Item"]
    client.update_item(
        TableName="llmcredits-test", Key={"PK": {"S": "USER#ivy"}, "SK": {"S": "BYOK#together"}},
        UpdateExpression="SET #t = :t, encrypted_data_key = :k",
        ExpressionAttributeNames={"#t": "token"},
        ExpressionAttributeValues={":t": hal["token"], ":k": hal["encrypted_data_key"]})
    status, _, body = chat("ivy")
    assert status == 500 and body["error"]["code"] == "byok_key_unreadable"
    assert "cannot be decrypted" in body["error"]["message"]
    assert_absent("tgp_v1_HalsOwnKeyHalsOwnKey0123456789", json.dumps(body))
    assert upstream.requests == []
    acct = invoke("credits_get", event("GET", "/api/v1/llm/credits", sub="ivy"))[2]
    assert acct["balance"] == "10.000000" and acct["held"] == "0.000000"


class EchoingUpstream:
    """A provider that puts the key it was given into its error message."""

    def __init__(self, exc_type=InvalidRequest):
        self.exc_type = exc_type

    def complete(self, payload, headers):
        key = payload.get("api_key", "")
        raise self.exc_type(f"The model provider rejected the request: Incorrect API key "
                            f"provided: {key}. Also {key[4:20]}")


@pytest.mark.parametrize("exc_type", [InvalidRequest, RuntimeError])
def test_an_upstream_error_echoing_the_key_is_redacted(upstream, exc_type):
    from llmcredits.errors import ApiError
    from llmcredits.models_chat import ChatCompletionRequest
    from llmcredits.services.chat import ChatService

    setup_user("jo")
    store_key("jo")
    real = bootstrap.chat_service()
    service = ChatService(bootstrap.ledger_service(), catalog(), EchoingUpstream(exc_type),
                          keys=real._keys)
    request = ChatCompletionRequest.model_validate({"model": BALANCED, "messages": HELLO})
    with pytest.raises(ApiError) as info:
        service.complete("jo", request, power_level_header=None, request_id="r1")
    err = info.value
    assert "withheld" in err.message
    assert_absent(TOGETHER_KEY, err.message + json.dumps(err.body()))
    assert err.__cause__ is None and err.__suppress_context__
    if exc_type is InvalidRequest:
        assert err.status == 400
    acct = invoke("credits_get", event("GET", "/api/v1/llm/credits", sub="jo"))[2]
    assert acct["held"] == "0.000000"


def test_an_upstream_error_without_the_key_passes_through(upstream):
    setup_user("kai")
    store_key("kai")
    upstream.inject("429")
    status, headers, body = chat("kai")
    assert status == 429 and "Retry-After" in headers
    assert "withheld" not in body["error"]["message"]


CHAT_WITHOUT_KEYS = r"""
import json, os, sys
from moto import mock_aws
import boto3
from llmcredits import bootstrap
from llmcredits.local.dev_upstream import DevUpstream
from tests.support import create_table_from_template, event, invoke

with mock_aws(), DevUpstream() as up:
    os.environ.update(TABLE_NAME="t", LITELLM_PROXY_URL=up.url)
    create_table_from_template(boto3.client("dynamodb"), "t")
    bootstrap.reset()
    status = invoke("chat_completions", event(
        "POST", "/api/v1/llm/chat/completions", sub="nokeys",
        body={"model": "auto", "messages": [{"role": "user", "content": "hi"}]}))[0]
    print(json.dumps({"status": status, "loaded": sorted(
        m for m in ("llmcredits.dal.kms_envelope", "cryptography.fernet") if m in sys.modules)}))
"""


def test_chat_without_keys_never_loads_the_envelope_or_fernet():
    import os
    import subprocess
    import sys

    from tests.support import ROOT

    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'layers' / 'shared'}"}
    out = subprocess.run([sys.executable, "-c", CHAT_WITHOUT_KEYS], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=120, check=True).stdout
    result = json.loads(out.strip().splitlines()[-1])
    assert result == {"status": 200, "loaded": []}
