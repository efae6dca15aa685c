"""What each function imports at cold start (in a fresh interpreter, Lambda-like env).

- No function but the purchase and webhook imports ``stripe``.
- The chat function imports neither ``stripe`` nor the BYOK envelope
  (``cryptography.fernet``, ``llmcredits.dal.kms_envelope``) until a BYOK key is used.
  ``cryptography`` itself may be loaded in the dev venv: botocore imports it through
  pyOpenSSL, which dev tools install (the Lambda runtime has no pyOpenSSL).

- Cold start (issue 15): no function imports the X-Ray SDK at init (the Tracer is built
  on the first sampled invocation, ``llmcredits.http.tracing``), none creates the
  models that only document responses (``llmcredits.http.openapi_models``), the
  functions that make no AWS call do not import botocore's clients, the scheduled,
  stream and authorizer functions import neither pydantic nor the HTTP resolver, and the
  API models build no validator at import.

Also: scripts/package.py reads template.yaml exactly as PyYAML with CloudFormation tags.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from llmcredits.local.template import load_yaml

from tests.support import ROOT

FUNCTIONS = ROOT / "functions"
PAYMENT_FUNCTIONS = {"credits_purchase_post", "stripe_webhook"}
BYOK_FUNCTIONS = {"chat_completions", "byok_keys_post"}  # call providers, seal/open keys
BYOK_ENVELOPE = ("cryptography.fernet", "llmcredits.dal.kms_envelope")

#: Imports each given function module in turn (fresh interpreter), reporting which of the
#: watched modules each one brought in first.
CHILD = r"""
import importlib.util, json, sys
dirs, watched = json.loads(sys.argv[1])
sys.path.insert(0, dirs[0])  # layers/shared
seen, report = set(), {}
for d in dirs[1:]:
    spec = importlib.util.spec_from_file_location(f"app_{len(report)}", d + "/app.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    new = [m for m in watched if m in sys.modules and m not in seen]
    seen.update(new)
    report[d.rsplit("/", 1)[-1]] = new
print(json.dumps(report))
"""

LAMBDA_ENV = {
    "TABLE_NAME": "ledger",
    "POWERTOOLS_SERVICE_NAME": "llmcredits",
    "POWERTOOLS_METRICS_NAMESPACE": "llmcredits",
    "POWERTOOLS_LOG_LEVEL": "INFO",
    "POWERTOOLS_LOGGER_LOG_EVENT": "false",
    # Powertools Tracer patches (and so imports) libraries only inside Lambda.
    "AWS_LAMBDA_FUNCTION_NAME": "llmcredits-test",
    "LAMBDA_TASK_ROOT": "/var/task",  # Powertools' test for "tracing on" (in Lambda)
    "AWS_EXECUTION_ENV": "AWS_Lambda_python3.13",
    "AWS_XRAY_CONTEXT_MISSING": "LOG_ERROR",
    "AWS_REGION": "us-east-1",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_ACCESS_KEY_ID": "test",
    "AWS_SECRET_ACCESS_KEY": "test",
    "LITELLM_PROXY_URL": "http://127.0.0.1:9",
    "PATH": "/usr/bin:/bin",
}


def imported(function_dirs: list[Path], watched: list[str]) -> dict[str, list[str]]:
    payload = json.dumps([[str(ROOT / "layers" / "shared"), *map(str, function_dirs)], watched])
    done = subprocess.run([sys.executable, "-c", CHILD, payload], env=LAMBDA_ENV, cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def function_dirs() -> list[Path]:
    found = sorted(p.parent for p in FUNCTIONS.glob("*/app.py"))
    assert len(found) > 10 and {p.name for p in found} >= PAYMENT_FUNCTIONS
    return found


def test_chat_imports_neither_stripe_nor_the_byok_envelope():
    report = imported([FUNCTIONS / "chat_completions"], ["stripe", *BYOK_ENVELOPE])
    assert report == {"chat_completions": []}


def test_only_payment_functions_import_stripe():
    others = [d for d in function_dirs() if d.name not in PAYMENT_FUNCTIONS]
    report = imported(others, ["stripe"])
    assert {name: new for name, new in report.items() if new} == {}
    assert set(report) == {d.name for d in others}


def test_no_function_but_byok_post_and_chat_could_need_the_envelope_at_import():
    report = imported(function_dirs(), list(BYOK_ENVELOPE))
    assert {name: new for name, new in report.items() if new} == {}


def test_no_function_imports_the_xray_sdk_at_cold_start():
    report = imported(function_dirs(), ["aws_xray_sdk", "wrapt"])
    assert {name: new for name, new in report.items() if new} == {}


def test_no_function_creates_the_response_documentation_models_at_import():
    report = imported(function_dirs(), ["llmcredits.http.openapi_models"])
    assert {name: new for name, new in report.items() if new} == {}


def test_functions_that_call_no_aws_service_do_not_import_botocore_clients():
    # Before the lazy tracer, patching botocore at init imported its client machinery into
    # every function. (Powertools' own __init__ imports the bare botocore package.)
    report = imported([FUNCTIONS / "health", FUNCTIONS / "openapi"], ["botocore.client"])
    assert report == {"health": [], "openapi": []}


def test_scheduled_stream_and_authorizer_functions_import_no_pydantic_nor_resolver():
    # They validate no request and build no response model (GET /usage's models live in
    # models_usage, not in services.usage, which the aggregator and reconciler share).
    not_http = [FUNCTIONS / n for n in ("authorizer", "hold_sweeper", "settle_worker",
                                         "reconcile", "usage_aggregator")]
    report = imported(not_http, ["pydantic", "aws_lambda_powertools.event_handler"])
    assert {name: new for name, new in report.items() if new} == {}


def test_package_script_reads_the_template_like_pyyaml():
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        import package
    finally:
        sys.path.remove(str(ROOT / "scripts"))
    template = ROOT / "template.yaml"
    assert package.load_template(template) == load_yaml(template)
    layers, functions = package.read_stack(template)
    assert "SharedLayer" in layers
    for function in functions.values():
        assert function.layers[0] == "SharedLayer"
        assert (function.code / "app.py").exists(), function
    # Each function gets what it uses at run time from a layer it has.
    needs = {name: {"aws-lambda-powertools", "pydantic"} for name in PAYMENT_FUNCTIONS}
    needs |= {name: {"httpx", "cryptography"} for name in BYOK_FUNCTIONS}
    for name in PAYMENT_FUNCTIONS:
        needs[name] = needs[name] | {"stripe"}
    for function in functions.values():
        shipped = "".join(
            layers[n].requirements.read_text() for n in function.layers
            if layers[n].requirements.exists()
        )
        for dist in needs.get(function.code.name, {"aws-lambda-powertools", "pydantic"}):
            assert f"\n{dist}" in f"\n{shipped}" or f"\n{dist}[" in f"\n{shipped}", (
                f"{function.name} uses {dist} but none of its layers ships it")


def test_api_models_build_their_validators_on_first_use_not_at_import():
    """Cold start (issue 15): importing the models builds no pydantic validator."""
    code = (
        "import json, sys\n"
        f"sys.path.insert(0, {str(ROOT / 'layers' / 'shared')!r})\n"
        "import pydantic\n"
        "from llmcredits import models, models_byok, models_catalog, models_chat,"
        " models_payments, models_usage\n"
        "from llmcredits.http import openapi_models\n"
        "mods = [models, models_byok, models_catalog, models_chat, models_payments,"
        " models_usage, openapi_models]\n"
        "built = sorted(f'{m.__name__}.{n}' for m in mods for n, c in vars(m).items()\n"
        "    if isinstance(c, type) and issubclass(c, pydantic.BaseModel)\n"
        "    and c.__module__ == m.__name__ and c.__pydantic_complete__)\n"
        "total = sum(1 for m in mods for c in vars(m).values() if isinstance(c, type)\n"
        "    and issubclass(c, pydantic.BaseModel) and c.__module__ == m.__name__)\n"
        "print(json.dumps([built, total]))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    built, total = json.loads(out)
    assert total >= 20 and built == []
