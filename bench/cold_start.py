"""Cold-start import benchmark: each function module vs a bare ``import boto3``.

For every function of template.yaml, a fresh interpreter imports ``app`` (the handler
module) the way Lambda does at init, and the time is compared with a fresh interpreter
that only does ``import boto3`` (which every function needs anyway). Median of N runs
each; the ratio is what to read (absolute times depend on this machine).

The environment is built to look like Lambda, not like the dev venv:

- Python of the runtime's version (python3.13; ``LAMBDA_PYTHON`` to choose one).
- ``sys.path`` = function code, then its layers (in the template's order), then a
  "runtime" directory holding only boto3 and its dependencies, then the stdlib: no
  site-packages. The dev venv has pyOpenSSL (a dev tool's dependency), with which
  botocore imports cryptography on ``import boto3``; the Lambda runtime does not.
- Layers built by scripts/package.py for this machine's architecture (same
  requirements, same pruning, .pyc compiled as shipped) under build/coldstart/.
- The environment variables of the function from the template (intrinsics replaced by
  placeholders) plus those Lambda sets (AWS_LAMBDA_FUNCTION_NAME, LAMBDA_TASK_ROOT,
  X-Ray daemon address: Powertools Tracer behaves as in Lambda), and
  PYTHONDONTWRITEBYTECODE (the layers are read-only in Lambda).

Not modelled: Lambda's own bootstrap imports a few stdlib modules before the handler
(this makes our figures slightly pessimistic for both sides), and the layer download.

The "1st req" column adds what the first request of an API route costs on top of the
import (Powertools builds a route's validators on its first request; lazily loaded
modules load then): import time alone can be lowered by moving work into the first
request, this column shows whether it was saved or only moved.

Run: make bench-cold-start  (or .venv/bin/python bench/cold_start.py [--runs 7]
[--only chat_completions] [--importtime chat_completions] [--rebuild] [--import-only])
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))

import package  # noqa: E402

OUT = ROOT / "build" / "coldstart"
TARGET_RATIO = 1.5

#: Modules worth knowing about at cold start (present in sys.modules after the import).
HEAVY = [
    "stripe", "requests", "cryptography", "cryptography.fernet", "llmcredits.dal.kms_envelope",
    "httpx", "OpenSSL", "aws_xray_sdk", "pydantic", "aws_lambda_powertools.event_handler", "yaml",
]

#: Runs in the fresh interpreter: builds Lambda's sys.path, times the import and, given
#: an event, the import plus the first invocation (``first``: CPU ms of both).
CHILD = r"""
import sys, time, json, importlib
paths, module, heavy, event = json.loads(sys.argv[1])
sys.path[:0] = paths
c0, t0 = time.process_time(), time.perf_counter()
handler_module = importlib.import_module(module)
t1, c1 = time.perf_counter(), time.process_time()
result = {"wall": t1 - t0, "cpu": c1 - c0, "present": [m for m in heavy if m in sys.modules]}
if event is not None:
    class Context:
        function_name = "bench"
        function_version = "$LATEST"
        memory_limit_in_mb = 512
        invoked_function_arn = "arn:aws:lambda:us-east-1:123456789012:function:bench"
        aws_request_id = "bench-request"
        log_group_name = log_stream_name = "bench"
        def get_remaining_time_in_millis(self):
            return 30000
    answer = handler_module.lambda_handler(event, Context())
    result["first"] = time.process_time() - c0
    result["status"] = answer.get("statusCode")
