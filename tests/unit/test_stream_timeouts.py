"""The chat route streams on AWS, and its timeouts nest (issue 12 items 1 and 2):
upstream deadline < function timeout (= the REST API's stream limit) < the sweeper's
cutoff for dead holds (and < the Idempotency-Key lease)."""

from __future__ import annotations

import json
import os
import stat
import time
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import httpx
from llmcredits.dal.upstream import LiteLLMUpstream
from llmcredits.errors import UpstreamTimeout
from llmcredits.services.chat import IDEMPOTENCY_LEASE_SECONDS

from tests.support import FUNCTIONS, template

#: Lambda's maximum timeout, and API Gateway's limit for a streamed response.
STREAM_LIMIT_SECONDS = 900
#: API Gateway ends a stream that sent nothing for this long.
STREAM_IDLE_SECONDS = 300


def resource(name: str) -> dict[str, Any]:
    return template()["Resources"][name]["Properties"]


def test_timeouts_nest_upstream_function_sweeper():
    chat = resource("ChatCompletionsFunction")
    upstream = int(chat["Environment"]["Variables"]["UPSTREAM_TIMEOUT_SECONDS"])
    idle = int(chat["Environment"]["Variables"]["UPSTREAM_IDLE_TIMEOUT_SECONDS"])
    assert idle < STREAM_IDLE_SECONDS and idle < upstream
    function = int(chat["Timeout"])
    sweeper = int(resource("HoldSweeperFunction")["Environment"]["Variables"]
                  ["HOLD_MAX_AGE_SECONDS"])
    integration_ms = int(chat["Events"]["Route"]["Properties"]["TimeoutInMillis"])
    assert upstream < function <= STREAM_LIMIT_SECONDS < sweeper
    assert function * 1000 == integration_ms  # the gateway waits as long as the function
    assert function < IDEMPOTENCY_LEASE_SECONDS  # a running request keeps its key
    # the sweeper's own default is the template's value
    source = (FUNCTIONS / "hold_sweeper" / "app.py").read_text()
    assert f'"HOLD_MAX_AGE_SECONDS", "{sweeper}"' in source


def test_the_chat_route_streams_and_the_others_do_not():
    chat = resource("ChatCompletionsFunction")
    assert chat["Events"]["Route"]["Properties"]["ResponseTransferMode"] == "RESPONSE_STREAM"
    assert chat["Handler"] == "app.stream_handler"
    others = [name for name, res in template()["Resources"].items()
              if res["Type"] == "AWS::Serverless::Function" and name != "ChatCompletionsFunction"
              and any("ResponseTransferMode" in (e.get("Properties") or {})
                      for e in (res["Properties"].get("Events") or {}).values())]
    assert others == []  # every other route keeps the buffered 29 s integration


def test_the_exec_wrapper_starts_our_streaming_runtime():
    chat = resource("ChatCompletionsFunction")
    wrapper = chat["Environment"]["Variables"]["AWS_LAMBDA_EXEC_WRAPPER"]
    assert wrapper.startswith("/var/task/")
    script = FUNCTIONS / "chat_completions" / wrapper.removeprefix("/var/task/")
    assert script.is_file() and os.stat(script).st_mode & stat.S_IXUSR
    text = script.read_text()
    assert text.startswith("#!/bin/sh") and "-m llmcredits.lambda_streaming" in text


def test_the_translated_integration_uses_response_streaming_invocations(monkeypatch):
    """What SAM makes of the template (aws-sam-translator, as `sam deploy` runs it)."""
    from samtranslator.translator.transform import transform

    class NoManagedPolicies:
        def load(self) -> dict[str, str]:
            return {}

    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    doc = template()
    for res in doc["Resources"].values():
        props = res.get("Properties") or {}
        for key in ("CodeUri", "ContentUri"):
            if key in props:
                props[key] = "s3://bucket/code.zip"  # the translator wants packaged code
    out = transform(doc, {}, NoManagedPolicies())
    (api,) = [r for r in out["Resources"].values() if r["Type"] == "AWS::ApiGateway::RestApi"]
    paths = api["Properties"]["Body"]["paths"]
    chat = paths["/api/v1/llm/chat/completions"]["post"]["x-amazon-apigateway-integration"]
    assert chat["responseTransferMode"] == "STREAM"
    assert chat["uri"]["Fn::Sub"].endswith(
        "/2021-11-15/functions/${ChatCompletionsFunction.Arn}/response-streaming-invocations")
    models = paths["/api/v1/llm/models"]["get"]["x-amazon-apigateway-integration"]
    assert "responseTransferMode" not in models
    assert models["uri"]["Fn::Sub"].endswith("/invocations")
    json.dumps(out)  # plain data


def test_a_stream_that_outlasts_the_upstream_deadline_is_cut_there():
    def body() -> Iterator[bytes]:
        for i in range(20):
            yield (f'data: {{"model":"m","choices":[{{"index":0,"delta":'
                   f'{{"content":"w{i} "}}}}]}}\n\n').encode()
            time.sleep(0.2)
        yield b"data: [DONE]\n\n"

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, headers={"content-type": "text/event-stream"},
                              content=body())

    up = LiteLLMUpstream("http://upstream.test", None, timeout_seconds=Decimal(1),
                         client=httpx.Client(transport=httpx.MockTransport(handler)))
    started = time.monotonic()
    stream = up.open_stream({"model": "m", "messages": [], "stream": True}, {})
    chunks = list(stream)
    assert time.monotonic() - started < 2  # not the 4 s the upstream would take
    assert 3 <= len(chunks) < 20
    assert isinstance(stream.failure, UpstreamTimeout) and stream.partial


def test_each_upstream_read_waits_at_most_the_idle_timeout(monkeypatch):
    from llmcredits import bootstrap

    chat = resource("ChatCompletionsFunction")["Environment"]["Variables"]
    for name in ("UPSTREAM_TIMEOUT_SECONDS", "UPSTREAM_IDLE_TIMEOUT_SECONDS"):
        monkeypatch.setenv(name, chat[name])
    monkeypatch.setenv("LITELLM_PROXY_URL", "http://upstream.test")
    monkeypatch.setenv("LITELLM_MASTER_KEY", "sk-test")
    bootstrap.reset()
    try:
        upstream = bootstrap.chat_service()._upstream
        assert isinstance(upstream, LiteLLMUpstream)
        timeout = upstream._client.timeout
        assert timeout.read == int(chat["UPSTREAM_IDLE_TIMEOUT_SECONDS"])
        assert upstream._deadline_seconds == int(chat["UPSTREAM_TIMEOUT_SECONDS"])
    finally:
        bootstrap.reset()
