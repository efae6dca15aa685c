"""Read a SAM ``template.yaml`` for the local stack.

Loads the template with a YAML loader that understands the CloudFormation short
tags (``!Ref``, ``!GetAtt``, ``!Sub``, ``!If``, ...), and extracts what the local
stack needs: REST API routes, its Lambda authorizers and gateway responses, function
environments, DynamoDB tables, KMS keys and
non-HTTP events (DynamoDB streams, schedules). Intrinsic functions are resolved
against local values by :class:`Resolver`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import yaml

#: Local values of the template parameters that have no sensible default locally.
LOCAL_JWT_ISSUER = "llmcredits-local"
LOCAL_JWT_AUDIENCE = "llmcredits"
LOCAL_PARAMETER_VALUES: dict[str, str] = {
    "JwtIssuer": LOCAL_JWT_ISSUER,
    "JwtAudience": LOCAL_JWT_AUDIENCE,
    # The console signs in at the local issuer's login page (local/oidc_login.py).
    "ConsoleAuthorizationEndpoint": "/oidc/authorize",
    "ConsoleTokenEndpoint": "/oidc/token",
}
LOCAL_STACK_NAME = "llmcredits-local"
LOCAL_ACCOUNT_ID = "123456789012"

HTTP_METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS")


# --------------------------------------------------------------------------- YAML


class CfnLoader(yaml.SafeLoader):
    """SafeLoader that turns CloudFormation short tags into their long form."""


def _construct_node(loader: yaml.SafeLoader, node: yaml.Node) -> Any:
    if isinstance(node, yaml.ScalarNode):
        return loader.construct_scalar(node)
    if isinstance(node, yaml.SequenceNode):
        return loader.construct_sequence(node, deep=True)
    if isinstance(node, yaml.MappingNode):
        return loader.construct_mapping(node, deep=True)
    raise yaml.constructor.ConstructorError(
        None, None, f"unexpected node {node!r}", node.start_mark
    )


def _cfn_tag(loader: yaml.SafeLoader, tag_suffix: str, node: yaml.Node) -> Any:
    value = _construct_node(loader, node)
    if tag_suffix == "Ref":
        return {"Ref": value}
    if tag_suffix == "Condition":
        return {"Condition": value}
    if tag_suffix == "GetAtt" and isinstance(value, str):
        resource, _, attribute = value.partition(".")
        return {"Fn::GetAtt": [resource, attribute]}
    return {f"Fn::{tag_suffix}": value}


CfnLoader.add_multi_constructor("!", _cfn_tag)

# YAML 1.2 booleans only: a key or value like ``Off``/``Yes`` stays a string.
CfnLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.copy().items()
}
CfnLoader.add_implicit_resolver(
    "tag:yaml.org,2002:bool",
    re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
    list("tTfF"),
)


def load_yaml(path: str | Path) -> dict[str, Any]:
    with open(path, encoding="utf-8") as fh:
        data = yaml.load(fh, Loader=CfnLoader)  # noqa: S506 - CfnLoader is a SafeLoader
    if not isinstance(data, dict):
        raise ValueError(f"{path}: not a CloudFormation template")
    return data


# ---------------------------------------------------------------------- intrinsics


class Unresolvable(Exception):
    """An intrinsic function that has no local value."""


@dataclass
class ResourceValues:
    """Local physical values of one resource: ``ref`` for !Ref, ``attrs`` for !GetAtt."""

    ref: str
    attrs: dict[str, str] = field(default_factory=dict)


class Resolver:
    """Resolves CloudFormation intrinsic functions against local values."""

    def __init__(
        self,
        parameters: Mapping[str, str],
        resources: Mapping[str, ResourceValues] | None = None,
        conditions: Mapping[str, Any] | None = None,
        region: str = "us-east-1",
        account_id: str = LOCAL_ACCOUNT_ID,
        stack_name: str = LOCAL_STACK_NAME,
    ) -> None:
        self.parameters = dict(parameters)
        self.resources = dict(resources or {})
        self.conditions = dict(conditions or {})
        self.pseudo = {
            "AWS::Region": region,
            "AWS::AccountId": account_id,
            "AWS::StackName": stack_name,
            "AWS::StackId": (
                f"arn:aws:cloudformation:{region}:{account_id}:stack/{stack_name}/local"
            ),
            "AWS::Partition": "aws",
            "AWS::URLSuffix": "amazonaws.com",
            "AWS::NoValue": "",
        }

    def ref(self, name: str) -> str:
        if name in self.parameters:
            return self.parameters[name]
        if name in self.pseudo:
            return self.pseudo[name]
        if name in self.resources:
            return self.resources[name].ref
        raise Unresolvable(f"!Ref {name}")

    def get_att(self, resource: str, attribute: str) -> str:
        values = self.resources.get(resource)
        if values is None or attribute not in values.attrs:
            raise Unresolvable(f"!GetAtt {resource}.{attribute}")
        return values.attrs[attribute]

    def condition(self, name: str) -> bool:
        if name not in self.conditions:
            raise Unresolvable(f"Condition {name}")
        return bool(self.resolve(self.conditions[name]))

    def _sub(self, template: str, variables: Mapping[str, Any]) -> str:
        def repl(match: re.Match[str]) -> str:
            expr = match.group(1)
            if expr.startswith("!"):
                return "${" + expr[1:] + "}"
            if expr in variables:
                return str(self.resolve(variables[expr]))
            if "." in expr and not expr.startswith("AWS::"):
                resource, _, attribute = expr.partition(".")
                return self.get_att(resource, attribute)
            return self.ref(expr)

        return re.sub(r"\$\{([^}]+)\}", repl, template)

    def resolve(self, value: Any) -> Any:
        """Resolve every intrinsic inside ``value``; raises :class:`Unresolvable`."""
        if isinstance(value, list):
            return [self.resolve(v) for v in value]
        if not isinstance(value, dict):
            return value
        if len(value) == 1:
            ((key, arg),) = value.items()
            if key == "Ref":
                return self.ref(str(arg))
            if key == "Condition":
                return self.condition(str(arg))
            if key == "Fn::GetAtt":
                parts = arg if isinstance(arg, list) else str(arg).split(".", 1)
                return self.get_att(str(self.resolve(parts[0])), str(self.resolve(parts[1])))
            if key == "Fn::Sub":
                if isinstance(arg, list):
                    return self._sub(str(arg[0]), arg[1] if len(arg) > 1 else {})
                return self._sub(str(arg), {})
            if key == "Fn::Join":
                sep, items = arg
                return str(sep).join(str(x) for x in self.resolve(items))
            if key == "Fn::Select":
                index, items = arg
                return self.resolve(items)[int(self.resolve(index))]
            if key == "Fn::Split":
                sep, text = arg
                return str(self.resolve(text)).split(str(sep))
            if key == "Fn::If":
                cond, yes, no = arg
                return self.resolve(yes if self.condition(str(cond)) else no)
            if key == "Fn::Equals":
                a, b = self.resolve(arg)
                return str(a) == str(b)
            if key == "Fn::Not":
                return not self.resolve(arg[0])
            if key == "Fn::And":
                return all(self.resolve(a) for a in arg)
            if key == "Fn::Or":
                return any(self.resolve(a) for a in arg)
            if key == "Fn::Base64":
                import base64

                return base64.b64encode(str(self.resolve(arg)).encode()).decode()
            if key.startswith("Fn::"):
                raise Unresolvable(key)
        return {k: self.resolve(v) for k, v in value.items()}


# ------------------------------------------------------------------------- model


@dataclass
class Route:
    method: str  # upper case, or "ANY"
    path: str  # "/api/v1/llm/x/{id}"
    function_id: str
    code_uri: str
    handler: str
    authorizer: str | None  # None = no auth; else the Lambda authorizer's name
    event_name: str = ""
    api_id: str = ""
    #: ``ResponseTransferMode: RESPONSE_STREAM``: the function streams its answer.
    streaming: bool = False

    @property
    def route_key(self) -> str:
        return f"{self.method} {self.path}"


@dataclass
class LambdaAuthorizerDef:
    """A REST API Lambda authorizer (REQUEST type): its function and identity source."""

    name: str
    function_id: str
    identity_headers: list[str]
    ttl: Any  # raw ReauthorizeEvery (an intrinsic, usually a parameter)


@dataclass
class StreamEvent:
    function_id: str
    event_name: str
    table_id: str | None  # logical id of the table whose stream feeds the function
    stream: Any  # raw Stream property
    batch_size: int = 100
    starting_position: str = "LATEST"
    filters: list[dict[str, Any]] = field(default_factory=list)
    report_batch_item_failures: bool = False
    maximum_retry_attempts: int = -1
    enabled: bool = True


@dataclass
class ScheduleEvent:
    function_id: str
    event_name: str
    expression: str
    input: Any = None
    enabled: bool = True


@dataclass
class FunctionDef:
    logical_id: str
    code_uri: str
    handler: str
    timeout: int
    memory_size: int
    environment: dict[str, Any]  # raw (unresolved) variables, Globals merged
    function_name: str | None = None


def _parse_pattern(pattern: Any) -> dict[str, Any]:
    parsed = json.loads(pattern, parse_float=Decimal) if isinstance(pattern, str) else pattern
    if not isinstance(parsed, dict):
        raise ValueError(f"filter pattern must be a JSON object: {pattern!r}")
    return parsed


class Template:
    """A parsed SAM template."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path).resolve()
        self.root = self.path.parent
        self.data = load_yaml(self.path)
        self.resources: dict[str, dict[str, Any]] = self.data.get("Resources") or {}
        self.globals: dict[str, Any] = (self.data.get("Globals") or {}).get("Function") or {}
        self.conditions: dict[str, Any] = self.data.get("Conditions") or {}

    # -- parameters -------------------------------------------------------
    def local_parameters(self, overrides: Mapping[str, str] | None = None) -> dict[str, str]:
        """Parameter values used locally: known local values, else Default."""
        params: dict[str, str] = {}
        for name, spec in (self.data.get("Parameters") or {}).items():
            if name in LOCAL_PARAMETER_VALUES:
                params[name] = LOCAL_PARAMETER_VALUES[name]
            elif isinstance(spec, dict) and "Default" in spec:
                default = spec["Default"]
                params[name] = (
                    ",".join(map(str, default)) if isinstance(default, list) else str(default)
                )
        params.update(overrides or {})
        return params

    def resolver(
        self,
        resources: Mapping[str, ResourceValues] | None = None,
        parameter_overrides: Mapping[str, str] | None = None,
        region: str = "us-east-1",
    ) -> Resolver:
        return Resolver(
            self.local_parameters(parameter_overrides),
            resources,
            self.conditions,
            region=region,
        )

    # -- resources --------------------------------------------------------
    def resources_of_type(self, *types: str) -> dict[str, dict[str, Any]]:
        return {
            lid: res
            for lid, res in self.resources.items()
            if isinstance(res, dict) and res.get("Type") in types
        }

    def tables(self) -> dict[str, dict[str, Any]]:
        """Logical id → Properties of every AWS::DynamoDB::Table."""
        return {
            lid: res.get("Properties") or {}
            for lid, res in self.resources_of_type("AWS::DynamoDB::Table").items()
        }

    def kms_keys(self) -> dict[str, dict[str, Any]]:
        return {
            lid: res.get("Properties") or {}
            for lid, res in self.resources_of_type("AWS::KMS::Key").items()
        }

    def kms_aliases(self) -> dict[str, dict[str, Any]]:
        return {
            lid: res.get("Properties") or {}
            for lid, res in self.resources_of_type("AWS::KMS::Alias").items()
        }

    def functions(self) -> dict[str, FunctionDef]:
        out: dict[str, FunctionDef] = {}
        for lid, res in self.resources_of_type("AWS::Serverless::Function").items():
            props = res.get("Properties") or {}
            env: dict[str, Any] = dict(
                ((self.globals.get("Environment") or {}).get("Variables")) or {}
            )
            env.update(((props.get("Environment") or {}).get("Variables")) or {})
            code_uri = props.get("CodeUri", self.globals.get("CodeUri", "."))
            out[lid] = FunctionDef(
                logical_id=lid,
                code_uri=str(code_uri) if isinstance(code_uri, str) else ".",
                handler=str(
                    props.get("Handler", self.globals.get("Handler", "app.lambda_handler"))
                ),
                timeout=int(props.get("Timeout", self.globals.get("Timeout", 3))),
                memory_size=int(props.get("MemorySize", self.globals.get("MemorySize", 128))),
                environment=env,
                function_name=props.get("FunctionName")
                if isinstance(props.get("FunctionName"), str)
                else None,
            )
        return out

    def _events(self, function_id: str) -> dict[str, dict[str, Any]]:
        props = (self.resources.get(function_id) or {}).get("Properties") or {}
        return props.get("Events") or {}

    def rest_api_id(self) -> str | None:
        """The (single) AWS::Serverless::Api of the template."""
        apis = self.resources_of_type("AWS::Serverless::Api")
        return next(iter(apis)) if len(apis) == 1 else None

    def rest_api(self) -> dict[str, Any]:
        api_id = self.rest_api_id()
        return ((self.resources.get(api_id) or {}).get("Properties") or {}) if api_id else {}

    def lambda_authorizers(self) -> dict[str, LambdaAuthorizerDef]:
        auth = self.rest_api().get("Auth") or {}
        out: dict[str, LambdaAuthorizerDef] = {}
        for name, spec in (auth.get("Authorizers") or {}).items():
            arn = spec.get("FunctionArn") if isinstance(spec, dict) else None
            target = arn.get("Fn::GetAtt") if isinstance(arn, dict) else None
            if not target:
                continue
            function_id = str(target[0] if isinstance(target, list) else target).split(".")[0]
            identity = spec.get("Identity") or {}
            out[str(name)] = LambdaAuthorizerDef(
                name=str(name), function_id=function_id,
                identity_headers=[str(h) for h in identity.get("Headers") or ["Authorization"]],
                ttl=identity.get("ReauthorizeEvery", 300))
        return out

    def gateway_responses(self) -> dict[str, dict[str, Any]]:
        return dict(self.rest_api().get("GatewayResponses") or {})

    def routes(self) -> list[Route]:
        default_auth = (self.rest_api().get("Auth") or {}).get("DefaultAuthorizer")
        out: list[Route] = []
        for lid, fn in self.functions().items():
            for ev_name, ev in self._events(lid).items():
                if not isinstance(ev, dict) or ev.get("Type") != "Api":
                    continue
                props = ev.get("Properties") or {}
                api_ref = props.get("RestApiId")
                api_id = api_ref.get("Ref") if isinstance(api_ref, dict) else self.rest_api_id()
                authorizer = (props.get("Auth") or {}).get("Authorizer", default_auth)
                if authorizer in (None, "NONE", "AWS_IAM"):
                    authorizer = None
                method = str(props.get("Method", "ANY")).upper()
                if method in ("X-AMAZON-APIGATEWAY-ANY-METHOD", "*"):
                    method = "ANY"
                out.append(
                    Route(
                        method=method,
                        path=str(props.get("Path", "/")),
                        function_id=lid,
                        code_uri=fn.code_uri,
                        handler=fn.handler,
                        authorizer=str(authorizer) if authorizer else None,
                        event_name=ev_name,
                        api_id=str(api_id or ""),
                        streaming=props.get("ResponseTransferMode") == "RESPONSE_STREAM",
                    )
                )
        return out

    def stream_events(self) -> list[StreamEvent]:
        out: list[StreamEvent] = []
        tables = self.tables()
        for lid in self.functions():
            for ev_name, ev in self._events(lid).items():
                if not isinstance(ev, dict) or ev.get("Type") != "DynamoDB":
                    continue
                props = ev.get("Properties") or {}
                stream = props.get("Stream")
                table_id: str | None = None
                if isinstance(stream, dict) and "Fn::GetAtt" in stream:
                    target = stream["Fn::GetAtt"]
                    table_id = str(
                        target[0] if isinstance(target, list) else str(target).split(".")[0]
                    )
                elif len(tables) == 1:
                    table_id = next(iter(tables))
                filters = [
                    _parse_pattern(f["Pattern"])
                    for f in ((props.get("FilterCriteria") or {}).get("Filters") or [])
                    if isinstance(f, dict) and "Pattern" in f
                ]
                out.append(
                    StreamEvent(
                        function_id=lid,
                        event_name=ev_name,
                        table_id=table_id,
                        stream=stream,
                        batch_size=int(props.get("BatchSize", 100)),
                        starting_position=str(props.get("StartingPosition", "LATEST")),
                        filters=filters,
                        report_batch_item_failures="ReportBatchItemFailures"
                        in (props.get("FunctionResponseTypes") or []),
                        maximum_retry_attempts=int(props.get("MaximumRetryAttempts", -1)),
                        enabled=props.get("Enabled", True) not in (False, "false", "False"),
                    )
                )
        return out

    def schedule_events(self) -> list[ScheduleEvent]:
        out: list[ScheduleEvent] = []
        for lid in self.functions():
            for ev_name, ev in self._events(lid).items():
                if not isinstance(ev, dict) or ev.get("Type") not in ("Schedule", "ScheduleV2"):
                    continue
                props = ev.get("Properties") or {}
                if ev["Type"] == "Schedule":
                    expr = props.get("Schedule")
                    enabled = (
                        props.get("Enabled", True) not in (False, "false")
                        and props.get("State", "ENABLED") != "DISABLED"
                    )
                else:
                    expr = props.get("ScheduleExpression")
                    enabled = props.get("State", "ENABLED") != "DISABLED"
                raw_input = props.get("Input")
                parsed_input: Any = None
                if isinstance(raw_input, str):
                    try:
                        parsed_input = json.loads(raw_input)
                    except ValueError:
                        parsed_input = raw_input
                out.append(
                    ScheduleEvent(
                        function_id=lid,
                        event_name=ev_name,
                        expression=str(expr or ""),
                        input=parsed_input,
                        enabled=bool(enabled),
                    )
                )
        return out


_RATE_RE = re.compile(
    r"^rate\(\s*(\d+)\s+(second|seconds|minute|minutes|hour|hours|day|days)\s*\)$"
)
_UNIT_SECONDS = {"second": 1, "minute": 60, "hour": 3600, "day": 86400}


def rate_seconds(expression: str) -> int | None:
    """Seconds between runs of ``rate(N unit)``; ``None`` for other expressions (cron)."""
    match = _RATE_RE.match(expression.strip())
    if not match:
        return None
    unit = match.group(2).rstrip("s")
    return int(match.group(1)) * _UNIT_SECONDS[unit]
