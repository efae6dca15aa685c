"""Operator use cases behind ``llmcredits admin ...``: no argparse here.

The CLI (``llmcredits.cli``) parses arguments, then uses this module to

- find the table (:func:`resolve_target`: ``--table``, the ``TableName`` output of a
  CloudFormation stack, or env ``TABLE_NAME``; ``--endpoint`` for DynamoDB Local),
- parse operator input exactly (:func:`parse_amount`, never float),
- describe a change before it happens and ask for confirmation (:func:`confirm`),
- run it through :class:`~llmcredits.services.ledger.LedgerService` (:class:`Operator`),
- print accounts, history and results as text or JSON, or the ledger as CSV,
- turn expected failures into one line and an exit code (:func:`explain`).
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import IO, Any

from llmcredits.domain.ledger import EntryType, LedgerEntry, Tier
from llmcredits.errors import (
    ApiError,
    IdempotencyConflict,
    InsufficientCredits,
    InvalidRequest,
    NotFound,
)
from llmcredits.money import ZERO, MoneyError, format_money, parse_money

# -- failures --------------------------------------------------------------------------

EXIT_FAILURE = 1
EXIT_USAGE = 2


class OpsError(Exception):
    """An expected failure: printed as one line, no traceback."""

    exit_code = EXIT_FAILURE

    def __init__(self, message: str, exit_code: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        if exit_code is not None:
            self.exit_code = exit_code


class UsageError(OpsError):
    """The command line is wrong (bad amount, missing table, ...): exit 2."""

    exit_code = EXIT_USAGE


class Aborted(OpsError):
    """The operator said no, or there was no terminal to ask: nothing changed."""


# -- where the table is ----------------------------------------------------------------

#: The table ``make dev`` creates (stack llmcredits-local, logical id LedgerTable).
DEFAULT_LOCAL_TABLE = "llmcredits-local-LedgerTable"
TABLE_OUTPUT = "TableName"
#: Env: where ``llmcredits dev`` says where it listens (default <repo>/.dev/stack.json).
STACK_FILE_ENV = "LLMCREDITS_STACK_FILE"
#: The dummy credential for local endpoints (DynamoDB Local scopes tables by key id).
LOCAL_CREDENTIAL = "local"


@dataclass(frozen=True)
class Target:
    table: str
    region: str
    endpoint: str | None = None
    stack: str | None = None
    #: The KMS endpoint of a local stack (None: the region's KMS, or env KMS_ENDPOINT).
    kms_endpoint: str | None = None
    #: Found through the running local stack's stack file (``make dev``).
    local_stack: bool = False

    @property
    def where(self) -> str:
        place = self.endpoint or f"region {self.region}"
        via = f" (stack {self.stack})" if self.stack else ""
        via = " (the running local stack)" if self.local_stack else via
        return f"table {self.table!r}{via} at {place}"


def default_stack_file(environ: Mapping[str, str] = os.environ) -> Path:
    configured = environ.get(STACK_FILE_ENV)
    if configured:
        return Path(configured)
    return Path(__file__).resolve().parents[3] / ".dev" / "stack.json"


def write_stack_file(path: Path, info: Mapping[str, Any]) -> None:
    """Written by ``llmcredits dev`` once it listens (atomically: a reader never sees half)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial")
    partial.write_text(json.dumps(dict(info), indent=2) + "\n", encoding="utf-8")
    partial.replace(path)


def remove_stack_file(path: Path, pid: int) -> None:
    """Remove the stack file if it is still this process's (another dev may have started)."""
    try:
        if json.loads(path.read_text(encoding="utf-8")).get("pid") == pid:
            path.unlink()
    except (OSError, ValueError):
        pass


def _running_local_stack(path: Path) -> dict[str, Any] | None:
    """The stack file of a ``llmcredits dev`` that is still running, else None."""
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(info, dict) or not info.get("dynamodb_endpoint") or not info.get("table"):
        return None
    pid = info.get("pid")
    if isinstance(pid, int):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None  # left behind by a killed dev server
        except PermissionError:
            pass  # alive, someone else's
    return info


