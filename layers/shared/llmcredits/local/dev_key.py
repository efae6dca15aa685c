"""The ready API key ``make dev``'s banner prints (issue 15): one per dev store.

The table keeps only the key's hash, and a secret is shown only when minted, so the
banner's key would be new (and one more active key) on every start. Instead its secret
is kept in a file beside the data it unlocks: ``<store folder>/dev-api-key.json``
(mode 0600; ``make dev-reset`` removes it with the store). The DynamoDB endpoint of
``DYNAMODB_ENDPOINT`` keeps it in ``.dev/dev-api-key.json``. At each start the saved
secret is checked against the store (the authorizer's own lookup): revoked, expired,
rotated out, or from another store (reset, other endpoint) -> a new key is minted and
the file replaced. A local development credential only: never in the table, never in a
deployed stack.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from llmcredits.services.api_keys import ApiKeysService, KeySettings

#: The banner's user (the README's examples use alice too).
DEV_KEY_USER = "alice"
DEV_KEY_NAME = "make dev banner"
DEV_KEY_FILE = "dev-api-key.json"


@dataclass(frozen=True)
class DevKey:
    secret: str
    key_id: str
    user_id: str
    minted: bool  # True: created by this start; False: the saved one, still valid
    path: Path | None  # where the secret is kept (None: nowhere; the store is in memory)


def ensure_dev_key(
    service: ApiKeysService, folder: Path | None, user_id: str = DEV_KEY_USER
) -> DevKey:
    """The saved dev key if it still authenticates as ``user_id``, else a new one (saved
    in ``folder`` when given)."""
    path = None if folder is None else folder / DEV_KEY_FILE
    saved = _read(path)
    if saved is not None:
        principal = service.authenticate(saved)
        if principal is not None and principal.allowed and principal.user_id == user_id \
                and principal.key_id:
            return DevKey(saved, principal.key_id, user_id, minted=False, path=path)
    secret, key = service.create(user_id, KeySettings(name=DEV_KEY_NAME))
    if path is not None:
        _write(path, {"user_id": user_id, "key_id": key.id, "secret": secret})
    return DevKey(secret, key.id, user_id, minted=True, path=path)


def _read(path: Path | None) -> str | None:
    if path is None or not path.is_file():
        return None
    try:
        secret = json.loads(path.read_text(encoding="utf-8"))["secret"]
    except (OSError, ValueError, KeyError, TypeError):
        return None  # unreadable: mint another
    return secret if isinstance(secret, str) else None


def _write(path: Path, values: dict[str, str]) -> None:
    """Owner-only, replaced atomically (a crash leaves the old file or the new one)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    partial.unlink(missing_ok=True)
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        json.dump(values, out)
    partial.replace(path)
