"""KMS envelope encryption with Fernet for BYOK provider keys.

Seal: KMS ``GenerateDataKey`` (AES_256) with the encryption context
``{"user_id": ..., "provider": ...}`` returns a data key in plaintext and encrypted
under the KMS key; the plaintext data key, base64url'd, is the Fernet key that encrypts
the provider key. Stored: the Fernet token, the encrypted data key and the KMS key id.
The plaintext data key is dropped at once.

Open: KMS ``Decrypt`` of the encrypted data key with the same context (KMS finds the
KMS key from the blob), then Fernet. KMS refuses a blob whose context differs, so a
ciphertext moved to another user's or provider's item does not decrypt
(:class:`KeyDecryptionError`). Fernet's HMAC refuses a token paired with another data key.

Warm containers cache plaintext data keys in memory (bounded TTL and size) keyed by the
encrypted data key *and* the context, so a repeat request needs no KMS call and a moved
ciphertext never hits another user's cache entry. Nothing plaintext is ever persisted,
logged or put into an exception.

This module imports ``cryptography``; the chat path imports it only when the caller has
an enabled key.
"""

from __future__ import annotations

import base64
import logging
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError
from cryptography.fernet import Fernet, InvalidToken

from llmcredits.dal.aws import region
from llmcredits.units import Seconds

CACHE_TTL_SECONDS = 300.0
CACHE_MAX_ENTRIES = 1024
#: KMS answers meaning "this blob does not decrypt with this context/key": not an outage.
_UNDECRYPTABLE = frozenset(
    {"InvalidCiphertextException", "IncorrectKeyException", "InvalidKeyUsageException"}
)

_CONFIG = Config(retries={"mode": "standard", "max_attempts": 3}, connect_timeout=2, read_timeout=5)