def _session(region: str | None) -> Any:
    import boto3

    return boto3.session.Session(region_name=region) if region else boto3.session.Session()


def _client_config() -> Any:
    from botocore.config import Config

    return Config(
        retries={"mode": "standard", "max_attempts": 4}, connect_timeout=5, read_timeout=30
    )


def resolve_target(
    *,
    table: str | None,
    stack: str | None,
    endpoint: str | None,
    region: str | None,
    environ: Mapping[str, str] = os.environ,
    session_factory: Callable[[str | None], Any] | None = None,
) -> Target:
    """The table to work on, in this order: ``--table``; the ``TableName`` output of
    ``--stack`` (CloudFormation DescribeStacks in the region); env ``TABLE_NAME``; with an
    endpoint (DynamoDB Local), the local stack's default table name."""
    endpoint = endpoint or environ.get("DYNAMODB_ENDPOINT") or None
    session_factory = session_factory or _session
    if table and stack:
        raise UsageError("give either --table or --stack, not both")
    region = region or environ.get("AWS_REGION") or environ.get("AWS_DEFAULT_REGION") or None
    session = None
    if region is None:
        session = session_factory(None)
        region = session.region_name or "us-east-1"
    if stack:
        session = session or session_factory(region)
        cfn = session.client("cloudformation", region_name=region, config=_client_config())
        return Target(stack_table(cfn, stack, region), region, endpoint, stack)
    table = table or environ.get("TABLE_NAME") or None
    if table is None:
        if endpoint is None:
            local = _running_local_stack(default_stack_file(environ))
            if local is not None:
                return Target(str(local["table"]), str(local.get("region") or region),
                              str(local["dynamodb_endpoint"]), None,
                              kms_endpoint=local.get("kms_endpoint") or None, local_stack=True)
            raise UsageError(
                "no table: give --stack NAME (reads its TableName output), --table NAME, "
                "or set TABLE_NAME (or start the local stack: make dev)"
            )
        table = DEFAULT_LOCAL_TABLE
    return Target(table, region, endpoint)


def stack_table(cfn: Any, stack: str, region: str) -> str:
    """The ``TableName`` output of a deployed stack."""
    from botocore.exceptions import ClientError

    try:
        stacks = cfn.describe_stacks(StackName=stack)["Stacks"]
    except ClientError as exc:
        error = exc.response.get("Error", {})
        if error.get("Code") == "ValidationError" and "does not exist" in str(
            error.get("Message", "")
        ):
            raise OpsError(f"stack {stack!r} not found in region {region}") from exc
        raise
    if not stacks:
        raise OpsError(f"stack {stack!r} not found in region {region}")
    for output in stacks[0].get("Outputs") or []:
        if output.get("OutputKey") == TABLE_OUTPUT and output.get("OutputValue"):
            return str(output["OutputValue"])
    status = stacks[0].get("StackStatus", "?")
    raise OpsError(
        f"stack {stack!r} ({status}) has no {TABLE_OUTPUT} output; is it an llmcredits stack?"
    )


def _local_credentials(endpoint: str | None) -> dict[str, str]:
    """Dummy credentials for a loopback endpoint when the shell has none (DynamoDB Local
    and the embedded store accept any; DynamoDB Local keeps tables per key id, and the
    local stack uses this same dummy)."""
    from urllib.parse import urlparse

    if not endpoint or os.environ.get("AWS_ACCESS_KEY_ID") or os.environ.get("AWS_PROFILE"):
        return {}
    if urlparse(endpoint).hostname not in ("127.0.0.1", "localhost", "::1"):
        return {}
    return {"aws_access_key_id": LOCAL_CREDENTIAL, "aws_secret_access_key": LOCAL_CREDENTIAL}


