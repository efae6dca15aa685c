"""The ``llmcredits`` command line.

    llmcredits dev [--port 3000] [--template template.yaml]   serve the local stack
    llmcredits token --sub USER [--admin] [--ttl 3600]         print a local bearer token
    llmcredits openapi [--write]                               build the OpenAPI document
    llmcredits admin reconcile [--user U] [--table T] [--json]  check invariants 2 and 4
    llmcredits admin byok-rotate --new-kms-key-id K [--yes]   re-encrypt BYOK keys

One function per subcommand (``cmd_<name>``), registered in :func:`build_parser`.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path


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


def cmd_admin_reconcile(args: argparse.Namespace) -> int:
    """Check DESIGN invariants 2 and 4 for every account (or --user); 1 on any discrepancy."""
    import json
    import time

    import boto3

    from llmcredits.dal.dynamodb_ledger import DynamoLedgerStore
    from llmcredits.dal.dynamodb_usage import DynamoUsageStore
    from llmcredits.services.reconcile import reconcile_all

    region = args.region or os.environ.get("AWS_REGION") or os.environ.get(
        "AWS_DEFAULT_REGION", "us-east-1"
    )
    client = boto3.client(
        "dynamodb",
        region_name=region,
        endpoint_url=args.endpoint or os.environ.get("DYNAMODB_ENDPOINT") or None,
    )
    report = reconcile_all(
        DynamoLedgerStore(client, args.table),
        DynamoUsageStore(client, args.table),
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
            f"checked {report.accounts} account(s) of table {args.table}: "
            f"{len(report.discrepancies)} discrepancy(ies)",
            file=sys.stderr,
        )
    return 0 if report.ok else 1


def cmd_admin_byok_rotate(args: argparse.Namespace) -> int:
    """Re-encrypt every stored BYOK key under a new KMS key (no plaintext is printed)."""
    import boto3

    from llmcredits.dal.dynamodb_byok import DynamoByokStore
    from llmcredits.dal.kms_envelope import Envelope, kms_client
    from llmcredits.services.byok import ByokService

    region = args.region or os.environ.get("AWS_REGION") or os.environ.get(
        "AWS_DEFAULT_REGION", "us-east-1"
    )
    client = boto3.client(
        "dynamodb",
        region_name=region,
        endpoint_url=args.endpoint or os.environ.get("DYNAMODB_ENDPOINT") or None,
    )
    store = DynamoByokStore(client, args.table)
    envelope = Envelope(kms_client(), None)
    service = ByokService(store, lambda: envelope, ensure_account=lambda _user: None)
    count = sum(1 for _ in store.scan_all())
    print(f"re-encrypt {count} stored BYOK key(s) of table {args.table} under KMS key "
          f"{args.new_kms_key_id}", file=sys.stderr)
    if not args.yes:
        print("Proceed? [y/N] ", end="", file=sys.stderr, flush=True)
        if sys.stdin.readline().strip().lower() not in ("y", "yes"):
            print("aborted: nothing changed", file=sys.stderr)
            return 1
    report = service.rotate_all(args.new_kms_key_id)
    for user_id, provider, why in report.failed:
        print(f"FAILED user {user_id!r} provider {provider}: {why}")
    print(f"rotated {report.rotated}, already under the new key {report.already_current}, "
          f"deleted meanwhile {report.gone}, failed {len(report.failed)} "
          f"(new key {report.new_kms_key_arn})")
    return 0 if report.ok else 1


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
    reconcile.add_argument(
        "--table", default=os.environ.get("TABLE_NAME", "llmcredits-local"),
        help="table name (env TABLE_NAME)",
    )
    reconcile.add_argument("--endpoint", help="DynamoDB endpoint URL (env DYNAMODB_ENDPOINT)")
    reconcile.add_argument("--region", help="AWS region (env AWS_REGION)")
    reconcile.add_argument(
        "--grace-seconds", type=int, default=0,
        help="skip usage keys with entries younger than this (stream still draining)",
    )
    reconcile.add_argument(
        "--recheck-seconds", type=float, default=1.0,
        help="re-read an inconsistent account after this long before reporting it (0: never)",
    )
    reconcile.add_argument("--json", action="store_true", help="print a JSON report")
    reconcile.set_defaults(func=cmd_admin_reconcile)

    rotate = admin_sub.add_parser(
        "byok-rotate", help="re-encrypt every stored BYOK key under a new KMS key"
    )
    rotate.add_argument("--new-kms-key-id", required=True, help="key id, ARN or alias")
    rotate.add_argument(
        "--table", default=os.environ.get("TABLE_NAME", "llmcredits-local"),
        help="table name (env TABLE_NAME)",
    )
    rotate.add_argument("--endpoint", help="DynamoDB endpoint URL (env DYNAMODB_ENDPOINT)")
    rotate.add_argument("--region", help="AWS region (env AWS_REGION; KMS: env KMS_ENDPOINT)")
    rotate.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    rotate.set_defaults(func=cmd_admin_byok_rotate)

    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
