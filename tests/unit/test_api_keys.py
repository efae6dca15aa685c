"""API keys (issue 11 items 3 and 4): routes, authenticator, and the key guard in the
reserve write, on moto through the real handlers."""

from __future__ import annotations

import base64
import json
import logging
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import boto3
import pytest
from llmcredits import bootstrap
from llmcredits.dal.dynamodb_api_keys import DynamoApiKeyStore
from llmcredits.dal.dynamodb_ledger import DynamoLedgerStore
from llmcredits.dal.upstream import LiteLLMUpstream
from llmcredits.domain.api_keys import (
    SECRET_PREFIX,
    KeyCredential,
    LimitReset,
    looks_like_secret,
    mask,
    new_secret,
    period_of,
    secret_hash,
)
from llmcredits.domain.ledger import Account, EntryType, Hold, Tier
from llmcredits.domain.pricing import catalog
from llmcredits.domain.principal import KeyPrincipal
from llmcredits.errors import KeyLimitReached, Unauthorized
from llmcredits.local.dev_upstream import DevUpstream
from llmcredits.models_chat import ChatCompletionRequest
from llmcredits.services.api_keys import ApiKeysService, KeyExtras, KeySettings
from llmcredits.services.chat import ChatService
from llmcredits.services.ledger import LedgerService

from tests.support import event, invoke

P = "/api/v1/llm"
ADMIN = {"sub": "ops", "scopes": ["llmcredits/admin"]}
BALANCED = "together_ai/meta-llama/Llama-3.3-70B-Instruct-Turbo"
HELLO = [{"role": "user", "content": "Say hello to the key budget, please."}]
TABLE = "llmcredits-test"


# --------------------------------------------------------------------------- helpers


def setup_user(user: str, amount: str = "100", tier: str = "professional") -> None:
    invoke("credits_get", event("GET", f"{P}/credits", sub=user))
    invoke("admin_user_patch", event("PATCH", f"{P}/admin/users/{user}",
                                     path_params={"user_id": user}, body={"tier": tier}, **ADMIN))
    invoke("admin_user_credits_post", event(
        "POST", f"{P}/admin/users/{user}/credits", body={"amount": amount},
        path_params={"user_id": user}, **ADMIN))


def create_key(user: str, **fields):
    status, _, body = invoke("keys_post", event("POST", f"{P}/keys", body=fields, sub=user))
    assert status == 201, body
    return body


def key_call(function: str, method: str, path: str, user: str, secret: str, key_id: str,
             body=None):
    return invoke(function, event(method, path, body=body, sub=user, kind="api_key",
                                  key_id=key_id, headers={"Authorization": f"Bearer {secret}"}))


def chat_with_key(user: str, secret: str, key_id: str, body=None):
    return key_call("chat_completions", "POST", f"{P}/chat/completions", user, secret, key_id,
                    body or {"model": BALANCED, "messages": HELLO, "max_tokens": 50})


def one_hold(tier: str = "professional") -> Decimal:
    from llmcredits.domain.pricing import prompt_token_bound

    route = catalog().resolve(BALANCED, None, tier)
    return catalog().charge(route, None, tier, prompt_token_bound(HELLO), 50)


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now


def services(clock: Clock | None = None):
    client = boto3.client("dynamodb")
    keys = DynamoApiKeyStore(client, TABLE)
    tick = clock or (lambda: datetime.now(UTC))
    ledger = LedgerService(DynamoLedgerStore(client, TABLE), clock=tick)
    svc = ApiKeysService(keys, ensure_account=ledger.account,
                         tier_rate_limit=catalog().rate_limit,
                         power_levels=list(catalog().power_levels), clock=tick)
    return ledger, svc, keys


def accepted(principal: KeyPrincipal | None) -> bool:
    return principal is not None and principal.allowed


def key_reserve(ledger: LedgerService, extras: KeyExtras, user: str, amount: Decimal,
                account: Account | None = None) -> Hold:
    """A reserve with the key's guard on the ledger's GuardedWrite hook (as chat does)."""
    return ledger.reserve(account or ledger.account(user), amount, rate_limit=None,
                          extra=lambda fresh: extras.on_reserve(fresh, amount),
                          key_id=extras.key_id)


# --------------------------------------------------------------------------- domain


