"""API key use cases: create, list, read, change, revoke, rotate, authenticate.

A secret exists only in memory: it is generated here, returned once (creation and
rotation) and never stored, logged or shown again; the table keeps its SHA-256.
The budget itself is enforced by the ledger's reserve transaction (``KeyBudgets`` is the
read side it uses); this module never moves money.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from llmcredits.dal.dynamodb_api_keys import DynamoApiKeyStore, KeyChanged, KeyLookup, TooManyKeys
from llmcredits.domain.api_keys import (
    DEFAULT_MAX_KEYS_PER_USER,
    LAST_USED_RESOLUTION_SECONDS,
    MAX_GRACE_SECONDS,
    STATUS_ACTIVE,
    ApiKey,
    KeyCredential,
    LimitReset,
    check_usable,
    epoch,
    looks_like_secret,
    new_key,
    new_secret,
    plan_key_release,
    plan_key_reserve,
    plan_key_settle,
    rolled_key,
    rotated,
    secret_hash,
    with_limit,
)
from llmcredits.domain.ledger import Account, GuardedWrite, Hold, timestamp
from llmcredits.domain.principal import KeyPrincipal
from llmcredits.errors import ContentionTimeout, InvalidRequest, NotFound
from llmcredits.money import format_money

MAX_ATTEMPTS = 50

#: A field PATCH may leave out; None there means "set to null" (e.g. remove the limit).
UNSET: Any = object()


def utcnow() -> datetime:
    return datetime.now(UTC)


def max_keys_per_user() -> int:
    return int(os.environ.get("API_KEYS_MAX_PER_USER", DEFAULT_MAX_KEYS_PER_USER))


class KeyBudgets:
    """The ledger's view of keys: the current record, moved into the current period."""

    def __init__(self, store: DynamoApiKeyStore, clock: Callable[[], datetime] = utcnow) -> None:
        self._store = store
        self._clock = clock

    def current(self, user_id: str, key_id: str) -> ApiKey | None:
        for _ in range(MAX_ATTEMPTS):
            key = self._store.get_key(user_id, key_id)
            if key is None:
                return None
            rolled = rolled_key(key, self._clock())
            if rolled is key:
                return key
            try:
                self._store.roll_over(key, rolled)
                return rolled
            except KeyChanged:
                time.sleep(0.001)
        raise ContentionTimeout("The API key is busy; retry the request.")


class KeyExtras:
    """One API-key chat request's part of its money transactions (the chat service's
    ``TransactionExtras``, on the ledger's GuardedWrite hook).

    Built from a check of the key before anything else (an unusable key is a 401
    before the provider is asked); the reserve re-plans from a fresh read of the key on
    every attempt after the first, and its conditions bind the read in the transaction.
    Settle and release move the hold to spent/headroom; the settle's write is stored
    with the settlement, so the settle worker moves the key's spend too."""

    def __init__(self, budgets: KeyBudgets, user_id: str, credential: KeyCredential,
                 clock: Callable[[], datetime]) -> None:
        self._budgets = budgets
        self._user_id = user_id
        self._credential = credential
        self._clock = clock
        self.key = self._read()
        self._fresh: ApiKey | None = self.key

    @property
    def key_id(self) -> str:
        return self.key.id

    def _read(self) -> ApiKey:
        found = self._budgets.current(self._user_id, self._credential.key_id)
        return check_usable(found, self._credential.secret_hash, self._clock())

    def on_reserve(self, account: Account, amount: Decimal) -> Sequence[GuardedWrite]:
        key = self._fresh or self._read()  # the first attempt uses the check's read
        self._fresh = None
        self.key = key
        now = self._clock()
        return (plan_key_reserve(key, self._credential.secret_hash, amount, now,
                                 timestamp(now)),)

    def on_settle(self, hold: Hold, cost: Decimal) -> Sequence[GuardedWrite]:
        return (plan_key_settle(self._limited_now(), hold.amount, cost),)

    def on_release(self, hold: Hold) -> Sequence[GuardedWrite]:
        # Planned at reserve time too (kept on the hold for the sweeper): from the
        # reserve's own read, no extra GetItem.
        return (plan_key_release(self.key, hold.amount),)

    def _limited_now(self) -> ApiKey:
        # Whether the key has a limit (so a headroom to give back) as it is now.
        return self._budgets.current(self.key.user_id, self.key.id) or self.key


