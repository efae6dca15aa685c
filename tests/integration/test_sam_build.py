"""`sam build` from this checkout without Docker (issue 15): the layers build with
BuildMethod: makefile (layers/<name>/Makefile -> scripts/package.py --sam-layer) from
arm64 python3.13 platform wheels, whatever the local Python, so the SharedLayer is the
one `make package` builds (boto3/botocore left to the runtime) and native code is aarch64.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.support import ROOT

pytestmark = pytest.mark.slow

EM_AARCH64 = 183  # ELF e_machine


def sam() -> str:
    beside = Path(sys.executable).parent / "sam"
    found = str(beside) if beside.exists() else shutil.which("sam")
    if not found:
        pytest.skip("aws-sam-cli is not installed (requirements-dev.txt)")
    return found


def package_module() -> Any:
    spec = importlib.util.spec_from_file_location("package", ROOT / "scripts" / "package.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["package"] = module
    spec.loader.exec_module(module)
    return module


def tree_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def elf_machine(path: Path) -> int:
    header = path.read_bytes()[:20]
    assert header[:4] == b"\x7fELF", path
    return int.from_bytes(header[18:20], "little")


def test_sam_build_without_docker_matches_make_package(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "DOCKER_HOST"}
    env["DOCKER_HOST"] = "unix:///nonexistent/docker.sock"  # a Docker build would fail
    env.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    env["SAM_CLI_TELEMETRY"] = "0"
    result = subprocess.run(
        [sam(), "build", "--template-file", str(ROOT / "template.yaml"),
         "--build-dir", str(tmp_path / "sam"), "--cache-dir", str(tmp_path / "sam-cache")],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600, check=False,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]

    shared = tmp_path / "sam" / "SharedLayer" / "python"
    assert (shared / "llmcredits" / "__init__.py").exists()
    assert (shared / "pydantic_core").is_dir() and (shared / "aws_lambda_powertools").is_dir()
    for runtime_dist in ("boto3", "botocore"):  # in the Lambda runtime
        assert not (shared / runtime_dist).exists(), runtime_dist
    assert not (shared / "Makefile").exists() and not (shared / "requirements.txt").exists()

    package = package_module()
    layers, functions = package.read_stack(ROOT / "template.yaml")
    built = package.build_layers(layers, functions, tmp_path / "package", zips=False,
                                 log=lambda *_: None)
    expected = built.layer_sizes["SharedLayer"][0]
    got = tree_size(shared)
    assert abs(got - expected) <= expected * 0.10, (got, expected)

    native = [p for layer in ("SharedLayer", "StripeLayer", "ProviderLayer")
              for p in (tmp_path / "sam" / layer).rglob("*.so")]
    assert any("pydantic_core" in str(p) for p in native)
    wrong = [str(p) for p in native if elf_machine(p) != EM_AARCH64]
    assert not wrong, wrong