def test_secret_is_llmc_and_32_random_bytes_base64url_and_only_its_hash_is_kept():
    secret = new_secret()
    assert secret.startswith(SECRET_PREFIX) and looks_like_secret(secret)
    raw = secret[len(SECRET_PREFIX):]
    assert len(base64.urlsafe_b64decode(raw + "=")) == 32
    assert new_secret() != secret
    assert secret_hash(secret) == secret_hash(secret) and len(secret_hash(secret)) == 64
    masked = mask(secret)
    assert masked.startswith("llmc-" + raw[:4]) and masked.endswith(raw[-4:])
    assert raw[4:-4] not in masked
    assert not looks_like_secret(secret + "x") and not looks_like_secret("sk-" + raw)


def test_limit_windows_are_utc_days_iso_weeks_months_or_forever():
    moment = datetime(2026, 12, 31, 23, 30, tzinfo=UTC)
    assert period_of(LimitReset.DAILY, moment) == "2026-12-31"
    assert period_of(LimitReset.WEEKLY, moment) == "2026-W53"
    assert period_of(LimitReset.MONTHLY, moment) == "2026-12"
    assert period_of(LimitReset.NEVER, moment) == "all"


# --------------------------------------------------------------------------- routes


def test_create_shows_the_secret_once_and_lists_it_masked(aws):
    setup_user("kim")
    body = create_key("kim", name="ci", limit="5.00", limit_reset="daily",
                      power_levels=["eco", "balanced"], rate_limit_per_minute=30)
    secret = body["key"]
    assert looks_like_secret(secret)
    assert body["limit"] == "5.000000" and body["limit_remaining"] == "5.000000"
    assert body["usage"] == "0.000000" and body["limit_reset"] == "daily"
    assert body["masked_key"] == mask(secret) and body["enabled"] is True
    status, _, listed = invoke("keys_get", event("GET", f"{P}/keys", sub="kim"))
    assert status == 200 and [k["id"] for k in listed["keys"]] == [body["id"]]
    assert "key" not in listed["keys"][0]
    status, _, one = invoke("key_get_one", event("GET", f"{P}/keys/{body['id']}", sub="kim",
                                                 path_params={"id": body["id"]}))
    assert status == 200 and one["name"] == "ci" and "key" not in one
    # another user sees nothing of it
    status, _, _ = invoke("key_get_one", event("GET", f"{P}/keys/{body['id']}", sub="eve",
                                               path_params={"id": body["id"]}))
    assert status == 404


@pytest.mark.parametrize("fields, param", [
    ({"limit": "-1"}, "limit"),
    ({"limit": "1.0000001"}, "limit"),
    ({"limit": True}, "limit"),
    ({"limit_reset": "hourly"}, "limit_reset"),
    ({"expires_at": "2020-01-01T00:00:00Z"}, "expires_at"),
    ({"expires_at": "2030-01-01T00:00:00"}, "expires_at"),  # no time zone
    ({"power_levels": ["turbo"]}, "power_levels"),
    ({"power_levels": []}, "power_levels"),
    ({"rate_limit_per_minute": 301}, "rate_limit_per_minute"),  # professional: 300
    ({"rate_limit_per_minute": 0}, "rate_limit_per_minute"),
    ({"name": ""}, "name"),
    ({"secret": "x"}, "secret"),
])
def test_bad_key_settings_are_a_clear_400(aws, fields, param):
    setup_user("bea")
    status, _, body = invoke("keys_post", event("POST", f"{P}/keys", body=fields, sub="bea"))
    assert status == 400, body
    assert body["error"]["param"] == param, body


def test_api_keys_may_not_manage_keys_and_get_key_needs_one(aws):
    setup_user("ari")
    created = create_key("ari")
    secret, key_id = created["key"], created["id"]
    for function, method, path, body, params in (
        ("keys_post", "POST", f"{P}/keys", {}, None),
        ("keys_get", "GET", f"{P}/keys", None, None),
        ("keys_patch", "PATCH", f"{P}/keys/{key_id}", {"limit": "1"}, {"id": key_id}),
        ("keys_delete", "DELETE", f"{P}/keys/{key_id}", None, {"id": key_id}),
        ("keys_rotate_post", "POST", f"{P}/keys/{key_id}/rotate", {}, {"id": key_id}),
    ):
        evt = event(method, path, body=body, sub="ari", kind="api_key", key_id=key_id,
                    path_params=params, headers={"Authorization": f"Bearer {secret}"})
        status, _, out = invoke(function, evt)
        assert status == 403 and out["error"]["code"] == "jwt_required", function
    status, _, own = key_call("key_get", "GET", f"{P}/key", "ari", secret, key_id)
    assert status == 200 and own["data"]["id"] == key_id and "key" not in own["data"]
    status, _, out = invoke("key_get", event("GET", f"{P}/key", sub="ari"))
    assert status == 400 and out["error"]["code"] == "api_key_required"


