"""The local stack (``make dev``): routing, the REST API v1 event, the Lambda authorizer
(invoked, cached, its policy evaluated), gateway responses, stream and schedule workers,
and the serialized embedded DynamoDB.

Runs against a small fake template and fake functions under tmp_path.
"""

from __future__ import annotations

import base64
import json
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
from llmcredits.local import gateway
from llmcredits.local.gateway import MAX_REQUEST_BODY_BYTES as DEFAULT_LIMIT
from llmcredits.local.issuer import JwtAuthority
from llmcredits.local.server import LocalStack
from llmcredits.local.streams import filter_matches
from llmcredits.local.template import Template, rate_seconds

TEMPLATE = """\
AWSTemplateFormatVersion: "2010-09-09"
Transform: AWS::Serverless-2016-10-31
Parameters:
  JwtIssuer:
    Type: String
  JwtAudience:
    Type: String
  Greeting:
    Type: String
    Default: hello
  LiteLLMProxyUrl:
    Type: String
  AuthTtl:
    Type: Number
    Default: 300
Conditions:
  IsProd: !Equals [!Ref Greeting, prod]
Globals:
  Function:
    Runtime: python3.13
    Handler: app.lambda_handler
    MemorySize: 256
    Timeout: 5
    Environment:
      Variables:
        TABLE_NAME: !Ref Table
        GREETING: !Ref Greeting
        STREAM_ARN: !GetAtt Table.StreamArn
        MODE: !If [IsProd, production, development]
        ALIAS: !Sub "alias/${AWS::StackName}-byok"
        LITELLM_PROXY_URL: !Ref LiteLLMProxyUrl
        LITELLM_MASTER_KEY_PARAM: /llmcredits/litellm-master-key
Resources:
  RestApi:
    Type: AWS::Serverless::Api
    Properties:
      StageName: live
      Auth:
        DefaultAuthorizer: FakeAuthorizer
        Authorizers:
          FakeAuthorizer:
            FunctionPayloadType: REQUEST
            FunctionArn: !GetAtt AuthFunction.Arn
            Identity:
              Headers: [Authorization]
              ReauthorizeEvery: !Ref AuthTtl
      GatewayResponses:
        UNAUTHORIZED:
          StatusCode: 401
          ResponseParameters:
            Headers:
              WWW-Authenticate: "'Bearer'"
          ResponseTemplates:
            application/json: >-
              {"error":{"message":"no","type":"authentication_error","code":"invalid_token",
              "param":null}}
        MISSING_AUTHENTICATION_TOKEN:
          StatusCode: 404
          ResponseTemplates:
            application/json: >-
              {"error":{"message":"unknown","type":"invalid_request_error",
              "code":"route_not_found","param":null}}
        DEFAULT_4XX:
          ResponseTemplates:
            application/json: >-
              {"error":{"message":$context.error.messageString,"type":"invalid_request_error",
              "code":"$context.error.responseType","param":null}}
  AuthFunction:
    Type: AWS::Serverless::Function
    Properties:
      CodeUri: fn_auth/
  Table:
    Type: AWS::DynamoDB::Table
    Properties:
      BillingMode: PAY_PER_REQUEST
      AttributeDefinitions:
        - {AttributeName: PK, AttributeType: S}
        - {AttributeName: SK, AttributeType: S}
      KeySchema:
        - {AttributeName: PK, KeyType: HASH}
        - {AttributeName: SK, KeyType: RANGE}
      StreamSpecification:
        StreamViewType: NEW_AND_OLD_IMAGES
      TimeToLiveSpecification:
        AttributeName: expires_at
        Enabled: true
  ByokKey:
    Type: AWS::KMS::Key
    Properties:
      Description: test key
      KeyPolicy:
        Statement:
          - Principal:
              AWS: !Sub arn:${AWS::Partition}:iam::${AWS::AccountId}:root
  ByokKeyAlias:
    Type: AWS::KMS::Alias
    Properties:
      AliasName: !Sub alias/${AWS::StackName}-byok
      TargetKeyId: !Ref ByokKey
  EchoFunction:
    Type: AWS::Serverless::Function
    Properties:
      CodeUri: fn_echo/
      Events:
        Item:
          Type: Api
          Properties:
            RestApiId: !Ref RestApi
            Path: /api/items/{id}
            Method: GET
        Echo:
          Type: Api
          Properties:
            RestApiId: !Ref RestApi
            Path: /api/echo
            Method: ANY
            Auth:
              Authorizer: NONE
        Admin:
          Type: Api
          Properties:
            RestApiId: !Ref RestApi
            Path: /api/admin/{proxy+}
            Method: POST
  TwoFunction:
    Type: AWS::Serverless::Function
    Properties:
      CodeUri: fn_two/
      MemorySize: 1024
      Events:
        Two:
          Type: Api
          Properties:
            RestApiId: !Ref RestApi
            Path: /api/two
            Method: GET
            Auth:
              Authorizer: NONE
        Special:
          Type: Api
          Properties:
            RestApiId: !Ref RestApi
            Path: /api/items/special
            Method: GET
            Auth:
              Authorizer: NONE
  BoomFunction:
    Type: AWS::Serverless::Function
    Properties:
      CodeUri: fn_boom/
      Events:
        Boom:
          Type: Api
          Properties:
            RestApiId: !Ref RestApi
            Path: /api/boom
            Method: GET
            Auth:
              Authorizer: NONE
        Bin:
          Type: Api
          Properties:
            RestApiId: !Ref RestApi
            Path: /api/bin
            Method: GET
            Auth:
              Authorizer: NONE
  SlowFunction:
    Type: AWS::Serverless::Function
    Properties:
      CodeUri: fn_slow/
      Events:
        Slow:
          Type: Api
          Properties:
            RestApiId: !Ref RestApi
            Path: /api/slow
            Method: GET
            Auth:
              Authorizer: NONE
  AggFunction:
    Type: AWS::Serverless::Function
    Properties:
      CodeUri: fn_agg/
      Events:
        Stream:
          Type: DynamoDB
          Properties:
            Stream: !GetAtt Table.StreamArn
            StartingPosition: TRIM_HORIZON
            BatchSize: 2
            FunctionResponseTypes: [ReportBatchItemFailures]
            FilterCriteria:
              Filters:
                - Pattern: '{"eventName": ["INSERT"],
                    "dynamodb": {"NewImage": {"SK": {"S": [{"prefix": "LEDGER#"}]}}}}'
  TickFunction:
    Type: AWS::Serverless::Function
    Properties:
      CodeUri: fn_tick/
      Events:
        Every:
          Type: Schedule
          Properties:
            Schedule: rate(1 minute)
        EveryV2:
          Type: ScheduleV2
          Properties:
            ScheduleExpression: rate(2 minutes)
            Input: '{"job": "sweep"}'
        Off:
          Type: Schedule
          Properties:
            Schedule: rate(1 minute)
            Enabled: false
            Input: '{"job": "disabled"}'
        Cron:
          Type: Schedule
          Properties:
            Schedule: cron(0 12 * * ? *)
            Input: '{"job": "cron"}'
"""

