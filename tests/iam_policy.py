"""What each function's IAM policy in template.yaml grants, and whether a call is granted.

moto and DynamoDB Local do not enforce IAM, so a function that calls an action its role
lacks passes every test and fails in AWS (GET /credits rolling an account into a new
month with UpdateItem was one). ``tests/iam_audit.py`` records the AWS calls each
function makes while the suite runs; this module turns them into IAM actions and checks
them against the ``Policies`` of that function in the template.

Calls to IAM actions:
- most operations are ``<prefix>:<Operation>`` (``dynamodb:GetItem``, ``kms:Decrypt``);
- DynamoDB transactions are authorised per item, by the item-level actions
  (https://docs.aws.amazon.com/amazondynamodb/latest/developerguide/transaction-apis-iam.html):
  ``TransactWriteItems`` needs ``PutItem``/``UpdateItem``/``DeleteItem``/``ConditionCheckItem``
  for the kinds of item it carries, ``TransactGetItems`` needs ``GetItem``.

Resources are checked for DynamoDB (table vs. index vs. stream: a Query on a GSI needs
``<table arn>/index/<name>``); other services' resources are named by template
parameters that the tests do not reproduce, so for them only the action is checked.

Policies understood: inline ``Statement`` documents (Allow and Deny, ``Action`` with
wildcards, ``Resource`` as ``!GetAtt``, ``!Sub``, ``!Ref`` or strings) and the SAM policy
templates listed in ``SAM_POLICY_TEMPLATES``. Anything else (a managed policy by name or
ARN) grants nothing here: add it to the table if a function starts using one.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any

import yaml

# IAM action prefixes that differ from botocore's signing name.
IAM_PREFIX = {"monitoring": "cloudwatch", "execute-api": "execute-api"}

TRANSACT_WRITE_ITEM_ACTIONS = {
    "Put": "PutItem",
    "Update": "UpdateItem",
    "Delete": "DeleteItem",
    "ConditionCheck": "ConditionCheckItem",
}

# Actions of the SAM policy templates a function might use (from SAM's
# policy_templates.json); the resource of DynamoDB ones is the table and its indexes.
_DDB_READ = ["GetItem", "Scan", "Query", "BatchGetItem", "DescribeTable"]
_DDB_WRITE = ["PutItem", "UpdateItem", "BatchWriteItem"]
SAM_POLICY_TEMPLATES: dict[str, list[str]] = {
    "DynamoDBReadPolicy": [f"dynamodb:{a}" for a in _DDB_READ],
    "DynamoDBWritePolicy": [f"dynamodb:{a}" for a in _DDB_WRITE],
    "DynamoDBCrudPolicy": [f"dynamodb:{a}" for a in
                           [*_DDB_READ, *_DDB_WRITE, "DeleteItem", "ConditionCheckItem"]],
    "DynamoDBStreamReadPolicy": ["dynamodb:DescribeStream", "dynamodb:GetRecords",
                                 "dynamodb:GetShardIterator", "dynamodb:ListStreams"],
    "SSMParameterReadPolicy": ["ssm:DescribeParameters", "ssm:GetParameters",
                               "ssm:GetParameter", "ssm:GetParametersByPath"],
    "AWSSecretsManagerGetSecretValuePolicy": ["secretsmanager:GetSecretValue"],
    "KMSDecryptPolicy": ["kms:Decrypt"],
    "KMSEncryptPolicy": ["kms:Encrypt"],
    "SQSSendMessagePolicy": ["sqs:SendMessage*", "sqs:ChangeMessageVisibility*"],
    "EventBridgePutEventsPolicy": ["events:PutEvents"],
    "CloudWatchPutMetricPolicy": ["cloudwatch:PutMetricData"],
}
_DDB_TEMPLATES = {"DynamoDBReadPolicy", "DynamoDBWritePolicy", "DynamoDBCrudPolicy"}


@dataclass(frozen=True, order=True)
class Need:
    """One IAM permission a call needs: an action on a resource ("" = not checked)."""

    action: str
    resource: str = ""

    def __str__(self) -> str:
        return f"{self.action} on {self.resource}" if self.resource else self.action


def needs_of_call(service: str, operation: str, params: Mapping[str, Any],
                  table: str = "LedgerTable") -> list[Need]:
    """The IAM permissions one API call needs. ``service`` is botocore's signing name."""
    prefix = IAM_PREFIX.get(service, service)
    if prefix != "dynamodb":
        return [Need(f"{prefix}:{operation}")]
    if operation == "TransactWriteItems":
        return sorted({Need(f"dynamodb:{TRANSACT_WRITE_ITEM_ACTIONS[kind]}", f"table/{table}")
                       for item in params.get("TransactItems", []) for kind in item})
    if operation == "TransactGetItems":
        return [Need("dynamodb:GetItem", f"table/{table}")]
    if service == "dynamodb" and operation in ("DescribeStream", "GetRecords",
                                               "GetShardIterator", "ListStreams"):
        return [Need(f"dynamodb:{operation}", f"table/{table}/stream/*")]
    index = params.get("IndexName")
    resource = f"table/{table}/index/{index}" if index else f"table/{table}"
    return [Need(f"dynamodb:{operation}", resource)]


