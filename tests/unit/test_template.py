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
            if name == "ConsoleFunction":  # static files beside the API, not API routes
                assert path in ("/console/", "/console/{proxy+}"), path
                assert props["Auth"] == {"Authorizer": "NONE"}
                continue
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


# ------------------------------------------------------------------ observability


def resources_of(type_: str) -> dict[str, dict]:
    return {name: res for name, res in template()["Resources"].items() if res["Type"] == type_}


def alarms() -> dict[str, dict]:
    return {name: res["Properties"] for name, res in resources_of("AWS::CloudWatch::Alarm").items()}


def alarm_metrics(props: dict) -> list[tuple[str, str, dict]]:
    """(namespace, metric name, dimensions) of an alarm, plain or metric math."""
    def dims(raw: list[dict]) -> dict:
        return {d["Name"]: d["Value"] for d in raw or []}

    if "MetricName" in props:
        return [(props["Namespace"], props["MetricName"], dims(props.get("Dimensions")))]
    out = []
    for m in props.get("Metrics", []):
        if "MetricStat" in m:
            metric = m["MetricStat"]["Metric"]
            out.append((metric["Namespace"], metric["MetricName"], dims(metric.get("Dimensions"))))
    return out


def test_alarms_cover_5xx_errors_throttles_iterator_age_dlq_sweeper_and_reconcile():
    watched = [m for props in alarms().values() for m in alarm_metrics(props)]
    names = {(ns, name) for ns, name, _ in watched}
    assert ("AWS/ApiGateway", "5xx", {"ApiId": {"Ref": "HttpApi"}}) in watched
    for fn in ("ChatCompletionsFunction", "StripeWebhookFunction", "UsageAggregatorFunction"):
        for metric in ("Errors", "Throttles"):
            assert ("AWS/Lambda", metric, {"FunctionName": {"Ref": fn}}) in watched, (fn, metric)
    assert ("AWS/Lambda", "IteratorAge",
            {"FunctionName": {"Ref": "UsageAggregatorFunction"}}) in watched
    assert ("AWS/SQS", "ApproximateNumberOfMessagesVisible") in names
    assert ("llmcredits", "StaleHoldsReleased") in names  # emitted by the hold sweeper
    assert ("llmcredits", "ReconcileDiscrepancies") in names
    # custom metrics carry Powertools' service dimension: an alarm without it sees nothing
    for props in alarms().values():
        for ns, _, d in alarm_metrics(props):
            if ns == "llmcredits":
                assert d == {"service": "llmcredits"}


def test_every_alarm_notifies_the_topic_and_email_is_optional():
    for name, props in alarms().items():
        assert props.get("AlarmActions") == [{"Ref": "AlarmTopic"}], name
        assert props.get("TreatMissingData") == "notBreaching", name
    assert "AlarmTopic" in resources_of("AWS::SNS::Topic")
    (sub,) = resources_of("AWS::SNS::Subscription").values()
    assert sub["Condition"] == "HasAlarmEmail"
    assert template()["Parameters"]["AlarmEmail"]["Default"] == ""


def test_dashboard_shows_the_service_at_a_glance():
    import json
    import re

    (dash,) = resources_of("AWS::CloudWatch::Dashboard").values()
    body = dash["Properties"]["DashboardBody"]["Sub"]
    widgets = json.loads(re.sub(r"\$\{[^}]+\}", "X", body))["widgets"]
    shown = {m[1] for w in widgets if w["type"] == "metric"
             for m in w["properties"]["metrics"] if isinstance(m[0], str)}
    for metric in ("CreditsChargedMicros", "ChatRequests", "PaymentRequired", "UpstreamLatency",
                   "HoldsReleased", "StaleHoldsReleased", "5xx", "Throttles", "IteratorAge"):
        assert metric in shown, metric
    # every ${...} in the body is a parameter, a resource or a pseudo parameter
    known = set(template()["Resources"]) | set(template()["Parameters"])
    for ref in re.findall(r"\$\{([^}]+)\}", body):
        assert ref.startswith("AWS::") or ref.split(".")[0] in known, ref


def test_throttling_defaults_and_tighter_admin_and_purchase_routes():
    props = template()["Resources"]["HttpApi"]["Properties"]
    params = template()["Parameters"]
    default = props["DefaultRouteSettings"]
    assert default["ThrottlingBurstLimit"] == {"Ref": "ApiThrottlingBurstLimit"}
    assert default["ThrottlingRateLimit"] == {"Ref": "ApiThrottlingRateLimit"}
    routes = props["RouteSettings"]
    declared = {f"{e['Properties']['Method']} {e['Properties']['Path']}"
                for res in functions().values()
                for e in res["Properties"].get("Events", {}).values() if e["Type"] == "HttpApi"}
    assert set(routes) <= declared, "RouteSettings for a route that does not exist"

    def limit(route: str, key: str) -> int:
        ref = routes[route][key]["Ref"] if route in routes else default[key]["Ref"]
        return int(params[ref]["Default"])

    chat = "POST /api/v1/llm/chat/completions"
    for tight in ("POST /api/v1/llm/credits/purchase", "GET /api/v1/llm/admin/users/{user_id}",
                  "PATCH /api/v1/llm/admin/users/{user_id}",
                  "POST /api/v1/llm/admin/users/{user_id}/credits"):
        for key in ("ThrottlingBurstLimit", "ThrottlingRateLimit"):
            assert limit(tight, key) < limit("GET /api/v1/llm/credits", key) < limit(chat, key)


def test_cors_allows_the_api_headers_and_exposes_the_credit_headers():
    cors = template()["Resources"]["HttpApi"]["Properties"]["CorsConfiguration"]["If"]
    condition, config, otherwise = cors
    assert condition == "HasCorsOrigins" and otherwise == {"Ref": "AWS::NoValue"}
    assert config["AllowOrigins"] == {"Split": [",", {"Ref": "CorsAllowedOrigins"}]}
    assert {"Authorization", "Content-Type", "Idempotency-Key", "X-Power-Level"} <= set(
        config["AllowHeaders"])
    assert {"X-Credits-Charged", "X-Credits-Remaining", "Retry-After"} <= set(
        config["ExposeHeaders"])
    assert {"GET", "POST", "PUT", "PATCH", "DELETE"} <= set(config["AllowMethods"])
    assert not config.get("AllowCredentials")  # bearer tokens, never cookies