FUNCTIONS: dict[str, dict[str, str]] = {
    "fn_auth": {
        "app.py": """
            import os

            def lambda_handler(event, context):
                with open(os.path.join(os.environ["OUT_DIR"], "auth.log"), "a") as fh:
                    fh.write(event["headers"].get("Authorization", "") + "\\n")
                assert event["type"] == "REQUEST" and "body" not in event
                credential = event["headers"]["Authorization"].split(" ", 1)[1]
                stage = "/".join(event["methodArn"].split("/")[:2])
                kind, _, sub = credential.partition("-")
                if kind == "user":
                    allowed = [stage + "/GET/api/items/*"]
                elif kind == "admin":
                    allowed = [stage + "/*"]
                elif kind == "deny":
                    return {"principalId": sub, "policyDocument": {"Version": "2012-10-17",
                            "Statement": [{"Action": "execute-api:Invoke", "Effect": "Deny",
                                           "Resource": stage + "/*"}]}}
                elif kind == "crash":
                    raise RuntimeError("bug")
                else:
                    raise Exception("Unauthorized")
                return {"principalId": sub, "context": {"user_id": sub, "kind": kind, "n": 3,
                                                        "flag": True},
                        "policyDocument": {"Version": "2012-10-17", "Statement": [
                            {"Action": "execute-api:Invoke", "Effect": "Allow",
                             "Resource": allowed}]}}
        """,
    },
    "fn_echo": {
        "helper.py": 'NAME = "echo"\n',
        "app.py": """
            import json, os
            import helper

            def lambda_handler(event, context):
                env = {k: os.environ.get(k) for k in
                       ("TABLE_NAME", "GREETING", "STREAM_ARN", "MODE", "ALIAS", "BYOK_KMS_KEY_ID",
                        "LITELLM_PROXY_URL", "LITELLM_MASTER_KEY", "LITELLM_MASTER_KEY_PARAM")}
                ctx = {
                    "function_name": context.function_name,
                    "memory_limit_in_mb": context.memory_limit_in_mb,
                    "invoked_function_arn": context.invoked_function_arn,
                    "aws_request_id": context.aws_request_id,
                    "remaining": context.get_remaining_time_in_millis(),
                }
                return {
                    "statusCode": 200,
                    "headers": {"content-type": "application/json", "x-fn": helper.NAME},
                    "multiValueHeaders": {"x-multi": ["a", "b"]},
                    "cookies": ["c1=v1", "c2=v2; Path=/"],
                    "body": json.dumps({"event": event, "context": ctx, "env": env}),
                }
        """,
    },
    "fn_two": {
        "helper.py": 'NAME = "two"\n',
        "app.py": """
            from decimal import Decimal
            import helper

            def lambda_handler(event, context):
                return {"name": helper.NAME, "amount": Decimal("12.500000"),
                        "memory": context.memory_limit_in_mb}
        """,
    },
    "fn_boom": {
        "app.py": """
            import base64

            def lambda_handler(event, context):
                if event["path"].endswith("/bin"):
                    return {"statusCode": 201, "isBase64Encoded": True,
                            "headers": {"content-type": "application/octet-stream"},
                            "body": base64.b64encode(bytes(range(256))).decode()}
                raise RuntimeError("boom")
        """,
    },
    "fn_slow": {
        "app.py": """
            import json, time

            STATE = {}  # module globals, like a Powertools resolver's current_event

            def lambda_handler(event, context):
                STATE["request"] = event["requestContext"]["requestId"]
                time.sleep(0.05)
                same = STATE["request"] == event["requestContext"]["requestId"]
                return {"statusCode": 200, "body": json.dumps({"same": same})}
        """,
    },
    "fn_agg": {
        "app.py": """
            import json, os
            from pathlib import Path

            def lambda_handler(event, context):
                out = Path(os.environ["OUT_DIR"])
                with open(out / "batches.jsonl", "a") as fh:
                    fh.write(json.dumps(event) + "\\n")
                for rec in event["Records"]:
                    image = rec["dynamodb"]["NewImage"]
                    seq = rec["dynamodb"]["SequenceNumber"]
                    marker = out / ("failed-" + image["SK"]["S"].replace("#", "_"))
                    if image.get("fail", {}).get("BOOL") and not marker.exists():
                        marker.write_text(seq)
                        return {"batchItemFailures": [{"itemIdentifier": seq}]}
                    with open(out / "processed.jsonl", "a") as fh:
                        fh.write(json.dumps({"sk": image["SK"]["S"], "seq": seq}) + "\\n")
                return {"batchItemFailures": []}
        """,
    },
    "fn_tick": {
        "app.py": """
            import json, os

            def lambda_handler(event, context):
                with open(os.path.join(os.environ["OUT_DIR"], "ticks.jsonl"), "a") as fh:
                    fh.write(json.dumps(event) + "\\n")
        """,
    },
}


