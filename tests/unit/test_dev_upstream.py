"""The dev upstream: a deterministic OpenAI-compatible stand-in for the LiteLLM proxy."""

from __future__ import annotations

import json

import httpx
import openai
import pytest
from llmcredits.local.dev_upstream import (
    REPLY_PREFIX,
    DevUpstream,
    count_tokens,
    prompt_tokens,
)

KEY = "sk-dev-master"
MESSAGES = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Hello, upstream! How are you today?"},
]


@pytest.fixture
def up():
    with DevUpstream(master_key=KEY, timeout_delay=5.0) as server:
        yield server


def post(up, body, headers=None, path="/v1/chat/completions", key=KEY, timeout=5.0):
    hdrs = {"Authorization": f"Bearer {key}"} if key else {}
    hdrs.update(headers or {})
    return httpx.post(up.url + path, json=body, headers=hdrs, timeout=timeout)


def sse_events(text):
    assert text.endswith("data: [DONE]\n\n")
    events = [line.removeprefix("data: ") for line in text.split("\n\n") if line]
    assert events[-1] == "[DONE]"
    return [json.loads(e) for e in events[:-1]]


def test_completion_is_deterministic_and_counts_usage(up):
    body = {"model": "groq/llama-3.1-8b-instant", "messages": MESSAGES}
    r1, r2 = post(up, body), post(up, body, path="/chat/completions")
    assert r1.status_code == r2.status_code == 200
    assert r1.headers["X-Dev-Upstream"] == "true"
    a, b = r1.json(), r2.json()
    assert a["object"] == "chat.completion" and a["model"] == "groq/llama-3.1-8b-instant"
    text = a["choices"][0]["message"]["content"]
    assert text == REPLY_PREFIX + "Hello, upstream! How are you today?"
    assert text == b["choices"][0]["message"]["content"] and a["usage"] == b["usage"]
    assert a["choices"][0]["finish_reason"] == "stop"
    usage = a["usage"]
    assert usage["completion_tokens"] == count_tokens(text)
    assert usage["prompt_tokens"] == prompt_tokens(MESSAGES)
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


def test_tokenizer_never_counts_more_tokens_than_bytes():
    samples = ["", "a", "héllo wörld", "🙂🙂🙂", "a,b.c!d", "日本語のテキスト", " \n\t ", "x" * 50]
    for text in samples:
        assert count_tokens(text) <= len(text.encode("utf-8"))
    assert count_tokens("Hello, world!") == 4


def test_max_tokens_truncates_with_length_finish(up):
    body = {"model": "m", "messages": [{"role": "user", "content": "one two three four five"}],
            "max_tokens": 5}
    data = post(up, body).json()
    choice = data["choices"][0]
    assert choice["finish_reason"] == "length"
    assert data["usage"]["completion_tokens"] == 5
    # tokens: "[", "dev", "upstream", "]", "one"
    assert choice["message"]["content"] == "[dev upstream] one"
    body["max_completion_tokens"] = 6
    assert post(up, body).json()["usage"]["completion_tokens"] == 6


def test_streaming_has_chunks_a_usage_chunk_and_done(up):
    body = {"model": "m", "messages": MESSAGES, "stream": True,
            "stream_options": {"include_usage": True}}
    r = post(up, body)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    events = sse_events(r.text)
    assert all(e["object"] == "chat.completion.chunk" for e in events)
    content_chunks = [e for e in events if e["choices"] and e["choices"][0]["delta"].get("content")]
    assert len(content_chunks) >= 3
    text = "".join(e["choices"][0]["delta"].get("content") or "" for e in events if e["choices"])
    assert text == REPLY_PREFIX + "Hello, upstream! How are you today?"
    assert events[-2]["choices"][0]["finish_reason"] == "stop"
    last = events[-1]
    assert last["choices"] == [] and last["usage"]["completion_tokens"] == count_tokens(text)
    assert all(e["usage"] is None for e in events[:-1])
    # without include_usage there is no usage chunk
    plain = sse_events(post(up, {**body, "stream_options": None}).text)
    assert all(e["choices"] and "usage" not in e for e in plain)


