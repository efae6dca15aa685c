"""template.yaml: lint clean, and consistent with the code it deploys."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from tests.support import FUNCTIONS, ROOT, template

BIN = Path(sys.executable).parent


def run(*cmd: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "AWS_DEFAULT_REGION": "us-east-1", "SAM_CLI_TELEMETRY": "0"}
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


def tool(name: str) -> str:
    path = BIN / name
    found = str(path) if path.exists() else shutil.which(name)
    assert found, f"{name} is not installed (make test installs it from requirements-dev.txt)"
    return found


def test_cfn_lint_clean():
    result = run(tool("cfn-lint"), "template.yaml")
    assert result.returncode == 0, result.stdout + result.stderr


def test_sam_validate_lint_clean():
    result = run(tool("sam"), "validate", "--lint", "--template-file", "template.yaml")
    assert result.returncode == 0, result.stdout + result.stderr


def functions() -> dict[str, dict]:
    return {
        name: res
        for name, res in template()["Resources"].items()
        if res["Type"] == "AWS::Serverless::Function"
    }


def test_every_function_has_code_and_every_handler_is_deployed():
    code_uris = set()
    for name, res in functions().items():
        uri = res["Properties"]["CodeUri"]
        code_uris.add(uri.rstrip("/"))
        assert (ROOT / uri / "app.py").is_file(), f"{name}: {uri}app.py missing"
    dirs = {f"functions/{p.name}" for p in FUNCTIONS.iterdir() if (p / "app.py").is_file()}
    assert dirs == code_uris


def test_routes_match_handlers_and_admin_routes_need_the_admin_scope():
    for name, res in functions().items():
        for evt in res["Properties"].get("Events", {}).values():
            if evt["Type"] != "HttpApi":
                continue
            props = evt["Properties"]
            path = props["Path"]
            assert path.startswith("/api/v1/llm/"), name
            source = (ROOT / res["Properties"]["CodeUri"] / "app.py").read_text()
            assert path.replace("{", "<").replace("}", ">").removeprefix("/api/v1/llm") in source
            scopes = props.get("Auth", {}).get("AuthorizationScopes")
            if "/admin/" in path:
                assert scopes == ["llmcredits/admin"], name


def test_least_privilege_no_wildcards_or_managed_crud():
    for name, res in functions().items():
        for policy in res["Properties"].get("Policies", []):
            assert isinstance(policy, dict) and "Statement" in policy, (
                f"{name}: use explicit statements, not SAM policy templates"
            )
            for stmt in policy["Statement"]:
                actions = stmt["Action"] if isinstance(stmt["Action"], list) else [stmt["Action"]]
                assert all("*" not in a for a in actions), name
                assert stmt["Resource"] != "*", name


def test_table_has_pitr_sse_stream_and_ttl():
    props = template()["Resources"]["LedgerTable"]["Properties"]
    assert props["BillingMode"] == "PAY_PER_REQUEST"
    assert props["PointInTimeRecoverySpecification"]["PointInTimeRecoveryEnabled"] is True
    assert props["SSESpecification"]["SSEEnabled"] is True
    assert props["StreamSpecification"]["StreamViewType"] == "NEW_AND_OLD_IMAGES"
    assert props["TimeToLiveSpecification"] == {"AttributeName": "expires_at", "Enabled": True}
