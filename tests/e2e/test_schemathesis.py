"""Property-based API fuzzing (schemathesis) through the local stack, against our own document.

Every operation of GET /openapi.json is called with generated requests (valid ones and
invalid ones), authenticated as a test user (an admin token on the admin routes), and
each response must be no server error and conform to the document: a documented status
code, its content type, its headers and its schema.

Bounded: a fixed number of examples per operation, derandomized (the same requests on
every run), no example database, no shrinking. The Stripe webhook is fuzzed without
valid signatures: every such request must be a documented 4xx, never a 5xx.

The schema is loaded from the committed document (checked equal to the served one), not
with ``schemathesis.pytest.from_fixture``: that lazy loader sets ``request.node._nodeid``,
which pytest 9 no longer has.
"""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
from llmcredits.openapi_doc import DOCUMENT_PATH

schemathesis = pytest.importorskip("schemathesis")
from hypothesis import HealthCheck, Phase, settings  # noqa: E402
from schemathesis.checks import not_a_server_error  # noqa: E402
from schemathesis.specs.openapi.checks import (  # noqa: E402
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

API = "/api/v1/llm"
pytestmark = pytest.mark.filterwarnings("ignore:No application metrics:UserWarning")
MAX_EXAMPLES = 25
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]
USER = "fuzz-user"
ADMIN = "fuzz-admin"


@pytest.fixture(scope="module")
def tokens(stack: Any) -> dict[str, str]:
    return {
        "user": stack.issue_token(USER, ttl=3600),
        "admin": stack.issue_token(ADMIN, admin=True, ttl=3600),
    }


# The document the handlers generate and GET /openapi.json serves (a unit test keeps the
# two equal; test_served_document_is_the_one_fuzzed checks it through the stack too). It
# is loaded at import so that pytest can collect one test per operation; the stack's
# random port is given to every call instead.
CONFIG = schemathesis.Config.from_dict({
    "generation": {"max-examples": MAX_EXAMPLES, "deterministic": True, "no-shrink": True,
                   "database": "none"},
    # Wrong-method requests (the REST API answers any method, TRACE included).
    "phases": {"coverage": {"unexpected-methods": ["get", "put", "post", "delete", "patch",
                                                   "options", "trace"]}},
})
schema = schemathesis.openapi.from_path(DOCUMENT_PATH, config=CONFIG)


def test_served_document_is_the_one_fuzzed(stack: Any) -> None:
    served = httpx.get(stack.base_url + API + "/openapi.json", timeout=30)
    assert served.status_code == 200
    assert served.json() == json.loads(DOCUMENT_PATH.read_text())


@schema.parametrize()
@settings(max_examples=MAX_EXAMPLES, derandomize=True, database=None, deadline=None,
          phases=[Phase.explicit, Phase.generate],
          suppress_health_check=list(HealthCheck))
def test_api_conforms_to_its_document(case: Any, stack: Any, tokens: dict[str, str]) -> None:
    token = tokens["admin"] if case.path.startswith(f"{API}/admin/") else tokens["user"]
    headers = {"Authorization": f"Bearer {token}"}
    case.call_and_validate(base_url=stack.base_url, headers=headers, checks=CHECKS,
                           timeout=30)


# Generated requests rarely get past validation (a catalog model id, a funded account, a
# supported provider), so the success responses are also checked with known-good
# requests, through the same checks: what each returns must be what the document says.
KNOWN_GOOD: list[tuple[str, str, str, dict[str, Any]]] = [
    # (token, method, path, Case arguments)
    ("admin", "PATCH", "/admin/users/{user_id}",
     {"path_parameters": {"user_id": "fuzz-happy"}, "body": {"tier": "starter"}}),
    ("admin", "POST", "/admin/users/{user_id}/credits",
     {"path_parameters": {"user_id": "fuzz-happy"}, "headers": {"Idempotency-Key": "st-1"},
      "body": {"amount": "5", "type": "bonus", "reason": "schemathesis"}}),
    ("admin", "GET", "/admin/users/{user_id}", {"path_parameters": {"user_id": "fuzz-happy"}}),
    ("admin", "GET", "/admin/users/{user_id}", {"path_parameters": {"user_id": "nobody-ever"}}),
    ("happy", "GET", "/credits", {}),
    ("happy", "GET", "/models", {"query": {"power_level": "balanced"}}),
    ("happy", "POST", "/chat/completions",
     {"body": {"model": "auto", "messages": [{"role": "user", "content": "Hello"}]}}),
    ("happy", "POST", "/chat/completions",
     {"body": {"model": "auto", "stream": True, "max_tokens": 16,
               "messages": [{"role": "user", "content": "Stream"}]}}),
    ("happy", "POST", "/chat/completions",  # above the starter tier: 403
     {"body": {"model": "openai/gpt-4o", "messages": [{"role": "user", "content": "Hi"}]}}),
    ("broke", "POST", "/chat/completions",  # a starter with no credits: 402
     {"body": {"model": "auto", "power_level": "balanced",
               "messages": [{"role": "user", "content": "Hi"}]}}),
    ("happy", "GET", "/credits/history", {"query": {"limit": 1}}),
    ("happy", "GET", "/usage", {"query": {"days": 7}}),
    ("happy", "PUT", "/credits/monthly-cap", {"body": {"monthly_cap": "50.00"}}),
    ("happy", "PUT", "/credits/monthly-cap", {"body": {"monthly_cap": None}}),
    ("happy", "POST", "/byok/keys",
     {"body": {"provider": "openai", "api_key": "sk-schemathesis-0123456789abcdef"}}),
    ("happy", "GET", "/byok/keys", {}),
    ("happy", "PATCH", "/byok/keys/{provider}",
     {"path_parameters": {"provider": "openai"}, "body": {"enabled": False}}),
    ("happy", "DELETE", "/byok/keys/{provider}", {"path_parameters": {"provider": "openai"}}),
    ("happy", "DELETE", "/byok/keys/{provider}", {"path_parameters": {"provider": "openai"}}),
    ("happy", "PATCH", "/byok/keys/{provider}",
     {"path_parameters": {"provider": "anthropic"}, "body": {"enabled": True}}),
    ("happy", "GET", "/health", {}),
]


def test_known_good_requests_conform(stack: Any) -> None:
    tokens = {"admin": stack.issue_token(ADMIN, admin=True), "happy": stack.issue_token(
        "fuzz-happy"), "broke": stack.issue_token("fuzz-broke")}
    admin = {"Authorization": f"Bearer {tokens['admin']}"}
    httpx.patch(f"{stack.base_url}{API}/admin/users/fuzz-broke", json={"tier": "starter"},
                headers=admin, timeout=30).raise_for_status()
    statuses = []
    for who, method, path, kwargs in KNOWN_GOOD:
        case = schema[API + path][method].Case(**kwargs)
        response = case.call_and_validate(
            base_url=stack.base_url, headers={"Authorization": f"Bearer {tokens[who]}"},
            checks=CHECKS, timeout=30)
        statuses.append((method, path, response.status_code))
    assert [s for _, _, s in statuses] == [200, 201, 200, 404, 200, 200, 200, 200, 403, 402,
                                           200, 200, 200, 200, 201, 200, 200, 204, 404, 404,
                                           200], statuses