class _NoPlaintextDataKeys(logging.Filter):
    """botocore logs whole response bodies at DEBUG; a KMS answer with a plaintext data
    key must never reach a log, whatever level someone turns on."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno > logging.DEBUG:
            return True
        try:
            text = record.getMessage()
        except Exception:  # a record we cannot render: drop rather than risk it
            return False
        return '"Plaintext"' not in text and "'Plaintext'" not in text


_FILTER = _NoPlaintextDataKeys()
for _name in ("botocore.parsers", "botocore.endpoint", "botocore.hooks"):
    _logger = logging.getLogger(_name)
    if not any(isinstance(f, _NoPlaintextDataKeys) for f in _logger.filters):
        _logger.addFilter(_FILTER)


@cache
def kms_client() -> Any:
    """KMS, or any KMS-compatible endpoint when KMS_ENDPOINT is set (tests, local)."""
    return boto3.client(
        "kms",
        region_name=region(),
        endpoint_url=os.environ.get("KMS_ENDPOINT") or None,
        config=_CONFIG,
    )


class KeyDecryptionError(Exception):
    """A stored key does not decrypt for this user and provider. Carries no key material."""

    def __init__(self, user_id: str, provider: str, reason: str) -> None:
        super().__init__(
            f"The stored {provider} key of user {user_id!r} cannot be decrypted: {reason}"
        )
        self.user_id = user_id
        self.provider = provider
        self.reason = reason


@dataclass(frozen=True)
class Sealed:
    """What is stored: nothing here reveals the key without KMS Decrypt."""

    token: str  # the Fernet token (base64url text)
    encrypted_data_key: bytes  # the KMS CiphertextBlob of the data key
    kms_key_id: str  # ARN of the KMS key that encrypted the data key

    def __repr__(self) -> str:  # keep blobs out of logs and tracebacks
        return f"Sealed(kms_key_id={self.kms_key_id!r})"


def encryption_context(user_id: str, provider: str, name: str = "provider") -> dict[str, str]:
    """What KMS binds a data key to: the user and, under ``name``, what the secret is
    for (BYOK: ``provider``; webhook signing secrets: ``purpose``)."""
    return {"user_id": user_id, name: provider}


class DataKeyCache:
    """Plaintext data keys of a warm container: bounded in time and size, LRU."""

    def __init__(
        self,
        ttl_seconds: Seconds = CACHE_TTL_SECONDS,
        max_entries: int = CACHE_MAX_ENTRIES,
        clock: Callable[[], Seconds] = time.monotonic,
    ) -> None:
        self._ttl = ttl_seconds
        self._max = max_entries
        self._clock = clock
        self._lock = threading.Lock()
        self._entries: OrderedDict[tuple[bytes, str, str], tuple[Seconds, Fernet]] = OrderedDict()

    def get(self, key: tuple[bytes, str, str]) -> Fernet | None:
        with self._lock:
            found = self._entries.get(key)
            if found is None:
                return None
            expires, fernet = found
            if expires <= self._clock():
                del self._entries[key]
                return None
            self._entries.move_to_end(key)
            return fernet

    def put(self, key: tuple[bytes, str, str], fernet: Fernet) -> None:
        if self._ttl <= 0 or self._max <= 0:
            return
        with self._lock:
            self._entries[key] = (self._clock() + self._ttl, fernet)
            self._entries.move_to_end(key)
            while len(self._entries) > self._max:
                self._entries.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)


class Envelope:
    """Seal and open provider keys under a KMS key (``key_id``: id, ARN or alias)."""

    def __init__(self, client: Any, key_id: str | None, cache: DataKeyCache | None = None,
                 context_name: str = "provider"):
        self._client = client
        self._key_id = key_id
        self._cache = cache if cache is not None else DataKeyCache()
        self._context_name = context_name

    @property
    def cache(self) -> DataKeyCache:
        return self._cache

    def seal(self, api_key: str, *, user_id: str, provider: str,
             key_id: str | None = None) -> Sealed:
        target = key_id or self._key_id
        if not target:
            raise RuntimeError("the KMS key id is not configured")
        resp = self._client.generate_data_key(
            KeyId=target,
            KeySpec="AES_256",
            EncryptionContext=encryption_context(user_id, provider, self._context_name),
        )
        fernet = Fernet(base64.urlsafe_b64encode(resp["Plaintext"]))
        del resp["Plaintext"]
        token = fernet.encrypt(api_key.encode()).decode("ascii")
        return Sealed(token, bytes(resp["CiphertextBlob"]), str(resp["KeyId"]))

    def open(self, token: str, encrypted_data_key: bytes, *, user_id: str,
             provider: str) -> str:
        """The provider key, or KeyDecryptionError (wrong user/provider, tampered)."""
        cache_key = (bytes(encrypted_data_key), user_id, provider)
        fernet = self._cache.get(cache_key)
        if fernet is None:
            fernet = self._data_key(encrypted_data_key, user_id, provider)
            self._cache.put(cache_key, fernet)
        try:
            return fernet.decrypt(token.encode("ascii")).decode("utf-8")
        except (InvalidToken, UnicodeError, ValueError):
            raise KeyDecryptionError(
                user_id, provider,
                "the token does not match its data key (tampered, or moved from another "
                "record). Store the key again.",
            ) from None

    def _data_key(self, encrypted_data_key: bytes, user_id: str, provider: str) -> Fernet:
        error: str | None = None
        try:
            resp = self._client.decrypt(
                CiphertextBlob=bytes(encrypted_data_key),
                EncryptionContext=encryption_context(user_id, provider, self._context_name),
            )
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            if code not in _UNDECRYPTABLE:
                raise  # an outage or a permission problem, not a bad ciphertext
            error = code
        if error is not None:
            raise KeyDecryptionError(
                user_id, provider,
                f"KMS refused the data key ({error}): it was encrypted for another user or "
                "provider, or has been tampered with. Store the key again.",
            )
        plaintext = resp["Plaintext"]
        del resp["Plaintext"]
        if len(plaintext) != 32:
            raise KeyDecryptionError(user_id, provider, "the data key is not an AES-256 key.")
        return Fernet(base64.urlsafe_b64encode(plaintext))

    def key_arn(self, key_id: str) -> str:
        """The ARN of a KMS key given by id, ARN or alias (DescribeKey)."""
        return str(self._client.describe_key(KeyId=key_id)["KeyMetadata"]["Arn"])