def dynamodb_client(target: Target) -> Any:
    return _session(target.region).client(
        "dynamodb",
        region_name=target.region,
        endpoint_url=target.endpoint,
        config=_client_config(),
        **_local_credentials(target.endpoint),
    )


def kms_client(target: Target) -> Any:
    """KMS for BYOK rotation: the local stack's, env KMS_ENDPOINT, or the region's."""
    endpoint = target.kms_endpoint or os.environ.get("KMS_ENDPOINT") or None
    return _session(target.region).client(
        "kms", region_name=target.region, endpoint_url=endpoint, config=_client_config(),
        **_local_credentials(endpoint),
    )


# -- parsing operator input ------------------------------------------------------------


def parse_expires_at(text: str | None) -> datetime | None:
    """--expires-at: ISO 8601 with a time zone ("Z" or an offset)."""
    if text is None:
        return None
    try:
        value = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError as exc:
        raise UsageError(f"bad --expires-at {text!r}: not ISO 8601") from exc
    if value.tzinfo is None:
        raise UsageError(f"bad --expires-at {text!r}: give a time zone, e.g. Z")
    return value


def parse_amount(text: str, *, signed: bool = False) -> Decimal:
    """An amount from the command line, exactly (``parse_money``). Non-zero; positive
    unless ``signed``."""
    try:
        value = parse_money(text)
    except MoneyError as exc:
        raise UsageError(f"bad amount {text!r}: {exc}") from exc
    if value == ZERO:
        raise UsageError("the amount must not be zero")
    if value < ZERO and not signed:
        raise UsageError(f"bad amount {text!r}: must be positive")
    return value


def parse_cap(text: str) -> Decimal | None:
    """A monthly cap: a non-negative amount, or ``none`` to remove it."""
    if text.strip().lower() in ("none", "null", "off"):
        return None
    try:
        value = parse_money(text)
    except MoneyError as exc:
        raise UsageError(f"bad monthly cap {text!r}: {exc} (or 'none')") from exc
    if value < ZERO:
        raise UsageError(f"bad monthly cap {text!r}: must not be negative")
    return value


def parse_day(text: str, what: str) -> str:
    """``YYYY-MM-DD`` -> the first ledger timestamp of that UTC day."""
    try:
        day = datetime.strptime(text, "%Y-%m-%d").replace(tzinfo=UTC)
    except ValueError as exc:
        raise UsageError(f"bad {what} {text!r}: expected YYYY-MM-DD") from exc
    return day.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def check_window(since: str | None, until: str | None) -> None:
    """``--since`` must come before ``--until`` (an empty window is a mistake, not a result)."""
    if since is not None and until is not None and since >= until:
        raise UsageError(f"--since {since[:10]} is not before --until {until[:10]}: the window "
                         "is empty (--since is inclusive, --until exclusive)")


def resolve_actor(actor: str | None, environ: Mapping[str, str] = os.environ) -> str:
    """Who is acting, for the ledger entry's ``metadata.by``: ``--actor`` or env USER."""
    who = (actor or environ.get("USER") or environ.get("USERNAME") or "").strip()
    if not who:
        raise UsageError("cannot tell who you are: pass --actor NAME (or set USER)")
    return who


def require_text(value: str, what: str) -> str:
    value = value.strip()
    if not value:
        raise UsageError(f"{what} must not be empty")
    return value


# -- confirmation ------------------------------------------------------------------------


def confirm(
    lines: list[str],
    *,
    yes: bool,
    stdin: IO[str],
    stderr: IO[str],
) -> None:
    """Show what will happen (on stderr); go on with ``--yes`` or an interactive "y".
    Without ``--yes`` and without a terminal, refuse: a script must say ``--yes``."""
    for line in lines:
        print(line, file=stderr)
    if yes:
        return
    if not _isatty(stdin):
        raise Aborted("refusing to change anything without confirmation: no terminal to "
                      "ask on; pass --yes")
    print("Proceed? [y/N] ", end="", file=stderr, flush=True)
    try:
        answer = stdin.readline()
    except KeyboardInterrupt:
        answer = ""
    if not answer.endswith("\n") or not _isatty(stderr):
        print(file=stderr)  # end the prompt line (EOF, Ctrl-C, or input not echoed here)
    if answer.strip().lower() not in ("y", "yes"):
        raise Aborted("aborted: nothing changed")