def test_at_most_the_configured_number_of_active_keys(aws, monkeypatch):
    monkeypatch.setenv("API_KEYS_MAX_PER_USER", "2")
    bootstrap.reset()
    setup_user("max")
    first = create_key("max")
    create_key("max")
    status, _, body = invoke("keys_post", event("POST", f"{P}/keys", body={}, sub="max"))
    assert status == 400 and body["error"]["code"] == "too_many_keys"
    status, _, _ = invoke("keys_delete", event("DELETE", f"{P}/keys/{first['id']}", sub="max",
                                               path_params={"id": first["id"]}))
    assert status == 204
    create_key("max")  # revoking freed a place


def test_patch_changes_only_what_is_sent_and_null_removes_the_limit(aws):
    setup_user("pat")
    key = create_key("pat", name="a", limit="2.00", limit_reset="weekly")
    path = f"{P}/keys/{key['id']}"

    def patch(body):
        return invoke("keys_patch", event("PATCH", path, body=body, sub="pat",
                                          path_params={"id": key["id"]}))

    status, _, out = patch({"name": "b"})
    assert status == 200 and out["name"] == "b" and out["limit"] == "2.000000"
    assert out["limit_reset"] == "weekly"
    status, _, out = patch({"limit": None})
    assert status == 200 and out["limit"] is None and out["limit_remaining"] is None
    status, _, out = patch({"enabled": False, "limit": "3"})
    assert status == 200 and out["enabled"] is False and out["limit_remaining"] == "3.000000"
    status, _, out = patch({"enabled": "no"})
    assert status == 400


# --------------------------------------------------------------------------- chat with a key


def test_chat_with_a_key_charges_its_usage_and_tags_the_ledger_entry(upstream):
    setup_user("cal")
    key = create_key("cal", limit="1.00")
    other = create_key("cal")
    status, headers, body = chat_with_key("cal", key["key"], key["id"])
    assert status == 200, body
    cost = Decimal(headers["X-Credits-Charged"])
    assert cost > 0
    status, _, own = key_call("key_get", "GET", f"{P}/key", "cal", key["key"], key["id"])
    assert own["data"]["usage"] == f"{cost:.6f}"
    assert own["data"]["limit_remaining"] == f"{Decimal(1) - cost:.6f}"
    assert own["data"]["last_used_at"]
    assert chat_with_key("cal", other["key"], other["id"])[0] == 200
    status, _, page = invoke("credits_history_get", event(
        "GET", f"{P}/credits/history", sub="cal", query={"key_id": key["id"]}))
    assert status == 200 and len(page["items"]) == 1
    assert page["items"][0]["key_id"] == key["id"] and page["items"][0]["type"] == "usage"
    status, _, page = invoke("credits_history_get", event(
        "GET", f"{P}/credits/history", sub="cal", query={"type": "usage"}))
    assert {i["key_id"] for i in page["items"]} == {key["id"], other["id"]}


def test_a_key_over_its_limit_gets_402_key_limit_reached_and_nothing_goes_upstream(upstream):
    setup_user("lim")
    key = create_key("lim", limit=f"{one_hold() / 2:.6f}")
    sent = len(upstream.requests)
    status, _, body = chat_with_key("lim", key["key"], key["id"])
    assert status == 402 and body["error"]["code"] == "key_limit_reached", body
    assert len(upstream.requests) == sent
    assert invoke("credits_get", event("GET", f"{P}/credits", sub="lim"))[2]["held"] == \
        "0.000000"


