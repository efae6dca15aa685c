"""BYOK: format rules, KMS envelope + Fernet, routes, no plaintext anywhere, rotation."""

from __future__ import annotations

import base64
import json
import logging
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import boto3
import pytest
from llmcredits import bootstrap
from llmcredits.dal.dynamodb_byok import StoredKey
from llmcredits.domain import byok as domain
from llmcredits.errors import InvalidRequest

from tests.support import event, invoke

# Shaped like real keys; never valid anywhere.
KEYS = {
    "openai": "sk-proj-Zq3vT8mN1xR5kP0wL7yB2cF9hJ4gD6sA",
    "anthropic": "sk-ant-api03-Hk2Lm9Qp4Rs7Tv1Wx6Yz3Ab8Cd5Ef0Gh-Ij_Kl",
    "openrouter": "sk-or-v1-4f9a2b7c1d8e3f6a0b5c9d2e7f1a4b8c6d3e0f9a2b5c8d1e",
    "groq": "gsk_Q8wE4rT1yU7iO3pA9sD6fG2hJ5kL0zXc",
    "huggingface": "hf_AbCdEfGhIjKlMnOpQrStUvWxYz0123456789",
    "together": "tgp_v1_Xy7Zq2Wv9Ut4Sr1Qp6On3Ml8Kj5Ih0Gf",
    "fireworks": "fw_3Hk9Lm2Np7Qr4St1Uv6Wx8Yz0Ab5Cd",
    "deepinfra": "Dq7Wv2Xe9Rt4Yu1Io6Pa3Sd8Fg5Hj0Kl",
}
KEY_A = "sk-proj-AAAAuserAAAAkeyAAAAnotRealAAAA1111"
KEY_B = "sk-proj-BBBBuserBBBBkeyBBBBnotRealBBBB2222"


# --------------------------------------------------------------------------- fixtures


@pytest.fixture
def kms_key(aws, monkeypatch):
    """A KMS key in moto, as the template's ByokKey is in the local stack."""
    key_id = boto3.client("kms").create_key(Description="byok test")["KeyMetadata"]["KeyId"]
    monkeypatch.setenv("BYOK_KMS_KEY_ID", key_id)
    bootstrap.reset()
    yield key_id
    bootstrap.reset()


def post_key(user, provider, api_key, verify=None):
    query = {"verify": verify} if verify is not None else None
    return invoke("byok_keys_post", event(
        "POST", "/api/v1/llm/byok/keys", body={"provider": provider, "api_key": api_key},
        query=query, sub=user))


def list_keys(user):
    return invoke("byok_keys_get", event("GET", "/api/v1/llm/byok/keys", sub=user))


def patch_key(user, provider, body):
    return invoke("byok_keys_patch", event(
        "PATCH", f"/api/v1/llm/byok/keys/{provider}", body=body,
        path_params={"provider": provider}, sub=user))


def delete_key(user, provider):
    return invoke("byok_keys_delete", event(
        "DELETE", f"/api/v1/llm/byok/keys/{provider}", path_params={"provider": provider},
        sub=user))


def scan_table() -> list[dict]:
    client = boto3.client("dynamodb")
    items, kwargs = [], {"TableName": "llmcredits-test"}
    while True:
        resp = client.scan(**kwargs)
        items += resp["Items"]
        if not resp.get("LastEvaluatedKey"):
            return items
        kwargs["ExclusiveStartKey"] = resp["LastEvaluatedKey"]


def renderings(secret: str) -> list[str]:
    """Ways a key could show up in a dump: raw, base64, hex."""
    raw = secret.encode()
    return [secret, base64.b64encode(raw).decode(), base64.urlsafe_b64encode(raw).decode(),
            raw.hex()]


def assert_absent(secret: str, text: str) -> None:
    for form in renderings(secret):
        assert form not in text
    assert domain.redact(text, secret) is not None  # not even a 12-character piece


