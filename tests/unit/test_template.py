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


def api_events() -> list[tuple[str, dict]]:
    return [(name, evt["Properties"]) for name, res in functions().items()
            for evt in res["Properties"].get("Events", {}).values() if evt["Type"] == "Api"]


def test_every_route_is_on_the_rest_api_and_no_http_api_is_left():
    assert not resources_of("AWS::Serverless::HttpApi")
    events = [evt for res in functions().values()
              for evt in res["Properties"].get("Events", {}).values()]
    assert all(evt["Type"] != "HttpApi" for evt in events)
    assert all(props["RestApiId"] == {"Ref": "RestApi"} for _, props in api_events())


def test_routes_match_handlers_and_the_access_table():
    """The authorizer's route table (domain/access.py) is the template's routes: a route
    missing from it would be denied to everyone; a public one must skip the authorizer."""
    from llmcredits.domain.access import ROUTES, Audience

    table = {(r.method, r.path): r.audience for r in ROUTES}
    for name, props in api_events():
        path, method = props["Path"], props["Method"].upper()
        assert (method, path) in table, f"{method} {path} is not in domain/access.ROUTES"
        if name == "ConsoleFunction":  # static files beside the API, not API routes
            assert path in ("/console", "/console/{proxy+}"), path
            assert table[(method, path)] is Audience.PUBLIC
        else:
            assert path.startswith("/api/v1/llm/"), name
            source = (ROOT / functions()[name]["Properties"]["CodeUri"] / "app.py").read_text()
            assert path.replace("{", "<").replace("}", ">").removeprefix("/api/v1/llm") in source
        public = props.get("Auth", {}).get("Authorizer") == "NONE"
        assert public == (table[(method, path)] is Audience.PUBLIC), f"{method} {path}"
        if "/admin/" in path:
            assert table[(method, path)] is Audience.ADMIN


def test_one_request_authorizer_on_the_authorization_header_with_a_cache_parameter():
    auth = template()["Resources"]["RestApi"]["Properties"]["Auth"]
    assert auth["DefaultAuthorizer"] == "CredentialAuthorizer"
    ((_, spec),) = auth["Authorizers"].items()
    assert spec["FunctionPayloadType"] == "REQUEST"
    assert spec["FunctionArn"] == {"GetAtt": "AuthorizerFunction.Arn"}
    assert spec["Identity"]["Headers"] == ["Authorization"]
    assert spec["Identity"]["ReauthorizeEvery"] == {"Ref": "AuthorizerCacheTtl"}
    assert template()["Parameters"]["AuthorizerCacheTtl"]["Default"] == 300
    env = functions()["AuthorizerFunction"]["Properties"]["Environment"]["Variables"]
    assert env == {"OIDC_ISSUER": {"Ref": "JwtIssuer"}, "OIDC_AUDIENCE": {"Ref": "JwtAudience"}}


def test_gateway_responses_answer_in_the_openai_shape_and_unknown_routes_are_404():
    import json

    responses = template()["Resources"]["RestApi"]["Properties"]["GatewayResponses"]
    expected = {"MISSING_AUTHENTICATION_TOKEN": 404, "RESOURCE_NOT_FOUND": 404,
                "UNAUTHORIZED": 401, "EXPIRED_TOKEN": 401, "ACCESS_DENIED": 403,
                "REQUEST_TOO_LARGE": 413, "THROTTLED": 429, "QUOTA_EXCEEDED": 429,
                "INTEGRATION_TIMEOUT": 504, "DEFAULT_4XX": None, "DEFAULT_5XX": None}
    for kind, status in expected.items():
        spec = responses[kind]
        assert spec.get("StatusCode") == status, kind
        text = spec["ResponseTemplates"]["application/json"]
        body = json.loads(text.replace("$context.error.messageString", '"m"'))
        assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "code",
                                                                  "param"}, kind
        assert "Missing Authentication Token" not in text
    assert "/api/v1/llm/" in responses["MISSING_AUTHENTICATION_TOKEN"]["ResponseTemplates"][
        "application/json"]