def _isatty(stream: IO[str]) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


# -- the use cases -------------------------------------------------------------------------


@dataclass(frozen=True)
class ChangeOutcome:
    """A money change done (or replayed from its idempotency key)."""

    body: dict[str, Any]
    replayed: bool

    def view(self) -> dict[str, Any]:
        return {**self.body, "replayed": self.replayed}


class Operator:
    """The operator's use cases on one table."""

    def __init__(self, client: Any, table: str) -> None:
        from llmcredits.dal.dynamodb_ledger import DynamoLedgerStore
        from llmcredits.services.ledger import LedgerService

        self.client = client
        self.table = table
        self.store = DynamoLedgerStore(client, table)
        self.ledger = LedgerService(self.store)

    @classmethod
    def connect(cls, target: Target) -> Operator:
        return cls(dynamodb_client(target), target.table)

    # reads

    def show(self, user_id: str) -> dict[str, Any]:
        from llmcredits.views import account_view

        return account_view(self.ledger.find_account(user_id))

    def existing(self, user_id: str) -> dict[str, Any] | None:
        try:
            return self.show(user_id)
        except NotFound:
            return None

    def history(
        self, user_id: str, limit: int | None, entry_type: EntryType | None
    ) -> tuple[list[LedgerEntry], bool]:
        """Newest first, up to ``limit`` (None: all), reading page after page.
        Returns the entries and whether more remain."""
        from llmcredits.services.ledger import HISTORY_MAX_LIMIT

        self.ledger.find_account(user_id)  # 404 for a user never seen
        entries: list[LedgerEntry] = []
        cursor: str | None = None
        while True:
            want = HISTORY_MAX_LIMIT if limit is None else min(
                HISTORY_MAX_LIMIT, limit - len(entries)
            )
            page = self.ledger.history(user_id, want, cursor, entry_type)
            entries.extend(page.entries)
            cursor = page.next_cursor
            if cursor is None:
                return entries, False
            if limit is not None and len(entries) >= limit:
                return entries, self._more(user_id, cursor, entry_type)

    def _more(self, user_id: str, cursor: str, entry_type: EntryType | None) -> bool:
        return bool(self.ledger.history(user_id, 1, cursor, entry_type).entries)

    # changes: describe (for the confirmation), then do

    def earlier_grant(
        self, user_id: str, amount: Decimal, entry_type: EntryType, reason: str, actor: str,
        idempotency_key: str | None, *, expires_at: datetime | None = None,
        expires_in_days: int | None = None,
    ) -> ChangeOutcome | None:
        """What a grant with this idempotency key already did (None: it would change)."""
        from llmcredits.services.ledger import grant_claim

        claim = grant_claim(user_id, amount, entry_type, reason, actor, idempotency_key,
                            expires_at=expires_at, expires_in_days=expires_in_days)
        earlier = self.ledger.earlier_result(user_id, claim)
        return None if earlier is None else ChangeOutcome(earlier.body, True)

    def earlier_adjust(
        self, user_id: str, amount: Decimal, reason: str, actor: str, allow_negative: bool,
        idempotency_key: str | None,
    ) -> ChangeOutcome | None:
        """What an adjustment with this idempotency key already did (None: it would change)."""
        if amount > ZERO:
            return self.earlier_grant(user_id, amount, EntryType.ADJUSTMENT, reason, actor,
                                      idempotency_key)
        from llmcredits.services.ledger import adjust_claim

        claim = adjust_claim(user_id, -amount, reason, actor, allow_negative, idempotency_key)
        earlier = self.ledger.earlier_result(user_id, claim)
        return None if earlier is None else ChangeOutcome(earlier.body, True)

    def describe_grant(
        self, user_id: str, amount: Decimal, entry_type: EntryType, reason: str, actor: str,
        *, expires_at: datetime | None = None, expires_in_days: int | None = None,
    ) -> list[str]:
        before = self.existing(user_id)
        expiry = self.ledger.grant_expiry(expires_at, expires_in_days)  # checked up front
        lines = [f"grant {format_money(amount)} credits ({entry_type.value}) to "
                 f"{user_id!r} on {self.table}, reason {reason!r}, by {actor}",
                 f"  the lot expires {'never' if expiry is None else 'at ' + expiry}"]
        if before is None:
            lines.append(f"  {user_id!r} has no account yet: it will be created with "
                         f"balance {format_money(amount)}")
        else:
            lines.append(f"  balance {before['balance']} -> "
                         f"{format_money(Decimal(before['balance']) + amount)}")
        return lines

    def grant(
        self,
        user_id: str,
        amount: Decimal,
        entry_type: EntryType,
        reason: str,
        actor: str,
        idempotency_key: str | None,
        *,
        expires_at: datetime | None = None,
        expires_in_days: int | None = None,
    ) -> ChangeOutcome:
        result = self.ledger.grant(user_id, amount, entry_type, reason, actor, idempotency_key,
                                   expires_at=expires_at, expires_in_days=expires_in_days)
        return ChangeOutcome(result.body, result.replayed)

    def describe_adjust(
        self, user_id: str, amount: Decimal, reason: str, actor: str, allow_negative: bool
    ) -> list[str]:
        before = self.existing(user_id)
        if before is None:
            if amount > ZERO:
                return self.describe_grant(user_id, amount, EntryType.ADJUSTMENT, reason, actor)
            raise NotFound(f"No account for user {user_id!r}.")
        balance = Decimal(before["balance"])
        available = Decimal(before["available"])
        lines = [f"adjust {user_id!r} by {_signed(amount)} credits (adjustment) on "
                 f"{self.table}, reason {reason!r}, by {actor}",
                 f"  balance {before['balance']} -> {format_money(balance + amount)}, "
                 f"available {before['available']} -> {format_money(available + amount)}"]
        if amount < ZERO and available + amount < ZERO:
            if not allow_negative:  # refused before asking; the write checks it again
                raise OpsError(
                    f"refused: adjusting {user_id!r} by {_signed(amount)} would take "
                    f"available credits below zero ({before['available']} available, "
                    f"{before['held']} held). Nothing changed; pass --allow-negative to "
                    "take it below zero anyway."
                )
            lines.append("  WARNING: this takes available credits below zero "
                         "(--allow-negative)")
        return lines

    def adjust(
        self,
        user_id: str,
        amount: Decimal,
        reason: str,
        actor: str,
        *,
        allow_negative: bool,
        idempotency_key: str | None,
    ) -> ChangeOutcome:
        """Up: a grant of type adjustment. Down: a debit that keeps available >= 0 unless
        ``allow_negative``."""
        if amount > ZERO:
            return self.grant(
                user_id, amount, EntryType.ADJUSTMENT, reason, actor, idempotency_key
            )
        try:
            result = self.ledger.adjust_down(
                user_id, -amount, reason, actor,
                allow_negative=allow_negative, idempotency_key=idempotency_key,
            )
        except InsufficientCredits as exc:
            raise OpsError(f"refused: {exc.message} Nothing changed; pass --allow-negative "
                           "to take it below zero anyway.") from exc
        return ChangeOutcome(result.body, result.replayed)

    def describe_tier(self, user_id: str, tier: Tier) -> list[str]:
        before = self.existing(user_id)
        if before is None:
            return [f"set tier of {user_id!r} on {self.table}: (no account yet, will be "
                    f"created) -> {tier.value}"]
        return [f"set tier of {user_id!r} on {self.table}: {before['tier']} -> {tier.value}"]

    def set_tier(self, user_id: str, tier: Tier) -> dict[str, Any]:
        from llmcredits.views import account_view

        return account_view(self.ledger.set_tier(user_id, tier))

    def describe_cap(self, user_id: str, cap: Decimal | None) -> list[str]:
        before = self.existing(user_id)
        new = "none" if cap is None else format_money(cap)
        if before is None:
            return [f"set monthly cap of {user_id!r} on {self.table}: (no account yet, will "
                    f"be created) -> {new}"]
        lines = [f"set monthly cap of {user_id!r} on {self.table}: "
                 f"{before['monthly_cap'] or 'none'} -> {new}"]
        if cap is not None and Decimal(before["month_spent"]) >= cap:
            lines.append(f"  already spent {before['month_spent']} in {before['month']}: "
                         "new spend is blocked until next month")
        return lines

    def set_cap(self, user_id: str, cap: Decimal | None) -> dict[str, Any]:
        from llmcredits.views import account_view

        return account_view(self.ledger.set_monthly_cap(user_id, cap))

    # export

    def ledger_entries(
        self, user_id: str | None, since: str | None, until: str | None
    ) -> Iterator[LedgerEntry]:
        """Ledger entries of one user (oldest first) or of all users (a paged Scan of the
        items with kind = "ledger"; each user's entries oldest first)."""
        from llmcredits.dal.dynamodb_ledger import (
            LEDGER_PREFIX,
            all_items,
            entry_from_item,
            to_item,
            user_pk,
        )

        kwargs: dict[str, Any]
        if user_id is not None:
            self.ledger.find_account(user_id)
            low = LEDGER_PREFIX + (since or "")
            high = LEDGER_PREFIX + until if until else LEDGER_PREFIX[:-1] + "$"  # '#'+1
            kwargs = {
                "TableName": self.table,
                "KeyConditionExpression": "PK = :pk AND SK BETWEEN :low AND :high",
                "ExpressionAttributeValues": to_item(
                    {":pk": user_pk(user_id), ":low": low, ":high": high}
                ),
                "ScanIndexForward": True,
                "ConsistentRead": True,
            }
            operation = "query"
        else:
            conditions = ["#kind = :ledger"]
            values: dict[str, Any] = {":ledger": "ledger"}
            if since:
                conditions.append("created_at >= :since")
                values[":since"] = since
            if until:
                conditions.append("created_at < :until")
                values[":until"] = until
            kwargs = {
                "TableName": self.table,
                "FilterExpression": " AND ".join(conditions),
                "ExpressionAttributeNames": {"#kind": "kind"},
                "ExpressionAttributeValues": to_item(values),
            }
            operation = "scan"
        for item in all_items(self.client, operation, **kwargs):
            entry = entry_from_item(item)
            # BETWEEN is inclusive; "until" is the first instant not exported.
            if until is None or entry.created_at < until:
                yield entry