def _write_project(root: Path) -> Path:
    for dirname, files in FUNCTIONS.items():
        (root / dirname).mkdir(parents=True)
        for name, text in files.items():
            (root / dirname / name).write_text(textwrap.dedent(text))
    path = root / "template.yaml"
    path.write_text(TEMPLATE)
    return path


def _wait_for(predicate: Callable[[], Any], timeout: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.02)


def _lines(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _write_project(tmp_path_factory.mktemp("project"))


@pytest.fixture(scope="module")
def out_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("out")


@pytest.fixture(scope="module")
def stack(
    project: Path, out_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LocalStack]:
    authority = JwtAuthority(key_path=tmp_path_factory.mktemp("jwt") / "key.pem")
    with LocalStack(
        project,
        port=0,
        env_overrides={"OUT_DIR": str(out_dir)},
        schedule_scale=0.002,  # rate(1 minute) -> 0.12 s
        authority=authority,
        stream_poll_interval=0.02,
    ) as running:
        yield running


@pytest.fixture(scope="module")
def client(stack: LocalStack) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=stack.base_url, timeout=10) as c:
        yield c


def _bearer(kind: str = "user", sub: str = "alice") -> dict[str, str]:
    """A credential the fake authorizer (fn_auth) understands: user-, admin-, deny-..."""
    return {"Authorization": f"Bearer {kind}-{sub}"}


# ------------------------------------------------------------------ template