def test_revoked_disabled_and_rotated_keys_get_401_at_the_chat_function(upstream):
    setup_user("rev")
    key = create_key("rev")
    assert chat_with_key("rev", key["key"], key["id"])[0] == 200
    # disabled: 401 on the next request, whatever an authorizer cache says
    invoke("keys_patch", event("PATCH", f"{P}/keys/{key['id']}", body={"enabled": False},
                               sub="rev", path_params={"id": key["id"]}))
    status, _, body = chat_with_key("rev", key["key"], key["id"])
    assert status == 401 and body["error"]["code"] == "invalid_api_key"
    invoke("keys_patch", event("PATCH", f"{P}/keys/{key['id']}", body={"enabled": True},
                               sub="rev", path_params={"id": key["id"]}))
    # rotated with no grace: the old secret stops at once, the new one works
    status, _, rotated = invoke("keys_rotate_post", event(
        "POST", f"{P}/keys/{key['id']}/rotate", body={"grace_seconds": 0}, sub="rev",
        path_params={"id": key["id"]}))
    assert status == 201 and rotated["key"] != key["key"] and rotated["id"] == key["id"]
    assert chat_with_key("rev", key["key"], key["id"])[0] == 401
    assert chat_with_key("rev", rotated["key"], key["id"])[0] == 200
    # revoked
    assert invoke("keys_delete", event("DELETE", f"{P}/keys/{key['id']}", sub="rev",
                                       path_params={"id": key["id"]}))[0] == 204
    assert chat_with_key("rev", rotated["key"], key["id"])[0] == 401
    # an API-key caller without the secret it authenticated with
    evt = event("POST", f"{P}/chat/completions", body={"model": BALANCED, "messages": HELLO},
                sub="rev", kind="api_key", key_id=key["id"])
    assert invoke("chat_completions", evt)[0] == 401


def test_a_key_may_use_only_its_power_levels(upstream):
    setup_user("lev")
    key = create_key("lev", power_levels=["eco"])
    status, _, body = chat_with_key("lev", key["key"], key["id"])  # a balanced model
    assert status == 403 and body["error"]["code"] == "power_level_not_allowed_for_key"
    status, _, body = chat_with_key("lev", key["key"], key["id"],
                                    {"model": "auto", "messages": HELLO, "max_tokens": 20})
    assert status == 200, body  # auto picks a level the key allows


def test_a_key_rate_limit_binds_in_the_reserve(upstream):
    setup_user("rat")
    key = create_key("rat", rate_limit_per_minute=2)
    statuses = [chat_with_key("rat", key["key"], key["id"])[0] for _ in range(3)]
    assert statuses[:2] == [200, 200] and statuses[2] == 429


def test_get_usage_breaks_down_by_key_and_reconciles(upstream):
    from llmcredits.openapi_doc import import_handler
    from llmcredits.services.reconcile import reconcile_all

    from tests.support import FUNCTIONS, Context, usage_stream_records

    setup_user("use")
    one, two = create_key("use"), create_key("use")
    for key, times in ((one, 2), (two, 1)):
        for _ in range(times):
            assert chat_with_key("use", key["key"], key["id"])[0] == 200
    status, _, _ = invoke("chat_completions", event(
        "POST", f"{P}/chat/completions", sub="use",
        body={"model": BALANCED, "messages": HELLO, "max_tokens": 50}))
    assert status == 200
    client = boto3.client("dynamodb")
    records = usage_stream_records(client, TABLE, boto3.client("dynamodbstreams"))
    aggregator = import_handler(FUNCTIONS / "usage_aggregator" / "app.py")
    assert aggregator.lambda_handler({"Records": records}, Context()) == {"batchItemFailures": []}
    status, _, body = invoke("usage_get", event("GET", f"{P}/usage", sub="use"))
    assert status == 200, body
    by_key = {k["key_id"]: k for k in body["by_key"]}
    assert set(by_key) == {one["id"], two["id"], None}
    assert (by_key[one["id"]]["requests"], by_key[two["id"]]["requests"],
            by_key[None]["requests"]) == (2, 1, 1)
    status, _, own = key_call("key_get", "GET", f"{P}/key", "use", one["key"], one["id"])
    assert by_key[one["id"]]["cost"] == own["data"]["usage"]
    assert sum(Decimal(k["cost"]) for k in body["by_key"]) == Decimal(body["totals"]["cost"])
    report = reconcile_all(DynamoLedgerStore(client, TABLE), bootstrap.usage_store(),
                           user_id="use")
    assert report.ok, report.discrepancies


# --------------------------------------------------------------------------- time: expiry, grace