@dataclass(frozen=True)
class KeySettings:
    """What POST /keys and PATCH /keys/{id} may set (validated by the models)."""

    name: Any = UNSET
    limit: Any = UNSET
    limit_reset: Any = UNSET
    expires_at: Any = UNSET
    enabled: Any = UNSET
    power_levels: Any = UNSET
    rate_limit_per_minute: Any = UNSET


class ApiKeysService:
    def __init__(
        self,
        store: DynamoApiKeyStore,
        *,
        ensure_account: Callable[[str], Account],
        tier_rate_limit: Callable[[str], int],
        power_levels: Sequence[str],
        max_keys: int | None = None,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self._store = store
        self._ensure_account = ensure_account
        self._tier_rate_limit = tier_rate_limit
        self._power_levels = tuple(power_levels)
        self._max_keys = max_keys if max_keys is not None else max_keys_per_user()
        self._clock = clock
        self.budgets = KeyBudgets(store, clock)

    # -- management (JWT callers) -----------------------------------------------------

    def create(self, user_id: str, settings: KeySettings) -> tuple[str, ApiKey]:
        """A new key; returns its secret (the only time anyone sees it) and the record."""
        account = self._ensure_account(user_id)
        now = self._clock()
        self._check(settings, account, now)
        secret = new_secret()
        key = new_key(
            user_id, secret, settings.name if settings.name is not UNSET else "default", now,
            timestamp(now),
            limit=_given(settings.limit),
            limit_reset=_given(settings.limit_reset) or LimitReset.NEVER,
            expires_at=_given(settings.expires_at),
            power_levels=_levels(_given(settings.power_levels)),
            rate_limit_per_minute=_given(settings.rate_limit_per_minute),
        )
        try:
            self._store.create(key, self._max_keys)
        except TooManyKeys:
            raise InvalidRequest(
                f"You have {self._max_keys} active API keys, the most allowed; revoke one "
                "with DELETE /api/v1/llm/keys/{id} first.", code="too_many_keys") from None
        return secret, key

    def list(self, user_id: str) -> list[ApiKey]:
        keys = [rolled_key(k, self._clock()) for k in self._store.list_keys(user_id)
                if k.status == STATUS_ACTIVE]
        return sorted(keys, key=lambda k: k.created_at, reverse=True)

    def get(self, user_id: str, key_id: str) -> ApiKey:
        key = self.budgets.current(user_id, key_id)
        if key is None or key.status != STATUS_ACTIVE:
            raise NotFound(f"No API key {key_id!r}.", param="id", code="key_not_found")
        return key

    def update(self, user_id: str, key_id: str, settings: KeySettings) -> ApiKey:
        for _ in range(MAX_ATTEMPTS):
            before = self.get(user_id, key_id)
            now = self._clock()
            self._check(settings, self._ensure_account(user_id), now)
            after = with_limit(
                before,
                before.limit if settings.limit is UNSET else settings.limit,
                before.limit_reset if settings.limit_reset in (UNSET, None)
                else settings.limit_reset,
                now,
            )
            after = replace(
                after,
                name=after.name if settings.name is UNSET else settings.name,
                expires_at=after.expires_at if settings.expires_at is UNSET
                else settings.expires_at,
                enabled=after.enabled if settings.enabled is UNSET else settings.enabled,
                power_levels=after.power_levels if settings.power_levels is UNSET
                else _levels(settings.power_levels),
                rate_limit_per_minute=after.rate_limit_per_minute
                if settings.rate_limit_per_minute is UNSET else settings.rate_limit_per_minute,
                updated_at=timestamp(now),
            )
            try:
                self._store.update_settings(before, after)
                return after
            except KeyChanged:
                time.sleep(0.001)  # a request in flight moved the counters: re-plan
        raise ContentionTimeout("The API key is busy; retry the request.")

    def revoke(self, user_id: str, key_id: str) -> None:
        for _ in range(MAX_ATTEMPTS):
            key = self.get(user_id, key_id)
            try:
                self._store.revoke(key, timestamp(self._clock()))
                return
            except KeyChanged:
                time.sleep(0.001)
        raise ContentionTimeout("The API key is busy; retry the request.")

    def rotate(self, user_id: str, key_id: str, grace_seconds: int) -> tuple[str, ApiKey]:
        if not 0 <= grace_seconds <= MAX_GRACE_SECONDS:
            raise InvalidRequest(f"grace_seconds must be 0..{MAX_GRACE_SECONDS}",
                                 param="grace_seconds")
        for _ in range(MAX_ATTEMPTS):
            before = self.get(user_id, key_id)
            now = self._clock()
            secret = new_secret()
            after = rotated(before, secret, now, grace_seconds, timestamp(now))
            try:
                self._store.rotate(before, after)
                return secret, after
            except KeyChanged:
                time.sleep(0.001)
        raise ContentionTimeout("The API key is busy; retry the request.")

    # -- the calling key (API key callers) ---------------------------------------------

    def chat_extras(self, user_id: str, credential: KeyCredential) -> KeyExtras:
        """The key's guard for one chat request; 401 now if the key is not usable."""
        return KeyExtras(self.budgets, user_id, credential, self._clock)

    def own(self, user_id: str, key_id: str) -> ApiKey:
        return self.get(user_id, key_id)

    # -- authentication (the Lambda authorizer's port) ----------------------------------

    def authenticate(self, secret: str) -> KeyPrincipal | None:
        """One GetItem by hash on a cache miss; None for anything not usable right now."""
        if not looks_like_secret(secret):
            return None
        found = self._store.lookup(secret_hash(secret))
        now = self._clock()
        if found is None:
            return None
        if not usable(found, epoch(now)):  # the authorizer refuses it (401)
            return KeyPrincipal(user_id=found.user_id, key_id=found.key_id, allowed=False)
        not_since = timestamp(now - timedelta(seconds=LAST_USED_RESOLUTION_SECONDS))
        self._store.touch(found.user_id, found.key_id, timestamp(now), not_since)
        return KeyPrincipal(user_id=found.user_id, key_id=found.key_id, allowed=True)

    # -- helpers ----------------------------------------------------------------------

    def _check(self, settings: KeySettings, account: Account, now: datetime) -> None:
        if settings.limit not in (UNSET, None) and settings.limit < 0:
            raise InvalidRequest("limit must not be negative.", param="limit")
        expires = settings.expires_at
        if expires not in (UNSET, None) and expires <= now:
            raise InvalidRequest("expires_at must be in the future.", param="expires_at")
        levels = settings.power_levels
        if levels not in (UNSET, None):
            unknown = [lv for lv in levels if lv not in self._power_levels]
            if unknown:
                raise InvalidRequest(
                    f"Unknown power level {unknown[0]!r}; use {', '.join(self._power_levels)}.",
                    param="power_levels")
        rate = settings.rate_limit_per_minute
        if rate not in (UNSET, None):
            tier_limit = self._tier_rate_limit(account.tier.value)
            if rate > tier_limit:
                raise InvalidRequest(
                    f"rate_limit_per_minute may be at most your tier's {tier_limit}.",
                    param="rate_limit_per_minute")


def usable(found: KeyLookup, now_epoch: int) -> bool:
    if not found.enabled:
        return False
    if found.expires_epoch is not None and found.expires_epoch <= now_epoch:
        return False
    return found.grace_epoch is None or now_epoch < found.grace_epoch


def _given(value: Any) -> Any:
    return None if value is UNSET else value


def _levels(levels: Sequence[str] | None) -> tuple[str, ...] | None:
    return None if levels is None else tuple(dict.fromkeys(levels))


def key_view(key: ApiKey) -> dict[str, Any]:
    """The wire form (DESIGN section 2). Never the secret nor its hash."""
    return {
        "id": key.id,
        "name": key.name,
        "masked_key": key.masked_key,
        "limit": None if key.limit is None else format_money(key.limit),
        "limit_reset": key.limit_reset.value,
        "usage": format_money(key.usage),
        "period_usage": format_money(key.period_spent),
        "limit_remaining": None if key.limit_remaining is None
        else format_money(key.limit_remaining),
        "expires_at": None if key.expires_at is None
        else key.expires_at.astimezone(UTC).isoformat().replace("+00:00", "Z"),
        "power_levels": None if key.power_levels is None else list(key.power_levels),
        "rate_limit_per_minute": key.rate_limit_per_minute,
        "enabled": key.enabled,
        "created_at": key.created_at,
        "last_used_at": key.last_used_at,
        "grace_until": None if key.grace_until is None
        else key.grace_until.astimezone(UTC).isoformat().replace("+00:00", "Z"),
    }

