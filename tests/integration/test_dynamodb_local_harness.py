"""Proves the DynamoDB Local harness runs a real DynamoDB Local: conditional
TransactWriteItems are enforced (one cancelled, one committed)."""

from __future__ import annotations

import uuid

import pytest

boto3 = pytest.importorskip("boto3")
from botocore.exceptions import ClientError  # noqa: E402

pytestmark = pytest.mark.dynamodb_local


def test_conditional_transaction(dynamodb_local_client_kwargs):
    client = boto3.client("dynamodb", **dynamodb_local_client_kwargs)
    table = f"harness-{uuid.uuid4().hex[:8]}"
    client.create_table(
        TableName=table,
        AttributeDefinitions=[
            {"AttributeName": "pk", "AttributeType": "S"},
            {"AttributeName": "sk", "AttributeType": "S"},
        ],
        KeySchema=[
            {"AttributeName": "pk", "KeyType": "HASH"},
            {"AttributeName": "sk", "KeyType": "RANGE"},
        ],
        BillingMode="PAY_PER_REQUEST",
    )
    client.get_waiter("table_exists").wait(
        TableName=table, WaiterConfig={"Delay": 0.2, "MaxAttempts": 50}
    )
    try:
        assert table in client.list_tables()["TableNames"]
        key = {"pk": {"S": "USER#u1"}, "sk": {"S": "BALANCE"}}
        client.put_item(TableName=table, Item={**key, "balance": {"N": "5"}})

        def debit(amount: int, ledger_id: str) -> dict:
            return client.transact_write_items(
                TransactItems=[
                    {
                        "Update": {
                            "TableName": table,
                            "Key": key,
                            "UpdateExpression": "SET balance = balance - :a",
                            "ConditionExpression": "balance >= :a",
                            "ExpressionAttributeValues": {":a": {"N": str(amount)}},
                        }
                    },
                    {
                        "Put": {
                            "TableName": table,
                            "Item": {
                                "pk": {"S": "USER#u1"},
                                "sk": {"S": f"LEDGER#{ledger_id}"},
                                "amount": {"N": str(-amount)},
                            },
                            "ConditionExpression": "attribute_not_exists(pk)",
                        }
                    },
                ]
            )

        # Overdraft: condition fails -> whole transaction cancelled, nothing written.
        with pytest.raises(ClientError) as exc:
            debit(6, "a")
        err = exc.value.response
        assert err["Error"]["Code"] == "TransactionCanceledException"
        reasons = [r.get("Code") for r in err.get("CancellationReasons", [])]
        assert reasons == ["ConditionalCheckFailed", "None"]
        assert "Item" not in client.get_item(
            TableName=table, Key={"pk": {"S": "USER#u1"}, "sk": {"S": "LEDGER#a"}}
        )
        got = client.get_item(TableName=table, Key=key, ConsistentRead=True)
        assert got["Item"]["balance"]["N"] == "5"

        # Within balance: both writes commit atomically.
        debit(5, "b")
        got = client.get_item(TableName=table, Key=key, ConsistentRead=True)
        assert got["Item"]["balance"]["N"] == "0"
        ledger = client.get_item(
            TableName=table, Key={"pk": {"S": "USER#u1"}, "sk": {"S": "LEDGER#b"}}
        )
        assert ledger["Item"]["amount"]["N"] == "-5"

        # Idempotency condition: the same ledger id cannot be written twice.
        client.put_item(TableName=table, Item={**key, "balance": {"N": "10"}})
        with pytest.raises(ClientError) as exc:
            debit(1, "b")
        reasons = [r.get("Code") for r in exc.value.response.get("CancellationReasons", [])]
        assert reasons == ["None", "ConditionalCheckFailed"]
        got = client.get_item(TableName=table, Key=key, ConsistentRead=True)
        assert got["Item"]["balance"]["N"] == "10"
    finally:
        client.delete_table(TableName=table)
