"""Alerts (issue 13 item 2): settings, detection from the table's stream, signed webhooks
with retries, the bus, and the signing secret kept out of the table and the logs.

The stream is moto's: the records the account-events consumer gets are read from the
table's stream through the event source mapping's FilterCriteria in template.yaml.
"""

from __future__ import annotations

import hashlib
import hmac
import itertools
import json
import logging
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import boto3
import pytest
from llmcredits import bootstrap, webhooks
from llmcredits.domain import alerts as domain
from llmcredits.domain.ledger import Account, EntryType, Tier
from llmcredits.local.streams import read_stream
from llmcredits.local.template import Template
from llmcredits.services.alerts import AlertService

from tests.support import ROOT, Context, event, invoke
from tests.webhook_receiver import Receiver

TABLE = "llmcredits-test"
ALERTS = "/api/v1/llm/credits/alerts"


# --------------------------------------------------------------------------- helpers


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


@pytest.fixture
def alerts_env(aws, monkeypatch):
    """A webhook KMS key and the event bus in moto; http to loopback allowed (local)."""
    kms = boto3.client("kms")
    key_id = kms.create_key(Description="webhook secrets")["KeyMetadata"]["KeyId"]
    boto3.client("events").create_event_bus(Name="llmcredits-test-bus")
    monkeypatch.setenv("WEBHOOK_KMS_KEY_ID", key_id)
    monkeypatch.setenv("EVENT_BUS_NAME", "llmcredits-test-bus")
    monkeypatch.setenv("AWS_SAM_LOCAL", "true")
    bootstrap.reset()
    yield key_id
    bootstrap.reset()


def put_alerts(user: str, body: dict[str, Any], **kw: Any):
    return invoke("credits_alerts_put", event("PUT", ALERTS, body=body, sub=user, **kw))


def get_alerts(user: str, **kw: Any):
    return invoke("credits_alerts_get", event("GET", ALERTS, sub=user, **kw))


_stream_position: dict[str, int] = {}


def account_records() -> list[dict[str, Any]]:
    """The stream records the AccountEventsFunction's filter passes, not yet fed."""
    (mapping,) = [e for e in Template(ROOT / "template.yaml").stream_events()
                  if e.function_id == "AccountEventsFunction"]
    client = boto3.client("dynamodb")
    arn = client.describe_table(TableName=TABLE)["Table"]["LatestStreamArn"]
    records = read_stream(boto3.client("dynamodbstreams"), arn, "us-east-1", mapping.filters)
    start = _stream_position.get(arn, 0)
    _stream_position[arn] = len(records)
    return records[start:]


def feed(records: list[dict[str, Any]]) -> dict[str, Any]:
    from llmcredits.openapi_doc import import_handler

    module = import_handler(ROOT / "functions" / "account_events" / "app.py")
    result: dict[str, Any] = module.lambda_handler({"Records": records}, Context())
    return result


def scan_table() -> list[dict[str, Any]]:
    client = boto3.client("dynamodb")
    items, kwargs = [], {"TableName": TABLE}
    while True:
        resp = client.scan(**kwargs)
        items += resp["Items"]
        if not resp.get("LastEvaluatedKey"):
            return items
        kwargs["ExclusiveStartKey"] = resp["LastEvaluatedKey"]


def outbox() -> list[dict[str, Any]]:
    return [i for i in scan_table() if i.get("kind", {}).get("S") == "alert_event"]


# --------------------------------------------------------------------------- signing


