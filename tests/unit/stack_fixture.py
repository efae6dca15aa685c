"""A module-scoped moto table and dev upstream, for test modules with many handler calls.

Like conftest's ``aws`` + ``upstream`` fixtures, but set up once per module (each test
uses its own user names, and ``upstream`` clears the recorded requests and faults).
Use: ``stack, upstream = module_stack()`` at module level.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest


def _stack() -> Iterator[object]:
    import boto3
    from llmcredits import bootstrap
    from llmcredits.local.dev_upstream import DevUpstream
    from moto import mock_aws

    from tests.support import create_table_from_template

    with pytest.MonkeyPatch.context() as env, mock_aws(), DevUpstream(
            master_key="sk-master") as up:
        env.setitem(os.environ, "TABLE_NAME", "llmcredits-test")
        env.setenv("LITELLM_PROXY_URL", up.url)
        env.setenv("LITELLM_MASTER_KEY", "sk-master")
        env.setenv("UPSTREAM_TIMEOUT_SECONDS", "1")
        bootstrap.reset()
        create_table_from_template(boto3.client("dynamodb"), "llmcredits-test")
        yield up
        bootstrap.reset()


def _upstream(stack: Any) -> Any:
    stack.clear()
    return stack


def module_stack() -> tuple[Any, Any]:
    """The fixtures ``stack`` (module scope) and ``upstream`` (per test, cleared)."""
    return pytest.fixture(scope="module", name="stack")(_stack), pytest.fixture(
        name="upstream")(_upstream)