# -- template parsing ------------------------------------------------------------------------


class _CfnLoader(yaml.SafeLoader):
    pass


def _tag(loader: yaml.SafeLoader, suffix: str, node: yaml.Node) -> Any:
    if isinstance(node, yaml.ScalarNode):
        value: Any = loader.construct_scalar(node)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        value = loader.construct_mapping(node, deep=True)  # type: ignore[arg-type]
    return {f"Fn::{suffix}" if suffix != "Ref" else "Ref": value}


_CfnLoader.add_multi_constructor("!", _tag)


@dataclass(frozen=True)
class Statement:
    effect: str
    actions: tuple[str, ...]
    resources: tuple[str, ...]  # patterns; "*" matches everything

    def matches(self, need: Need) -> bool:
        if not any(fnmatchcase(need.action.lower(), a.lower()) for a in self.actions):
            return False
        if not need.resource:
            return True
        return any(fnmatchcase(need.resource, r) for r in self.resources)


@dataclass
class FunctionPolicy:
    logical_id: str
    code_dir: str  # "credits_get" for CodeUri functions/credits_get/
    statements: list[Statement] = field(default_factory=list)
    unsupported: list[str] = field(default_factory=list)  # policies we cannot read

    def grants(self, need: Need) -> bool:
        if any(s.effect == "Deny" and s.matches(need) for s in self.statements):
            return False
        return any(s.effect == "Allow" and s.matches(need) for s in self.statements)

    def granted_actions(self) -> list[str]:
        return sorted({a for s in self.statements if s.effect == "Allow" for a in s.actions})


def load_template(path: Path) -> dict[str, Any]:
    return yaml.load(path.read_text(), Loader=_CfnLoader)  # noqa: S506 - SafeLoader subclass


def function_policies(template: Mapping[str, Any]) -> dict[str, FunctionPolicy]:
    """Every AWS::Serverless::Function with a ``CodeUri: functions/<dir>/``, by <dir>."""
    resources = template.get("Resources", {})
    tables = {k for k, v in resources.items() if v.get("Type") == "AWS::DynamoDB::Table"}
    out: dict[str, FunctionPolicy] = {}
    for logical_id, resource in resources.items():
        if resource.get("Type") != "AWS::Serverless::Function":
            continue
        props = resource.get("Properties", {})
        match = re.fullmatch(r"(?:\./)?functions/([^/]+)/?", str(props.get("CodeUri", "")))
        if not match:
            continue
        policy = FunctionPolicy(logical_id, match.group(1))
        policies = props.get("Policies", [])
        for item in policies if isinstance(policies, list) else [policies]:
            _read_policy(item, policy, tables)
        out[policy.code_dir] = policy
    return out


def _read_policy(item: Any, policy: FunctionPolicy, tables: set[str]) -> None:
    if isinstance(item, dict) and "Statement" in item:
        statements = item["Statement"]
        for st in statements if isinstance(statements, list) else [statements]:
            if "NotAction" in st or "NotResource" in st:
                policy.unsupported.append(f"NotAction/NotResource in {policy.logical_id}")
                continue
            policy.statements.append(Statement(
                effect=st.get("Effect", "Allow"),
                actions=tuple(_as_list(st.get("Action"))),
                resources=tuple(_resource_pattern(r, tables) for r in _as_list(st.get("Resource"))),
            ))
        return
    if isinstance(item, dict) and len(item) == 1:
        (name, args), = item.items()
        if name in SAM_POLICY_TEMPLATES:
            resources: tuple[str, ...] = ("*",)
            if name in _DDB_TEMPLATES:
                table = _table_of(args.get("TableName") if isinstance(args, dict) else None,
                                  tables)
                resources = (f"table/{table}", f"table/{table}/index/*")
            policy.statements.append(Statement("Allow", tuple(SAM_POLICY_TEMPLATES[name]),
                                               resources))
            return
    policy.unsupported.append(repr(item))