def test_verify_accepts_our_signature_and_refuses_tampering_other_secrets_and_replays():
    body = b'{"id":"evt_1","type":"balance.low"}'
    header = webhooks.signature_header("whsec_a", body, timestamp=1_800_000_000)
    # The documented scheme, computed independently: hex HMAC-SHA256 of "t.body".
    expected = hmac.new(b"whsec_a", b"1800000000." + body, hashlib.sha256).hexdigest()
    assert header == f"t=1800000000,v1={expected}"
    assert webhooks.verify(body, header, "whsec_a", now=1_800_000_010)["id"] == "evt_1"
    # Rotation: any matching v1 is enough.
    both = header + ",v1=" + webhooks.compute_signature("whsec_b", 1_800_000_000, body)
    assert webhooks.verify(body, both, "whsec_b", now=1_800_000_000)["type"] == "balance.low"
    for payload, hdr, secret, now in [
        (body + b" ", header, "whsec_a", 1_800_000_000),  # body changed
        (body, header, "whsec_other", 1_800_000_000),  # another secret
        (body, header, "whsec_a", 1_800_000_301),  # older than the tolerance
        (body, "v1=" + header.split("v1=")[1], "whsec_a", 1_800_000_000),  # no t=
        (body, None, "whsec_a", 1_800_000_000),
    ]:
        with pytest.raises(webhooks.SignatureVerificationError):
            webhooks.verify(payload, hdr, secret, now=now)


# --------------------------------------------------------------------------- settings


def test_put_returns_the_secret_once_get_never_and_rotation_makes_a_new_one(alerts_env):
    status, _, body = put_alerts("alice", {"low_balance": "5.00", "cap_percent": [100, 80],
                                           "webhook_url": "https://hooks.example.com/a"})
    assert status == 200, body
    secret = body["webhook_secret"]
    assert secret.startswith("whsec_") and len(secret) > 40
    assert body["low_balance"] == "5.000000" and body["cap_percent"] == [80, 100]
    status, _, got = get_alerts("alice")
    assert status == 200 and "webhook_secret" not in got and got["webhook_secret_set"] is True
    assert got["webhook_url"] == "https://hooks.example.com/a"
    assert secret not in json.dumps(got)
    # Same webhook again: no secret in the answer.
    _, _, again = put_alerts("alice", {"low_balance": "4", "webhook_url":
                                       "https://hooks.example.com/b"})
    assert again["webhook_secret"] is None and again["webhook_secret_set"] is True
    # Rotation: a new secret, once.
    _, _, rotated = put_alerts("alice", {"webhook_url": "https://hooks.example.com/b",
                                         "rotate_secret": True})
    assert rotated["webhook_secret"].startswith("whsec_") and rotated["webhook_secret"] != secret
    # The account carries the flag the watcher reads (no read for accounts without it).
    account = bootstrap.ledger_service().account("alice")
    assert domain.ALERTS_FLAG in account.flags
    status, _, off = put_alerts("alice", {})
    assert status == 200 and off["webhook_secret_set"] is False
    assert domain.ALERTS_FLAG not in bootstrap.ledger_service().account("alice").flags


@pytest.mark.parametrize(("body", "param"), [
    ({"cap_percent": [80, 80]}, "cap_percent"),
    ({"cap_percent": [0]}, "cap_percent"),
    ({"cap_percent": [101]}, "cap_percent"),
    ({"cap_percent": [True]}, "cap_percent"),
    ({"cap_percent": ["80"]}, "cap_percent"),
    ({"low_balance": "0"}, "low_balance"),
    ({"low_balance": "1.0000001"}, "low_balance"),
    ({"webhook_url": "ftp://example.com/x"}, "webhook_url"),
    ({"webhook_url": "https://user:pw@example.com/x"}, "webhook_url"),
    ({"webhook_url": "http://example.com/x"}, "webhook_url"),
    ({"webhook_url": "not a url"}, "webhook_url"),
    ({"rotate_secret": True}, "rotate_secret"),
    ({"surprise": 1}, "surprise"),
])
def test_bad_settings_are_a_400_naming_the_field(alerts_env, body, param):
    status, _, err = put_alerts("bob", body)
    assert status == 400, err
    assert err["error"]["param"] == param or err["error"]["param"].startswith(param)


def test_http_to_loopback_only_in_the_local_stack(alerts_env, monkeypatch):
    status, _, _ = put_alerts("carol", {"webhook_url": "http://127.0.0.1:9/hook"})
    assert status == 200
    monkeypatch.delenv("AWS_SAM_LOCAL")
    bootstrap.reset()
    status, _, err = put_alerts("carol", {"webhook_url": "http://127.0.0.1:9/hook"})
    assert status == 400 and err["error"]["param"] == "webhook_url"
    status, _, _ = put_alerts("carol", {"webhook_url": "https://hooks.example.com/x"})
    assert status == 200


