"""Issue 12's must-shows through the local stack (what `make dev` serves), over real HTTP
with the official openai SDK, against the dev upstream's paced mode."""

from __future__ import annotations

import json
import time
from decimal import Decimal

import httpx
import openai
import pytest
from llmcredits.domain.pricing import catalog

API = "/api/v1/llm"
BALANCED = "together_ai/meta-llama/Llama-3.3-70B-Instruct-Turbo"
TIER = "starter"


def paced(pace: str, text: str = "Count") -> list[dict[str, str]]:
    return [{"role": "user", "content": f"{text} [[dev-upstream-pace:{pace}]]"}]


@pytest.fixture(scope="module")
def http(stack):
    with httpx.Client(base_url=stack.base_url + API, timeout=60) as client:
        yield client


def bearer(stack, sub, admin=False):
    return {"Authorization": f"Bearer {stack.issue_token(sub, admin=admin)}"}


def fund(stack, http, user, amount="5"):
    admin = bearer(stack, "ops", admin=True)
    http.get("/credits", headers=bearer(stack, user))
    http.patch(f"/admin/users/{user}", json={"tier": TIER}, headers=admin)
    http.post(f"/admin/users/{user}/credits", json={"amount": amount}, headers=admin)


def sdk(stack, user):
    return openai.OpenAI(base_url=stack.base_url + API, api_key=stack.issue_token(user),
                         max_retries=0, timeout=60)


def usage_entries(stack, http, user):
    return http.get("/credits/history", params={"type": "usage"},
                    headers=bearer(stack, user)).json()["items"]


def credits(stack, http, user):
    return http.get("/credits", headers=bearer(stack, user)).json()


def price(prompt, completion):
    route = catalog().resolve(BALANCED, None, TIER)
    return catalog().charge(route, None, TIER, prompt, completion)


def first_token_time(client, model, messages):
    """Seconds to the first content token and to the last one, via the SDK's stream."""
    started = time.perf_counter()
    first = last = None
    for chunk in client.chat.completions.create(model=model, messages=messages, stream=True):
        if chunk.choices and chunk.choices[0].delta.content:
            last = time.perf_counter() - started
            first = first if first is not None else last
    return first, last


def test_first_token_arrives_as_fast_as_direct_and_is_charged_by_the_formula(stack, http):
    fund(stack, http, "ttft")
    client = sdk(stack, "ttft")
    direct = openai.OpenAI(base_url=stack.dev_upstream.url,
                           api_key=stack.dev_upstream.master_key, max_retries=0)
    route = catalog().resolve(BALANCED, None, TIER)
    messages = paced("20,50")
    first_token_time(client, BALANCED, messages)  # warm both paths (cold starts)
    first_token_time(direct, route.upstream_model, messages)
    # The best of 5 each: the figure without this shared machine's load spikes.
    ours = [first_token_time(client, BALANCED, messages) for _ in range(5)]
    theirs = [first_token_time(direct, route.upstream_model, messages) for _ in range(5)]
    ttft, ttft_direct = min(t for t, _ in ours), min(t for t, _ in theirs)
    assert ttft <= 1.5 * ttft_direct + 0.050, (ttft, ttft_direct)
    # Buffered, the first token would come with the last (~950 ms); streamed, ~1 s apart.
    assert min(last for _, last in ours) - ttft >= 0.8

    before = Decimal(credits(stack, http, "ttft")["balance"])
    stream = client.chat.completions.create(model=BALANCED, messages=messages, stream=True,
                                            stream_options={"include_usage": True})
    chunks = list(stream)
    usage = chunks[-1].usage
    cost = Decimal(str(usage.model_extra["cost"]))
    assert cost == price(usage.prompt_tokens, usage.completion_tokens) > 0
    assert usage.completion_tokens == 20
    assert Decimal(credits(stack, http, "ttft")["balance"]) == before - cost
    assert usage_entries(stack, http, "ttft")[0]["cost"] == f"{cost:.6f}"


