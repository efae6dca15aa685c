"""BYOK use cases: store, list, enable/disable, delete, use in chat, rotate.

Plaintext provider keys exist only in memory during a request: they arrive in the POST
body, are sealed (dal.kms_envelope) and dropped; the chat path opens them only for an
enabled key of the provider it routes to. No log line, exception or response here ever
carries a key: only the provider, the user id, the masked form and the fingerprint.

``cryptography`` (via dal.kms_envelope) is imported only when something must be sealed or
opened, so a chat request of a user without keys never loads it.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from llmcredits.dal.dynamodb_byok import AccountMissing, DynamoByokStore, StoredKey
from llmcredits.domain.byok import (
    ProviderRule,
    fingerprint,
    mask,
    normalize_key,
    provider_rule,
)
from llmcredits.domain.ledger import timestamp
from llmcredits.errors import ApiError, InvalidRequest, NotFound
from llmcredits.units import Seconds

if TYPE_CHECKING:
    from llmcredits.dal.kms_envelope import Envelope

log = logging.getLogger(__name__)

ROTATION_ATTEMPTS = 5
VERIFY_TIMEOUT_SECONDS = 5.0


class StoredKeyUnreadable(ApiError):
    """The caller's stored key does not decrypt (moved or tampered ciphertext)."""

    status = 500
    type = "server_error"
    code = "byok_key_unreadable"


def utcnow() -> datetime:
    return datetime.now(UTC)


# --------------------------------------------------------------------------- live check


@dataclass(frozen=True)
class VerifySpec:
    base_url: str
    path: str = "/models"
    auth: str = "bearer"  # or "x-api-key" (Anthropic)


#: Endpoints that answer 401 to a bad key. Override the base URL with
#: BYOK_VERIFY_URL_<PROVIDER> (tests point these at a local server).
VERIFY_SPECS: dict[str, VerifySpec] = {
    "openai": VerifySpec("https://api.openai.com/v1"),
    "anthropic": VerifySpec("https://api.anthropic.com/v1", auth="x-api-key"),
    # OpenRouter's /models is public; /key describes the key and needs it.
    "openrouter": VerifySpec("https://openrouter.ai/api/v1", path="/key"),
    "groq": VerifySpec("https://api.groq.com/openai/v1"),
    # Hugging Face's router lists models without a token; whoami-v2 needs one.
    "huggingface": VerifySpec("https://huggingface.co/api", path="/whoami-v2"),
    "together": VerifySpec("https://api.together.xyz/v1"),
    "fireworks": VerifySpec("https://api.fireworks.ai/inference/v1"),
    "deepinfra": VerifySpec("https://api.deepinfra.com/v1/openai"),
}


class HttpKeyVerifier:
    """Asks the provider whether it accepts the key (GET its models endpoint)."""

    def __init__(self, timeout_seconds: Seconds | None = None, client: Any = None) -> None:
        self._timeout = timeout_seconds or Seconds(
            os.environ.get("BYOK_VERIFY_TIMEOUT_SECONDS") or VERIFY_TIMEOUT_SECONDS
        )
        self._client = client

    @staticmethod
    def url_of(rule: ProviderRule) -> tuple[str, VerifySpec]:
        spec = VERIFY_SPECS[rule.name]
        base = os.environ.get(f"BYOK_VERIFY_URL_{rule.name.upper()}") or spec.base_url
        return base.rstrip("/") + spec.path, spec

    def verify(self, rule: ProviderRule, api_key: str) -> None:
        import httpx

        url, spec = self.url_of(rule)
        if spec.auth == "x-api-key":
            headers = {"x-api-key": api_key, "anthropic-version": "2023-06-01"}
        else:
            headers = {"Authorization": f"Bearer {api_key}"}
        client = self._client or httpx.Client(timeout=httpx.Timeout(self._timeout, connect=3))
        try:
            status = client.get(url, headers=headers).status_code
        except httpx.TimeoutException:
            status = None
            problem = f"{rule.label} did not answer within {self._timeout:g} s"
        except httpx.HTTPError:
            status = None
            problem = f"{rule.label} could not be reached"
        finally:
            if self._client is None:
                client.close()
        if status is not None and 200 <= status < 300:
            return
        if status in (401, 403):
            raise InvalidRequest(
                f"{rule.label} rejected this API key (HTTP {status}); it was not stored.",
                param="api_key", code="invalid_api_key",
            )
        if status is not None:
            problem = f"{rule.label} answered HTTP {status}"
        raise InvalidRequest(
            f"The key could not be verified: {problem}; it was not stored. Retry, or store "
            "it without ?verify=true.",
            param="api_key", code="byok_verification_failed",
        )


# --------------------------------------------------------------------------- use cases


@dataclass
class RotationReport:
    new_kms_key_arn: str
    rotated: int = 0
    already_current: int = 0
    gone: int = 0  # deleted while rotating
    failed: list[tuple[str, str, str]] = field(default_factory=list)  # user, provider, why

    @property
    def ok(self) -> bool:
        return not self.failed