def test_api_keys_may_not_read_or_set_alerts(alerts_env):
    assert put_alerts("dave", {}, kind="api_key", key_id="k1")[0] == 403
    assert get_alerts("dave", kind="api_key", key_id="k1")[0] == 403


# --------------------------------------------------------------------------- detection


def _ledger():
    return bootstrap.ledger_service()


def test_low_then_recovered_signed_to_the_webhook_and_on_the_bus(alerts_env, receiver):
    ledger = _ledger()
    ledger.grant("erin", Decimal("10"), EntryType.BONUS, "welcome", "ops")
    _, _, body = put_alerts("erin", {"low_balance": "5.00", "webhook_url": receiver.url})
    secret = body["webhook_secret"]
    account_records()  # what happened before this test's changes
    for _ in range(3):  # 10 -> 8 -> 6 -> 4: one crossing
        ledger.debit_usage("erin", Decimal("2"))
    assert feed(account_records()) == {"batchItemFailures": []}
    received = receiver.events(secret)
    assert [e["type"] for e in received] == ["balance.low"]
    assert received[0]["data"] == {"available": "4.000000", "balance": "4.000000",
                                   "low_balance": "5.000000"}
    assert received[0]["user_id"] == "erin"
    assert receiver.requests[0][0]["llmcredits-event-id"] == received[0]["id"]
    # Usage below the threshold again: still low, nothing new.
    ledger.debit_usage("erin", Decimal("1"))
    feed(account_records())
    assert len(receiver.requests) == 1
    # A purchase back over it: recovered.
    ledger.grant("erin", Decimal("20"), EntryType.BONUS, "top up", "ops")
    feed(account_records())
    assert [e["type"] for e in receiver.events(secret)] == ["balance.low", "balance.recovered"]
    assert all(i["status"]["S"] == "delivered" for i in outbox())


def test_a_redelivered_batch_sends_nothing_twice(alerts_env, receiver):
    ledger = _ledger()
    ledger.grant("fred", Decimal("6"), EntryType.BONUS, "welcome", "ops")
    put_alerts("fred", {"low_balance": "5.00", "cap_percent": [50],
                        "webhook_url": receiver.url})
    bootstrap.ledger_service().set_monthly_cap("fred", Decimal("2"))
    account_records()
    ledger.debit_usage("fred", Decimal("1.5"))
    batch = account_records()
    feed(batch)
    assert sorted(json.loads(b)["type"] for _, b in receiver.requests) == [
        "balance.low", "cap.threshold"]
    for _ in range(2):  # Lambda delivers the same batch again (and a copy of it)
        assert feed(batch) == {"batchItemFailures": []}
    assert len(receiver.requests) == 2
    assert len(outbox()) == 2


def test_cap_threshold_once_per_threshold_per_month(alerts_env, receiver):
    ledger = _ledger()
    ledger.grant("gina", Decimal("100"), EntryType.BONUS, "welcome", "ops")
    ledger.set_monthly_cap("gina", Decimal("10"))
    _, _, body = put_alerts("gina", {"cap_percent": [50, 80, 100], "webhook_url": receiver.url})
    account_records()
    for amount in ("4", "1", "2", "1", "1", "1"):  # 4, 5 (50%), 7, 8 (80%), 9, 10 (100%)
        ledger.debit_usage("gina", Decimal(amount))
    feed(account_records())
    got = receiver.events(body["webhook_secret"])
    assert [(e["type"], e["data"]["percent"]) for e in got] == [
        ("cap.threshold", 50), ("cap.threshold", 80), ("cap.threshold", 100)]
    assert got[1]["data"]["threshold"] == "8.000000"
    assert len({e["id"] for e in got}) == 3


