"""The ``llmcredits`` command line.

    llmcredits dev [--port 3000] [--template template.yaml]   serve the local stack
    llmcredits token --sub USER [--admin] [--ttl 3600]         print a local bearer token
    llmcredits openapi [--write]                               build the OpenAPI document
    llmcredits admin reconcile [--user U] [--json]            check invariants 2 and 4
    llmcredits admin byok-rotate --new-kms-key-id K [--yes]   re-encrypt BYOK keys
    llmcredits keys create --sub U [--limit X --limit-reset daily ...]  mint an API key
    llmcredits admin show|grant|adjust|set-tier|set-cap|history|export-ledger ...
        operator tools (llmcredits.ops); every admin command finds its table by
        --stack NAME (TableName output), --table NAME, env TABLE_NAME, or --endpoint URL

One function per subcommand (``cmd_<name>``), registered in :func:`build_parser`.
"""

from __future__ import annotations

import argparse
import functools
import logging
import os
import signal
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

#: Exit status after the reader of stdout went away (128 + SIGPIPE, as `git log | head`).
EXIT_BROKEN_PIPE = 141


def _repo_root() -> Path:
    return Path(__file__).resolve().parents[3]


def cmd_dev(args: argparse.Namespace) -> int:
    """Serve the whole API locally (routes from template.yaml, embedded AWS, workers).

    The embedded store persists in ``.dev/store/`` (env LLMCREDITS_DEV_STORE; ``make
    dev-reset`` empties it) and is served on a 127.0.0.1 port; ``.dev/stack.json`` says
    where, so ``llmcredits admin ...`` finds this stack with no flags."""
    import errno
    import warnings

    from llmcredits import ops
    from llmcredits.local.embedded import ENDPOINT_ENV, STORE_DIR_ENV, StoreInUse
    from llmcredits.local.server import LocalStack

    logging.basicConfig(
        level=os.environ.get("LLMCREDITS_LOCAL_LOG_LEVEL", "WARNING"),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # Quiet by default: one line per request. No EMF JSON on stdout (there is no
    # CloudWatch here; POWERTOOLS_METRICS_DISABLED=false brings it back), and no warning
    # from Powertools when a request (health) flushes no metric.
    os.environ.setdefault("POWERTOOLS_METRICS_DISABLED", "true")
    warnings.filterwarnings("ignore", message="No application metrics to publish")
    os.environ.setdefault(STORE_DIR_ENV, str(_repo_root() / ".dev" / "store"))
    os.environ.setdefault(ENDPOINT_ENV, "1")
    stack = LocalStack(args.template, host=args.host, port=args.port)
    try:
        stack.start()
    except OSError as exc:
        if exc.errno in (errno.EADDRINUSE, errno.EACCES, errno.EADDRNOTAVAIL):
            why = "is in use (another make dev?)" if exc.errno == errno.EADDRINUSE \
                else f"cannot be used ({exc.strerror})"
            print(f"llmcredits dev: port {args.port} on {args.host} {why}; "
                  "stop it or choose another: PORT=3001 make dev", file=sys.stderr)
            return 1
        raise
    except StoreInUse as exc:
        print(f"llmcredits dev: {exc}", file=sys.stderr)
        return 1
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stack.request_stop())
    stack_file = ops.default_stack_file()
    try:
        embedded = stack.embedded
        endpoint = os.environ.get("DYNAMODB_ENDPOINT") or (
            embedded.endpoint_url if embedded is not None else None)
        if embedded is not None and endpoint:
            ops.write_stack_file(stack_file, {
                "pid": os.getpid(),
                "api": stack.base_url + API_BASE_PATH,
                "table": embedded.env.get("TABLE_NAME"),
                "region": os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION"),
                "dynamodb_endpoint": endpoint,
                "kms_endpoint": embedded.endpoint_url,
                "store": str(embedded.store.folder) if embedded.store is not None else None,
            })
        _print_banner(stack, stack_file)
        stack.serve_forever()
    finally:
        ops.remove_stack_file(stack_file, os.getpid())
        stack.stop()
    return 0


#: The API's base path (DESIGN section 2).
API_BASE_PATH = "/api/v1/llm"