def dump(items: list[dict]) -> str:
    """Every attribute value of every item as text (binary decoded every way)."""
    parts = []
    for item in items:
        for value in item.values():
            if "B" in value:
                blob = value["B"]
                parts += [blob.decode("latin-1"), base64.b64encode(blob).decode(), blob.hex()]
            else:
                parts.append(json.dumps(value, default=str))
    return "\n".join(parts)


# --------------------------------------------------------------------------- format rules


@pytest.mark.parametrize("provider", sorted(KEYS))
def test_every_provider_accepts_its_format_and_masks_prefix_and_last_four(provider):
    rule = domain.provider_rule(provider)
    key = domain.normalize_key(rule, f"  {KEYS[provider]}\n")
    assert key == KEYS[provider]
    masked = domain.mask(rule, key)
    prefix = next((p for p in rule.display_prefixes if key.startswith(p)), "")
    assert masked == f"{prefix}…{key[-4:]}"
    assert len(masked) == len(prefix) + 5
    fp = domain.fingerprint(key)
    assert fp.startswith("sha256:") and len(fp) == 7 + domain.FINGERPRINT_HEX
    assert fp != domain.fingerprint(key + "x")


def test_masks_look_like_sk_ant_and_show_no_more_than_prefix_and_last_four():
    assert domain.mask(domain.provider_rule("anthropic"), KEYS["anthropic"]) == "sk-ant-…j_Kl"
    assert domain.mask(domain.provider_rule("together"), KEYS["together"]) == "tgp_v1_…h0Gf"
    assert domain.mask(domain.provider_rule("together"), "a" * 64) == "…aaaa"
    assert domain.mask(domain.provider_rule("deepinfra"), KEYS["deepinfra"]) == "…j0Kl"


@pytest.mark.parametrize(
    ("provider", "key", "expect"),
    [
        ("openai", "pk-proj-Zq3vT8mN1xR5kP0wL7yB2cF9hJ4gD6sA", '"sk-"'),
        ("openai", "sk-short", '"sk-"'),
        ("openai", KEYS["anthropic"], "Anthropic"),
        ("openai", KEYS["openrouter"], "OpenRouter"),
        ("anthropic", KEYS["openai"], '"sk-ant-"'),
        ("openrouter", KEYS["openai"], '"sk-or-"'),
        ("groq", KEYS["huggingface"], '"gsk_"'),
        ("huggingface", KEYS["groq"], '"hf_"'),
        ("together", "not a together key", "one word"),
        ("fireworks", "fw_short", '"fw_"'),
        ("deepinfra", "short", "24-64"),
        ("openai", "sk-proj-Zq3vT8mN1xR5kP0w L7yB2cF9hJ4gD6sA", "no spaces"),
        ("openai", "", "must not be empty"),
        ("openai", "   ", "must not be empty"),
        ("openai", None, "must not be empty"),
        ("openai", "sk-" + "a" * 600, "too long"),
    ],
)
def test_bad_formats_say_what_is_expected_and_never_echo_the_key(provider, key, expect):
    with pytest.raises(InvalidRequest) as info:
        domain.normalize_key(domain.provider_rule(provider), key)
    err = info.value
    assert err.param == "api_key" and err.status == 400
    assert expect in err.message
    if key and len(key.strip()) >= 12:
        assert_absent(key.strip(), err.message)


@pytest.mark.parametrize("provider", ["", "azure", "OpenAI-compatible", None, "x" * 300])
def test_unknown_provider_lists_the_supported_ones(provider):
    with pytest.raises(InvalidRequest) as info:
        domain.provider_rule(provider)
    assert info.value.param == "provider"
    assert "openai" in info.value.message and "deepinfra" in info.value.message
    assert "x" * 50 not in info.value.message


def test_provider_names_match_the_pricing_catalog():
    from llmcredits.domain.pricing import catalog

    catalog_providers = {m.provider for m in catalog().models.values()} - {"local"}
    assert catalog_providers <= set(domain.PROVIDERS)