def test_stage_has_access_logs_and_an_optional_waf():
    props = template()["Resources"]["RestApi"]["Properties"]
    assert props["AccessLogSetting"]["DestinationArn"] == {"GetAtt": "ApiAccessLogGroup.Arn"}
    assert "$context.requestId" in props["AccessLogSetting"]["Format"]
    waf = template()["Resources"]["RestApiWebAclAssociation"]
    assert waf["Condition"] == "HasWebAcl" and template()["Parameters"]["WebAclArn"][
        "Default"] == ""


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
    assert ("AWS/ApiGateway", "5xx", {"ApiName": {"Sub": "${AWS::StackName}-api"}}) in watched
    assert template()["Resources"]["RestApi"]["Properties"]["Name"] == {
        "Sub": "${AWS::StackName}-api"}
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
    props = template()["Resources"]["RestApi"]["Properties"]
    params = template()["Parameters"]
    settings = props["MethodSettings"]
    (default,) = [m for m in settings if m["ResourcePath"] == "/*" and m["HttpMethod"] == "*"]
    assert default["ThrottlingBurstLimit"] == {"Ref": "ApiThrottlingBurstLimit"}
    assert default["ThrottlingRateLimit"] == {"Ref": "ApiThrottlingRateLimit"}
    # a method setting's path is the route with "/" escaped as "~1"
    routes = {f"{m['HttpMethod']} {m['ResourcePath'][1:].replace('~1', '/')}": m
              for m in settings if m is not default}
    declared = {f"{p['Method']} {p['Path']}" for _, p in api_events()}
    assert set(routes) <= declared, "MethodSettings for a route that does not exist"

    def limit(route: str, key: str) -> int:
        ref = routes[route][key]["Ref"] if route in routes else default[key]["Ref"]
        return int(params[ref]["Default"])

    chat = "POST /api/v1/llm/chat/completions"
    for tight in ("POST /api/v1/llm/credits/purchase", "GET /api/v1/llm/admin/users/{user_id}",
                  "PATCH /api/v1/llm/admin/users/{user_id}",
                  "POST /api/v1/llm/admin/users/{user_id}/credits"):
        for key in ("ThrottlingBurstLimit", "ThrottlingRateLimit"):
            assert limit(tight, key) < limit("GET /api/v1/llm/credits", key) < limit(chat, key)


def test_cors_allows_the_api_headers_and_the_functions_add_the_origin():
    cors = template()["Resources"]["RestApi"]["Properties"]["Cors"]
    assert cors["AllowOrigin"] == {"Sub": "'${CorsAllowedOrigins}'"}
    assert {"Authorization", "Content-Type", "Idempotency-Key", "X-Power-Level"} <= set(
        cors["AllowHeaders"].strip("'").split(","))
    methods = set(cors["AllowMethods"].strip("'").split(","))
    assert {"GET", "POST", "PUT", "PATCH", "DELETE"} <= methods
    assert "AllowCredentials" not in cors  # bearer tokens, never cookies
    env = template()["Globals"]["Function"]["Environment"]["Variables"]
    assert env["CORS_ALLOWED_ORIGINS"] == {"Ref": "CorsAllowedOrigins"}


def test_functions_answer_with_the_cors_headers(monkeypatch):
    """A REST proxy integration adds no CORS headers: the resolver must (make_app)."""
    from llmcredits.http.api import make_app

    from tests.support import Context, event, response_headers

    monkeypatch.setenv("CORS_ALLOWED_ORIGINS", "https://app.example.com")
    app = make_app()  # reads the origin when made (at import, in Lambda)
    app.get("/api/v1/llm/health")(lambda: {"status": "ok"})
    resp = app.resolve(event("GET", "/api/v1/llm/health", sub=None,
                             headers={"Origin": "https://app.example.com"}), Context())
    headers = response_headers(resp)
    assert headers["Access-Control-Allow-Origin"] == "https://app.example.com"
    assert "X-Credits-Charged" in headers["Access-Control-Expose-Headers"]