print(json.dumps(result))
"""


def first_request_event(props: dict[str, Any]) -> dict[str, Any] | None:
    """A REST proxy event for the function's first API route, with no authorizer context
    (so no handler reaches AWS: it is refused with 401, or 400 for the empty body)."""
    for evt in (props.get("Events") or {}).values():
        if evt.get("Type") != "Api":
            continue
        path, method = evt["Properties"]["Path"], evt["Properties"]["Method"].upper()
        if not path.startswith("/api/"):
            return None
        concrete = "/".join("x" if p.startswith("{") else p for p in path.split("/"))
        params = {p.strip("{}+"): "x" for p in path.split("/") if p.startswith("{")}
        body = "{}" if method in ("POST", "PUT", "PATCH") else None
        return {
            "resource": path, "path": concrete, "httpMethod": method,
            "headers": {"content-type": "application/json", "accept": "application/json"},
            "multiValueHeaders": {}, "queryStringParameters": None,
            "multiValueQueryStringParameters": None, "pathParameters": params or None,
            "stageVariables": None, "body": body, "isBase64Encoded": False,
            "requestContext": {"requestId": "bench-request", "stage": "v1",
                               "httpMethod": method, "path": concrete, "resourcePath": path,
                               "identity": {"sourceIp": "127.0.0.1"}},
        }
    return None


def host_arch() -> str:
    machine = platform.machine().lower()
    return "arm64" if machine in ("aarch64", "arm64") else "x86_64"


def boto3_requirement() -> str:
    """The boto3 the project pins (requirements-dev.txt), as the runtime's stand-in."""
    for line in (ROOT / "requirements-dev.txt").read_text().splitlines():
        if line.strip().startswith("boto3"):
            return line.split("#")[0].strip()
    return "boto3"


def placeholder(value: Any, name: str, parameters: dict[str, Any]) -> str:
    """A parameter's default, or a plausible string for an intrinsic function."""
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and "Ref" in value:
        default = (parameters.get(value["Ref"]) or {}).get("Default")
        return str(default) if default is not None else f"bench-{value['Ref']}"
    if isinstance(value, dict) and "Fn::GetAtt" in value:
        return f"arn:aws:bench:us-east-1:123456789012:{value['Fn::GetAtt'][0]}"
    return f"bench-{name}"


def function_env(template: dict[str, Any], logical: str, task: Path,
                 python_version: str) -> dict[str, str]:
    glob = (template.get("Globals") or {}).get("Function") or {}
    props = template["Resources"][logical].get("Properties") or {}
    parameters = template.get("Parameters") or {}
    env: dict[str, str] = {}
    for source in (glob, props):
        variables = (source.get("Environment") or {}).get("Variables") or {}
        env.update({k: placeholder(v, k, parameters) for k, v in variables.items()})
    memory = props.get("MemorySize") or glob.get("MemorySize") or 128
    env.update({
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "LANG": "en_US.UTF-8",
        "TZ": ":UTC",
        "PYTHONDONTWRITEBYTECODE": "1",
        "AWS_REGION": "us-east-1",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ACCESS_KEY_ID": "bench",
        "AWS_SECRET_ACCESS_KEY": "bench",
        "AWS_SESSION_TOKEN": "bench",
        "AWS_EXECUTION_ENV": f"AWS_Lambda_python{python_version}",
        "AWS_LAMBDA_FUNCTION_NAME": f"llmcredits-{logical}",
        "AWS_LAMBDA_FUNCTION_VERSION": "$LATEST",
        "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": str(memory),
        "AWS_LAMBDA_INITIALIZATION_TYPE": "on-demand",
        "AWS_LAMBDA_LOG_GROUP_NAME": f"/aws/lambda/llmcredits-{logical}",
        "AWS_LAMBDA_RUNTIME_API": "127.0.0.1:9001",
        "AWS_XRAY_DAEMON_ADDRESS": "169.254.79.129:2000",
        "AWS_XRAY_CONTEXT_MISSING": "LOG_ERROR",
        "_AWS_XRAY_DAEMON_ADDRESS": "169.254.79.129",
        "_AWS_XRAY_DAEMON_PORT": "2000",
        "_HANDLER": str(props.get("Handler") or glob.get("Handler") or "app.lambda_handler"),
        "LAMBDA_TASK_ROOT": str(task),
        "LAMBDA_RUNTIME_DIR": str(OUT / "runtime"),
    })
    return env


