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


def _repo_root() -> Path:
    return Path(__file__).resolve().parents[3]


def cmd_dev(args: argparse.Namespace) -> int:
    """Serve the whole API locally (routes from template.yaml, embedded AWS, workers)."""
    from llmcredits.local.server import LocalStack

    logging.basicConfig(
        level=os.environ.get("LLMCREDITS_LOCAL_LOG_LEVEL", "INFO"),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    stack = LocalStack(args.template, host=args.host, port=args.port)
    stack.start()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stack.request_stop())
    try:
        where = os.environ.get("DYNAMODB_ENDPOINT") or "embedded (moto)"
        print(f"llmcredits local API on {stack.base_url} (DynamoDB: {where})", file=sys.stderr)
        if stack.dev_upstream is not None:
            print(
                f"  dev upstream (deterministic stand-in): {stack.dev_upstream.url}",
                file=sys.stderr,
            )
        elif os.environ.get("LITELLM_PROXY_URL"):
            print(f"  upstream: {os.environ['LITELLM_PROXY_URL']}", file=sys.stderr)
        if stack.dev_stripe is not None:
            print(f"  dev Stripe (stand-in; pay at checkout_url): {stack.dev_stripe.url}",
                  file=sys.stderr)
        for route in stack.router.routes:
            r = route.route
            auth = (
                "public"
                if r.authorizer is None
                else ("scopes " + ",".join(r.scopes) if r.scopes else "jwt")
            )
            print(f"  {r.method:6} {r.path}  -> {r.function_id} [{auth}]", file=sys.stderr)
        for worker in stack.workers:
            print(f"  worker {worker.name}", file=sys.stderr)
        print("Token: llmcredits token --sub USER [--admin]   (Ctrl-C to stop)", file=sys.stderr)
        sys.stderr.flush()
        stack.serve_forever()
    finally:
        stack.stop()
    return 0


def cmd_token(args: argparse.Namespace) -> int:
    """Print a bearer token the local server accepts."""
    from llmcredits.local.authorizer import issue_token

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
    from llmcredits.dal.kms_envelope import Envelope, kms_client
    from llmcredits.ops import dynamodb_client
    from llmcredits.services.byok import ByokService

    target = _admin_target(args)
    store = DynamoByokStore(dynamodb_client(target), target.table)
    envelope = Envelope(kms_client(), None)
    service = ByokService(store, lambda: envelope, ensure_account=lambda _user: None)
    count = sum(1 for _ in store.scan_all())
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
    operator = _admin_operator(args)
    _admin_confirm(args, operator.describe_grant(args.user, amount, entry_type, reason, actor))
    outcome = operator.grant(args.user, amount, entry_type, reason, actor, args.idempotency_key)
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
    operator = _admin_operator(args)
    entries = operator.ledger_entries(args.user, since, until)
    if args.output == "-":
        rows = ops.write_csv(entries, sys.stdout)
        sys.stdout.flush()
    else:
        # Written beside the target and renamed: a failed export leaves no partial file.
        output = Path(args.output)
        partial = output.with_name(f".{output.name}.partial")
        try:
            with partial.open("w", newline="", encoding="utf-8") as out:
                rows = ops.write_csv(entries, out)
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
    if args.json:
        print(ops.to_json(summary), file=sys.stderr if args.output == "-" else sys.stdout)
    else:
        print(text, file=sys.stderr)
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
    export.add_argument("--output", "-o", default="-", help="CSV file, or - for stdout")
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
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