def test_accounts_without_alerts_cost_no_read(alerts_env, monkeypatch):
    ledger = _ledger()
    ledger.grant("hal", Decimal("10"), EntryType.BONUS, "welcome", "ops")
    account_records()
    ledger.debit_usage("hal", Decimal("9"))
    reads: list[str] = []
    store = bootstrap.alert_store()
    monkeypatch.setattr(store, "get", lambda user: reads.append(user))
    feed(account_records())
    assert reads == []


def test_failing_receiver_is_retried_with_backoff_then_given_up_after_24_hours(
        alerts_env, receiver):
    receiver.status = 500
    clock = [datetime(2026, 12, 1, 12, 0, tzinfo=UTC)]
    base = bootstrap.alert_service()
    service = AlertService(base.store, _ledger().account, bootstrap.alert_envelope,
                           bootstrap._event_publisher, bootstrap._webhook_sender,
                           allow_loopback_http=True, clock=lambda: clock[0])
    _ledger().account("ivy")
    _, secret = service.update("ivy", None, [], receiver.url)
    assert service.emit("ivy", "topup.failed", {"reason": "card_declined"}, "pi_1:1")
    assert not service.emit("ivy", "topup.failed", {"reason": "card_declined"}, "pi_1:1")
    attempts_at = [clock[0]]
    store = bootstrap.alert_store()
    for _ in range(100):  # the deliverer runs when each retry is due
        (item,) = outbox()
        if "delivery_due" not in item:
            break
        clock[0] = datetime.strptime(item["delivery_due"]["S"], "%Y-%m-%dT%H:%M:%S.%fZ"
                                     ).replace(tzinfo=UTC)
        assert service.deliver_due(per_shard=5).delivered == 0
        attempts_at.append(clock[0])
    assert store is service.store
    gaps = [b - a for a, b in itertools.pairwise(attempts_at)]
    assert gaps[:4] == [timedelta(minutes=m) for m in (1, 2, 4, 8)]
    assert max(gaps) == timedelta(hours=3)
    assert attempts_at[-1] - attempts_at[0] <= timedelta(hours=24)
    assert attempts_at[-1] - attempts_at[0] > timedelta(hours=21)
    (item,) = outbox()
    assert item["status"]["S"] == "failed" and int(item["attempts"]["N"]) == len(attempts_at)
    assert "delivery_due" not in item  # off the index: never tried again
    clock[0] += timedelta(days=1)
    service.deliver_due()
    assert len(receiver.requests) == len(attempts_at)
    # Every attempt carried a valid signature of the same body.
    assert {e["id"] for e in receiver.events(secret or "", tolerance=0)} == {item["id"]["S"]}


def test_a_receiver_back_up_gets_the_event_on_the_next_due_attempt(alerts_env, receiver):
    receiver.status = 307  # redirects are not followed: a failed attempt
    clock = [datetime(2026, 12, 1, 12, 0, tzinfo=UTC)]
    service = AlertService(bootstrap.alert_store(), _ledger().account, bootstrap.alert_envelope,
                           bootstrap._event_publisher, bootstrap._webhook_sender,
                           allow_loopback_http=True, clock=lambda: clock[0])
    _ledger().account("jay")
    service.update("jay", None, [], receiver.url)
    service.emit("jay", "topup.failed", {}, "pi_2:1")
    assert len(receiver.requests) == 1
    receiver.status = 204
    clock[0] += timedelta(seconds=30)
    assert service.deliver_due().delivered == 0  # not due yet
    clock[0] += timedelta(seconds=31)
    assert service.deliver_due().delivered == 1
    assert service.deliver_due().delivered == 0
    assert len(receiver.requests) == 2


