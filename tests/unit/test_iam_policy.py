"""The IAM check (tests/iam_audit.py, tests/iam_policy.py): calls are recorded per
function, mapped to IAM actions, and checked against template.yaml. Here: the month
roll-over that GET /credits and GET /models make (once not granted), and the checker
failing on a template with a needed grant removed."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import pytest
import yaml

from tests.iam_audit import TEMPLATE, recording
from tests.iam_policy import (
    Need,
    check,
    function_policies,
    load_template,
    needs_of_call,
    platform_needs,
    unused_grants,
)
from tests.support import event, invoke

LAST_MONTH = datetime(2026, 10, 20, 12, tzinfo=UTC)


def account_from_last_month(user: str) -> None:
    """An account whose stored month is October 2026 with spend in it."""
    from llmcredits.dal.aws import dynamodb_client, table_name
    from llmcredits.dal.dynamodb_ledger import DynamoLedgerStore
    from llmcredits.domain.ledger import EntryType
    from llmcredits.services.ledger import LedgerService

    october = LedgerService(DynamoLedgerStore(dynamodb_client(), table_name()),
                            clock=lambda: LAST_MONTH)
    october.grant(user, Decimal(10), EntryType.BONUS, "welcome", "ops")
    october.debit_usage(user, Decimal(3), model="m")
    assert october.account(user).month == "2026-10"


@pytest.mark.parametrize(("function", "path"), [("credits_get", "/api/v1/llm/credits"),
                                                ("models_get", "/api/v1/llm/models")])
def test_first_call_of_a_month_rolls_the_account_over_within_its_grants(aws, function, path):
    from llmcredits import bootstrap

    account_from_last_month("alice")
    with recording() as rec:
        status, _, body = invoke(function, event("GET", path, sub="alice"))
    assert status == 200, body
    account = bootstrap.ledger_service().account("alice")
    assert account.month == datetime.now(UTC).strftime("%Y-%m") != "2026-10"
    assert account.month_spent == 0 and account.balance == Decimal(7)
    needs = {need for need, _ in rec.calls[function]}
    assert Need("dynamodb:UpdateItem", "table/LedgerTable") in needs  # the roll-over
    assert check(rec.calls, function_policies(load_template(TEMPLATE))) == []


def _without(template_text: str, logical_id: str, action: str) -> dict:
    from tests.iam_policy import _CfnLoader

    doc = yaml.load(template_text, Loader=_CfnLoader)  # noqa: S506 - SafeLoader subclass
    for statement in doc["Resources"][logical_id]["Properties"]["Policies"][0]["Statement"]:
        statement["Action"] = [a for a in statement["Action"] if a != action]
    return doc


def test_the_check_fails_when_a_needed_grant_is_removed_from_the_template(aws):
    account_from_last_month("bob")
    with recording() as rec:
        assert invoke("credits_get", event("GET", "/api/v1/llm/credits", sub="bob"))[0] == 200
    text = TEMPLATE.read_text()
    assert check(rec.calls, function_policies(load_template(TEMPLATE))) == []
    broken = function_policies(_without(text, "GetCreditsFunction", "dynamodb:UpdateItem"))
    [finding] = check(rec.calls, broken)
    assert finding.function == "credits_get"
    assert finding.need == Need("dynamodb:UpdateItem", "table/LedgerTable")
    assert finding.example == "dynamodb.UpdateItem"


def test_a_purchase_webhook_needs_the_item_actions_of_its_transaction(aws, monkeypatch):
    from llmcredits import bootstrap

    from tests.fakes.stripe_api import (
        FakeStripe,
        checkout_session,
        payload,
        sign,
        webhook_request,
    )
    from tests.fakes.stripe_api import event as stripe_event

    monkeypatch.setenv("STRIPE_WEBHOOK_SECRET", "whsec_iam")
    monkeypatch.setenv("STRIPE_SECRET_KEY", "sk_test_iam")
    with FakeStripe() as fake:
        monkeypatch.setenv("STRIPE_API_BASE", fake.url)
        bootstrap.reset()
        _, _, started = invoke("credits_purchase_post", event(
            "POST", "/api/v1/llm/credits/purchase", sub="carol",
            body={"amount": "5.00", "success_url": "http://localhost/ok",
                  "cancel_url": "http://localhost/no"}))
    session = checkout_session(user_id="carol", amount_cents=500,
                               session_id=started["session_id"])
    body = payload(stripe_event("checkout.session.completed", session))
    with recording() as rec:
        status, _, out = invoke("stripe_webhook", webhook_request(body, sign(body, "whsec_iam")))
    assert (status, out["outcome"]) == (200, "credited")
    calls = {call for _, call in rec.calls["stripe_webhook"]}
    assert "dynamodb.TransactWriteItems" in calls
    policies = function_policies(load_template(TEMPLATE))
    assert check(rec.calls, policies) == []
    doc = _without(TEMPLATE.read_text(), "StripeWebhookFunction", "dynamodb:PutItem")
    missing = {(f.need.action, f.example) for f in check(rec.calls, function_policies(doc))}
    assert ("dynamodb:PutItem", "dynamodb.TransactWriteItems") in missing


def test_transactions_need_the_item_level_action_of_each_item():
    params = {"TransactItems": [{"Put": {}}, {"Update": {}}, {"ConditionCheck": {}},
                                {"Delete": {}}, {"Put": {}}]}
    assert [n.action for n in needs_of_call("dynamodb", "TransactWriteItems", params)] == [
        "dynamodb:ConditionCheckItem", "dynamodb:DeleteItem", "dynamodb:PutItem",
        "dynamodb:UpdateItem"]
    assert needs_of_call("dynamodb", "TransactGetItems", {"TransactItems": [{"Get": {}}]}) == [
        Need("dynamodb:GetItem", "table/LedgerTable")]
    assert needs_of_call("kms", "GenerateDataKey", {}) == [Need("kms:GenerateDataKey")]
    assert needs_of_call("monitoring", "PutMetricData", {}) == [
        Need("cloudwatch:PutMetricData")]


def test_a_query_on_an_index_needs_the_index_resource():
    query = needs_of_call("dynamodb", "Query", {"IndexName": "HoldsByAge"})
    table_only = {"LedgerTable": {"Type": "AWS::DynamoDB::Table"}}
    fn = {"Type": "AWS::Serverless::Function", "Properties": {
        "CodeUri": "functions/sweeper/",
        "Policies": [{"Statement": [{"Effect": "Allow", "Action": "dynamodb:Query",
                                     "Resource": {"Fn::GetAtt": "LedgerTable.Arn"}}]}]}}
    policies = function_policies({"Resources": {**table_only, "Fn": fn}})
    assert [f.need for f in check({"sweeper": {(query[0], "q")}}, policies)] == query
    fn["Properties"]["Policies"][0]["Statement"][0]["Resource"] = {
        "Fn::Sub": "${LedgerTable.Arn}/index/*"}
    assert check({"sweeper": {(query[0], "q")}}, function_policies(
        {"Resources": {**table_only, "Fn": fn}})) == []


def test_new_functions_sam_policy_templates_and_denies_are_read_generically():
    template = {"Resources": {
        "LedgerTable": {"Type": "AWS::DynamoDB::Table"},
        "NewFunction": {"Type": "AWS::Serverless::Function", "Properties": {
            "CodeUri": "functions/brand_new/",
            "Policies": [{"DynamoDBReadPolicy": {"TableName": {"Ref": "LedgerTable"}}},
                         {"Statement": {"Effect": "Deny", "Action": "dynamodb:Scan",
                                        "Resource": "*"}},
                         {"EventBridgePutEventsPolicy": {"EventBusName": "default"}}]}},
    }}
    policies = function_policies(template)
    recorded = {"brand_new": {(Need("dynamodb:GetItem", "table/LedgerTable"), "g"),
                              (Need("dynamodb:Scan", "table/LedgerTable"), "s"),
                              (Need("events:PutEvents"), "e"),
                              (Need("dynamodb:PutItem", "table/LedgerTable"), "p")},
                "unknown_fn": {(Need("sqs:SendMessage"), "m")}}
    assert {(f.function, f.need.action) for f in check(recorded, policies)} == {
        ("brand_new", "dynamodb:Scan"), ("brand_new", "dynamodb:PutItem"),
        ("unknown_fn", "sqs:SendMessage")}
    assert "dynamodb:DescribeTable" in unused_grants(recorded, policies)["brand_new"]


def test_what_lambda_does_with_a_stream_consumers_role_is_granted():
    template = load_template(TEMPLATE)
    platform = platform_needs(template)
    assert {n.action for n, _ in platform["usage_aggregator"]} == {
        "dynamodb:DescribeStream", "dynamodb:GetRecords", "dynamodb:GetShardIterator",
        "dynamodb:ListStreams", "sqs:SendMessage"}
    assert check(platform, function_policies(template)) == []
    doc = _without(TEMPLATE.read_text(), "UsageAggregatorFunction", "dynamodb:GetRecords")
    [finding] = check(platform, function_policies(doc))
    assert finding.need == Need("dynamodb:GetRecords", "table/LedgerTable/stream/*")