def test_redact_finds_the_key_and_pieces_of_it():
    key = KEYS["openai"]
    assert domain.redact("no key here", key) == "no key here"
    assert domain.redact(f"Incorrect API key provided: {key}", key) is None
    assert domain.redact(f"key ...{key[5:20]}... rejected", key) is None
    assert domain.redact("sk-proj-****...****D6sA", key) is not None  # masked is fine


# --------------------------------------------------------------------------- envelope


def kms_counter():
    from llmcredits.dal.kms_envelope import kms_client

    calls: list[str] = []

    def count(event_name: str, **_: object) -> None:
        calls.append(event_name.split(".")[-1])

    kms_client().meta.events.register("before-call.kms.*", count)
    return calls


def test_seal_and_open_with_the_context_and_a_bounded_cache(kms_key):
    from llmcredits.dal.kms_envelope import DataKeyCache, Envelope, KeyDecryptionError, kms_client

    now = [0.0]
    env = Envelope(kms_client(), kms_key, DataKeyCache(ttl_seconds=300, max_entries=2,
                                                       clock=lambda: now[0]))
    calls = kms_counter()
    sealed = env.seal(KEY_A, user_id="a", provider="openai")
    assert calls == ["GenerateDataKey"]
    assert_absent(KEY_A, sealed.token + sealed.encrypted_data_key.decode("latin-1")
                  + repr(sealed))
    assert sealed.kms_key_id.startswith("arn:aws:kms:")
    assert env.open(sealed.token, sealed.encrypted_data_key, user_id="a",
                    provider="openai") == KEY_A
    assert env.open(sealed.token, sealed.encrypted_data_key, user_id="a",
                    provider="openai") == KEY_A
    assert calls == ["GenerateDataKey", "Decrypt"]  # the second open hit the cache
    now[0] = 301.0  # past the TTL: KMS again
    env.open(sealed.token, sealed.encrypted_data_key, user_id="a", provider="openai")
    assert calls.count("Decrypt") == 2
    # wrong user, wrong provider: KMS refuses the context; no cache entry leaks across
    for user, provider in (("b", "openai"), ("a", "groq")):
        with pytest.raises(KeyDecryptionError) as info:
            env.open(sealed.token, sealed.encrypted_data_key, user_id=user, provider=provider)
        message = str(info.value)
        assert "encrypted for another user or provider" in message
        assert_absent(KEY_A, message)
        assert sealed.token not in message
        assert info.value.__cause__ is None and info.value.__context__ is None
    # bounded size
    for i in range(5):
        s = env.seal(f"{KEY_B}{i}", user_id=f"u{i}", provider="openai")
        env.open(s.token, s.encrypted_data_key, user_id=f"u{i}", provider="openai")
    assert len(env.cache) == 2


def test_a_token_paired_with_another_data_key_fails_clearly(kms_key):
    from llmcredits.dal.kms_envelope import Envelope, KeyDecryptionError, kms_client

    env = Envelope(kms_client(), kms_key)
    a = env.seal(KEY_A, user_id="a", provider="openai")
    b = env.seal(KEY_B, user_id="a", provider="openai")
    with pytest.raises(KeyDecryptionError, match="does not match its data key"):
        env.open(a.token, b.encrypted_data_key, user_id="a", provider="openai")


# --------------------------------------------------------------------------- routes