def test_the_sdk_loop_works_without_include_usage_and_usage_is_last_with_it(stack, http):
    fund(stack, http, "loop")
    client = sdk(stack, "loop")
    raw = client.chat.completions.with_raw_response.create(
        model=BALANCED, messages=paced("6,5"), stream=True)
    request_id = raw.headers["x-request-id"]
    text = ""
    ids = set()
    for chunk in raw.parse():
        text += chunk.choices[0].delta.content or ""  # the SDK's standard loop
        ids.add(chunk.id)
        assert chunk.object == "chat.completion.chunk" and chunk.usage is None
    assert text == "t1 t2 t3 t4 t5 t6 "
    assert ids == {request_id}  # GET /generations/{request_id} finds it
    assert usage_entries(stack, http, "loop")[0]["metadata"]["request_id"] == request_id

    chunks = list(client.chat.completions.create(model=BALANCED, messages=paced("6,5"),
                                                 stream=True,
                                                 stream_options={"include_usage": True}))
    *content, last = chunks
    assert all(c.choices for c in content)
    assert last.choices == [] and last.usage.completion_tokens == 6
    assert Decimal(str(last.usage.model_extra["cost"])) == price(last.usage.prompt_tokens, 6)


def wait_for_usage(stack, http, user, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        entries = usage_entries(stack, http, user)
        if entries:
            return entries
        time.sleep(0.05)
    raise AssertionError("no usage entry")


def test_a_client_that_leaves_after_5_of_40_chunks_pays_for_what_was_generated(stack, http):
    fund(stack, http, "leaver")
    stack.dev_upstream.clear()
    messages = paced("40,50")
    body = {"model": BALANCED, "messages": messages, "stream": True}
    received = []
    with httpx.Client(timeout=30) as client, client.stream(
            "POST", stack.base_url + API + "/chat/completions", json=body,
            headers=bearer(stack, "leaver")) as resp:
        assert resp.status_code == 200
        for line in resp.iter_lines():
            if '"content":"t' in line:
                received.append(json.loads(line[6:]))
            if len(received) == 5:
                break  # leaving: the connection is closed here
    (entry,) = wait_for_usage(stack, http, "leaver")
    route = catalog().resolve(BALANCED, None, TIER)
    prompt_bound = catalog().prompt_bound(route, messages)
    hold = price(prompt_bound, route.max_tokens)
    charged = Decimal(entry["cost"])
    assert 0 < charged <= hold
    assert entry["metadata"]["partial"] is True
    assert entry["metadata"]["client_disconnected"] is True
    account = credits(stack, http, "leaver")
    assert account["held"] == "0.000000"
    assert Decimal(account["balance"]) == Decimal(5) - charged
    # We stopped reading the upstream: it could not send all 40 tokens.
    (upstream_stream,) = stack.dev_upstream.paced
    deadline = time.monotonic() + 5
    while not upstream_stream.reader_left and time.monotonic() < deadline:
        time.sleep(0.05)
    assert upstream_stream.reader_left and upstream_stream.sent < 40
    assert not upstream_stream.finished


def test_an_upstream_failing_after_3_chunks_ends_with_an_error_event_and_done(stack, http):
    fund(stack, http, "broken")
    messages = paced("10,20,3")
    body = {"model": BALANCED, "messages": messages, "stream": True}
    resp = http.post("/chat/completions", json=body, headers=bearer(stack, "broken"))
    assert resp.status_code == 200
    events = [e[6:] for e in resp.text.split("\n\n") if e.startswith("data: ")]
    assert events[-1] == "[DONE]"
    error = json.loads(events[-2])["error"]
    assert error["code"] == "upstream_stream_interrupted"
    delivered = "".join(json.loads(e)["choices"][0]["delta"].get("content", "")
                        for e in events[:-2])
    assert delivered == "t1 t2 t3 "
    (entry,) = usage_entries(stack, http, "broken")
    route = catalog().resolve(BALANCED, None, TIER)
    # No usage was reported: the prompt bound plus the bytes delivered.
    expected = price(catalog().prompt_bound(route, messages), len(delivered.encode()))
    assert Decimal(entry["cost"]) == expected
    assert entry["metadata"]["partial"] is True
    assert credits(stack, http, "broken")["held"] == "0.000000"


def test_the_sdk_raises_the_error_event_after_the_delivered_chunks(stack, http):
    fund(stack, http, "sdkbroken")
    got = []
    with pytest.raises(openai.APIError, match="failed partway"):
        for chunk in sdk(stack, "sdkbroken").chat.completions.create(
                model=BALANCED, messages=paced("10,5,3"), stream=True):
            got.append(chunk.choices[0].delta.content)
    assert "".join(c or "" for c in got) == "t1 t2 t3 "


def test_errors_before_the_first_byte_keep_their_status(stack, http):
    fund(stack, http, "poor", amount="0")
    body = {"model": BALANCED, "messages": paced("5,5"), "stream": True}
    resp = http.post("/chat/completions", json=body, headers=bearer(stack, "poor"))
    assert resp.status_code == 402 and resp.json()["error"]["code"] == "insufficient_credits"
    fund(stack, http, "upset")
    bad = {**body, "messages": [{"role": "user", "content": "[[dev-upstream-fault:500]]"}]}
    resp = http.post("/chat/completions", json=bad, headers=bearer(stack, "upset"))
    assert resp.status_code == 502 and resp.json()["error"]["type"] == "upstream_error"
    assert credits(stack, http, "upset")["held"] == "0.000000"


@pytest.mark.slow
def test_a_non_streamed_answer_taking_35_s_is_a_200(stack, http):
    fund(stack, http, "patient")
    started = time.monotonic()
    resp = http.post("/chat/completions", json={"model": BALANCED, "messages": paced("7,5000")},
                     headers=bearer(stack, "patient"))
    assert resp.status_code == 200, resp.text
    assert time.monotonic() - started >= 35
    body = resp.json()
    assert body["choices"][0]["message"]["content"] == "t1 t2 t3 t4 t5 t6 t7"
    assert body["id"] == resp.headers["x-request-id"]
    assert resp.headers["x-credits-charged"] == f"{price(body['usage']['prompt_tokens'], 7):.6f}"


def test_a_stream_with_an_idempotency_key_is_replayed_whole_and_charged_once(stack, http):
    fund(stack, http, "idem")
    headers = {**bearer(stack, "idem"), "Idempotency-Key": "stream-1"}
    body = {"model": BALANCED, "messages": paced("8,10"), "stream": True,
            "stream_options": {"include_usage": True}}
    first = http.post("/chat/completions", json=body, headers=headers)
    again = http.post("/chat/completions", json=body, headers=headers)
    assert first.status_code == again.status_code == 200
    assert again.headers["idempotent-replayed"] == "true"
    assert again.text == first.text and first.text.endswith("data: [DONE]\n\n")
    assert len(usage_entries(stack, http, "idem")) == 1


def test_a_stream_the_client_left_is_replayed_as_far_as_it_went(stack, http):
    fund(stack, http, "idem-left")
    headers = {**bearer(stack, "idem-left"), "Idempotency-Key": "stream-2"}
    body = {"model": BALANCED, "messages": paced("40,50"), "stream": True}
    seen = 0
    with httpx.Client(timeout=30) as client, client.stream(
            "POST", stack.base_url + API + "/chat/completions", json=body,
            headers=headers) as resp:
        for line in resp.iter_lines():
            seen += '"content":"t' in line
            if seen == 3:
                break
    (entry,) = wait_for_usage(stack, http, "idem-left")
    deadline = time.monotonic() + 5
    while True:  # the key is stored once the stream has wound down
        again = http.post("/chat/completions", json=body, headers=headers)
        if again.status_code == 200 or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert again.status_code == 200 and again.headers["idempotent-replayed"] == "true"
    events = [e[6:] for e in again.text.split("\n\n") if e.startswith("data: ")]
    assert events[-1] == "[DONE]"
    assert json.loads(events[-2])["error"]["code"] == "client_disconnected"
    assert 3 <= sum('"content":"t' in e for e in events) < 40
    assert len(usage_entries(stack, http, "idem-left")) == 1 and entry["metadata"]["partial"]