def test_every_event_goes_to_the_bus_once(alerts_env, receiver):
    sqs = boto3.client("sqs")
    queue = sqs.create_queue(QueueName="bus-copy")["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=queue, AttributeNames=["QueueArn"])[
        "Attributes"]["QueueArn"]
    events = boto3.client("events")
    events.put_rule(Name="all", EventBusName="llmcredits-test-bus",
                    EventPattern=json.dumps({"source": ["llmcredits"]}))
    events.put_targets(Rule="all", EventBusName="llmcredits-test-bus",
                       Targets=[{"Id": "q", "Arn": arn}])
    ledger = _ledger()
    ledger.grant("kim", Decimal("10"), EntryType.BONUS, "welcome", "ops")
    put_alerts("kim", {"low_balance": "5"})  # no webhook: the bus only
    account_records()
    ledger.debit_usage("kim", Decimal("6"))
    feed(account_records())
    messages = sqs.receive_message(QueueUrl=queue, MaxNumberOfMessages=10)["Messages"]
    (message,) = messages
    bus_event = json.loads(message["Body"])
    assert bus_event["detail-type"] == "balance.low" and bus_event["source"] == "llmcredits"
    assert bus_event["detail"]["user_id"] == "kim"
    assert bus_event["detail"]["id"].startswith("evt_")
    (item,) = outbox()
    assert item["status"]["S"] == "published"


def test_credits_expiring_once_per_lot_seven_days_ahead(alerts_env, receiver):
    now = datetime(2026, 12, 1, tzinfo=UTC)

    class Lots:
        asked: list[datetime] = []

        def lots_expiring_before(self, before):
            self.asked.append(before)
            return [domain.ExpiringLot("lee", "lot-1", Decimal("7"), "2026-12-05T00:00:00Z"),
                    domain.ExpiringLot("lee", "lot-2", Decimal("0"), "2026-12-06T00:00:00Z")]

    service = AlertService(bootstrap.alert_store(), _ledger().account, bootstrap.alert_envelope,
                           bootstrap._event_publisher, bootstrap._webhook_sender,
                           allow_loopback_http=True, clock=lambda: now)
    _ledger().account("lee")
    _, secret = service.update("lee", None, [], receiver.url)
    lots = Lots()
    assert service.warn_expiring(lots) == 1
    assert service.warn_expiring(lots) == 0  # the next run: already sent
    assert lots.asked == [now + timedelta(days=7)] * 2
    (got,) = receiver.events(secret or "", tolerance=0)
    assert got["type"] == "credits.expiring"
    assert got["data"] == {"lot_id": "lot-1", "remaining": "7.000000",
                           "expires_at": "2026-12-05T00:00:00Z"}


# --------------------------------------------------------------------------- secrets


def test_the_signing_secret_is_never_in_the_table_or_the_logs(alerts_env, receiver, caplog):
    caplog.set_level(logging.DEBUG)
    ledger = _ledger()
    ledger.grant("max", Decimal("10"), EntryType.BONUS, "welcome", "ops")
    _, _, body = put_alerts("max", {"low_balance": "5", "webhook_url": receiver.url})
    secret = body["webhook_secret"]
    account_records()
    receiver.status = 500
    ledger.debit_usage("max", Decimal("6"))
    feed(account_records())
    receiver.status = 200
    _, _, rotated = put_alerts("max", {"low_balance": "5", "webhook_url": receiver.url,
                                       "rotate_secret": True})
    dump = json.dumps(scan_table(), default=str)
    logs = caplog.text
    for value in (secret, rotated["webhook_secret"]):
        assert value not in dump
        assert value not in logs
        assert value.removeprefix("whsec_") not in dump
    assert "whsec_" not in dump
    (item,) = [i for i in scan_table() if i["SK"]["S"] == "ALERTS"]
    assert "secret_token" in item and "secret_edk" in item  # sealed, not missing


def test_a_sealed_secret_copied_to_another_user_does_not_open(alerts_env):
    from llmcredits.dal.kms_envelope import KeyDecryptionError

    put_alerts("ned", {"webhook_url": "https://hooks.example.com/n"})
    stored = bootstrap.alert_store().get("ned")
    assert stored is not None and stored.sealed is not None
    envelope = bootstrap.alert_envelope()
    with pytest.raises(KeyDecryptionError):
        envelope.open(stored.sealed.token, stored.sealed.encrypted_data_key, user_id="oscar",
                      provider="webhook-signing")


# --------------------------------------------------------------------------- domain


