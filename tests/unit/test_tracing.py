"""X-Ray tracing built on the first sampled invocation (llmcredits.http.tracing).

Each case runs in a fresh interpreter: building the real Tracer patches botocore for the
whole process, which the other tests must not inherit.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys

from tests.support import ROOT

SAMPLED = "Root=1-67891233-abcdef012345678912345678;Parent=53995c3f42cd8ad8;Sampled=1"
UNSAMPLED = "Root=1-67891233-abcdef012345678912345678;Parent=53995c3f42cd8ad8;Sampled=0"

#: Invokes a handler wrapped by SampledTracer under each trace header of argv[2], and
#: reports per invocation whether X-Ray was loaded and the subsegment the handler ran in.
CHILD = r"""
import json, os, sys
sys.path.insert(0, sys.argv[1])
from llmcredits.http.tracing import SampledTracer

tracer = SampledTracer(service="svc", patch_modules=("botocore",))
seen = []

@tracer.capture_lambda_handler
def handle(event, context):
    entry = {"xray": "aws_xray_sdk" in sys.modules, "subsegment": None}
    if entry["xray"]:
        from aws_xray_sdk.core import xray_recorder
        sub = xray_recorder.current_subsegment()
        entry["subsegment"] = sub.name if sub else None
        entry["sampled"] = bool(sub and sub.sampled)
        # What Powertools will annotate as ColdStart when this invocation ends.
        from aws_lambda_powertools.tracing import tracer as tracer_module
        entry["cold_start"] = tracer_module.is_cold_start
    seen.append(entry)
    return {"ok": True}

steps = json.loads(sys.argv[2])
for step in steps:
    if step == "patch-httpx":
        tracer.patch(["httpx"])
        continue
    os.environ["_X_AMZN_TRACE_ID"] = step
    assert handle({}, None) == {"ok": True}
report = {"seen": seen, "xray": "aws_xray_sdk" in sys.modules}
if "aws_xray_sdk" in sys.modules:
    import botocore.client, httpx
    report["botocore_patched"] = hasattr(botocore.client.BaseClient._make_api_call, "__wrapped__")
    report["httpx_patched"] = httpx.Client.__name__ == "_InstrumentedClient"
print(json.dumps(report))
"""


def _free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def run(steps: list[str], *, in_lambda: bool = True) -> dict:
    env = {
        "PATH": "/usr/bin:/bin",
        "AWS_REGION": "us-east-1",
        "AWS_LAMBDA_FUNCTION_NAME": "llmcredits-test",
        # Segments go to a loopback port nobody listens on (UDP: nothing waits).
        "AWS_XRAY_DAEMON_ADDRESS": f"127.0.0.1:{_free_udp_port()}",
        "AWS_XRAY_CONTEXT_MISSING": "LOG_ERROR",
    }
    if in_lambda:
        env["LAMBDA_TASK_ROOT"] = "/var/task"  # Powertools traces only in Lambda
    done = subprocess.run(
        [sys.executable, "-c", CHILD, str(ROOT / "layers" / "shared"), json.dumps(steps)],
        env=env, capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_an_unsampled_invocation_never_loads_xray():
    report = run([UNSAMPLED, UNSAMPLED])
    assert report == {"seen": [{"xray": False, "subsegment": None}] * 2, "xray": False}


def test_a_sampled_invocation_is_traced_and_patches_botocore_then_every_one_is():
    report = run([UNSAMPLED, SAMPLED, UNSAMPLED])
    first, second, third = report["seen"]
    assert first == {"xray": False, "subsegment": None}
    # The container's cold invocation ran untraced: this one is not annotated ColdStart.
    assert second == {"xray": True, "subsegment": "## handle", "sampled": True,
                      "cold_start": False}
    # Once built, the tracer wraps every invocation (X-Ray decides what it records).
    assert third["subsegment"] == "## handle" and third["cold_start"] is False
    assert report["botocore_patched"] is True
    assert report["httpx_patched"] is False


def test_the_first_invocation_when_sampled_is_the_cold_start():
    report = run([SAMPLED, SAMPLED])
    assert report["seen"] == [
        {"xray": True, "subsegment": "## handle", "sampled": True, "cold_start": True},
        {"xray": True, "subsegment": "## handle", "sampled": True, "cold_start": False},
    ]


def test_patch_builds_the_tracer_at_once_so_clients_made_next_are_traced():
    report = run(["patch-httpx", UNSAMPLED])
    assert report["httpx_patched"] is True and report["botocore_patched"] is True
    assert report["seen"][0]["subsegment"] == "## handle"


def test_outside_lambda_nothing_is_loaded_even_when_sampled_or_patched():
    report = run(["patch-httpx", SAMPLED], in_lambda=False)
    assert report == {"seen": [{"xray": False, "subsegment": None}], "xray": False}