def prepare(template: Path, rebuild: bool, python: str) -> tuple[
        dict[str, package.Layer], dict[str, package.Function], Path]:
    """Layers for this machine, a boto3-only runtime dir, function code: under OUT."""
    layers, functions = package.read_stack(template)
    runtime = OUT / "runtime"
    stamp = OUT / "stamp.json"
    inputs = {
        "template": template.read_text(),
        "requirements": {n: layer.requirements.read_text() for n, layer in layers.items()
                         if layer.requirements.exists()},
        "boto3": boto3_requirement(),
        "python": python,
    }
    if rebuild or not stamp.exists() or json.loads(stamp.read_text()) != inputs:
        print(f"building the Lambda-like environment under {OUT} ...", file=sys.stderr)
        OUT.mkdir(parents=True, exist_ok=True)
        (runtime / "python").mkdir(parents=True, exist_ok=True)
        reqs = OUT / "runtime-requirements.txt"
        reqs.write_text(boto3_requirement() + "\n")
        version = package.python_version(next(iter(layers.values())).runtime)
        package.pip_install(reqs, runtime / "python", f"python{version}", host_arch())
        package.compile_bytecode(python, runtime / "python")
        stamp.unlink(missing_ok=True)
        package.build_layers(layers, functions, OUT, arch=host_arch(), zips=False,
                             log=lambda m: print(m, file=sys.stderr))
        stamp.write_text(json.dumps(inputs))
    # The layers' llmcredits is refreshed every run: the code changes more than the deps.
    for name, layer in layers.items():
        package.copy_source(layer.content, OUT / "layers" / name / "python")
        package.compile_bytecode(python, OUT / "layers" / name / "python")
    for f in functions.values():
        package.build_function(f, OUT, python)
    return layers, functions, runtime / "python"