def test_expired_and_rotated_out_keys_are_refused_by_reserve_and_authenticator(aws):
    clock = Clock()
    ledger, svc, _ = services(clock)
    ledger.account("tim")
    ledger._store.set_tier("tim", Tier.PROFESSIONAL, "now")
    ledger.grant("tim", Decimal(10), EntryType.BONUS, "seed", actor="t")
    with DevUpstream() as up:
        chat = ChatService(ledger, catalog(), LiteLLMUpstream(up.url, None))

        def send(secret: str, key_id: str) -> None:
            request = ChatCompletionRequest.model_validate(
                {"model": BALANCED, "messages": HELLO, "max_tokens": 20})
            extras = svc.chat_extras("tim", KeyCredential(key_id, secret_hash(secret)))
            # A request id per request, as API Gateway's (the hold id derives from it).
            chat.complete("tim", request, power_level_header=None,
                          request_id=str(uuid.uuid4()),
                          extras=extras, key=extras.key)

        secret, key = svc.create("tim", KeySettings(expires_at=clock.now + timedelta(hours=1)))
        send(secret, key.id)
        assert accepted(svc.authenticate(secret))
        clock.now += timedelta(hours=1)
        with pytest.raises(Unauthorized, match="expired"):
            send(secret, key.id)
        assert not accepted(svc.authenticate(secret))

        old, key = svc.create("tim", KeySettings())
        new, _ = svc.rotate("tim", key.id, grace_seconds=600)
        send(old, key.id)  # within the grace
        send(new, key.id)
        principal = svc.authenticate(old)
        assert principal is not None and principal.key_id == key.id
        clock.now += timedelta(seconds=601)
        with pytest.raises(Unauthorized, match="rotated"):
            send(old, key.id)
        assert not accepted(svc.authenticate(old))
        send(new, key.id)
        assert accepted(svc.authenticate(new))


def test_authenticator_refuses_unknown_disabled_and_revoked_secrets(aws):
    _, svc, _ = services()
    secret, key = svc.create("aut", KeySettings(power_levels=["eco"]))
    principal = svc.authenticate(secret)
    assert principal is not None
    assert (principal.user_id, principal.key_id, principal.allowed) == ("aut", key.id, True)
    assert svc.authenticate(new_secret()) is None
    assert svc.authenticate("not-a-key") is None
    svc.update("aut", key.id, KeySettings(enabled=False))
    assert not accepted(svc.authenticate(secret))
    svc.update("aut", key.id, KeySettings(enabled=True))
    assert accepted(svc.authenticate(secret))
    svc.revoke("aut", key.id)
    assert not accepted(svc.authenticate(secret))


def test_a_daily_limit_restarts_the_next_utc_day(aws):
    clock = Clock()
    ledger, svc, keys = services(clock)
    ledger.grant("day", Decimal(10), EntryType.BONUS, "seed", actor="t")
    secret, key = svc.create("day", KeySettings(limit=Decimal("1.5"),
                                                limit_reset=LimitReset.DAILY))
    cred = KeyCredential(key.id, secret_hash(secret))
    extras = svc.chat_extras("day", cred)
    hold = key_reserve(ledger, extras, "day", Decimal(1))
    ledger.settle(ledger.account("day"), hold, Decimal(1), provider="p", model="m", tokens=1,
                  metadata={}, extra=extras.on_settle(hold, Decimal(1)))
    with pytest.raises(KeyLimitReached):
        key_reserve(ledger, svc.chat_extras("day", cred), "day", Decimal(1))
    clock.now += timedelta(days=1)
    key_reserve(ledger, svc.chat_extras("day", cred), "day", Decimal(1))
    stored = keys.get_key("day", key.id)
    assert stored is not None and stored.period == "2026-12-02"
    assert stored.period_spent == 0 and stored.usage == 1 and stored.headroom == Decimal("0.5")


# --------------------------------------------------------------------------- the guard itself


def test_two_reserves_from_one_stale_key_read_never_pass_the_limit(aws):
    """Deterministic: both plans see headroom 1.5 for a hold of 1; only the write's own
    condition (headroom >= hold) can refuse the second."""
    ledger, svc, keys = services()
    ledger.grant("sta", Decimal(100), EntryType.BONUS, "seed", actor="t")
    secret, key = svc.create("sta", KeySettings(limit=Decimal("1.5")))
    cred = KeyCredential(key.id, secret_hash(secret))
    # Two requests check the key (headroom 1.5) before either reserves.
    first, second = svc.chat_extras("sta", cred), svc.chat_extras("sta", cred)
    stale_account = ledger.account("sta")
    key_reserve(ledger, first, "sta", Decimal(1), stale_account)
    with pytest.raises(KeyLimitReached):
        key_reserve(ledger, second, "sta", Decimal(1), stale_account)
    stored = keys.get_key("sta", key.id)
    assert stored is not None and stored.headroom == Decimal("0.5") and stored.held == 1


def test_a_reserve_planned_before_a_revoke_is_refused_by_the_write(aws):
    ledger, svc, _ = services()
    ledger.grant("rvk", Decimal(100), EntryType.BONUS, "seed", actor="t")
    secret, key = svc.create("rvk", KeySettings())
    cred = KeyCredential(key.id, secret_hash(secret))
    extras = svc.chat_extras("rvk", cred)  # checked usable, then revoked before the reserve
    svc.revoke("rvk", key.id)
    with pytest.raises(Unauthorized):
        key_reserve(ledger, extras, "rvk", Decimal(1))
    assert ledger.account("rvk").held == 0