def test_template_extraction(project: Path) -> None:
    t = Template(project)
    keys = {(r.method, r.path): r for r in t.routes()}
    assert keys[("GET", "/api/items/{id}")].authorizer == "FakeAuthorizer"
    assert keys[("ANY", "/api/echo")].authorizer is None
    assert keys[("POST", "/api/admin/{proxy+}")].authorizer == "FakeAuthorizer"
    assert keys[("GET", "/api/two")].code_uri == "fn_two/"
    assert keys[("GET", "/api/items/{id}")].route_key == "GET /api/items/{id}"
    (auth,) = t.lambda_authorizers().values()
    assert auth.function_id == "AuthFunction" and auth.identity_headers == ["Authorization"]
    assert auth.ttl == {"Ref": "AuthTtl"}
    (stream,) = t.stream_events()
    assert stream.table_id == "Table" and stream.batch_size == 2
    assert stream.report_batch_item_failures and stream.starting_position == "TRIM_HORIZON"
    assert stream.filters[0]["eventName"] == ["INSERT"]
    schedules = {s.event_name: s for s in t.schedule_events()}
    assert schedules["EveryV2"].input == {"job": "sweep"}
    assert not schedules["Off"].enabled
    assert rate_seconds("rate(1 minute)") == 60
    assert rate_seconds("rate(5 minutes)") == 300
    assert rate_seconds("rate(30 seconds)") == 30
    assert rate_seconds("rate(2 hours)") == 7200
    assert rate_seconds("cron(0 12 * * ? *)") is None
    assert t.tables()["Table"]["StreamSpecification"]["StreamViewType"] == "NEW_AND_OLD_IMAGES"
    assert "ByokKey" in t.kms_keys()


def test_real_template_parses() -> None:
    t = Template(Path(__file__).resolve().parents[2] / "template.yaml")
    routes = {r.route_key: r for r in t.routes()}
    assert routes["GET /api/v1/llm/health"].authorizer is None
    assert routes["POST /api/v1/llm/stripe/webhook"].authorizer is None
    assert routes["GET /api/v1/llm/credits"].authorizer == "CredentialAuthorizer"
    assert t.lambda_authorizers()["CredentialAuthorizer"].function_id == "AuthorizerFunction"
    assert "MISSING_AUTHENTICATION_TOKEN" in t.gateway_responses()


# ------------------------------------------------------------------- routing


def test_event_shape(stack: LocalStack, client: httpx.Client) -> None:
    headers = [
        ("Authorization", _bearer()["Authorization"]),
        ("X-Dup", "1"),
        ("X-Dup", "2"),
        ("User-Agent", "pytest-agent"),
    ]
    resp = client.get("/api/items/abc%20d?x=1&x=2&y=&z=%2F", headers=headers)
    assert resp.status_code == 200, resp.text
    data = resp.json()
    event = data["event"]
    assert event["resource"] == "/api/items/{id}"
    assert event["path"] == "/api/items/abc%20d"
    assert event["httpMethod"] == "GET"
    assert event["queryStringParameters"] == {"x": "2", "y": "", "z": "/"}
    assert event["multiValueQueryStringParameters"] == {"x": ["1", "2"], "y": [""], "z": ["/"]}
    assert event["pathParameters"] == {"id": "abc d"}
    assert event["headers"]["X-Dup"] == "2"  # the last value, the client's casing
    assert event["multiValueHeaders"]["X-Dup"] == ["1", "2"]
    assert event["isBase64Encoded"] is False
    assert event["body"] is None
    ctx = event["requestContext"]
    assert ctx["resourcePath"] == "/api/items/{id}" and ctx["httpMethod"] == "GET"
    assert ctx["identity"] == {"sourceIp": "127.0.0.1", "userAgent": "pytest-agent"}
    assert ctx["accountId"] and ctx["apiId"] and ctx["requestId"] and ctx["domainName"]
    assert isinstance(ctx["requestTimeEpoch"], int) and "/" in ctx["requestTime"]
    # the authorizer's context, values as strings, plus principalId
    auth = ctx["authorizer"]
    assert auth["user_id"] == "alice" and auth["principalId"] == "alice"
    assert auth["n"] == "3" and auth["flag"] == "true"
    assert resp.headers["x-amzn-requestid"] == ctx["requestId"]
    # Lambda context and environment.
    context = data["context"]
    assert context["function_name"].endswith("EchoFunction")
    assert context["memory_limit_in_mb"] == 256
    assert context["invoked_function_arn"].startswith("arn:aws:lambda:")
    assert 0 < context["remaining"] <= 5000
    env = data["env"]
    assert env["TABLE_NAME"] == stack.embedded.table_names["Table"]  # type: ignore[union-attr]
    assert env["GREETING"] == "hello"
    assert env["MODE"] == "development"
    assert env["ALIAS"] == "alias/llmcredits-local-byok"
    assert env["STREAM_ARN"].startswith("arn:aws:dynamodb:") and "/stream/" in env["STREAM_ARN"]
    assert env["BYOK_KMS_KEY_ID"]
    # No LITELLM_PROXY_URL in the environment: the dev upstream answers.
    assert env["LITELLM_PROXY_URL"] == stack.dev_upstream.url
    assert env["LITELLM_MASTER_KEY"]
    assert env["LITELLM_MASTER_KEY_PARAM"] is None  # SSM names are not exported locally
    models = httpx.get(
        env["LITELLM_PROXY_URL"] + "/v1/models",
        headers={"Authorization": "Bearer " + env["LITELLM_MASTER_KEY"]},
    )
    assert models.status_code == 200 and models.headers["x-dev-upstream"] == "true"