def _signed(amount: Decimal) -> str:
    text = format_money(amount)
    return text if amount < ZERO else "+" + text


# -- output ------------------------------------------------------------------------------

EXPORT_COLUMNS = (
    "id", "user_id", "created_at", "type", "amount", "balance_after",
    "provider", "model", "tokens", "cost", "metadata",
)


def export_row(entry: LedgerEntry) -> list[str]:
    return [
        entry.id,
        entry.user_id,
        entry.created_at,
        entry.type.value,
        format_money(entry.amount),
        "" if entry.balance_after is None else format_money(entry.balance_after),
        entry.provider or "",
        entry.model or "",
        "" if entry.tokens is None else str(entry.tokens),
        "" if entry.cost is None else format_money(entry.cost),
        json.dumps(entry.metadata, sort_keys=True, separators=(",", ":"), default=str),
    ]


def write_csv(entries: Iterator[LedgerEntry], out: IO[str]) -> int:
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(EXPORT_COLUMNS)
    count = 0
    for entry in entries:
        writer.writerow(export_row(entry))
        count += 1
    return count


def to_json(value: Any) -> str:
    return json.dumps(value, indent=2, sort_keys=False, default=_json_default)


def _json_default(value: Any) -> Any:
    if isinstance(value, Decimal):  # never reached for money (already strings)
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


