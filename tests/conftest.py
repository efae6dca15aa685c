"""Shared fixtures: moto-backed table from template.yaml, handler invocation helpers."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "layers" / "shared"))

pytest_plugins = ["tests.dynamodb_local_fixture", "tests.iam_audit"]

# Never let a test reach real AWS, whatever the developer's shell has.
os.environ.update(
    {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_SESSION_TOKEN": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_REGION": "us-east-1",
        "POWERTOOLS_TRACE_DISABLED": "true",
        "POWERTOOLS_METRICS_DISABLED": "true",
        "POWERTOOLS_SERVICE_NAME": "llmcredits",
    }
)
os.environ.pop("AWS_PROFILE", None)
os.environ.pop("DYNAMODB_ENDPOINT", None)


@pytest.fixture
def aws() -> Iterator[None]:
    """moto in-process with the ledger table created from template.yaml."""
    from llmcredits import bootstrap
    from moto import mock_aws

    from tests.support import create_table_from_template

    with mock_aws():
        os.environ["TABLE_NAME"] = "llmcredits-test"
        bootstrap.reset()
        import boto3

        create_table_from_template(boto3.client("dynamodb"), "llmcredits-test")
        yield
        bootstrap.reset()


@pytest.fixture
def upstream(aws: None, monkeypatch: pytest.MonkeyPatch) -> Iterator[object]:
    """The dev upstream (master key "sk-master", 1 s timeout) behind the chat handler."""
    from llmcredits import bootstrap
    from llmcredits.local.dev_upstream import DevUpstream

    with DevUpstream(master_key="sk-master") as up:
        monkeypatch.setenv("LITELLM_PROXY_URL", up.url)
        monkeypatch.setenv("LITELLM_MASTER_KEY", "sk-master")
        monkeypatch.setenv("UPSTREAM_TIMEOUT_SECONDS", "1")
        bootstrap.reset()
        yield up
        bootstrap.reset()