def test_routes_store_list_patch_delete_masked_only(kms_key):
    status, _, body = post_key("ann", "openai", KEYS["openai"])
    assert status == 201, body
    assert body["provider"] == "openai" and body["enabled"] is True
    assert body["masked_key"] == "sk-…D6sA"
    assert set(body) == {"provider", "masked_key", "enabled", "fingerprint", "created_at",
                         "updated_at"}
    assert_absent(KEYS["openai"], json.dumps(body))
    assert post_key("ann", "Anthropic", KEYS["anthropic"])[0] == 201  # names are case-blind

    status, _, listed = list_keys("ann")
    assert status == 200
    assert [k["provider"] for k in listed["keys"]] == ["anthropic", "openai"]
    assert listed["keys"][0]["masked_key"] == "sk-ant-…j_Kl"
    assert_absent(KEYS["openai"], json.dumps(listed))
    assert list_keys("bob")[2] == {"keys": []}  # nobody else sees them

    # replace: a new key, a new fingerprint, still one record
    first_fp = body["fingerprint"]
    other = "sk-proj-9xY8wV7uT6sR5qP4oN3mL2kJ1iH0gFeD"
    status, _, replaced = post_key("ann", "openai", other)
    assert status == 201 and replaced["masked_key"] == "sk-…gFeD"
    assert replaced["fingerprint"] != first_fp
    assert len(list_keys("ann")[2]["keys"]) == 2

    status, _, patched = patch_key("ann", "openai", {"enabled": False})
    assert status == 200 and patched["enabled"] is False
    assert patched["masked_key"] == "sk-…gFeD"
    assert {k["provider"]: k["enabled"] for k in list_keys("ann")[2]["keys"]} == {
        "anthropic": True, "openai": False}

    status, _, empty = delete_key("ann", "openai")
    assert status == 204 and empty is None
    assert delete_key("ann", "openai")[0] == 404
    assert patch_key("ann", "openai", {"enabled": True})[0] == 404
    assert patch_key("bob", "anthropic", {"enabled": True})[0] == 404  # not bob's
    assert [k["provider"] for k in list_keys("ann")[2]["keys"]] == ["anthropic"]


def test_keys_flag_the_account_while_enabled(kms_key):
    post_key("flo", "groq", KEYS["groq"])
    ledger = bootstrap.ledger_service()
    assert ledger.account("flo").flags == {"byok:groq"}
    patch_key("flo", "groq", {"enabled": False})
    assert ledger.account("flo").flags == frozenset()
    patch_key("flo", "groq", {"enabled": True})
    assert ledger.account("flo").flags == {"byok:groq"}
    delete_key("flo", "groq")
    assert ledger.account("flo").flags == frozenset()
    assert ledger.account("flo").balance == 0  # the account is otherwise untouched


@pytest.mark.parametrize(
    ("body", "param", "expect"),
    [
        ({"provider": "openai", "api_key": "gsk_Q8wE4rT1yU7iO3pA9sD6fG2hJ5kL0zXc"}, "api_key",
         '"sk-"'),
        ({"provider": "groq", "api_key": KEYS["openai"]}, "api_key", '"gsk_"'),
        ({"provider": "azure", "api_key": KEYS["openai"]}, "provider", "openai, openrouter"),
        ({"provider": "openai", "api_key": ""}, "api_key", "must not be empty"),
        ({"provider": "openai"}, "api_key", "Field required"),
        ({"api_key": KEYS["openai"]}, "provider", "Field required"),
        ({"provider": "openai", "api_key": 42}, "api_key", "string"),
        ({"provider": "openai", "api_key": KEYS["openai"], "extra": 1}, "extra", "Extra"),
    ],
)
def test_bad_input_is_400_saying_what_is_expected(kms_key, body, param, expect):
    status, _, resp = invoke("byok_keys_post", event(
        "POST", "/api/v1/llm/byok/keys", body=body, sub="cat"))
    assert status == 400, resp
    assert resp["error"]["param"] == param
    assert expect in resp["error"]["message"]
    assert_absent(KEYS["openai"], json.dumps(resp))
    assert list_keys("cat")[2] == {"keys": []}


def test_patch_needs_a_boolean_and_a_known_provider(kms_key):
    post_key("dee", "groq", KEYS["groq"])
    status, _, resp = patch_key("dee", "groq", {"enabled": "no"})
    assert status == 400 and resp["error"]["param"] == "enabled"
    assert patch_key("dee", "groq", {})[0] == 400
    status, _, resp = patch_key("dee", "azure", {"enabled": False})
    assert status == 400 and resp["error"]["param"] == "provider"
    assert delete_key("dee", "azure")[0] == 400


