"""The whole local stack (what `make dev` serves) on a free port, per test module."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from llmcredits.local.server import LocalStack

from tests.support import ROOT


@pytest.fixture(scope="module")
def stack() -> Iterator[LocalStack]:
    with LocalStack(ROOT / "template.yaml", port=0) as running:
        yield running