ACCOUNT_FIELDS = ("user_id", "balance", "held", "available", "tier", "monthly_cap", "month",
                  "month_spent", "created_at")


def format_account(view: Mapping[str, Any]) -> str:
    width = max(len(name) for name in ACCOUNT_FIELDS)
    lines = [
        f"{name:<{width}}  {'none' if view.get(name) is None else view.get(name)}"
        for name in ACCOUNT_FIELDS
    ]
    for lot in view.get("lots") or ():
        lines.append(f"{'lot':<{width}}  {lot['remaining']} of {lot['amount']} "
                     f"({lot['source']}), expires {lot['expires_at'] or 'never'}")
    return "\n".join(lines)


def format_history(entries: list[LedgerEntry], more: bool) -> str:
    if not entries:
        return "no ledger entries"
    rows = [("created_at", "type", "amount", "balance_after", "details")]
    for entry in entries:
        rows.append((
            entry.created_at,
            entry.type.value,
            _signed(entry.amount),
            "" if entry.balance_after is None else format_money(entry.balance_after),
            _details(entry),
        ))
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    lines = []
    for row in rows:
        lines.append(
            f"{row[0]:<{widths[0]}}  {row[1]:<{widths[1]}}  {row[2]:>{widths[2]}}  "
            f"{row[3]:>{widths[3]}}  {row[4]}".rstrip()
        )
    if more:
        lines.append("... more entries: raise --limit or use --all")
    return "\n".join(lines)