def _as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    return value if isinstance(value, list) else [value]


def _table_of(ref: Any, tables: set[str]) -> str:
    if isinstance(ref, dict) and ref.get("Ref") in tables:
        return str(ref["Ref"])
    return "*"


def _resource_pattern(value: Any, tables: set[str]) -> str:
    """A DynamoDB resource as "table/<LogicalId>[/index/...|/stream/...]"; any other
    resource as "*" (its action is still checked)."""
    if isinstance(value, dict) and "Fn::GetAtt" in value:
        target = value["Fn::GetAtt"]
        name, attr = target.split(".", 1) if isinstance(target, str) else target
        if name in tables:
            return f"table/{name}" if attr == "Arn" else f"table/{name}/stream/*"
        return "*"
    if isinstance(value, dict) and "Fn::Sub" in value:
        text = value["Fn::Sub"]
        text = text[0] if isinstance(text, list) else text
        for table in tables:
            text = text.replace("${" + table + ".Arn}", f"table/{table}")
            text = text.replace("${" + table + ".StreamArn}", f"table/{table}/stream/*")
        if text.startswith("table/"):
            return re.sub(r"\$\{[^}]+\}", "*", text)
        if re.search(r":dynamodb:.*:table/", text):
            return "table/" + re.sub(r"\$\{[^}]+\}", "*", text.split(":table/", 1)[1])
        return "*"
    if isinstance(value, str) and ":dynamodb:" in value and ":table/" in value:
        return "table/" + value.split(":table/", 1)[1]
    return "*"


def platform_needs(template: Mapping[str, Any]) -> dict[str, set[tuple[Need, str]]]:
    """Permissions Lambda itself exercises with a function's role, which no test call
    shows: polling a DynamoDB stream event source, and sending a failed batch to its
    SQS on-failure destination."""
    resources = template.get("Resources", {})
    tables = {k for k, v in resources.items() if v.get("Type") == "AWS::DynamoDB::Table"}
    out: dict[str, set[tuple[Need, str]]] = {}
    for resource in resources.values():
        if resource.get("Type") != "AWS::Serverless::Function":
            continue
        props = resource.get("Properties", {})
        match = re.fullmatch(r"(?:\./)?functions/([^/]+)/?", str(props.get("CodeUri", "")))
        if not match:
            continue
        for name, evt in (props.get("Events") or {}).items():
            if evt.get("Type") != "DynamoDB":
                continue
            call = f"event source {name}"
            stream = _resource_pattern(evt.get("Properties", {}).get("Stream"), tables)
            needs = out.setdefault(match.group(1), set())
            needs.update((Need(f"dynamodb:{a}", stream if stream != "*" else ""), call)
                         for a in ("DescribeStream", "GetRecords", "GetShardIterator",
                                   "ListStreams"))
            destination = (evt.get("Properties", {}).get("DestinationConfig") or {}).get(
                "OnFailure")
            if destination:
                needs.add((Need("sqs:SendMessage"), f"{call} on-failure destination"))
    return out


# -- the check -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Finding:
    function: str
    need: Need
    example: str  # the call that needed it, e.g. "dynamodb.UpdateItem"


def check(recorded: Mapping[str, Iterable[tuple[Need, str]]],
          policies: Mapping[str, FunctionPolicy]) -> list[Finding]:
    """Needs (with the call that showed them) not granted to the function that made them.
    A function missing from the template grants nothing."""
    findings = []
    for function, needs in sorted(recorded.items()):
        policy = policies.get(function)
        for need, call in sorted(set(needs)):
            if policy is None or not policy.grants(need):
                findings.append(Finding(function, need, call))
    return findings


def unused_grants(recorded: Mapping[str, Iterable[tuple[Need, str]]],
                  policies: Mapping[str, FunctionPolicy]) -> dict[str, list[str]]:
    """For each function that ran, the granted actions no recorded call needed."""
    out = {}
    for function, needs in sorted(recorded.items()):
        policy = policies.get(function)
        if policy is None:
            continue
        used = {n.action.lower() for n, _ in needs}
        unused = [a for a in policy.granted_actions()
                  if not any(fnmatchcase(u, a.lower()) for u in used)]
        if unused:
            out[function] = unused
    return out
