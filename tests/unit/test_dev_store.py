"""The embedded store of ``make dev`` keeps its data across restarts (issue 15).

A snapshot + write-ahead journal in ``LLMCREDITS_DEV_STORE``: a clean stop, a killed
process (the journal replayed) and a second server on the same folder (refused).
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import boto3
import pytest
from llmcredits.dal.dynamodb_ledger import DynamoLedgerStore
from llmcredits.domain.ledger import EntryType
from llmcredits.errors import InsufficientCredits
from llmcredits.local.embedded import (
    ENDPOINT_ENV,
    STORE_DIR_ENV,
    EmbeddedAws,
    StoreInUse,
)
from llmcredits.local.template import Template
from llmcredits.services.ledger import LedgerService

from tests.support import ROOT

D = Decimal


@pytest.fixture
def store_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    folder = tmp_path / "store"
    monkeypatch.setenv(STORE_DIR_ENV, str(folder))
    monkeypatch.delenv(ENDPOINT_ENV, raising=False)
    return folder


@pytest.fixture
def started() -> Iterator[list[EmbeddedAws]]:
    running: list[EmbeddedAws] = []
    yield running
    for embedded in running:
        embedded.stop()


def start(started: list[EmbeddedAws]) -> EmbeddedAws:
    embedded = EmbeddedAws(Template(ROOT / "template.yaml")).start()
    started.append(embedded)
    return embedded


def ledger(embedded: EmbeddedAws) -> LedgerService:
    return LedgerService(DynamoLedgerStore(boto3.client("dynamodb"),
                                           embedded.env["TABLE_NAME"]))


def balance(embedded: EmbeddedAws, user: str) -> Decimal | None:
    account = DynamoLedgerStore(boto3.client("dynamodb"),
                                embedded.env["TABLE_NAME"]).get_account(user)
    return None if account is None else account.balance


def test_data_and_kms_keys_survive_a_clean_restart(
    store_env: Path, started: list[EmbeddedAws]
) -> None:
    first = start(started)
    assert not first.restored
    ledger(first).grant("ann", D("10"), EntryType.BONUS, "welcome", "t", "k1")
    kms = boto3.client("kms")
    sealed = kms.encrypt(KeyId=first.env["BYOK_KMS_KEY_ID"], Plaintext=b"secret")
    key_id = first.env["BYOK_KMS_KEY_ID"]
    first.stop()
    started.clear()

    second = start(started)
    assert second.restored
    assert balance(second, "ann") == D("10")
    # the idempotency record came back too: the retry is a replay
    assert ledger(second).grant("ann", D("10"), EntryType.BONUS, "welcome", "t",
                                "k1").replayed
    assert balance(second, "ann") == D("10")
    assert second.env["BYOK_KMS_KEY_ID"] == key_id  # same key, same material
    opened = boto3.client("kms").decrypt(CiphertextBlob=sealed["CiphertextBlob"])
    assert opened["Plaintext"] == b"secret"


def test_a_killed_server_loses_no_committed_write(
    store_env: Path, started: list[EmbeddedAws], tmp_path: Path
) -> None:
    first = start(started)
    service = ledger(first)
    for i in range(5):
        service.grant("bob", D(i + 1), EntryType.BONUS, "x", "t")
    journal = next(store_env.glob("journal-*.jsonl"))
    lines = journal.read_text().count("\n")
    assert lines >= 5
    with pytest.raises(InsufficientCredits):  # refused before any write
        service.adjust_down("bob", D("100"), "too much", "t")
    client = boto3.client("dynamodb")
    with pytest.raises(client.exceptions.ConditionalCheckFailedException):
        client.put_item(  # a write DynamoDB refuses is not journaled (replay would apply it)
            TableName=first.env["TABLE_NAME"],
            Item={"PK": {"S": "USER#bob"}, "SK": {"S": "ACCOUNT"}},
            ConditionExpression="attribute_not_exists(PK)",
        )
    assert journal.read_text().count("\n") == lines
    # What a kill -9 leaves behind: the snapshot from the start and the journal so far.
    crashed = tmp_path / "crashed"
    shutil.copytree(store_env, crashed)
    (crashed / "lock").unlink()
    first.stop()
    started.clear()
    store_env.rename(tmp_path / "cleanly-stopped")
    crashed.rename(store_env)

    second = start(started)
    assert second.restored
    assert balance(second, "bob") == D("15")
    entries = ledger(second).history("bob", 50, None, None).entries
    assert sorted(e.amount for e in entries) == [D(1), D(2), D(3), D(4), D(5)]


def test_a_torn_last_journal_line_is_ignored(
    store_env: Path, started: list[EmbeddedAws]
) -> None:
    first = start(started)
    ledger(first).grant("cyd", D("2"), EntryType.BONUS, "x", "t")
    journal = next(store_env.glob("journal-*.jsonl"))
    with journal.open("a") as f:  # killed in the middle of an append
        f.write(journal.read_text().splitlines()[-1][:20])
    crashed = store_env.parent / "crashed"
    shutil.copytree(store_env, crashed)
    (crashed / "lock").unlink()
    first.stop()
    started.clear()
    shutil.rmtree(store_env)
    crashed.rename(store_env)
    second = start(started)
    assert balance(second, "cyd") == D("2")


def test_two_servers_cannot_share_one_store(
    store_env: Path, started: list[EmbeddedAws]
) -> None:
    from llmcredits.local.embedded import DevStore

    start(started)
    with pytest.raises(StoreInUse, match="in use by another llmcredits dev"):
        DevStore(store_env, "us-east-1").load()


def test_without_the_env_nothing_is_written(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, started: list[EmbeddedAws]
) -> None:
    monkeypatch.delenv(STORE_DIR_ENV, raising=False)
    monkeypatch.chdir(tmp_path)
    embedded = start(started)
    assert embedded.store is None and not any(tmp_path.iterdir())


def test_the_endpoint_serves_the_same_store_to_other_clients(
    store_env: Path, started: list[EmbeddedAws], monkeypatch: pytest.MonkeyPatch
) -> None:
    import subprocess
    import sys

    monkeypatch.setenv(ENDPOINT_ENV, "1")
    embedded = start(started)
    assert embedded.endpoint_url and embedded.endpoint_url.startswith("http://127.0.0.1:")
    ledger(embedded).grant("dee", D("4"), EntryType.BONUS, "x", "t")
    code = (
        "import boto3;"
        f"c = boto3.client('dynamodb', endpoint_url='{embedded.endpoint_url}', "
        "region_name='us-east-1', aws_access_key_id='x', aws_secret_access_key='x');"
        f"print(c.get_item(TableName='{embedded.env['TABLE_NAME']}', "
        "Key={'PK': {'S': 'USER#dee'}, 'SK': {'S': 'ACCOUNT'}}).get('Item', {})"
        ".get('balance', {}).get('N'))"
    )
    # another process, as `llmcredits admin` is: it sees the grant, and its writes journal
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60, check=True).stdout.strip()
    assert Decimal(out) == D("4")