def _details(entry: LedgerEntry) -> str:
    parts = []
    if entry.model:
        parts.append(model_label(entry.provider, entry.model))
    if entry.tokens is not None:
        parts.append(f"{entry.tokens} tokens")
    meta = entry.metadata or {}
    if "reason" in meta:
        parts.append(f"reason={meta['reason']!r}")
    if "by" in meta:
        parts.append(f"by={meta['by']}")
    return " ".join(parts)


def model_label(provider: str | None, model: str) -> str:
    """``provider/model`` once: ledger models are often already prefixed (openai/gpt-4o-mini)."""
    if not provider or model.startswith(f"{provider}/"):
        return model
    return f"{provider}/{model}"


def export_json_row(entry: LedgerEntry) -> dict[str, Any]:
    """An export row as JSON: the CSV columns, metadata as an object, money as strings."""
    row: dict[str, Any] = dict(zip(EXPORT_COLUMNS, export_row(entry), strict=True))
    row["tokens"] = entry.tokens
    row["cost"] = None if entry.cost is None else row["cost"]
    row["provider"] = entry.provider
    row["model"] = entry.model
    row["metadata"] = entry.metadata or {}
    return row


def write_json(entries: Iterator[LedgerEntry], out: IO[str]) -> int:
    """A JSON array written entry by entry (an export can be larger than memory)."""
    count = 0
    out.write("[")
    for entry in entries:
        out.write(",\n  " if count else "\n  ")
        out.write(json.dumps(export_json_row(entry), default=str))
        count += 1
    out.write("\n]\n" if count else "]\n")
    return count


def format_replay(outcome: ChangeOutcome, idempotency_key: str | None) -> str:
    entry = outcome.body["entry"]
    return (f"replay: idempotency key {idempotency_key!r} was already used for this change "
            f"(entry {entry['id']}, {entry['amount']} at {entry['created_at']}); nothing will "
            "change")