def test_master_key_is_checked_and_every_request_recorded(up):
    body = {"model": "m", "messages": MESSAGES, "api_key": "sk-user-byok"}
    for key in (None, "wrong"):
        r = post(up, body, key=key)
        assert r.status_code == 401
        assert set(r.json()["error"]) == {"message", "type", "code", "param"}
    assert httpx.get(up.url + "/v1/models").status_code == 401
    assert post(up, body).status_code == 200
    seen = up.requests
    assert len(seen) == 4
    assert [r.path for r in seen] == ["/v1/chat/completions"] * 2 + ["/v1/models",
                                                                     "/v1/chat/completions"]
    assert seen[-1].headers["authorization"] == f"Bearer {KEY}"
    assert seen[-1].body["messages"] == MESSAGES and seen[-1].api_key == "sk-user-byok"
    up.clear()
    assert up.requests == []


def test_no_master_key_means_no_auth():
    with DevUpstream() as up:
        assert post(up, {"model": "m", "messages": MESSAGES}, key=None).status_code == 200
        models = httpx.get(up.url + "/models").json()
        assert models["object"] == "list"
        assert "openai/gpt-4o" in {m["id"] for m in models["data"]}
    with pytest.raises(RuntimeError):
        _ = up.url


def test_bad_requests_are_openai_errors(up):
    assert post(up, {"messages": MESSAGES}).status_code == 400
    assert post(up, {"model": "m", "messages": []}).status_code == 400
    assert post(up, {"model": "m", "messages": MESSAGES, "max_tokens": 0}).status_code == 400
    r = httpx.post(up.url + "/v1/chat/completions", content=b"{nope",
                   headers={"Authorization": f"Bearer {KEY}"})
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_json"
    assert httpx.get(up.url + "/v1/nothing", headers={"Authorization": f"Bearer {KEY}"}
                     ).status_code == 404


@pytest.mark.parametrize("status", [500, 503, 429])
def test_fault_status(up, status):
    r = post(up, {"model": "m", "messages": MESSAGES},
             headers={"X-Dev-Upstream-Fault": str(status)})
    assert r.status_code == status
    assert r.json()["error"]["code"] == "dev_upstream_fault"


def test_fault_garbage_and_no_usage(up):
    body = {"model": "m", "messages": MESSAGES}
    r = post(up, body, headers={"X-Dev-Upstream-Fault": "garbage"})
    assert r.status_code == 200
    with pytest.raises(ValueError):
        r.json()
    r = post(up, body, headers={"X-Dev-Upstream-Fault": "no-usage"})
    assert r.status_code == 200 and "usage" not in r.json()
    assert r.json()["choices"][0]["message"]["content"].startswith(REPLY_PREFIX)
    stream = {**body, "stream": True, "stream_options": {"include_usage": True}}
    events = sse_events(post(up, stream, headers={"X-Dev-Upstream-Fault": "no-usage"}).text)
    assert all(e["choices"] for e in events)
    assert post(up, body, headers={"X-Dev-Upstream-Fault": "bogus"}).status_code == 400


def test_fault_timeout_outlasts_the_callers_timeout(up):
    with pytest.raises(httpx.ReadTimeout):
        post(up, {"model": "m", "messages": MESSAGES}, timeout=0.3,
             headers={"X-Dev-Upstream-Fault": "timeout", "X-Dev-Upstream-Delay": "2"})
    r = post(up, {"model": "m", "messages": MESSAGES}, timeout=5,
             headers={"X-Dev-Upstream-Delay": "0.2"})
    assert r.status_code == 200  # a delay alone still answers


