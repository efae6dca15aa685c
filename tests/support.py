"""Test helpers: API Gateway REST API (v1 proxy) events and handler invocation."""

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
    resource: str | None = None,
) -> dict[str, Any]:
    """A REST API (v1 proxy) event as API Gateway sends it after our Lambda authorizer
    allowed the caller: ``sub`` None means a public route (no authorizer context)."""
    hdrs = {k.lower(): v for k, v in (headers or {}).items()}
    if body is not None or raw_body is not None:
        hdrs.setdefault("content-type", "application/json")
    request_id = str(uuid.uuid4())
    return {
        "resource": resource or _resource(path, path_params),
        "path": path,
        "httpMethod": method,
        "headers": hdrs,
        "multiValueHeaders": {k: [v] for k, v in hdrs.items()},
        "queryStringParameters": query or None,
        "multiValueQueryStringParameters": {k: [v] for k, v in query.items()} if query else None,
        "pathParameters": path_params,
        "stageVariables": None,
        "requestContext": {
            "accountId": "123456789012",
            "apiId": "local",
            "domainName": "localhost",
            "httpMethod": method,
            "path": f"/v1{path}",
            "protocol": "HTTP/1.1",
            "requestId": request_id,
            "extendedRequestId": request_id,
            "resourceId": "local",
            "resourcePath": resource or _resource(path, path_params),
            "stage": "v1",
            "identity": {"sourceIp": "127.0.0.1", "userAgent": "pytest"},
            "requestTime": "27/Nov/2026:08:00:00 +0000",
            "requestTimeEpoch": 1795766400000,
            **({"authorizer": authorizer_context(sub, scopes, kind, key_id)}
               if sub is not None else {}),
        },
        "body": raw_body if raw_body is not None else (None if body is None else json.dumps(body)),
        "isBase64Encoded": False,
    }


def _resource(path: str, path_params: dict[str, str] | None) -> str:
    """The route template of ``path``: each path parameter's value back to ``{name}``."""
    resource = path
    for name, value in (path_params or {}).items():
        resource = resource.replace(f"/{value}", f"/{{{name}}}", 1)
    return resource


def authorizer_context(
    sub: str, scopes: list[str] | None, kind: str = "jwt", key_id: str | None = None
) -> dict[str, Any]:
    """What the Lambda authorizer hands the function (context values are strings)."""
    return {"principalId": sub, "user_id": sub, "kind": kind, "key_id": key_id or "",
            "scopes": " ".join(scopes or []), "integrationLatency": 0}


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
    return resp["statusCode"], response_headers(resp), parsed


def response_headers(resp: dict[str, Any]) -> dict[str, str]:
    """One value per header of a v1 proxy response (the REST resolver answers in
    ``multiValueHeaders``; API Gateway merges them with ``headers``)."""
    merged = {str(k): ",".join(map(str, v)) for k, v in
              (resp.get("multiValueHeaders") or {}).items()}
    merged.update({str(k): str(v) for k, v in (resp.get("headers") or {}).items()})
    return merged


def usage_stream_records(client: Any, table: str, streams: Any) -> list[dict[str, Any]]:
    """The table's stream so far as Lambda records, through the aggregator's FilterCriteria
    as template.yaml declares them (so the tests feed what Lambda would)."""
    from llmcredits.local.streams import read_stream
    from llmcredits.local.template import Template

    (mapping,) = [e for e in Template(ROOT / "template.yaml").stream_events()
                  if e.function_id == "UsageAggregatorFunction"]
    arn = client.describe_table(TableName=table)["Table"]["LatestStreamArn"]
    return read_stream(streams, arn, "us-east-1", mapping.filters)