def test_a_table_scan_holds_no_plaintext(kms_key):
    for i, (provider, key) in enumerate(sorted(KEYS.items())):
        assert post_key(f"user-{i}", provider, key)[0] == 201
    items = scan_table()
    byok_items = [i for i in items if i["SK"]["S"].startswith("BYOK#")]
    assert len(byok_items) == len(KEYS)
    for item in byok_items:
        assert item["kind"] == {"S": "byok"}
        assert set(item) >= {"token", "encrypted_data_key", "kms_key_id", "fingerprint",
                             "masked", "enabled", "created_at", "updated_at"}
        assert "B" in item["encrypted_data_key"]
    text = dump(items)
    for key in KEYS.values():
        assert_absent(key, text)


# --------------------------------------------------------------------------- no plaintext in logs


@pytest.fixture
def all_logs(caplog, capsys):
    """Everything logged at DEBUG, by std logging (caplog) and by the Powertools Logger
    (JSON to stdout; its handler is pointed at the captured stdout for the test)."""
    from llmcredits.http.api import logger

    caplog.set_level(logging.DEBUG)
    handlers = [h for h in logger.handlers if isinstance(h, logging.StreamHandler)]
    streams = [h.stream for h in handlers]
    for handler in handlers:
        handler.stream = sys.stdout  # not setStream: it flushes the old, maybe closed, one
    level = logger.log_level
    logger.setLevel(logging.DEBUG)
    logger.info("log capture check")

    def text() -> str:
        captured = capsys.readouterr()
        return "\n".join([caplog.text, captured.out, captured.err])

    yield text
    logger.setLevel(level)
    for handler, stream in zip(handlers, streams, strict=True):
        handler.stream = stream


def test_logs_hold_no_plaintext(kms_key, all_logs):
    post_key("eli", "openai", KEYS["openai"])
    post_key("eli", "openai", KEYS["openai"], verify="true")  # fails: no network -> 400
    post_key("eli", "groq", KEYS["openai"])  # wrong format
    list_keys("eli")
    patch_key("eli", "openai", {"enabled": False})
    patch_key("eli", "openai", {"enabled": True})
    bootstrap.chat_service  # noqa: B018
    from llmcredits.services.byok import ByokProviderKeys

    keys = ByokProviderKeys(bootstrap.byok_store(), bootstrap.byok_envelope)
    assert keys.key_for("eli", "openai") == KEYS["openai"]
    delete_key("eli", "openai")
    logs = all_logs()
    assert "log capture check" in logs  # the capture works
    assert "byok key stored" in logs
    assert_absent(KEYS["openai"], logs)
    # KMS answers carry plaintext data keys; botocore's DEBUG logs must not show them
    assert '"Plaintext"' not in logs


# --------------------------------------------------------------------------- ciphertext swap


def test_user_as_ciphertext_on_user_bs_item_does_not_decrypt(kms_key):
    from llmcredits.dal.kms_envelope import KeyDecryptionError
    from llmcredits.services.byok import ByokProviderKeys, StoredKeyUnreadable

    post_key("alice", "openai", KEY_A)
    post_key("bob", "openai", KEY_B)
    client = boto3.client("dynamodb")
    a_item = client.get_item(TableName="llmcredits-test",
                             Key={"PK": {"S": "USER#alice"}, "SK": {"S": "BYOK#openai"}})["Item"]
    # An attacker with write access copies alice's whole ciphertext onto bob's item.
    client.update_item(
        TableName="llmcredits-test", Key={"PK": {"S": "USER#bob"}, "SK": {"S": "BYOK#openai"}},
        UpdateExpression="SET #t = :t, encrypted_data_key = :k",
        ExpressionAttributeNames={"#t": "token"},
        ExpressionAttributeValues={":t": a_item["token"], ":k": a_item["encrypted_data_key"]})
    store = bootstrap.byok_store()
    record = store.get("bob", "openai")
    assert isinstance(record, StoredKey)
    with pytest.raises(KeyDecryptionError) as info:
        bootstrap.byok_envelope().open(record.token, record.encrypted_data_key,
                                       user_id="bob", provider="openai")
    assert "encrypted for another user or provider" in str(info.value)
    assert_absent(KEY_A, str(info.value))

    keys = ByokProviderKeys(store, bootstrap.byok_envelope)
    with pytest.raises(StoredKeyUnreadable) as unreadable:
        keys.key_for("bob", "openai")
    body = json.dumps(unreadable.value.body())
    assert "cannot be decrypted" in body and "Store it again" in body
    assert_absent(KEY_A, body)
    assert_absent(KEY_B, body)
    assert unreadable.value.__cause__ is None
    assert keys.key_for("alice", "openai") == KEY_A  # alice's own still works

    # ... and onto alice's own item of another provider: the context names the provider
    client.put_item(TableName="llmcredits-test", Item={
        **a_item, "SK": {"S": "BYOK#groq"}, "provider": {"S": "groq"}})
    with pytest.raises(StoredKeyUnreadable):
        keys.key_for("alice", "groq")