def test_response_mapping(client: httpx.Client) -> None:
    resp = client.post("/api/echo", json={"amount": "1.50"})
    assert resp.status_code == 200
    assert resp.headers["x-fn"] == "echo"
    assert resp.headers.get_list("x-multi") == ["a", "b"]
    event = resp.json()["event"]
    assert event["resource"] == "/api/echo" and event["httpMethod"] == "POST"
    assert "authorizer" not in event["requestContext"]
    assert event["isBase64Encoded"] is False
    assert json.loads(event["body"]) == {"amount": "1.50"}


def test_binary_request_body_is_base64(client: httpx.Client) -> None:
    raw = bytes(range(256))
    resp = client.put(
        "/api/echo", content=raw, headers={"content-type": "application/octet-stream"}
    )
    event = resp.json()["event"]
    assert event["isBase64Encoded"] is True
    assert base64.b64decode(event["body"]) == raw
    assert event["httpMethod"] == "PUT"


def test_binary_response_and_a_malformed_one(client: httpx.Client) -> None:
    resp = client.get("/api/bin")
    assert resp.status_code == 201
    assert resp.content == bytes(range(256))
    # A REST proxy integration needs statusCode: a plain dict is a malformed response.
    plain = client.get("/api/two")
    assert plain.status_code == 502, plain.text


def test_static_route_beats_path_parameter(stack: LocalStack, client: httpx.Client) -> None:
    assert client.get("/api/items/special").status_code == 502  # TwoFunction, not Echo
    # Sibling modules named alike (helper.py) stay separate per function.
    assert client.get("/api/items/x", headers=_bearer()).headers["x-fn"] == "echo"


def test_greedy_path(client: httpx.Client) -> None:
    resp = client.post("/api/admin/users/u1/credits", headers=_bearer("admin"))
    assert resp.status_code == 200
    event = resp.json()["event"]
    assert event["pathParameters"] == {"proxy": "users/u1/credits"}
    assert event["requestContext"]["authorizer"]["kind"] == "admin"


