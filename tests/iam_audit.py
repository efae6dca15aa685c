"""pytest plugin: every AWS call a function makes during the run must be granted by that
function's ``Policies`` in template.yaml (moto and DynamoDB Local enforce no IAM).

Recording: every botocore client, whichever session creates it (boto3's default
session, Powertools' parameter clients, the local stack's), gets a
``provide-client-params`` handler. It sees the operation and its parameters before they
are sent (to moto, DynamoDB Local or anywhere) and attributes the call to the function
whose handler module (``functions/<dir>/...``) is on the calling thread's stack. Calls
made outside any handler (test setup, direct service calls) belong to no function and
are not checked.

At the end of the session the recorded calls are mapped to IAM actions
(``tests/iam_policy.py``) and checked against the template: any call not granted fails
the run (exit status 1) and is listed, with the grants no recorded call used. Only what
ran is checked, so a partial run checks its part. The record is also written to
``.cache/iam-audit.json``.
"""

from __future__ import annotations

import json
import os
import sys
import threading
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import Any

import pytest

from tests.iam_policy import (
    Finding,
    Need,
    check,
    function_policies,
    load_template,
    needs_of_call,
    platform_needs,
)
from tests.iam_policy import unused_grants as find_unused_grants

ROOT = Path(__file__).resolve().parent.parent
FUNCTIONS_DIR = str(ROOT / "functions") + os.sep
TEMPLATE = ROOT / "template.yaml"
REPORT = ROOT / ".cache" / "iam-audit.json"

Calls = dict[str, set[tuple[Need, str]]]


class CallRecorder:
    """Needs per function (``functions/<dir>`` name), each with one call that showed it."""

    def __init__(self) -> None:
        self.calls: Calls = defaultdict(set)
        self._lock = threading.Lock()

    def add(self, function: str, needs: list[Need], call: str) -> None:
        with self._lock:
            self.calls[function].update((need, call) for need in needs)


_session_recorder = CallRecorder()
_recorders: list[CallRecorder] = [_session_recorder]
_function_of_file: dict[str, str | None] = {}


def _running_function(frame: FrameType | None) -> str | None:
    """The functions/<dir> whose code is on this stack (the innermost one)."""
    while frame is not None:
        filename = frame.f_code.co_filename
        function = _function_of_file.get(filename, "")
        if function == "":
            function = None
            if filename.startswith(FUNCTIONS_DIR):
                function = filename[len(FUNCTIONS_DIR):].split(os.sep, 1)[0]
            _function_of_file[filename] = function
        if function:
            return function
        frame = frame.f_back
    return None


def _on_call(params: dict[str, Any], model: Any, **_: Any) -> None:
    function = _running_function(sys._getframe(1))
    if function is None:
        return
    service = model.service_model.signing_name or model.service_model.endpoint_prefix
    needs = needs_of_call(service, model.name, params)
    call = f"{model.service_model.service_name}.{model.name}"
    for recorder in list(_recorders):
        recorder.add(function, needs, call)


def _install() -> None:
    import botocore.session

    original = botocore.session.Session.create_client
    if getattr(original, "_iam_audit", False):
        return

    def create_client(self: Any, *args: Any, **kwargs: Any) -> Any:
        client = original(self, *args, **kwargs)
        client.meta.events.register("provide-client-params", _on_call,
                                    unique_id="llmcredits-iam-audit")
        return client

    create_client._iam_audit = True  # type: ignore[attr-defined]
    botocore.session.Session.create_client = create_client  # type: ignore[method-assign]


@contextmanager
def recording() -> Iterator[CallRecorder]:
    """A recorder of just the calls made inside the block (for tests of the checker)."""
    recorder = CallRecorder()
    _recorders.append(recorder)
    try:
        yield recorder
    finally:
        _recorders.remove(recorder)


# -- pytest hooks ------------------------------------------------------------------------------

_findings: list[Finding] = []
_unused: dict[str, list[str]] = {}


def pytest_configure(config: pytest.Config) -> None:
    _install()


@pytest.hookimpl(tryfirst=True)
def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    calls = _session_recorder.calls
    if not calls:
        return
    template = load_template(TEMPLATE)
    policies = function_policies(template)
    # What Lambda does with the role of a function that ran (stream polling, ...).
    platform = platform_needs(template)
    calls = {fn: needs | platform.get(fn, set()) for fn, needs in calls.items()}
    _findings[:] = check(calls, policies)
    _unused.clear()
    _unused.update(find_unused_grants(calls, policies))
    REPORT.parent.mkdir(exist_ok=True)
    REPORT.write_text(json.dumps({
        "calls": {fn: sorted(f"{need} ({call})" for need, call in needs)
                  for fn, needs in sorted(calls.items())},
        "not_granted": [f"{f.function}: {f.need} ({f.example})" for f in _findings],
        "granted_unused": _unused,
    }, indent=2))
    if _findings and session.exitstatus == 0:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter: Any) -> None:
    calls = _session_recorder.calls
    if not calls:
        return
    tr = terminalreporter
    if _findings:
        tr.section("IAM: calls not granted by template.yaml", sep="=", red=True, bold=True)
        for f in _findings:
            tr.line(f"{f.function}: needs {f.need} (seen in {f.example})", red=True)
        tr.line("Grant them in that function's Policies (or stop making the call).")
    else:
        tr.line(f"IAM: every AWS call of the {len(calls)} functions that ran is granted "
                "by template.yaml.")
    if _unused:
        tr.line("IAM: grants no test used (functions that ran): " + "; ".join(
            f"{fn} {', '.join(actions)}" for fn, actions in _unused.items()))