def test_injected_and_marker_faults(up):
    body = {"model": "m", "messages": MESSAGES}
    up.inject("502", times=2)
    assert [post(up, body).status_code for _ in range(3)] == [502, 502, 200]
    marked = {"model": "m", "messages": [{"role": "user",
                                          "content": "hi [[dev-upstream-fault:500]]"}]}
    assert post(up, marked).status_code == 500
    with pytest.raises(ValueError):
        up.inject("nonsense")


def test_stop_wakes_a_sleeping_timeout_request():
    up = DevUpstream(timeout_delay=60).start()
    try:
        with pytest.raises(httpx.ReadTimeout):
            post(up, {"model": "m", "messages": MESSAGES}, key=None, timeout=0.2,
                 headers={"X-Dev-Upstream-Fault": "timeout"})
    finally:
        up.stop()  # returns promptly although a handler is still "sleeping"


def test_official_openai_sdk_completion_and_stream(up):
    client = openai.OpenAI(base_url=up.url + "/v1", api_key=KEY, max_retries=0)
    done = client.chat.completions.create(model="openai/gpt-4o", messages=MESSAGES)
    assert done.choices[0].message.content == REPLY_PREFIX + "Hello, upstream! How are you today?"
    assert done.usage is not None and done.usage.prompt_tokens == prompt_tokens(MESSAGES)

    stream = client.chat.completions.create(
        model="openai/gpt-4o", messages=MESSAGES, stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == done.choices[0].message.content
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == done.usage.completion_tokens
    assert [m.id for m in client.models.list()]


def test_fault_wrong_model_and_error_in_200(up):
    from llmcredits.local.dev_upstream import WRONG_MODEL

    body = {"model": "groq/llama-3.1-8b-instant", "messages": MESSAGES}
    wrong = post(up, body, headers={"X-Dev-Upstream-Fault": "wrong-model"})
    assert wrong.status_code == 200 and wrong.json()["model"] == WRONG_MODEL
    streamed = post(up, {**body, "stream": True},
                    headers={"X-Dev-Upstream-Fault": "wrong-model"})
    assert {e["model"] for e in sse_events(streamed.text)} == {WRONG_MODEL}
    error = post(up, body, headers={"X-Dev-Upstream-Fault": "error-in-200"})
    assert error.status_code == 200 and error.json()["error"]["code"] == "dev_upstream_fault"
    events = sse_events(post(up, {**body, "stream": True},
                             headers={"X-Dev-Upstream-Fault": "error-in-200"}).text)
    assert [set(e) for e in events] == [{"error"}]


def test_fault_stream_error_and_stream_cut(up):
    from llmcredits.local.dev_upstream import PARTIAL_CHUNKS

    body = {"model": "groq/llama-3.1-8b-instant", "messages": MESSAGES, "stream": True}
    text = post(up, body, headers={"X-Dev-Upstream-Fault": "stream-error"}).text
    assert "[DONE]" not in text
    events = [json.loads(line.removeprefix("data: ")) for line in text.split("\n\n") if line]
    assert len(events) == 1 + PARTIAL_CHUNKS + 1 and "error" in events[-1]
    assert all("choices" in e for e in events[:-1])
    with pytest.raises(httpx.RemoteProtocolError):
        post(up, body, headers={"X-Dev-Upstream-Fault": "stream-cut"})
    with pytest.raises(httpx.RemoteProtocolError):  # a non-streamed answer, cut halfway
        post(up, {**body, "stream": False}, headers={"X-Dev-Upstream-Fault": "stream-cut"})


def test_request_bodies_are_decoded_strictly(up):
    raw = '{"model": "m", "messages": [{"role": "user", "content": "x"}], "temperature": NaN}'
    resp = httpx.post(up.url + "/v1/chat/completions", content=raw, timeout=5.0,
                      headers={"Authorization": f"Bearer {KEY}",
                               "Content-Type": "application/json"})
    assert resp.status_code == 400 and resp.json()["error"]["code"] == "invalid_json"