def run_once(python: str, paths: list[Path], module: str, env: dict[str, str],
             importtime: bool = False, event: dict[str, Any] | None = None) -> dict[str, Any]:
    cmd = [python, "-I", "-S", *(["-X", "importtime"] if importtime else []), "-c", CHILD,
           json.dumps([[str(p) for p in paths], module, HEAVY, event])]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=paths[0])
    if done.returncode != 0:
        raise SystemExit(f"importing {module} from {paths[0]} failed:\n{done.stderr}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    result["stderr"] = done.stderr
    return result


def print_importtime(stderr: str, top: int) -> None:
    rows: list[tuple[int, int, str]] = []
    for line in stderr.splitlines():
        if not line.startswith("import time:") or "self [us]" in line:
            continue
        own, cumulative, name = line.removeprefix("import time:").split("|", 2)
        rows.append((int(cumulative), int(own), name.rstrip()))
    print(f"{'cumulative ms':>13}  {'self ms':>7}  module (top {top} by cumulative time)")
    for total_us, own_us, module in sorted(rows, reverse=True)[:top]:
        print(f"{total_us / 1000:13.1f}  {own_us / 1000:7.1f}  {module}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--template", type=Path, default=ROOT / "template.yaml")
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--only", action="append", help="function directory name(s)")
    parser.add_argument("--rebuild", action="store_true", help="rebuild the layers")
    parser.add_argument("--importtime", metavar="FUNCTION",
                        help="print python -X importtime's top modules for one function")
    parser.add_argument("--top", type=int, default=30)
    parser.add_argument("--import-only", action="store_true",
                        help="skip the first-request column (import + one invocation)")
    args = parser.parse_args()

    version = package.python_version("python3.13")
    python = package.find_python("python3.13")
    if python is None:
        print("note: no python3.13 found (set LAMBDA_PYTHON); using this interpreter",
              file=sys.stderr)
        python = sys.executable
    else:
        version = "3.13"
    _, functions, runtime = prepare(args.template, args.rebuild, python)
    template = package.load_template(args.template)
    by_dir = {f.code.name: (logical, f) for logical, f in functions.items()}
    wanted = args.only or ([args.importtime] if args.importtime else sorted(by_dir))

    def setup(logical: str, f: package.Function) -> tuple[list[Path], dict[str, str]]:
        task = OUT / "functions" / f.name
        layer_paths = [OUT / "layers" / n / "python" for n in f.layers]
        env = function_env(template, logical, task, version)
        return [task, *layer_paths, runtime], env

    if args.importtime:
        logical, f = by_dir[args.importtime]
        paths, env = setup(logical, f)
        run_once(python, paths, "app", env)  # warm the page cache
        print_importtime(run_once(python, paths, "app", env, importtime=True)["stderr"], args.top)
        return 0

    # Each function's runs alternate with runs of the baseline (a fresh interpreter that
    # imports boto3 and nothing else, same env), so both see the same machine load.
    print(f"python {version} ({python}), {host_arch()}; median of {args.runs} fresh "
          "interpreters each, alternating with as many that only import boto3.")
    print("ms = CPU time of the import (process_time; wall-clock in brackets). The ratio is "
          "CPU time, function / boto3 alone; wall-clock ratios are noisier on a busy machine.")
    if not args.import_only:
        print("1st req = CPU ms of the import plus the first invocation of an API route, "
              "with no authorizer context (a 401, or a 400 for the empty body; the webhook "
              "finds no Stripe secret: 503), an unsampled trace, AWS calls sent to a closed "
              "loopback port; its ratio to boto3 alone and the status answered.")
    header = (f"{'function':24} {'import ms':>16} {'boto3 ms':>16} {'ratio':>5} {'wall':>5}"
              f"{'' if args.import_only else ' 1st req  ratio http'}  heavy modules imported")
    print(header)
    print("-" * len(header))
    worst = 0.0
    for name in wanted:
        logical, f = by_dir[name]
        paths, env = setup(logical, f)
        event = None if args.import_only else first_request_event(
            template["Resources"][logical].get("Properties") or {})
        app_env = env
        if event is not None:
            # Any AWS call would go to a closed loopback port, at once (nothing leaves the
            # machine); the handlers under test refuse before calling AWS anyway.
            app_env = {**env, "AWS_ENDPOINT_URL": "http://127.0.0.1:9", "AWS_MAX_ATTEMPTS": "1",
                       "AWS_XRAY_DAEMON_ADDRESS": "127.0.0.1:2000"}
        run_once(python, paths, "app", app_env, event=event)  # warm the page cache
        app_runs, base_runs = [], []
        for _ in range(args.runs):
            base_runs.append(run_once(python, [runtime], "boto3", env))
            app_runs.append(run_once(python, paths, "app", app_env, event=event))
        app_cpu, base_cpu = (statistics.median(r["cpu"] for r in runs) * 1000
                             for runs in (app_runs, base_runs))
        app_wall, base_wall = (statistics.median(r["wall"] for r in runs) * 1000
                               for runs in (app_runs, base_runs))
        ratio = app_cpu / base_cpu
        worst = max(worst, ratio)
        present = app_runs[-1]["present"]
        first = ""
        if not args.import_only:
            first = " " * 19
            if event is not None:
                first_cpu = statistics.median(r["first"] for r in app_runs) * 1000
                first = f" {first_cpu:7.1f} {first_cpu / base_cpu:5.2f} {app_runs[-1]['status']}"
        print(f"{name:24} {app_cpu:7.1f} ({app_wall:6.1f}) {base_cpu:7.1f} ({base_wall:6.1f}) "
              f"{ratio:5.2f} {app_wall / base_wall:5.2f}{first}  {', '.join(present) or '-'}",
              flush=True)
    print(f"worst ratio {worst:.2f} (goal <= {TARGET_RATIO}; the heavy modules column is what "
          "sys.modules holds after the import)")
    return 0


if __name__ == "__main__":
    os.environ.pop("PYTHONPATH", None)
    sys.exit(main())