def _print_banner(stack: Any, stack_file: Path) -> None:
    embedded = stack.embedded
    if os.environ.get("DYNAMODB_ENDPOINT"):
        where = os.environ["DYNAMODB_ENDPOINT"]
    elif embedded is not None and embedded.store is not None:
        state = "restored" if embedded.restored else "new"
        where = f"embedded (moto), kept in {embedded.store.folder} ({state}; make dev-reset)"
    else:
        where = "embedded (moto), in memory"
    lines = [f"llmcredits local API on {stack.base_url}{API_BASE_PATH} (DynamoDB: {where})"]
    if stack.dev_upstream is not None:
        lines.append(f"  dev upstream (deterministic stand-in): {stack.dev_upstream.url}")
    elif os.environ.get("LITELLM_PROXY_URL"):
        lines.append(f"  upstream: {os.environ['LITELLM_PROXY_URL']}")
    if stack.dev_stripe is not None:
        lines.append(f"  dev Stripe (stand-in; pay at checkout_url): {stack.dev_stripe.url}")
    lines.append(f"  OIDC issuer: {stack.local_url}/.well-known/openid-configuration")
    lines.append(f"Console: {stack.base_url}/console/ (sign in with any user name)")
    if embedded is not None and embedded.endpoint_url:
        lines.append(f"  store endpoint for llmcredits admin / aws --endpoint-url: "
                     f"{embedded.endpoint_url} (in {stack_file})")
    for route in stack.router.routes:
        r = route.route
        auth = "public" if r.authorizer is None else r.authorizer
        lines.append(f"  {r.method:6} {r.path}  -> {r.function_id} [{auth}]")
    for worker in stack.workers:
        lines.append(f"  worker {worker.name}")
    lines.extend(_banner_credentials(stack))
    lines.append("Ctrl-C to stop")
    print("\n".join(lines), file=sys.stderr, flush=True)


def _banner_credentials(stack: Any) -> list[str]:
    """Ready-to-paste credentials for the banner: login tokens and the dev API key."""
    ttl = 12 * 3600
    user = stack.issue_token("alice", ttl=ttl)
    admin = stack.issue_token("ops", admin=True, ttl=ttl)
    return [
        "Ready tokens (12 h; more with: .venv/bin/llmcredits token --sub USER [--admin]):",
        f"  TOKEN={user}",
        f"  ADMIN={admin}",
        *_banner_api_key(stack),
    ]


def _banner_api_key(stack: Any) -> list[str]:
    """alice's dev API key (llmcredits.local.dev_key): the same one on every start of
    this store, its secret kept beside the store (never in the table)."""
    from llmcredits import bootstrap
    from llmcredits.local.dev_key import DEV_KEY_USER, ensure_dev_key

    embedded = stack.embedded
    if os.environ.get("DYNAMODB_ENDPOINT"):
        folder: Path | None = _repo_root() / ".dev"
    elif embedded is not None and embedded.store is not None:
        folder = Path(embedded.store.folder)
    else:
        folder = None  # an in-memory store: the key lives as long as the process
    more = f".venv/bin/llmcredits keys create --sub {DEV_KEY_USER}"
    try:
        key = ensure_dev_key(bootstrap.api_keys_service(), folder)
    except Exception as exc:  # a banner line never stops make dev
        return [f"No ready API key ({type(exc).__name__}: {exc}); mint one with: {more}"]
    kept = f"kept in {key.path}" if key.path is not None else "this run only"
    state = "new" if key.minted else "the same as last start"
    return [f"Ready API key for {DEV_KEY_USER} ({state}; {kept}; revoked or `make "
            f"dev-reset` -> a new one at the next start; more with: {more}):",
            f"  KEY={key.secret}"]


def cmd_token(args: argparse.Namespace) -> int:
    """Print a bearer token the local server accepts."""
    from llmcredits.local.issuer import issue_token

    print(issue_token(args.sub, admin=args.admin, ttl=args.ttl))
    return 0