def format_change(verb: str, outcome: ChangeOutcome) -> str:
    entry = outcome.body["entry"]
    text = (f"{verb} {entry['amount']} ({entry['type']}) for {outcome.body['user_id']!r}: "
            f"balance {outcome.body['balance']} (entry {entry['id']})")
    if outcome.replayed:
        text += "\nreplayed: this idempotency key was used before; nothing changed now"
    return text


# -- expected failures -> one line -------------------------------------------------------

_ACCESS_CODES = {
    "AccessDenied", "AccessDeniedException", "UnauthorizedOperation",
    "UnrecognizedClientException", "InvalidClientTokenId", "ExpiredToken",
    "ExpiredTokenException", "InvalidSignatureException", "MissingAuthenticationToken",
    "SignatureDoesNotMatch", "AuthFailure",
}


_KMS_OPERATIONS = {"Decrypt", "Encrypt", "GenerateDataKey", "DescribeKey", "ReEncrypt"}


def _is_kms_failure(exc: BaseException, target: Target | None) -> bool:
    """A failure of a KMS call (so it is not reported as the table's)."""
    if getattr(exc, "operation_name", None) in _KMS_OPERATIONS:  # ClientError
        return True
    url = str(getattr(exc, "kwargs", {}).get("endpoint_url") or "")
    if not url:
        return False
    kms_endpoint = (target.kms_endpoint if target is not None else None) or os.environ.get(
        "KMS_ENDPOINT")
    dynamodb_endpoint = target.endpoint if target is not None else None
    if kms_endpoint and url.startswith(kms_endpoint) and kms_endpoint != dynamodb_endpoint:
        return True
    return "://kms." in url


def explain(exc: BaseException, target: Target | None) -> OpsError | None:
    """The one-line failure for an expected exception (None: a bug, let it raise)."""
    from botocore.exceptions import (
        BotoCoreError,
        ClientError,
        ConnectTimeoutError,
        EndpointConnectionError,
        NoCredentialsError,
        NoRegionError,
        ReadTimeoutError,
    )

    where = target.where if target is not None else "AWS"
    if _is_kms_failure(exc, target):
        kms_endpoint = (target.kms_endpoint if target is not None else None) or os.environ.get(
            "KMS_ENDPOINT")
        region = target.region if target is not None else "?"
        where = f"KMS at {kms_endpoint}" if kms_endpoint else f"KMS in region {region}"
    if isinstance(exc, OpsError):
        return exc
    if isinstance(exc, MoneyError):
        return UsageError(f"bad amount: {exc}")
    if isinstance(exc, InvalidRequest):
        return UsageError(exc.message)
    if isinstance(exc, (NotFound, IdempotencyConflict, ApiError)):
        return OpsError(exc.message)
    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        code = str(error.get("Code", ""))
        message = str(error.get("Message", "")) or code
        if code == "ResourceNotFoundException":
            return OpsError(f"{where}: not found ({message})")
        if code in _ACCESS_CODES:
            return OpsError(f"AWS access denied ({code}) for {where}: {message}")
        return OpsError(f"AWS error {code} for {where}: {message}")
    if isinstance(exc, NoCredentialsError):
        return OpsError("no AWS credentials: set AWS_PROFILE or AWS_ACCESS_KEY_ID/"
                        "AWS_SECRET_ACCESS_KEY (DynamoDB Local accepts any)")
    if isinstance(exc, NoRegionError):
        return UsageError("no AWS region: pass --region or set AWS_REGION")
    if isinstance(exc, (EndpointConnectionError, ConnectTimeoutError, ReadTimeoutError)):
        return OpsError(f"cannot reach {where}: {exc}")
    if isinstance(exc, BotoCoreError):
        return OpsError(f"AWS client error for {where}: {exc}")
    return None


__all__ = [
    "EXPORT_COLUMNS",
    "Aborted",
    "ChangeOutcome",
    "Operator",
    "OpsError",
    "Target",
    "UsageError",
    "check_window",
    "confirm",
    "explain",
    "parse_amount",
    "parse_cap",
    "parse_day",
    "resolve_actor",
    "resolve_target",
]
