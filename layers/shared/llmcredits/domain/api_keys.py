"""Our own API keys, as pure values and functions (no I/O).

A secret is ``llmc-`` + 32 random bytes, base64url without padding (43 characters).
It exists only in memory: the table keeps its SHA-256 (hex). A pepper would add
nothing against guessing 256 random bits, and plain SHA-256 lets the authorizer, the
chat function and the CLI hash without a secret of their own.

A key's budget works like the account's monthly cap: DynamoDB conditions cannot do
arithmetic, so a limited key stores ``headroom`` = limit - spend this period - open
holds, and the reserve write checks ``headroom >= hold`` atomically with the account.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from enum import StrEnum
from typing import Any

from llmcredits.domain.ledger import Condition, GuardedWrite, RateGuard
from llmcredits.errors import Forbidden, KeyLimitReached, RateLimited, Unauthorized
from llmcredits.money import ZERO, format_money

SECRET_PREFIX = "llmc-"  # noqa: S105 (the public prefix, not a secret)
SECRET_BYTES = 32
# base64url of 32 bytes without padding is 43 characters.
SECRET_LENGTH = len(SECRET_PREFIX) + 43
MAX_GRACE_SECONDS = 86_400
DEFAULT_MAX_KEYS_PER_USER = 50
# last_used_at is written by the authorizer at most this often per key.
LAST_USED_RESOLUTION_SECONDS = 60

STATUS_ACTIVE = "active"
STATUS_REVOKED = "revoked"


class LimitReset(StrEnum):
    DAILY = "daily"
    WEEKLY = "weekly"
    MONTHLY = "monthly"
    NEVER = "never"


# --------------------------------------------------------------------------- secrets


def new_secret() -> str:
    raw = base64.urlsafe_b64encode(secrets.token_bytes(SECRET_BYTES)).decode().rstrip("=")
    return SECRET_PREFIX + raw


def looks_like_secret(text: str) -> bool:
    """Shape only (prefix, length, alphabet): cheap refusal before any table read."""
    if not text.startswith(SECRET_PREFIX) or len(text) != SECRET_LENGTH:
        return False
    body = text[len(SECRET_PREFIX):]
    return all(c.isascii() and (c.isalnum() or c in "-_") for c in body)


def secret_hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def same_hash(a: str, b: str) -> bool:
    return hmac.compare_digest(a, b)


def mask(secret: str) -> str:
    """Prefix, four characters and the last four: tells keys apart, reveals ~8 of 43."""
    body = secret[len(SECRET_PREFIX):]
    return f"{SECRET_PREFIX}{body[:4]}…{body[-4:]}"


def new_key_id() -> str:
    return "key_" + secrets.token_hex(8)


def bearer_secret(authorization: str | None) -> str | None:
    """The API key secret in an ``Authorization: Bearer llmc-...`` header, if that is it."""
    if not authorization:
        return None
    scheme, _, value = authorization.strip().partition(" ")
    value = value.strip()
    if scheme.lower() != "bearer" or not looks_like_secret(value):
        return None
    return value


def credential_of(key_id: str | None, authorization: str | None) -> KeyCredential:
    """The key a request came with: the authorizer's key id and the presented secret's
    hash. Either missing on an API-key request is a 401 (never trust one without the other)."""
    secret = bearer_secret(authorization)
    if not key_id or secret is None:
        raise Unauthorized("An API key (Authorization: Bearer llmc-...) is required.",
                           code="invalid_api_key")
    return KeyCredential(key_id=key_id, secret_hash=secret_hash(secret))


# --------------------------------------------------------------------------- periods


def period_of(reset: LimitReset, now: datetime) -> str:
    """The budget window ``now`` falls in (UTC): a day, an ISO week, a month, or ever."""
    now = now.astimezone(UTC)
    if reset is LimitReset.DAILY:
        return now.strftime("%Y-%m-%d")
    if reset is LimitReset.WEEKLY:
        year, week, _ = now.isocalendar()
        return f"{year}-W{week:02d}"
    if reset is LimitReset.MONTHLY:
        return now.strftime("%Y-%m")
    return "all"


def epoch(moment: datetime) -> int:
    return int(moment.timestamp())


# --------------------------------------------------------------------------- the key


@dataclass(frozen=True)
class ApiKey:
    id: str
    user_id: str
    name: str
    masked_key: str
    secret_hash: str
    created_at: str
    updated_at: str
    limit_reset: LimitReset = LimitReset.NEVER
    period: str = "all"
    limit: Decimal | None = None
    period_spent: Decimal = ZERO  # spend in ``period``
    held: Decimal = ZERO  # open holds of requests made with this key
    headroom: Decimal | None = None  # limit - period_spent - held (limited keys only)
    usage: Decimal = ZERO  # all-time spend
    expires_at: datetime | None = None
    power_levels: tuple[str, ...] | None = None  # None: every level the tier allows
    rate_limit_per_minute: int | None = None
    rate_window: int = 0
    rate_count: int = 0
    enabled: bool = True
    status: str = STATUS_ACTIVE
    last_used_at: str | None = None
    # After a rotation: the previous secret's hash works until ``grace_until``.
    previous_hash: str | None = None
    grace_until: datetime | None = None

    @property
    def limit_remaining(self) -> Decimal | None:
        return None if self.headroom is None else max(self.headroom, ZERO)


def new_key(
    user_id: str,
    secret: str,
    name: str,
    now: datetime,
    created_at: str,
    *,
    limit: Decimal | None = None,
    limit_reset: LimitReset = LimitReset.NEVER,
    expires_at: datetime | None = None,
    power_levels: tuple[str, ...] | None = None,
    rate_limit_per_minute: int | None = None,
) -> ApiKey:
    return ApiKey(
        id=new_key_id(),
        user_id=user_id,
        name=name,
        masked_key=mask(secret),
        secret_hash=secret_hash(secret),
        created_at=created_at,
        updated_at=created_at,
        limit_reset=limit_reset,
        period=period_of(limit_reset, now),
        limit=limit,
        headroom=limit,
        expires_at=expires_at,
        power_levels=power_levels,
        rate_limit_per_minute=rate_limit_per_minute,
    )


def rolled_key(key: ApiKey, now: datetime) -> ApiKey:
    """The key at the start of the current period: spend restarts; open holds still count."""
    period = period_of(key.limit_reset, now)
    if key.period == period:
        return key
    headroom = None if key.limit is None else key.limit - key.held
    return replace(key, period=period, period_spent=ZERO, headroom=headroom)


def with_limit(key: ApiKey, limit: Decimal | None, reset: LimitReset, now: datetime) -> ApiKey:
    """A new limit (or reset window) binds from the next request; holds in flight count."""
    period = period_of(reset, now)
    spent = key.period_spent if period == key.period else ZERO
    headroom = None if limit is None else limit - spent - key.held
    return replace(key, limit=limit, limit_reset=reset, period=period, period_spent=spent,
                   headroom=headroom)


def rotated(key: ApiKey, secret: str, now: datetime, grace_seconds: int, updated_at: str) -> ApiKey:
    if not 0 <= grace_seconds <= MAX_GRACE_SECONDS:
        raise ValueError("grace_seconds out of range")
    grace = now + timedelta(seconds=grace_seconds) if grace_seconds else None
    return replace(
        key,
        secret_hash=secret_hash(secret),
        masked_key=mask(secret),
        previous_hash=key.secret_hash if grace else None,
        grace_until=grace,
        updated_at=updated_at,
    )


def unusable_reason(key: ApiKey | None, hash_: str, now: datetime) -> str | None:
    """Why this secret (by hash) may not be used on ``key`` now, or None if it may."""
    if key is None or key.status != STATUS_ACTIVE:
        return "This API key was revoked."
    if not key.enabled:
        return "This API key is disabled."
    if key.expires_at is not None and key.expires_at <= now:
        return "This API key has expired."
    if same_hash(hash_, key.secret_hash):
        return None
    if (key.previous_hash is not None and key.grace_until is not None
            and same_hash(hash_, key.previous_hash) and now < key.grace_until):
        return None
    return "This API key was rotated; use the new secret."


def check_usable(key: ApiKey | None, hash_: str, now: datetime) -> ApiKey:
    reason = unusable_reason(key, hash_, now)
    if reason is not None or key is None:
        raise Unauthorized(reason or "Invalid API key.", code="invalid_api_key")
    return key


def check_power_level(key: ApiKey, level: str) -> None:
    if key.power_levels is not None and level not in key.power_levels:
        raise Forbidden(
            f"This API key may use power level {' or '.join(key.power_levels)} only, not "
            f"{level!r}. Pick an allowed level, or change the key's power_levels.",
            code="power_level_not_allowed_for_key",
            param="power_level",
        )


# --------------------------------------------------------------------------- budget writes


@dataclass(frozen=True)
class KeyCredential:
    """The API key a chat request came with: its id (from the authorizer) and the hash
    of the secret presented (so the reserve can refuse a secret rotated out since)."""

    key_id: str
    secret_hash: str


KEY_SK_PREFIX = "APIKEY#"  # the key record: PK=USER#<user>, SK=APIKEY#<key id>


def key_sort_key(key_id: str) -> str:
    return KEY_SK_PREFIX + key_id


def key_rate_guard(key: ApiKey, now: datetime, tier_limit: int | None) -> RateGuard | None:
    """The key's own per-minute limit (never above the tier's, which the account counts)."""
    limit = key.rate_limit_per_minute
    if limit is None:
        return None
    if tier_limit is not None:
        limit = min(limit, tier_limit)
    window = epoch(now) // 60
    same = key.rate_window == window
    if same and key.rate_count >= limit:
        retry_after = 60 - epoch(now) % 60
        raise RateLimited(
            f"This API key's rate limit of {limit} requests per minute is reached; retry in "
            f"{retry_after} s.",
            headers={"Retry-After": str(retry_after)},
        )
    return RateGuard(window=window, limit=limit, same_window=same)


def plan_key_reserve(
    key: ApiKey, hash_: str, amount: Decimal, now: datetime, last_used_at: str,
    tier_rate_limit: int | None = None,
) -> GuardedWrite:
    """Raise 401 (unusable key), 402 ``key_limit_reached`` or 429; else the key's part of
    the reserve transaction (a GuardedWrite on the ledger's hook).

    Its conditions restate, on the item, everything this fresh read showed: the key is
    active, enabled, not expired, the presented secret is its current one (or the
    previous one within its grace), it is still in this budget period, and its headroom
    covers ``amount``. A change since the read fails the write, and the ledger re-reads
    and re-plans (``error`` None), so revocation, expiry and limits bind on this request."""
    check_usable(key, hash_, now)
    if key.headroom is not None and key.headroom < amount:
        raise KeyLimitReached(
            f"This API key's limit of {format_money(key.limit or ZERO)} credits "
            f"({key.limit_reset.value}) is reached: {format_money(max(key.headroom, ZERO))} "
            f"remain and this request needs up to {format_money(amount)}. Raise the limit "
            "with PATCH /api/v1/llm/keys/{id}."
        )
    now_epoch = epoch(now)
    conditions = [
        Condition("key_status", "=", STATUS_ACTIVE),
        Condition("enabled", "=", True),
        Condition("period", "=", key.period),
    ]
    # Conditions are a conjunction: the planner picks the branch its read saw.
    if key.expires_at is None:
        conditions.append(Condition("expires_epoch", "not_exists"))
    else:
        conditions.append(Condition("expires_epoch", ">", now_epoch))
    if same_hash(hash_, key.secret_hash):
        conditions.append(Condition("secret_hash", "=", key.secret_hash))
    else:  # check_usable passed: the previous secret, within its grace
        conditions += [Condition("previous_hash", "=", key.previous_hash),
                       Condition("grace_epoch", ">", now_epoch)]
    add: dict[str, Decimal | int] = {"held": amount}
    set_: dict[str, Any] = {"last_used_at": last_used_at}
    if key.limit is not None:
        conditions.append(Condition("headroom", ">=", amount))
        add["headroom"] = -amount
    else:
        conditions.append(Condition("headroom", "not_exists"))
    rate = key_rate_guard(key, now, tier_rate_limit)
    if rate is not None:
        if rate.same_window:
            conditions += [Condition("rate_window", "=", rate.window),
                           Condition("rate_count", "<", rate.limit)]
            add["rate_count"] = 1
        else:
            conditions.append(Condition("rate_window", "<", rate.window))
            set_.update(rate_window=rate.window, rate_count=1)
    return GuardedWrite(owner=key.user_id, sort_key=key_sort_key(key.id), add=add, set=set_,
                        conditions=tuple(conditions))


def plan_key_settle(key: ApiKey, hold: Decimal, cost: Decimal) -> GuardedWrite:
    """Move ``cost`` from held to spent and give the rest of the hold back to headroom.

    Unconditional deltas only (no period check): the settlement stores this write and
    the settle worker may replay it after the period rolled over. That is still right:
    the rollover keeps ``held`` (headroom = limit - held), so releasing the hold and
    counting the cost in the current period keeps headroom = limit - spent - held."""
    if cost > hold or cost < ZERO:
        raise ValueError("a settlement must be between 0 and its hold")
    add: dict[str, Decimal | int] = {"held": -hold}
    if cost:
        add.update(period_spent=cost, usage=cost)
    if key.limit is not None and hold - cost:
        add["headroom"] = hold - cost
    return GuardedWrite(owner=key.user_id, sort_key=key_sort_key(key.id), add=add)


def plan_key_release(key: ApiKey, hold: Decimal) -> GuardedWrite:
    return plan_key_settle(key, hold, ZERO)