# --------------------------------------------------------------------------- rotation


def test_rotate_all_reencrypts_under_the_new_key_without_losing_updates(kms_key):
    from llmcredits.dal.kms_envelope import Envelope, kms_client

    post_key("u1", "openai", KEY_A)
    post_key("u2", "openai", KEY_B)
    post_key("u2", "groq", KEYS["groq"])
    post_key("u3", "together", KEYS["together"])
    patch_key("u2", "groq", {"enabled": False})
    kms = boto3.client("kms")
    new_arn = kms.create_key(Description="byok v2")["KeyMetadata"]["Arn"]
    service = bootstrap.byok_service()
    store = bootstrap.byok_store()

    # While rotation runs, u3 replaces their key and u1 disables theirs.
    original = store.replace_ciphertext
    replaced_during = "tgp_v1_NewKeyDuringRotation0123456789"
    raced: set[str] = set()

    def racing(key, *args, **kwargs):
        if key.user_id == "u3" and "u3" not in raced:
            raced.add("u3")
            assert post_key("u3", "together", replaced_during)[0] == 201
        if key.user_id == "u1" and "u1" not in raced:
            raced.add("u1")
            assert patch_key("u1", "openai", {"enabled": False})[0] == 200
        return original(key, *args, **kwargs)

    store.replace_ciphertext = racing  # type: ignore[method-assign]
    report = service.rotate_all(new_arn)
    store.replace_ciphertext = original  # type: ignore[method-assign]
    assert raced == {"u1", "u3"}
    assert report.ok, report.failed
    assert report.rotated == 4 and report.already_current == 0
    assert report.new_kms_key_arn == new_arn

    fresh = Envelope(kms_client(), new_arn)  # no cached data keys
    opened = {}
    for record in store.scan_all():
        assert record.kms_key_id == new_arn
        opened[(record.user_id, record.provider)] = (
            fresh.open(record.token, record.encrypted_data_key, user_id=record.user_id,
                       provider=record.provider), record.enabled)
    assert opened == {
        ("u1", "openai"): (KEY_A, False),  # the concurrent PATCH was kept
        ("u2", "openai"): (KEY_B, True),
        ("u2", "groq"): (KEYS["groq"], False),
        ("u3", "together"): (replaced_during, True),  # the concurrent replace was kept
    }
    # the old KMS key can go: everything opens with the new one only
    kms.disable_key(KeyId=kms_key)
    assert bootstrap.byok_service().rotate_all(new_arn).already_current == 4
    text = dump(scan_table())
    for key in (KEY_A, KEY_B, KEYS["groq"], replaced_during):
        assert_absent(key, text)