def cmd_openapi(args: argparse.Namespace) -> int:
    """Print (or --write into the layer) the OpenAPI document built from the handlers."""
    from llmcredits.openapi_doc import DOCUMENT_PATH, build_document, render

    text = render(build_document(_repo_root() / "functions", _repo_root() / "template.yaml"))
    if args.write:
        DOCUMENT_PATH.write_text(text)
        print(f"wrote {DOCUMENT_PATH}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0


# -- operator commands (llmcredits admin ...): use cases in llmcredits.ops ----------------


AdminCommand = Callable[[argparse.Namespace], int]


def _admin_command(func: AdminCommand) -> AdminCommand:
    """Expected failures (unknown user, bad amount, AWS access denied, missing table, a
    "no" at the prompt) become one line on stderr and exit 1, or 2 for usage errors."""

    @functools.wraps(func)
    def run(args: argparse.Namespace) -> int:
        from llmcredits import ops

        try:
            return int(func(args))
        except Exception as exc:
            failure = ops.explain(exc, getattr(args, "target", None))
            if failure is None:
                raise
            name = getattr(args, "admin_command", None) or "admin"
            print(f"llmcredits admin {name}: error: {failure.message}", file=sys.stderr)
            return failure.exit_code

    return run


def _admin_target(args: argparse.Namespace) -> Any:
    """The table from --table, --stack (its TableName output), env TABLE_NAME, --endpoint."""
    from llmcredits import ops

    args.target = ops.resolve_target(
        table=args.table, stack=args.stack, endpoint=args.endpoint, region=args.region
    )
    return args.target


def _admin_operator(args: argparse.Namespace) -> Any:
    from llmcredits import ops

    return ops.Operator.connect(_admin_target(args))


def _admin_confirm(args: argparse.Namespace, lines: list[str]) -> None:
    from llmcredits import ops

    ops.confirm(lines, yes=args.yes, stdin=sys.stdin, stderr=sys.stderr)


def _admin_print(args: argparse.Namespace, text: str, data: Any) -> None:
    from llmcredits import ops

    print(ops.to_json(data) if args.json else text)


@_admin_command
def cmd_admin_reconcile(args: argparse.Namespace) -> int:
    """Check DESIGN invariants 2 and 4 for every account (or --user); 1 on any discrepancy."""
    import json
    import time

    from llmcredits.dal.dynamodb_ledger import DynamoLedgerStore
    from llmcredits.dal.dynamodb_usage import DynamoUsageStore
    from llmcredits.ops import dynamodb_client
    from llmcredits.services.reconcile import reconcile_all

    target = _admin_target(args)
    client = dynamodb_client(target)
    report = reconcile_all(
        DynamoLedgerStore(client, target.table),
        DynamoUsageStore(client, target.table),
        user_id=args.user,
        grace_seconds=args.grace_seconds,
        recheck=(lambda: time.sleep(args.recheck_seconds)) if args.recheck_seconds > 0 else None,
    )
    if args.json:
        print(json.dumps({
            "ok": report.ok,
            "accounts": report.accounts,
            "discrepancies": [
                {"user_id": d.user_id, "what": d.what, "stored": str(d.stored),
                 "expected": str(d.expected), "message": str(d)}
                for d in report.discrepancies
            ],
        }, indent=2))
    else:
        for found in report.discrepancies:
            print(f"DISCREPANCY {found}")
        print(
            f"checked {report.accounts} account(s) of table {target.table}: "
            f"{len(report.discrepancies)} discrepancy(ies)",
            file=sys.stderr,
        )
    return 0 if report.ok else 1


@_admin_command
def cmd_admin_byok_rotate(args: argparse.Namespace) -> int:
    """Re-encrypt every stored BYOK key under a new KMS key (no plaintext is printed)."""
    import json

    from llmcredits.dal.dynamodb_byok import DynamoByokStore
    from llmcredits.dal.kms_envelope import Envelope
    from llmcredits.ops import dynamodb_client, kms_client
    from llmcredits.services.byok import ByokService

    target = _admin_target(args)
    store = DynamoByokStore(dynamodb_client(target), target.table)
    count = sum(1 for _ in store.scan_all())
    if count == 0:  # nothing to do: no KMS call, no prompt
        if args.json:
            print(json.dumps({"ok": True, "rotated": 0, "already_current": 0, "gone": 0,
                              "failed": [], "new_kms_key_arn": None}, indent=2))
        else:
            print(f"no BYOK keys stored in table {target.table}: nothing to rotate")
        return 0
    envelope = Envelope(kms_client(target), None)
    service = ByokService(store, lambda: envelope, ensure_account=lambda _user: None)
    _admin_confirm(args, [f"re-encrypt {count} stored BYOK key(s) of table {target.table} "
                          f"under KMS key {args.new_kms_key_id}"])
    report = service.rotate_all(args.new_kms_key_id)
    if args.json:
        print(json.dumps({
            "ok": report.ok, "rotated": report.rotated,
            "already_current": report.already_current, "gone": report.gone,
            "failed": [{"user_id": u, "provider": p, "error": why}
                       for u, p, why in report.failed],
            "new_kms_key_arn": report.new_kms_key_arn,
        }, indent=2))
        return 0 if report.ok else 1
    for user_id, provider, why in report.failed:
        print(f"FAILED user {user_id!r} provider {provider}: {why}")
    print(f"rotated {report.rotated}, already under the new key {report.already_current}, "
          f"deleted meanwhile {report.gone}, failed {len(report.failed)} "
          f"(new key {report.new_kms_key_arn})")
    return 0 if report.ok else 1


@_admin_command
def cmd_admin_show(args: argparse.Namespace) -> int:
    """A user's account, as GET /credits shows it."""
    from llmcredits import ops

    view = _admin_operator(args).show(args.user)
    _admin_print(args, ops.format_account(view), view)
    return 0


@_admin_command
def cmd_admin_grant(args: argparse.Namespace) -> int:
    """Credit a user (bonus, refund, adjustment): one ledger entry, once per idempotency key."""
    from llmcredits import ops
    from llmcredits.domain.ledger import EntryType

    amount = ops.parse_amount(args.amount)
    reason = ops.require_text(args.reason, "--reason")
    actor = ops.resolve_actor(args.actor)
    entry_type = EntryType(args.type)
    expiry = {"expires_at": ops.parse_expires_at(args.expires_at),
              "expires_in_days": args.expires_in_days}
    operator = _admin_operator(args)
    earlier = operator.earlier_grant(args.user, amount, entry_type, reason, actor,
                                     args.idempotency_key, **expiry)
    if earlier is not None:  # a retry: say so instead of previewing a change
        print(ops.format_replay(earlier, args.idempotency_key), file=sys.stderr)
        _admin_print(args, ops.format_change("granted", earlier), earlier.view())
        return 0
    _admin_confirm(args, operator.describe_grant(args.user, amount, entry_type, reason, actor,
                                                 **expiry))
    outcome = operator.grant(args.user, amount, entry_type, reason, actor, args.idempotency_key,
                             **expiry)
    _admin_print(args, ops.format_change("granted", outcome), outcome.view())
    return 0


@_admin_command
def cmd_admin_adjust(args: argparse.Namespace) -> int:
    """Correct a balance up or down (an adjustment entry); down never below zero unless
    --allow-negative."""
    from llmcredits import ops

    amount = ops.parse_amount(args.amount, signed=True)
    reason = ops.require_text(args.reason, "--reason")
    actor = ops.resolve_actor(args.actor)
    operator = _admin_operator(args)
    earlier = operator.earlier_adjust(args.user, amount, reason, actor, args.allow_negative,
                                      args.idempotency_key)
    if earlier is not None:  # a retry: say so instead of previewing a change
        print(ops.format_replay(earlier, args.idempotency_key), file=sys.stderr)
        _admin_print(args, ops.format_change("adjusted", earlier), earlier.view())
        return 0
    _admin_confirm(
        args, operator.describe_adjust(args.user, amount, reason, actor, args.allow_negative)
    )
    outcome = operator.adjust(
        args.user, amount, reason, actor,
        allow_negative=args.allow_negative, idempotency_key=args.idempotency_key,
    )
    _admin_print(args, ops.format_change("adjusted", outcome), outcome.view())
    return 0


@_admin_command
def cmd_admin_set_tier(args: argparse.Namespace) -> int:
    """Set a user's tier."""
    from llmcredits import ops
    from llmcredits.domain.ledger import Tier

    tier = Tier(args.tier)
    operator = _admin_operator(args)
    _admin_confirm(args, operator.describe_tier(args.user, tier))
    view = operator.set_tier(args.user, tier)
    _admin_print(args, ops.format_account(view), view)
    return 0


@_admin_command
def cmd_admin_set_cap(args: argparse.Namespace) -> int:
    """Set a user's monthly spending cap (an amount, or none)."""
    from llmcredits import ops

    cap = ops.parse_cap(args.amount)
    operator = _admin_operator(args)
    _admin_confirm(args, operator.describe_cap(args.user, cap))
    view = operator.set_cap(args.user, cap)
    _admin_print(args, ops.format_account(view), view)
    return 0


@_admin_command
def cmd_admin_history(args: argparse.Namespace) -> int:
    """A user's ledger, newest first, read through the history cursors."""
    from llmcredits import ops
    from llmcredits.domain.ledger import EntryType
    from llmcredits.views import entry_view

    if args.limit < 1:
        raise ops.UsageError("--limit must be at least 1")
    entry_type = EntryType(args.type) if args.type else None
    entries, more = _admin_operator(args).history(
        args.user, None if args.all else args.limit, entry_type
    )
    data = {"user_id": args.user, "items": [entry_view(e) for e in entries], "more": more}
    _admin_print(args, ops.format_history(entries, more), data)
    return 0


@_admin_command
def cmd_admin_export_ledger(args: argparse.Namespace) -> int:
    """Ledger entries as CSV (one user, or every user by a paged Scan), to a file or stdout."""
    from llmcredits import ops

    since = ops.parse_day(args.since, "--since") if args.since else None
    until = ops.parse_day(args.until, "--until") if args.until else None
    ops.check_window(since, until)
    write = ops.write_json if args.json else ops.write_csv
    operator = _admin_operator(args)
    entries = operator.ledger_entries(args.user, since, until)
    if args.output == "-":
        rows = write(entries, sys.stdout)
        sys.stdout.flush()
    else:
        # Written beside the target and renamed: a failed export leaves no partial file.
        output = Path(args.output)
        partial = output.with_name(f".{output.name}.partial")
        try:
            with partial.open("w", newline="", encoding="utf-8") as out:
                rows = write(entries, out)
            partial.replace(output)
        except OSError as exc:
            partial.unlink(missing_ok=True)
            raise ops.OpsError(f"cannot write {args.output}: {exc.strerror or exc}") from exc
        except BaseException:
            partial.unlink(missing_ok=True)
            raise
    summary = {"rows": rows, "output": args.output, "table": operator.table,
               "user_id": args.user, "since": args.since, "until": args.until}
    where = "stdout" if args.output == "-" else args.output
    text = f"exported {rows} ledger entr{'y' if rows == 1 else 'ies'} to {where}"
    # The entries are the output (CSV, or a JSON array with --json); the summary goes to
    # stderr (as JSON with --json), so stdout stays one document.
    print(ops.to_json(summary) if args.json else text, file=sys.stderr)
    return 0


# -- API keys (llmcredits keys ...) ---------------------------------------------------------


@_admin_command
def cmd_keys_create(args: argparse.Namespace) -> int:
    """Mint an API key for ``--sub`` on the target table. The secret goes to stdout (once,
    alone, so ``KEY=$(llmcredits keys create --sub alice)`` works); the record to stderr."""
    from llmcredits import ops
    from llmcredits.dal.dynamodb_api_keys import DynamoApiKeyStore
    from llmcredits.domain.api_keys import LimitReset
    from llmcredits.domain.pricing import catalog
    from llmcredits.money import parse_money
    from llmcredits.services.api_keys import ApiKeysService, KeySettings, key_view

    target = _admin_target(args)
    operator = ops.Operator.connect(target)
    service = ApiKeysService(
        DynamoApiKeyStore(operator.client, target.table),
        ensure_account=operator.ledger.account,
        tier_rate_limit=catalog().rate_limit,
        power_levels=list(catalog().power_levels),
    )
    given: dict[str, Any] = {"name": args.name}
    if args.limit is not None:
        given["limit"] = parse_money(args.limit)
    if args.limit_reset is not None:
        given["limit_reset"] = LimitReset(args.limit_reset)
    if args.expires_at is not None:
        given["expires_at"] = args.expires_at
    if args.power_level:
        given["power_levels"] = args.power_level
    if args.rate_limit_per_minute is not None:
        given["rate_limit_per_minute"] = args.rate_limit_per_minute
    secret, key = service.create(args.sub, KeySettings(**given))
    print(secret)
    print(ops.to_json(key_view(key)), file=sys.stderr)
    return 0


def _aware_instant(text: str) -> Any:
    from datetime import datetime

    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        moment = None
    if moment is None or moment.tzinfo is None:
        raise argparse.ArgumentTypeError("an ISO 8601 instant with a zone, e.g. "
                                         "2027-01-01T00:00:00Z")
    return moment


def _add_keys_commands(sub: Any) -> None:
    keys = sub.add_parser("keys", help="API keys")
    keys_sub = keys.add_subparsers(dest="admin_command", required=True)
    create = keys_sub.add_parser("create", help="mint an API key (prints the secret once)")
    create.add_argument("--sub", required=True, help="user id (JWT sub) that owns the key")
    create.add_argument("--name", default="cli", help="a label for the key")
    create.add_argument("--limit", help="spend limit in credits, e.g. 5.00")
    create.add_argument("--limit-reset", choices=["daily", "weekly", "monthly", "never"],
                        help="when the limit's spend restarts (UTC; default never)")
    create.add_argument("--expires-at", type=_aware_instant,
                        help="ISO 8601 instant with a zone, e.g. 2027-01-01T00:00:00Z")
    create.add_argument("--power-level", action="append",
                        help="an allowed power level (repeat for more; default all)")
    create.add_argument("--rate-limit-per-minute", type=int, help="at most the tier's")
    _add_target_args(create, confirm=False)
    create.set_defaults(func=cmd_keys_create)


def _add_target_args(parser: argparse.ArgumentParser, *, confirm: bool) -> None:
    """The flags every admin command shares: where the table is, --json, and --yes for
    commands that change something."""
    where = parser.add_argument_group("table (one of --stack, --table, env TABLE_NAME)")
    where.add_argument("--stack", help="CloudFormation stack name: use its TableName output")
    where.add_argument("--table", help="table name (env TABLE_NAME; with --endpoint default "
                                       "llmcredits-local)")
    where.add_argument("--endpoint", help="DynamoDB endpoint URL, e.g. DynamoDB Local "
                                          "(env DYNAMODB_ENDPOINT)")
    where.add_argument("--region", help="AWS region (env AWS_REGION, else your AWS config)")
    parser.add_argument("--json", action="store_true", help="print JSON")
    if confirm:
        parser.add_argument("--yes", "-y", action="store_true",
                            help="do not ask for confirmation (needed without a terminal)")


def _add_admin_commands(admin_sub: Any) -> None:
    from llmcredits.domain.ledger import GRANT_TYPES, EntryType, Tier

    show = admin_sub.add_parser("show", help="a user's account (as GET /credits)")
    show.add_argument("user", help="user id (JWT sub)")
    _add_target_args(show, confirm=False)
    show.set_defaults(func=cmd_admin_show)

    grant = admin_sub.add_parser("grant", help="credit a user (bonus, refund, adjustment)")
    grant.add_argument("user", help="user id (JWT sub)")
    grant.add_argument("amount", help="credits to add, a positive decimal such as 10.50")
    grant.add_argument("--type", required=True, choices=[t.value for t in GRANT_TYPES])
    grant.add_argument("--reason", required=True, help="why (kept in the ledger entry)")
    grant.add_argument("--idempotency-key", help="a retry with the same key changes nothing")
    grant.add_argument("--actor", help="who grants (ledger metadata.by; default env USER)")
    expiry = grant.add_mutually_exclusive_group()
    expiry.add_argument("--expires-at", help="the granted lot expires then (ISO 8601 with a "
                        "time zone, e.g. 2026-12-31T00:00:00Z); default never")
    expiry.add_argument("--expires-in-days", type=int, help="the lot expires this many days "
                        "from now")
    _add_target_args(grant, confirm=True)
    grant.set_defaults(func=cmd_admin_grant)

    adjust = admin_sub.add_parser(
        "adjust", help="correct a balance up or down (an adjustment ledger entry)"
    )
    adjust.add_argument("user", help="user id (JWT sub)")
    adjust.add_argument("amount", help="signed decimal: -5 takes 5 credits, 5 adds 5")
    adjust.add_argument("--reason", required=True, help="why (kept in the ledger entry)")
    adjust.add_argument("--allow-negative", action="store_true",
                        help="let a downward correction take available credits below zero")
    adjust.add_argument("--idempotency-key", help="a retry with the same key changes nothing")
    adjust.add_argument("--actor", help="who adjusts (ledger metadata.by; default env USER)")
    _add_target_args(adjust, confirm=True)
    adjust.set_defaults(func=cmd_admin_adjust)

    tier = admin_sub.add_parser("set-tier", help="set a user's tier")
    tier.add_argument("user", help="user id (JWT sub)")
    tier.add_argument("tier", choices=[t.value for t in Tier])
    _add_target_args(tier, confirm=True)
    tier.set_defaults(func=cmd_admin_set_tier)

    cap = admin_sub.add_parser("set-cap", help="set a user's monthly spending cap")
    cap.add_argument("user", help="user id (JWT sub)")
    cap.add_argument("amount", help="the cap, a decimal such as 50.00, or none")
    _add_target_args(cap, confirm=True)
    cap.set_defaults(func=cmd_admin_set_cap)

    history = admin_sub.add_parser("history", help="a user's ledger entries, newest first")
    history.add_argument("user", help="user id (JWT sub)")
    history.add_argument("--limit", type=int, default=50, help="at most N entries (default 50)")
    history.add_argument("--all", action="store_true", help="every entry (ignores --limit)")
    history.add_argument("--type", choices=[t.value for t in EntryType])
    _add_target_args(history, confirm=False)
    history.set_defaults(func=cmd_admin_history)

    export = admin_sub.add_parser(
        "export-ledger", help="ledger entries as CSV (one user, or all by a paged Scan)"
    )
    export.add_argument("--user", help="only this user (default: every user)")
    export.add_argument("--since", help="entries from this UTC day on (YYYY-MM-DD)")
    export.add_argument("--until", help="entries before this UTC day (YYYY-MM-DD)")
    export.add_argument("--output", "-o", default="-",
                        help="file (CSV; a JSON array with --json), or - for stdout")
    _add_target_args(export, confirm=False)
    export.set_defaults(func=cmd_admin_export_ledger)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="llmcredits", description="llmcredits tools")
    sub = parser.add_subparsers(dest="command", required=True)

    dev = sub.add_parser("dev", help="serve the API locally (replaces sam local start-api)")
    dev.add_argument("--port", type=int, default=int(os.environ.get("PORT") or 3000))
    dev.add_argument("--host", default="127.0.0.1")
    dev.add_argument("--template", default=str(_repo_root() / "template.yaml"))
    dev.set_defaults(func=cmd_dev)

    token = sub.add_parser("token", help="print a bearer token for the local API")
    token.add_argument("--sub", required=True, help="user id (JWT sub)")
    token.add_argument("--admin", action="store_true", help="add the llmcredits/admin scope")
    token.add_argument("--ttl", type=int, default=3600, help="lifetime in seconds")
    token.set_defaults(func=cmd_token)

    openapi = sub.add_parser("openapi", help="build the OpenAPI document from the handlers")
    openapi.add_argument("--write", action="store_true", help="write it into the layer")
    openapi.set_defaults(func=cmd_openapi)

    admin = sub.add_parser("admin", help="operator tools against a table")
    admin_sub = admin.add_subparsers(dest="admin_command", required=True)
    reconcile = admin_sub.add_parser(
        "reconcile",
        help="check invariants 2 (balance/held == ledger) and 4 (usage aggregates == ledger)",
    )
    reconcile.add_argument("--user", help="check only this user id")
    _add_target_args(reconcile, confirm=False)
    reconcile.add_argument(
        "--grace-seconds", type=int, default=0,
        help="skip usage keys with entries younger than this (stream still draining)",
    )
    reconcile.add_argument(
        "--recheck-seconds", type=float, default=1.0,
        help="re-read an inconsistent account after this long before reporting it (0: never)",
    )
    reconcile.set_defaults(func=cmd_admin_reconcile)

    rotate = admin_sub.add_parser(
        "byok-rotate", help="re-encrypt every stored BYOK key under a new KMS key"
    )
    rotate.add_argument("--new-kms-key-id", required=True, help="key id, ARN or alias")
    _add_target_args(rotate, confirm=True)  # KMS: env AWS_REGION, KMS_ENDPOINT
    rotate.set_defaults(func=cmd_admin_byok_rotate)

    _add_admin_commands(admin_sub)
    _add_keys_commands(sub)

    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except BrokenPipeError:
        # The reader left (`... | head`): stop quietly, as other Unix tools do. Point
        # stdout at /dev/null so the interpreter's final flush cannot fail again.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_BROKEN_PIPE


if __name__ == "__main__":
    sys.exit(main())