class ByokService:
    def __init__(
        self,
        store: DynamoByokStore,
        envelope: Callable[[], Envelope],
        ensure_account: Callable[[str], object],
        verifier: HttpKeyVerifier | None = None,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self._store = store
        self._envelope = envelope
        self._ensure_account = ensure_account
        self._verifier = verifier or HttpKeyVerifier()
        self._clock = clock

    def store_key(self, user_id: str, provider: str, api_key: object, *,
                  verify: bool = False) -> StoredKey:
        """Validate, optionally live-check, seal and store (replacing any previous key)."""
        rule = provider_rule(provider)
        key = normalize_key(rule, api_key)
        if verify:
            self._verifier.verify(rule, key)
        sealed = self._envelope().seal(key, user_id=user_id, provider=rule.name)
        now = timestamp(self._clock())
        record = StoredKey(
            user_id=user_id,
            provider=rule.name,
            token=sealed.token,
            encrypted_data_key=sealed.encrypted_data_key,
            kms_key_id=sealed.kms_key_id,
            fingerprint=fingerprint(key),
            masked=mask(rule, key),
            enabled=True,
            created_at=now,
            updated_at=now,
        )
        del key
        try:
            self._store.put(record)
        except AccountMissing:
            self._ensure_account(user_id)  # first use of the API is a BYOK call
            self._store.put(record)
        log.info("byok key stored", extra={"user_id": user_id, "provider": rule.name,
                                           "fingerprint": record.fingerprint})
        return record

    def keys(self, user_id: str) -> list[StoredKey]:
        return sorted(self._store.list(user_id), key=lambda k: k.provider)

    def set_enabled(self, user_id: str, provider: str, enabled: bool) -> StoredKey:
        rule = provider_rule(provider)
        updated = self._store.set_enabled(user_id, rule.name, enabled,
                                          timestamp(self._clock()))
        if updated is None:
            raise self._not_found(rule)
        return updated

    def delete(self, user_id: str, provider: str) -> None:
        rule = provider_rule(provider)
        if not self._store.delete(user_id, rule.name):
            raise self._not_found(rule)

    @staticmethod
    def _not_found(rule: ProviderRule) -> NotFound:
        return NotFound(f"You have no stored {rule.label} key.", param="provider",
                        code="byok_key_not_found")

    # -- operators --------------------------------------------------------------------

    def rotate_all(self, new_kms_key_id: str,
                   progress: Callable[[StoredKey, str], None] | None = None) -> RotationReport:
        """Re-encrypt every stored key under ``new_kms_key_id``.

        Each key: KMS Decrypt (KMS finds the old key from the blob) with its context,
        GenerateDataKey under the new key, and a conditional write that only lands if the
        ciphertext is still the one read, so a user's concurrent replace is never lost
        (it is re-read and rotated again). enabled/updated_at are never touched. Safe to
        re-run: keys already under the new key are skipped."""
        from llmcredits.dal.kms_envelope import KeyDecryptionError

        envelope = self._envelope()
        arn = envelope.key_arn(new_kms_key_id)
        report = RotationReport(arn)
        for found in self._store.scan_all():
            current: StoredKey | None = found
            outcome = "failed"
            for _ in range(ROTATION_ATTEMPTS):
                if current is None:
                    outcome = "gone"
                    break
                if current.kms_key_id == arn:
                    outcome = "current"
                    break
                try:
                    plaintext = envelope.open(current.token, current.encrypted_data_key,
                                              user_id=current.user_id,
                                              provider=current.provider)
                except KeyDecryptionError as exc:
                    report.failed.append((current.user_id, current.provider, exc.reason))
                    outcome = "undecryptable"
                    break
                sealed = envelope.seal(plaintext, user_id=current.user_id,
                                       provider=current.provider, key_id=arn)
                del plaintext
                if self._store.replace_ciphertext(current, sealed.token,
                                                  sealed.encrypted_data_key,
                                                  sealed.kms_key_id,
                                                  timestamp(self._clock())):
                    outcome = "rotated"
                    break
                current = self._store.get(current.user_id, current.provider)  # changed
            else:
                report.failed.append((found.user_id, found.provider,
                                      "kept changing during rotation; run again"))
            if outcome == "rotated":
                report.rotated += 1
            elif outcome == "current":
                report.already_current += 1
            elif outcome == "gone":
                report.gone += 1
            if progress is not None:
                progress(found, outcome)
        return report

    def stored(self) -> Iterator[StoredKey]:
        return self._store.scan_all()


class ByokProviderKeys:
    """The chat seam: the caller's enabled key for a provider, in plaintext, or None.

    One consistent GetItem; the envelope (and ``cryptography``) is loaded only when an
    enabled key is found. The chat service asks only when the account's flags say an
    enabled key for that provider exists."""

    def __init__(self, store: DynamoByokStore, envelope: Callable[[], Envelope]) -> None:
        self._store = store
        self._envelope = envelope

    def key_for(self, user_id: str, provider: str) -> str | None:
        record = self._store.get(user_id, provider)
        if record is None or not record.enabled:
            return None
        from llmcredits.dal.kms_envelope import KeyDecryptionError

        try:
            return self._envelope().open(record.token, record.encrypted_data_key,
                                         user_id=user_id, provider=provider)
        except KeyDecryptionError as exc:
            log.warning("byok key unreadable", extra={"user_id": user_id,
                                                      "provider": provider})
            raise StoredKeyUnreadable(
                f"Your stored {provider} key cannot be decrypted ({exc.reason}) Nothing "
                "was charged. Store it again (POST /api/v1/llm/byok/keys), or disable it "
                "to use the platform's key.",
                param="provider",
            ) from None


def key_view(key: StoredKey) -> dict[str, Any]:
    return {
        "provider": key.provider,
        "masked_key": key.masked,
        "enabled": key.enabled,
        "fingerprint": key.fingerprint,
        "created_at": key.created_at,
        "updated_at": key.updated_at,
    }
