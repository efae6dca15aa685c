"""The banner's dev API key (issue 15): one per dev store, its secret kept beside the
store and never in the table; a revoked, unreadable or foreign key is replaced."""

from __future__ import annotations

import json
import stat
from pathlib import Path
from typing import Any

import boto3
from llmcredits import bootstrap
from llmcredits.local.dev_key import DEV_KEY_FILE, DEV_KEY_USER, ensure_dev_key
from llmcredits.services.api_keys import KeySettings

TABLE = "llmcredits-test"


def table_text() -> str:
    client = boto3.client("dynamodb")
    return json.dumps([page["Items"] for page in client.get_paginator("scan").paginate(
        TableName=TABLE)])


def active_keys() -> list[Any]:
    return bootstrap.api_keys_service().list(DEV_KEY_USER)


def test_the_key_is_minted_once_per_store_and_kept_owner_only_beside_it(aws, tmp_path: Path):
    service = bootstrap.api_keys_service()
    first = ensure_dev_key(service, tmp_path)
    assert first.minted and first.secret.startswith("llmc-")
    path = tmp_path / DEV_KEY_FILE
    assert first.path == path
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert json.loads(path.read_text()) == {"user_id": DEV_KEY_USER, "key_id": first.key_id,
                                            "secret": first.secret}
    assert first.secret not in table_text()  # only its hash is stored

    again = ensure_dev_key(service, tmp_path)  # the next start of the same store
    assert not again.minted and (again.secret, again.key_id) == (first.secret, first.key_id)
    assert [k.id for k in active_keys()] == [first.key_id]  # no key piles up per start
    principal = service.authenticate(again.secret)
    assert principal is not None and principal.allowed and principal.user_id == DEV_KEY_USER


def test_a_revoked_unreadable_or_foreign_key_is_replaced(aws, tmp_path: Path):
    service = bootstrap.api_keys_service()
    first = ensure_dev_key(service, tmp_path)
    service.revoke(DEV_KEY_USER, first.key_id)  # e.g. in the console
    second = ensure_dev_key(service, tmp_path)
    assert second.minted and second.secret != first.secret
    assert json.loads((tmp_path / DEV_KEY_FILE).read_text())["secret"] == second.secret

    service.update(DEV_KEY_USER, second.key_id, KeySettings(enabled=False))  # known, unusable
    disabled = ensure_dev_key(service, tmp_path)
    assert disabled.minted and disabled.secret != second.secret

    (tmp_path / DEV_KEY_FILE).write_text("{not json")
    third = ensure_dev_key(service, tmp_path)
    assert third.minted and third.secret != disabled.secret

    # A file from another store (make dev-reset left it, another endpoint): unknown hash.
    (tmp_path / DEV_KEY_FILE).write_text(json.dumps({"secret": "llmc-" + "B" * 43}))
    fourth = ensure_dev_key(service, tmp_path)
    assert fourth.minted and fourth.secret != "llmc-" + "B" * 43

    # Another user's valid key in the file is not alice's: replaced too.
    other, _ = service.create("bob", KeySettings())
    (tmp_path / DEV_KEY_FILE).write_text(json.dumps({"secret": other}))
    fifth = ensure_dev_key(service, tmp_path)
    assert fifth.minted and fifth.user_id == DEV_KEY_USER and fifth.secret != other


def test_an_in_memory_store_keeps_the_secret_nowhere(aws, tmp_path: Path):
    key = ensure_dev_key(bootstrap.api_keys_service(), None)
    assert key.minted and key.path is None
    assert list(tmp_path.iterdir()) == []