def _account(available: str, balance: str | None = None, spent: str = "0",
             cap: str | None = None, month: str = "2026-12") -> Account:
    return Account(user_id="u", balance=Decimal(balance or available),
                   available=Decimal(available), tier=Tier.FREE, month=month,
                   month_spent=Decimal(spent),
                   monthly_cap=None if cap is None else Decimal(cap))


def test_a_hold_dipping_under_the_threshold_and_back_does_not_flap():
    settings = domain.AlertSettings(low_balance=Decimal("5"))
    at = datetime(2026, 12, 1, tzinfo=UTC)
    low = False
    sent = []
    # Reserve 0.5 from 5.1 (low), settle 0.01 (hold back: 5.09), reserve again, settle.
    steps = [("5.1", "5.1"), ("4.6", "5.1"), ("5.09", "5.09"), ("4.59", "5.09"), ("5.08", "5.08")]
    for i, (old, new) in enumerate(itertools.pairwise(steps)):
        got = domain.detect(settings, low, _account(*old), _account(*new), f"r{i}", at)
        low = got.low
        sent += [e.type for e in got.events]
    assert sent == ["balance.low"]
    # Money in lifts it: recovered, once.
    got = domain.detect(settings, low, _account("5.08"), _account("15.08"), "r9", at)
    assert [e.type for e in got.events] == ["balance.recovered"] and got.low is False


def test_a_new_month_may_cross_each_threshold_again():
    settings = domain.AlertSettings(cap_percent=(80,))
    at = datetime(2026, 12, 1, tzinfo=UTC)
    dec = domain.detect(settings, False, _account("9", spent="7", cap="10", month="2026-11"),
                        _account("8", spent="8", cap="10", month="2026-11"), "a", at)
    jan = domain.detect(settings, False, _account("8", spent="0", cap="10", month="2026-12"),
                        _account("7", spent="8", cap="10", month="2026-12"), "b", at)
    assert dec.events[0].id != jan.events[0].id
    assert [e.data["month"] for e in (*dec.events, *jan.events)] == ["2026-11", "2026-12"]


# --------------------------------------------------------------------------- the consumer


def test_a_failing_record_fails_it_and_every_later_record_of_the_batch(alerts_env, monkeypatch):
    ledger = _ledger()
    ledger.grant("pat", Decimal("10"), EntryType.BONUS, "welcome", "ops")
    account_records()
    for _ in range(3):
        ledger.debit_usage("pat", Decimal("1"))
    batch = account_records()
    assert len(batch) == 3
    service = bootstrap.account_events_service()
    seen: list[str] = []

    def handle(change):
        seen.append(change.event_id)
        if len(seen) == 2:
            raise RuntimeError("store outage")

    monkeypatch.setattr(service, "handle", handle)
    result = feed(batch)
    sequence_numbers = [r["dynamodb"]["SequenceNumber"] for r in batch]
    assert [f["itemIdentifier"] for f in result["batchItemFailures"]] == sequence_numbers[1:]
    assert seen == [r["eventID"] for r in batch[:2]]  # the third was not tried out of order


def test_a_kept_table_gets_the_indexes_the_template_added(aws):
    from llmcredits.local.embedded import _add_missing_indexes

    from tests.support import template

    client = boto3.client("dynamodb")
    props = template()["Resources"]["LedgerTable"]["Properties"]
    old = {**props, "GlobalSecondaryIndexes": [
        i for i in props["GlobalSecondaryIndexes"] if i["IndexName"] != "AlertDeliveries"],
        "AttributeDefinitions": [a for a in props["AttributeDefinitions"]
                                 if not a["AttributeName"].startswith("delivery_")]}
    from llmcredits.local.embedded import _table_request

    client.create_table(**_table_request("kept", old))
    desc = client.describe_table(TableName="kept")["Table"]
    assert "AlertDeliveries" not in {i["IndexName"] for i in desc["GlobalSecondaryIndexes"]}
    desc = _add_missing_indexes(client, "kept", props, desc)
    assert "AlertDeliveries" in {i["IndexName"] for i in desc["GlobalSecondaryIndexes"]}
