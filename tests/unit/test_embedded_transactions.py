"""The embedded store's cheap transaction snapshots roll back exactly like moto's copies."""

import boto3
import pytest
from botocore.exceptions import ClientError
from llmcredits.local.embedded import install_moto_dynamodb_lock
from moto import mock_aws


@pytest.fixture
def table():
    install_moto_dynamodb_lock()
    with mock_aws():
        client = boto3.client("dynamodb", region_name="us-east-1")
        client.create_table(
            TableName="t",
            KeySchema=[{"AttributeName": "PK", "KeyType": "HASH"},
                       {"AttributeName": "SK", "KeyType": "RANGE"}],
            AttributeDefinitions=[{"AttributeName": "PK", "AttributeType": "S"},
                                  {"AttributeName": "SK", "AttributeType": "S"}],
            BillingMode="PAY_PER_REQUEST",
            StreamSpecification={"StreamEnabled": True, "StreamViewType": "NEW_AND_OLD_IMAGES"},
        )
        yield client


def stream_records(client):
    streams = boto3.client("dynamodbstreams", region_name="us-east-1")
    arn = client.describe_table(TableName="t")["Table"]["LatestStreamArn"]
    shard = streams.describe_stream(StreamArn=arn)["StreamDescription"]["Shards"][0]
    it = streams.get_shard_iterator(StreamArn=arn, ShardId=shard["ShardId"],
                                    ShardIteratorType="TRIM_HORIZON")["ShardIterator"]
    return streams.get_records(ShardIterator=it)["Records"]


def balance(client, pk):
    item = client.get_item(TableName="t", Key={"PK": {"S": pk}, "SK": {"S": "A"}}).get("Item")
    return None if item is None else int(item["balance"]["N"])


def test_cancelled_transaction_leaves_items_and_stream_untouched(table):
    for pk in ("u1", "u2"):
        table.put_item(TableName="t", Item={"PK": {"S": pk}, "SK": {"S": "A"},
                                            "balance": {"N": "5"}})
    before = len(stream_records(table))

    def debit(pk, amount):
        return {"Update": {"TableName": "t", "Key": {"PK": {"S": pk}, "SK": {"S": "A"}},
                           "UpdateExpression": "SET balance = balance - :a",
                           "ConditionExpression": "balance >= :a",
                           "ExpressionAttributeValues": {":a": {"N": str(amount)}}}}

    new_entry = {"Put": {"TableName": "t", "Item": {"PK": {"S": "u1"}, "SK": {"S": "L1"}}}}
    with pytest.raises(ClientError) as err:
        table.transact_write_items(TransactItems=[debit("u1", 1), new_entry, debit("u2", 9)])
    assert err.value.response["Error"]["Code"] == "TransactionCanceledException"
    assert balance(table, "u1") == 5 and balance(table, "u2") == 5
    assert "Item" not in table.get_item(TableName="t",
                                        Key={"PK": {"S": "u1"}, "SK": {"S": "L1"}})
    assert len(stream_records(table)) == before

    table.transact_write_items(TransactItems=[debit("u1", 1), new_entry, debit("u2", 5)])
    assert balance(table, "u1") == 4 and balance(table, "u2") == 0
    assert len(stream_records(table)) == before + 3
