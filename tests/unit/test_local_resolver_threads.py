"""The local runtime runs concurrent invocations in threads of one process; Powertools
keeps the current request on the resolver class. Each invocation must see its own."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from aws_lambda_powertools.event_handler import APIGatewayRestResolver
from llmcredits.local.lambda_runtime import isolate_resolver_state

from tests.support import event


def test_concurrent_invocations_each_read_their_own_request() -> None:
    isolate_resolver_state()
    both_resolving = threading.Barrier(2, timeout=10)
    apps = [APIGatewayRestResolver(), APIGatewayRestResolver()]  # two environments

    for app in apps:
        @app.get("/who")
        def who(app: APIGatewayRestResolver = app) -> dict[str, Any]:
            both_resolving.wait()  # the other request has been resolved meanwhile
            return {"request_id": app.current_event.request_context.request_id}

    def call(index: int) -> str:
        raw = event("GET", "/who", sub=f"u{index}")
        raw["requestContext"]["requestId"] = f"req-{index}"
        answer = apps[index].resolve(raw, None)
        return str(answer["body"])

    with ThreadPoolExecutor(2) as pool:
        bodies = list(pool.map(call, range(2)))
    assert ['"req-0"' in bodies[0], '"req-1"' in bodies[1]] == [True, True], bodies