# --------------------------------------------------------------------------- secrets stay secret


def test_the_secret_never_reaches_the_table_logs_or_later_responses(upstream, caplog, capsys):
    caplog.set_level(logging.DEBUG)
    setup_user("sec")
    created = create_key("sec", limit="5")
    secret, key_id = created["key"], created["id"]
    _, _, rotated = invoke("keys_rotate_post", event(
        "POST", f"{P}/keys/{key_id}/rotate", body={"grace_seconds": 60}, sub="sec",
        path_params={"id": key_id}))
    new = rotated["key"]
    later = [
        chat_with_key("sec", new, key_id),
        chat_with_key("sec", secret, key_id),  # the old one, within its grace
        invoke("keys_get", event("GET", f"{P}/keys", sub="sec")),
        invoke("key_get_one", event("GET", f"{P}/keys/{key_id}", sub="sec",
                                    path_params={"id": key_id})),
        key_call("key_get", "GET", f"{P}/key", "sec", new, key_id),
        invoke("credits_history_get", event("GET", f"{P}/credits/history", sub="sec")),
        invoke("keys_patch", event("PATCH", f"{P}/keys/{key_id}", body={"name": "x"},
                                   sub="sec", path_params={"id": key_id})),
    ]
    bootstrap.api_key_authenticator().authenticate(new)
    invoke("keys_delete", event("DELETE", f"{P}/keys/{key_id}", sub="sec",
                                path_params={"id": key_id}))
    later.append(chat_with_key("sec", new, key_id))  # 401 after revoking
    assert [r[0] for r in later[:2]] == [200, 200] and later[-1][0] == 401
    # the distinctive part of each secret (what the masked form does not show)
    hidden = [s[len(SECRET_PREFIX) + 4:-4] for s in (secret, new)]
    scan = json.dumps(boto3.client("dynamodb").scan(TableName=TABLE)["Items"])
    logs = caplog.text + capsys.readouterr().out
    responses = json.dumps([[r[1], r[2]] for r in later])
    for part in hidden:
        assert part not in scan and part not in logs and part not in responses
    assert secret_hash(new) in scan  # what the table holds instead


# --------------------------------------------------------------------------- CLI


def test_cli_keys_create_prints_the_secret_once_and_the_key_works(aws, capsys):
    from llmcredits.cli import main as cli

    capsys.readouterr()
    code = cli(["keys", "create", "--sub", "cli-user", "--limit", "5.00", "--limit-reset",
                "daily", "--power-level", "eco", "--table", TABLE])
    out = capsys.readouterr()
    assert code == 0, out.err
    secret = out.out.strip()
    assert looks_like_secret(secret) and secret not in out.err
    record = json.loads(out.err)
    assert record["limit"] == "5.000000" and record["power_levels"] == ["eco"]
    _, svc, _ = services()
    principal = svc.authenticate(secret)
    assert principal is not None and principal.user_id == "cli-user"
    assert principal.key_id == record["id"]
    capsys.readouterr()
    assert cli(["keys", "create", "--sub", "cli-user", "--limit", "-1", "--table", TABLE]) != 0
    assert "Traceback" not in capsys.readouterr().err


def test_an_api_key_secret_in_free_text_is_scrubbed_from_log_lines():
    from llmcredits.http.log_scrub import scrub_text

    secret = new_secret()
    line = scrub_text(f"client sent {secret}, header x={json.dumps(secret)}")
    assert secret not in line and secret[5:] not in line and "[REDACTED]" in line


def test_a_change_planned_before_a_rotation_cannot_revive_the_old_secret(aws):
    from dataclasses import replace

    from llmcredits.dal.dynamodb_api_keys import KeyChanged

    _, svc, keys = services()
    old, key = svc.create("rot", KeySettings())
    before = keys.get_key("rot", key.id)
    assert before is not None
    svc.rotate("rot", key.id, grace_seconds=0)
    assert not accepted(svc.authenticate(old))
    with pytest.raises(KeyChanged):
        keys.update_settings(before, replace(before, name="stale"))
    assert not accepted(svc.authenticate(old))
    assert svc.update("rot", key.id, KeySettings(name="fresh")).name == "fresh"
    assert not accepted(svc.authenticate(old))