def test_rotation_reports_undecryptable_keys_without_plaintext(kms_key):
    post_key("alice", "openai", KEY_A)
    post_key("bob", "openai", KEY_B)
    client = boto3.client("dynamodb")
    a_item = client.get_item(TableName="llmcredits-test",
                             Key={"PK": {"S": "USER#alice"}, "SK": {"S": "BYOK#openai"}})["Item"]
    client.put_item(TableName="llmcredits-test", Item={**a_item, "PK": {"S": "USER#bob"}})
    new_arn = boto3.client("kms").create_key()["KeyMetadata"]["Arn"]
    report = bootstrap.byok_service().rotate_all(new_arn)
    assert report.rotated == 1
    assert [(u, p) for u, p, _ in report.failed] == [("bob", "openai")]
    assert_absent(KEY_A, repr(report))


def test_cli_byok_rotate(kms_key, capsys, monkeypatch):
    from llmcredits import cli

    post_key("cli-user", "groq", KEYS["groq"])
    new_arn = boto3.client("kms").create_key()["KeyMetadata"]["Arn"]
    capsys.readouterr()
    assert cli.main(["admin", "byok-rotate", "--new-kms-key-id", new_arn,
                     "--table", "llmcredits-test", "--yes"]) == 0
    out = capsys.readouterr()
    assert "rotated 1" in out.out
    assert_absent(KEYS["groq"], out.out + out.err)
    record = bootstrap.byok_store().get("cli-user", "groq")
    assert record is not None and record.kms_key_id == new_arn
    # without --yes and no "y" on stdin nothing happens
    monkeypatch.setattr("sys.stdin", __import__("io").StringIO("n\n"))
    assert cli.main(["admin", "byok-rotate", "--new-kms-key-id", new_arn,
                     "--table", "llmcredits-test"]) == 1


# --------------------------------------------------------------------------- live check


