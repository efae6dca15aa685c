"""The ``llmcredits`` command line.

    llmcredits dev [--port 3000] [--template template.yaml]   serve the local stack
    llmcredits token --sub USER [--admin] [--ttl 3600]         print a local bearer token
    llmcredits openapi [--write]                               build the OpenAPI document

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

    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