def test_one_request_at_a_time_per_execution_environment(stack: LocalStack) -> None:
    results: list[bool] = []

    def call() -> None:
        with httpx.Client(base_url=stack.base_url, timeout=10) as c:
            results.append(c.get("/api/slow").json()["same"])

    threads = [threading.Thread(target=call) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [True] * 8
    assert 2 <= stack.functions.environments("SlowFunction") <= 8


def test_64_concurrent_clients_are_never_refused(stack: LocalStack) -> None:
    """Issue 15 item 8: the listen backlog and one thread per connection."""
    barrier = threading.Barrier(64)
    statuses: list[int] = []

    def call() -> None:
        with httpx.Client(base_url=stack.base_url, timeout=30) as c:
            barrier.wait()
            statuses.append(c.post("/api/echo", json={}).status_code)

    threads = [threading.Thread(target=call) for _ in range(64)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert statuses == [200] * 64


# ------------------------------------------------------------- authorizer


def _auth_calls(out_dir: Path) -> list[str]:
    path = out_dir / "auth.log"
    return path.read_text().splitlines() if path.exists() else []


def test_authorizer_answer_is_cached_per_header_and_reused_for_other_routes(
    stack: LocalStack, client: httpx.Client, out_dir: Path
) -> None:
    header = _bearer("admin", "cache-me")
    before = _auth_calls(out_dir).count(header["Authorization"])
    assert client.get("/api/items/1", headers=header).status_code == 200
    assert client.get("/api/items/2", headers=header).status_code == 200
    assert client.post("/api/admin/x", headers=header).status_code == 200
    assert _auth_calls(out_dir).count(header["Authorization"]) == before + 1
    assert stack.api is not None and stack.api.authorizers["FakeAuthorizer"].ttl == 300


def test_policy_is_evaluated_against_the_method_arn(client: httpx.Client) -> None:
    # a user's policy lists GET /api/items/* only: the cached answer denies the admin route
    assert client.get("/api/items/1", headers=_bearer("user", "bob")).status_code == 200
    denied = client.post("/api/admin/x", headers=_bearer("user", "bob"))
    assert denied.status_code == 403
    assert denied.json()["error"]["code"] == "ACCESS_DENIED"  # DEFAULT_4XX of the template
    assert client.get("/api/items/1", headers=_bearer("deny")).status_code == 403


def test_unauthorized(client: httpx.Client, out_dir: Path) -> None:
    before = len(_auth_calls(out_dir))
    missing = client.get("/api/items/1")  # no identity source: the authorizer is not asked
    assert missing.status_code == 401 and missing.json()["error"]["code"] == "invalid_token"
    assert missing.headers["www-authenticate"] == "Bearer"
    assert len(_auth_calls(out_dir)) == before
    refused = client.get("/api/items/1", headers={"Authorization": "Bearer nobody"})
    assert refused.status_code == 401 and refused.json()["error"]["type"] == (
        "authentication_error")
    crashed = client.get("/api/items/1", headers=_bearer("crash"))
    assert crashed.status_code == 500  # AUTHORIZER_FAILURE, never the function


def test_not_found(client: httpx.Client) -> None:
    for resp in (client.get("/api/nope"), client.delete("/api/two"),
                 client.request("TRACE", "/api/two"), client.get("/api/admin")):
        assert resp.status_code == 404, resp.text
        assert resp.json() == {"error": {"message": "unknown", "type": "invalid_request_error",
                                         "code": "route_not_found", "param": None}}


def test_body_too_large(stack: LocalStack, out_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(gateway, "MAX_REQUEST_BODY_BYTES", 1024)
    with httpx.Client(base_url=stack.base_url, timeout=10) as c:
        ok = c.post("/api/echo", content=b"x" * 1024)
        assert ok.status_code == 200
        resp = c.post("/api/echo", content=b"x" * 1025)
        assert resp.status_code == 413
        assert resp.json()["error"]["code"] == "REQUEST_TOO_LARGE"
    assert DEFAULT_LIMIT == 10 * 1024 * 1024  # the REST API limit, outside this test


def test_handler_exception_is_502(client: httpx.Client) -> None:
    resp = client.get("/api/boom")
    assert resp.status_code == 502  # API Gateway's answer to a function that crashed
    assert resp.json() == {"message": "Internal server error"}  # no DEFAULT_5XX here


def test_streamed_body_is_sent_chunk_by_chunk() -> None:
    """The streaming-ready path of the HTTP server: chunked, each chunk flushed."""
    import socket

    from llmcredits.local.gateway import HttpResponse
    from llmcredits.local.http_server import LocalHttpServer, RequestHandler

    released = threading.Event()

    def chunks() -> Iterator[bytes]:
        yield b"first"
        released.wait(5)
        yield b"second"

    class FakeStack:
        def handle_request(self, **_: Any) -> tuple[HttpResponse, str]:
            return HttpResponse(200, [("content-type", "text/event-stream")],
                                chunks=chunks()), "fn"

    handler = type("H", (RequestHandler,), {"stack": FakeStack()})
    server = LocalHttpServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        with socket.create_connection(server.server_address[:2], timeout=5) as sock:
            sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            got = b""
            while b"first" not in got:
                got += sock.recv(4096)
            assert b"second" not in got and b"transfer-encoding: chunked" in got.lower()
            released.set()
            while not got.endswith(b"0\r\n\r\n"):
                got += sock.recv(4096)
            assert b"6\r\nsecond\r\n" in got
    finally:
        server.shutdown()
        server.server_close()


# ------------------------------------------------------------------- workers


def test_stream_worker_filters_batches_and_retries_partial_failures(
    stack: LocalStack, out_dir: Path
) -> None:
    ddb = stack.dynamodb_client()
    table = stack.embedded.table_names["Table"]  # type: ignore[union-attr]

    def put(sk: str, **extra: Any) -> None:
        item = {"PK": {"S": "stream-user"}, "SK": {"S": sk}, **extra}
        ddb.put_item(TableName=table, Item=item)

    put("ACCOUNT")  # filtered out: SK prefix
    put("LEDGER#1", amount={"N": "1.5"}, blob={"B": b"\x00\x01"})
    put("LEDGER#2", fail={"BOOL": True})  # fails once, then retried from its sequence number
    put("LEDGER#3")
    put("LEDGER#1", amount={"N": "2"})  # MODIFY: filtered out by eventName
    ddb.delete_item(TableName=table, Key={"PK": {"S": "stream-user"}, "SK": {"S": "LEDGER#3"}})

    def done() -> bool:
        return len(_lines(out_dir / "processed.jsonl")) >= 3

    _wait_for(done)
    assert stack.drain_streams(timeout=10)
    processed = _lines(out_dir / "processed.jsonl")
    assert [p["sk"] for p in processed] == ["LEDGER#1", "LEDGER#2", "LEDGER#3"]
    failed_seq = (out_dir / "failed-LEDGER_2").read_text()
    assert processed[1]["seq"] == failed_seq
    batches = _lines(out_dir / "batches.jsonl")
    assert all(1 <= len(b["Records"]) <= 2 for b in batches)
    delivered = [r["dynamodb"]["NewImage"]["SK"]["S"] for b in batches for r in b["Records"]]
    assert "ACCOUNT" not in delivered
    assert delivered.count("LEDGER#1") == 1  # the MODIFY was filtered out
    assert delivered.count("LEDGER#2") == 2  # failed once, delivered again
    # The retry started at the failed record: the next batch holding it starts with it.
    holding = [b for b in batches if failed_seq in _seqs(b)]
    assert len(holding) == 2
    assert _seqs(holding[1])[0] == failed_seq
    record = batches[0]["Records"][0]
    assert record["eventSource"] == "aws:dynamodb"
    assert record["eventName"] == "INSERT"
    assert record["eventSourceARN"] == stack.embedded.resources["Table"].attrs["StreamArn"]  # type: ignore[union-attr]
    assert record["awsRegion"] == "us-east-1"
    dyn = record["dynamodb"]
    assert dyn["Keys"] == {"PK": {"S": "stream-user"}, "SK": {"S": "LEDGER#1"}}
    assert dyn["NewImage"]["amount"] == {"N": "1.5"}
    assert dyn["NewImage"]["blob"] == {"B": base64.b64encode(b"\x00\x01").decode()}
    assert dyn["StreamViewType"] == "NEW_AND_OLD_IMAGES"
    assert isinstance(dyn["ApproximateCreationDateTime"], int)
    assert dyn["SequenceNumber"] and dyn["SizeBytes"] > 0
    assert "OldImage" not in dyn


def _seqs(batch: dict[str, Any]) -> list[str]:
    return [r["dynamodb"]["SequenceNumber"] for r in batch["Records"]]


def test_stream_survives_cancelled_transactions(stack: LocalStack, out_dir: Path) -> None:
    """moto swaps table objects when a transaction is cancelled; the worker keeps up."""
    ddb = stack.dynamodb_client()
    table = stack.embedded.table_names["Table"]  # type: ignore[union-attr]
    with pytest.raises(ddb.exceptions.TransactionCanceledException):
        ddb.transact_write_items(
            TransactItems=[
                {
                    "Put": {
                        "TableName": table,
                        "Item": {"PK": {"S": "tx-user"}, "SK": {"S": "LEDGER#never"}},
                        "ConditionExpression": "attribute_exists(PK)",
                    }
                }
            ]
        )
    ddb.put_item(TableName=table, Item={"PK": {"S": "tx-user"}, "SK": {"S": "LEDGER#after"}})
    _wait_for(lambda: any(p["sk"] == "LEDGER#after" for p in _lines(out_dir / "processed.jsonl")))
    assert all(p["sk"] != "LEDGER#never" for p in _lines(out_dir / "processed.jsonl"))


def test_schedule_workers(stack: LocalStack, out_dir: Path) -> None:
    ticks_file = out_dir / "ticks.jsonl"
    _wait_for(lambda: sum(1 for t in _lines(ticks_file) if t.get("detail-type")) >= 2)
    _wait_for(lambda: any(t == {"job": "sweep"} for t in _lines(ticks_file)))
    ticks = _lines(ticks_file)
    scheduled = next(t for t in ticks if t.get("detail-type"))
    assert scheduled["detail-type"] == "Scheduled Event"
    assert scheduled["source"] == "aws.events"
    assert scheduled["resources"][0].startswith("arn:aws:events:")
    assert not any(t.get("job") in ("disabled", "cron") for t in ticks)
    names = sorted(w.event.event_name for w in stack.schedule_workers())
    assert names == ["Every", "EveryV2"]


# ---------------------------------------------------------------- filtering


@pytest.mark.parametrize(
    ("pattern", "matches"),
    [
        ({"eventName": ["INSERT", "MODIFY"]}, True),
        ({"eventName": ["REMOVE"]}, False),
        ({"dynamodb": {"NewImage": {"SK": {"S": [{"prefix": "LEDGER#"}]}}}}, True),
        ({"dynamodb": {"NewImage": {"SK": {"S": [{"prefix": "HOLD#"}]}}}}, False),
        ({"dynamodb": {"NewImage": {"amount": {"N": [{"numeric": [">", 0, "<=", 5]}]}}}}, True),
        ({"dynamodb": {"NewImage": {"amount": {"N": [{"numeric": [">", 5]}]}}}}, False),
        ({"dynamodb": {"NewImage": {"type": {"S": [{"anything-but": ["usage"]}]}}}}, False),
        ({"dynamodb": {"NewImage": {"type": {"S": [{"anything-but": ["refund"]}]}}}}, True),
        ({"dynamodb": {"OldImage": {"SK": {"S": [{"exists": True}]}}}}, False),
        ({"dynamodb": {"NewImage": {"gone": [{"exists": False}]}}}, True),
        ({"dynamodb": {"NewImage": {"tags": {"SS": ["b"]}}}}, True),
        ({"dynamodb": {"Missing": {"x": ["y"]}}}, False),
    ],
)
def test_filter_patterns(pattern: dict[str, Any], matches: bool) -> None:
    record = {
        "eventName": "INSERT",
        "dynamodb": {
            "NewImage": {
                "SK": {"S": "LEDGER#1"},
                "amount": {"N": "2.5"},
                "type": {"S": "usage"},
                "tags": {"SS": ["a", "b"]},
            }
        },
    }
    assert filter_matches(pattern, record) is matches


# ------------------------------------------------------- embedded serialization


def _race(
    ddb_factory: Callable[[], Any], table: str, threads: int = 16, per_thread: int = 20
) -> int:
    key = {"PK": {"S": "race-user"}, "SK": {"S": "ACCOUNT"}}
    ddb = ddb_factory()
    ddb.put_item(TableName=table, Item={**key, "balance": {"N": "100"}})
    successes = 0
    lock = threading.Lock()
    start = threading.Barrier(threads)

    def debit() -> None:
        nonlocal successes
        client = ddb_factory()
        start.wait()
        for _ in range(per_thread):
            try:
                client.transact_write_items(
                    TransactItems=[
                        {
                            "Update": {
                                "TableName": table,
                                "Key": key,
                                "UpdateExpression": "ADD balance :neg",
                                "ConditionExpression": "balance >= :one",
                                "ExpressionAttributeValues": {
                                    ":neg": {"N": "-1"},
                                    ":one": {"N": "1"},
                                },
                            }
                        }
                    ]
                )
            except client.exceptions.TransactionCanceledException:
                continue
            with lock:
                successes += 1

    workers = [threading.Thread(target=debit) for _ in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    item = ddb.get_item(TableName=table, Key=key, ConsistentRead=True)["Item"]
    assert Decimal(item["balance"]["N"]) == 0
    return successes


def test_embedded_store_serializes_conditional_debits(stack: LocalStack) -> None:
    table = stack.embedded.table_names["Table"]  # type: ignore[union-attr]
    assert _race(stack.dynamodb_client, table) == 100


@pytest.mark.dynamodb_local
def test_dynamodb_endpoint_mode(
    project: Path, tmp_path: Path, dynamodb_local_endpoint: str
) -> None:
    """DYNAMODB_ENDPOINT: the table is created there; the stream worker reads it."""
    out = tmp_path / "out"
    out.mkdir()
    authority = JwtAuthority(key_path=tmp_path / "key.pem")
    with LocalStack(
        project,
        port=0,
        env_overrides={"OUT_DIR": str(out), "DYNAMODB_ENDPOINT": dynamodb_local_endpoint},
        schedule_scale=1000,
        authority=authority,
        stream_poll_interval=0.05,
    ) as s:
        assert s.embedded is not None and not s.embedded.uses_moto_dynamodb
        table = s.embedded.table_names["Table"]
        ddb = s.dynamodb_client()
        assert ddb.meta.endpoint_url.rstrip("/") == dynamodb_local_endpoint.rstrip("/")
        ddb.put_item(TableName=table, Item={"PK": {"S": "ddbl"}, "SK": {"S": "LEDGER#ddbl"}})
        _wait_for(lambda: any(p["sk"] == "LEDGER#ddbl" for p in _lines(out / "processed.jsonl")))
        assert _race(s.dynamodb_client, table) == 100
        with httpx.Client(base_url=s.base_url) as c:
            resp = c.get("/api/items/1", headers=_bearer("user", "u"))
            assert resp.json()["env"]["TABLE_NAME"] == table


def test_a_trailing_slash_reaches_the_resource_without_it_as_on_a_rest_api() -> None:
    """/console/ is served by the /console resource; {proxy+} needs a non-empty rest."""
    from llmcredits.local.template import Route

    def route(path: str) -> Route:
        return Route("GET", path, path, "functions/x/", "app.lambda_handler", None)

    router = gateway.Router([route("/console"), route("/console/{proxy+}")])
    for asked, served, params in (("/console", "/console", {}),
                                  ("/console/", "/console", {}),
                                  ("/console/js/main.js", "/console/{proxy+}",
                                   {"proxy": "js/main.js"})):
        matched = router.match("GET", asked)
        assert matched is not None and (matched[0].path, matched[1]) == (served, params), asked