class FakeProvider:
    """A local stand-in for a provider's models endpoint: 200 for one key, else 401."""

    def __init__(self, good_key: str, delay: float = 0.0) -> None:
        self.good_key = good_key
        self.delay = delay
        self.seen: list[tuple[str, dict[str, str]]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                headers = {k.lower(): v for k, v in self.headers.items()}
                outer.seen.append((self.path, headers))
                if outer.delay:
                    time.sleep(outer.delay)
                given = headers.get("x-api-key") or headers.get("authorization", "")[7:]
                ok = given == outer.good_key
                body = b'{"object":"list","data":[]}' if ok else b'{"error":"bad key"}'
                self.send_response(200 if ok else 401)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        class Server(ThreadingHTTPServer):
            daemon_threads = True

            def handle_error(self, request: object, client_address: object) -> None:
                pass  # the client gave up (its timeout fired)

        self.server = Server(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> FakeProvider:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_verify_against_the_provider(kms_key, monkeypatch):
    with FakeProvider(KEYS["openai"]) as fake:
        monkeypatch.setenv("BYOK_VERIFY_URL_OPENAI", fake.url)
        status, _, body = post_key("gil", "openai", KEYS["openai"], verify="true")
        assert status == 201, body
        assert fake.seen[-1][0] == "/v1/models"
        assert fake.seen[-1][1]["authorization"] == f"Bearer {KEYS['openai']}"

        other = "sk-proj-RejectedByTheProvider0123456789"
        status, _, body = post_key("gil", "openai", other, verify="true")
        assert status == 400 and body["error"]["code"] == "invalid_api_key"
        assert "rejected this API key (HTTP 401)" in body["error"]["message"]
        assert_absent(other, json.dumps(body))
        # the first key is still the stored one
        assert list_keys("gil")[2]["keys"][0]["masked_key"] == "sk-…D6sA"
        # without ?verify the provider is not asked
        asked = len(fake.seen)
        assert post_key("gil", "openai", other)[0] == 201
        assert len(fake.seen) == asked


def test_verify_anthropic_uses_x_api_key(kms_key, monkeypatch):
    with FakeProvider(KEYS["anthropic"]) as fake:
        monkeypatch.setenv("BYOK_VERIFY_URL_ANTHROPIC", fake.url)
        assert post_key("hank", "anthropic", KEYS["anthropic"], verify="true")[0] == 201
        headers = fake.seen[-1][1]
        assert headers["x-api-key"] == KEYS["anthropic"] and "anthropic-version" in headers


def test_verify_unreachable_or_slow_provider_is_400_and_nothing_stored(kms_key, monkeypatch):
    monkeypatch.setenv("BYOK_VERIFY_URL_GROQ", "http://127.0.0.1:9/openai/v1")
    status, _, body = post_key("ivy", "groq", KEYS["groq"], verify="true")
    assert status == 400 and body["error"]["code"] == "byok_verification_failed"
    assert "could not be reached" in body["error"]["message"]
    with FakeProvider(KEYS["groq"], delay=1.0) as fake:
        monkeypatch.setenv("BYOK_VERIFY_URL_GROQ", fake.url)
        monkeypatch.setenv("BYOK_VERIFY_TIMEOUT_SECONDS", "0.2")
        bootstrap.reset()  # read at cold start
        status, _, body = post_key("ivy", "groq", KEYS["groq"], verify="true")
        assert status == 400 and "did not answer" in body["error"]["message"]
    assert list_keys("ivy")[2] == {"keys": []}


def test_post_without_a_configured_kms_key_is_a_clean_500(aws, monkeypatch):
    monkeypatch.delenv("BYOK_KMS_KEY_ID", raising=False)
    bootstrap.reset()
    status, _, body = post_key("jay", "groq", KEYS["groq"])
    assert status == 500 and body["error"]["type"] == "server_error"
    assert_absent(KEYS["groq"], json.dumps(body))


# --------------------------------------------------------------------------- aliases


def test_providers_accept_the_names_model_ids_start_with() -> None:
    """One alias table: each catalog model id's prefix names its provider's key."""
    from pathlib import Path

    catalog = json.loads((Path(domain.__file__).parents[1] / "data" / "catalog.json").read_text())
    models = [m for m in _catalog_models(catalog) if m["provider"] in domain.PROVIDERS]
    assert models, "the catalog has BYOK providers"
    for model in models:
        prefix = model["id"].split("/", 1)[0]
        assert domain.provider_rule(prefix).name == model["provider"], model["id"]
    assert domain.provider_rule("together_ai").name == "together"
    assert domain.provider_rule("Fireworks_AI ").name == "fireworks"
    for alias, name in domain.PROVIDER_ALIASES.items():
        assert name in domain.PROVIDERS, alias
    with pytest.raises(InvalidRequest, match="Unknown provider 'together_ia'"):
        domain.provider_rule("together_ia")


def _catalog_models(node: object) -> list[dict[str, str]]:
    """Every {"id", "provider"} object in the catalog, wherever it is nested."""
    found: list[dict[str, str]] = []
    if isinstance(node, dict):
        if isinstance(node.get("id"), str) and isinstance(node.get("provider"), str):
            found.append(node)
        for value in node.values():
            found.extend(_catalog_models(value))
    elif isinstance(node, list):
        for value in node:
            found.extend(_catalog_models(value))
    return found


def test_key_stored_under_an_alias_is_the_providers_key(kms_key) -> None:
    status, _, body = post_key("ali", "together_ai", KEYS["together"])
    assert status == 201 and body["provider"] == "together"
    assert [k["provider"] for k in list_keys("ali")[2]["keys"]] == ["together"]
    assert patch_key("ali", "fireworks_ai", {"enabled": False})[0] == 404
    assert delete_key("ali", "together_ai")[0] == 204
    assert list_keys("ali")[2]["keys"] == []


def test_messages_use_the_right_article() -> None:
    with pytest.raises(InvalidRequest) as wrong:
        domain.normalize_key(domain.provider_rule("openai"), "nope-not-a-key-at-all")
    assert "an OpenAI" in wrong.value.message and "a OpenAI" not in wrong.value.message
    with pytest.raises(InvalidRequest) as wrong:
        domain.normalize_key(domain.provider_rule("groq"), "nope-not-a-key-at-all")
    assert "a Groq" in wrong.value.message
    assert domain.provider_rule("anthropic").a_label == "an Anthropic"
    assert domain.provider_rule("huggingface").a_label == "a Hugging Face"
