"""Test helpers: API Gateway HTTP API v2 events and handler invocation."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
FUNCTIONS = ROOT / "functions"


class _CfnLoader(yaml.SafeLoader):
    pass


def _any_tag(loader: yaml.SafeLoader, suffix: str, node: yaml.Node) -> Any:
    if isinstance(node, yaml.ScalarNode):
        return {suffix: loader.construct_scalar(node)}
    if isinstance(node, yaml.SequenceNode):
        return {suffix: loader.construct_sequence(node)}
    return {suffix: loader.construct_mapping(node)}  # type: ignore[arg-type]


_CfnLoader.add_multi_constructor("!", _any_tag)


def template() -> dict[str, Any]:
    return yaml.load((ROOT / "template.yaml").read_text(), Loader=_CfnLoader)  # noqa: S506


def create_table_from_template(client: Any, name: str) -> None:
    props = template()["Resources"]["LedgerTable"]["Properties"]
    client.create_table(
        TableName=name,
        KeySchema=props["KeySchema"],
        AttributeDefinitions=props["AttributeDefinitions"],
        BillingMode=props["BillingMode"],
        GlobalSecondaryIndexes=props.get("GlobalSecondaryIndexes", []),
        StreamSpecification={"StreamEnabled": True, **props["StreamSpecification"]},
    )
    client.get_waiter("table_exists").wait(TableName=name)


def event(
    method: str,
    path: str,
    *,
    body: Any = None,
    raw_body: str | None = None,
    headers: dict[str, str] | None = None,
    query: dict[str, str] | None = None,
    path_params: dict[str, str] | None = None,
    sub: str | None = "user-1",
    scopes: list[str] | None = None,
    kind: str = "jwt",
    key_id: str | None = None,
) -> dict[str, Any]:
    hdrs = {k.lower(): v for k, v in (headers or {}).items()}
    if body is not None or raw_body is not None:
        hdrs.setdefault("content-type", "application/json")
    claims = None
    if sub is not None:
        claims = {"sub": sub, "iss": "llmcredits-local", "aud": "llmcredits"}
        if scopes:
            claims["scope"] = " ".join(scopes)
    from urllib.parse import urlencode

    return {
        "version": "2.0",
        "routeKey": f"{method} {path}",
        "rawPath": path,
        "rawQueryString": urlencode(query or {}),
        "headers": hdrs,
        "queryStringParameters": query or None,
        "pathParameters": path_params,
        "requestContext": {
            "accountId": "123456789012",
            "apiId": "local",
            "domainName": "localhost",
            "http": {
                "method": method,
                "path": path,
                "protocol": "HTTP/1.1",
                "sourceIp": "127.0.0.1",
                "userAgent": "pytest",
            },
            "requestId": uuid.uuid4().hex,
            "routeKey": f"{method} {path}",
            "stage": "$default",
            "time": "27/Nov/2026:08:00:00 +0000",
            "timeEpoch": 1795766400000,
            "authorizer": _authorizer(claims, scopes, kind, key_id),
        },
        "body": raw_body if raw_body is not None else (None if body is None else json.dumps(body)),
        "isBase64Encoded": False,
    }


def _authorizer(
    claims: dict[str, Any] | None, scopes: list[str] | None, kind: str, key_id: str | None
) -> dict[str, Any] | None:
    """What the authorizer hands the function: JWT claims, or (for an API key) the
    Lambda authorizer's context."""
    if not claims:
        return None
    if kind == "api_key":
        return {"lambda": {"user_id": claims["sub"], "kind": kind, "key_id": key_id or "",
                           "scopes": " ".join(scopes or [])}}
    return {"jwt": {"claims": claims, "scopes": scopes}}


class Context:
    function_name = "test"
    memory_limit_in_mb = 512
    invoked_function_arn = "arn:aws:lambda:us-east-1:123456789012:function:test"
    aws_request_id = "req-1"

    def get_remaining_time_in_millis(self) -> int:
        return 10_000


def invoke(function: str, evt: dict[str, Any]) -> tuple[int, dict[str, str], Any]:
    from llmcredits.openapi_doc import import_handler

    module = import_handler(FUNCTIONS / function / "app.py")
    resp = module.lambda_handler(evt, Context())
    body = resp.get("body")
    parsed = json.loads(body) if body else None
    return resp["statusCode"], resp.get("headers", {}), parsed


def usage_stream_records(client: Any, table: str, streams: Any) -> list[dict[str, Any]]:
    """The table's stream so far as Lambda records, through the aggregator's FilterCriteria
    as template.yaml declares them (so the tests feed what Lambda would)."""
    from llmcredits.local.server import read_stream
    from llmcredits.local.template import Template

    (mapping,) = [e for e in Template(ROOT / "template.yaml").stream_events()
                  if e.function_id == "UsageAggregatorFunction"]
    arn = client.describe_table(TableName=table)["Table"]["LatestStreamArn"]
    return read_stream(streams, arn, "us-east-1", mapping.filters)
