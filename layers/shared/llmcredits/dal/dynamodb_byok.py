"""Stored BYOK keys on the ledger table (ciphertext only).

  PK=USER#<id>  SK=BYOK#<provider>   kind "byok": Fernet token, KMS-encrypted data key
                                     (binary), KMS key id, fingerprint, masked form,
                                     enabled, created_at, updated_at

The account item's ``flags`` string set holds ``byok:<provider>`` while an enabled key
for that provider exists, written in the same transaction as the key. The chat path reads
the account anyway, so users without a key pay no extra read.

The user id and provider of a stored key always come from where it is stored (PK/SK),
never from its attributes: the KMS encryption context is built from them, so a
ciphertext copied onto another user's item does not decrypt there.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Any

from botocore.exceptions import ClientError

from llmcredits.dal.dynamodb_ledger import ACCOUNT_SK, all_items, from_item, to_item, user_pk
from llmcredits.domain.byok import account_flag

BYOK_PREFIX = "BYOK#"
KIND = "byok"


def byok_sk(provider: str) -> str:
    return f"{BYOK_PREFIX}{provider}"


@dataclass(frozen=True)
class StoredKey:
    user_id: str
    provider: str
    token: str
    encrypted_data_key: bytes
    kms_key_id: str
    fingerprint: str
    masked: str
    enabled: bool
    created_at: str
    updated_at: str

    def __repr__(self) -> str:  # no ciphertext in logs or tracebacks either
        return (f"StoredKey(user_id={self.user_id!r}, provider={self.provider!r}, "
                f"masked={self.masked!r}, enabled={self.enabled})")


def _from_item(item: dict[str, Any], user_id: str, provider: str) -> StoredKey:
    data = from_item(item)
    edk = data["encrypted_data_key"]
    return StoredKey(
        user_id=user_id,
        provider=provider,
        token=data["token"],
        encrypted_data_key=bytes(edk.value if hasattr(edk, "value") else edk),
        kms_key_id=data["kms_key_id"],
        fingerprint=data["fingerprint"],
        masked=data["masked"],
        enabled=bool(data["enabled"]),
        created_at=data["created_at"],
        updated_at=data["updated_at"],
    )


def _location(item: dict[str, Any]) -> tuple[str, str] | None:
    pk, sk = item["PK"]["S"], item["SK"]["S"]
    if not pk.startswith("USER#") or not sk.startswith(BYOK_PREFIX):
        return None
    return pk[len("USER#"):], sk[len(BYOK_PREFIX):]


def _reasons(exc: ClientError) -> list[str]:
    return [r.get("Code", "") for r in exc.response.get("CancellationReasons", [])]


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


class AccountMissing(Exception):
    """The user's account item does not exist (create it first)."""


class DynamoByokStore:
    def __init__(self, client: Any, table: str) -> None:
        self._client = client
        self._table = table

    def _key(self, user_id: str, provider: str) -> dict[str, Any]:
        return to_item({"PK": user_pk(user_id), "SK": byok_sk(provider)})

    def _flag_update(self, user_id: str, provider: str, add: bool) -> dict[str, Any]:
        return {
            "TableName": self._table,
            "Key": to_item({"PK": user_pk(user_id), "SK": ACCOUNT_SK}),
            "UpdateExpression": ("ADD" if add else "DELETE") + " #flags :f",
            "ConditionExpression": "attribute_exists(PK)",
            "ExpressionAttributeNames": {"#flags": "flags"},
            "ExpressionAttributeValues": {":f": {"SS": [account_flag(provider)]}},
        }

    def get(self, user_id: str, provider: str) -> StoredKey | None:
        resp = self._client.get_item(
            TableName=self._table, Key=self._key(user_id, provider), ConsistentRead=True
        )
        item = resp.get("Item")
        return _from_item(item, user_id, provider) if item else None

    def list(self, user_id: str) -> list[StoredKey]:
        items = all_items(
            self._client,
            "query",
            TableName=self._table,
            KeyConditionExpression="PK = :pk AND begins_with(SK, :prefix)",
            ExpressionAttributeValues=to_item({":pk": user_pk(user_id), ":prefix": BYOK_PREFIX}),
            ConsistentRead=True,
        )
        return [_from_item(item, user_id, item["SK"]["S"][len(BYOK_PREFIX):]) for item in items]

    def put(self, key: StoredKey) -> None:
        """Store (or replace) an enabled key and flag the account, in one transaction.

        Raises AccountMissing when the account item does not exist."""
        item = to_item({
            "PK": user_pk(key.user_id),
            "SK": byok_sk(key.provider),
            "kind": KIND,
            "user_id": key.user_id,
            "provider": key.provider,
            "token": key.token,
            "encrypted_data_key": key.encrypted_data_key,
            "kms_key_id": key.kms_key_id,
            "fingerprint": key.fingerprint,
            "masked": key.masked,
            "enabled": key.enabled,
            "created_at": key.created_at,
            "updated_at": key.updated_at,
        })
        items: list[dict[str, Any]] = [{"Put": {"TableName": self._table, "Item": item}}]
        items.append({"Update": self._flag_update(key.user_id, key.provider, key.enabled)})
        try:
            self._client.transact_write_items(TransactItems=items)
        except ClientError as exc:
            if _code(exc) == "TransactionCanceledException" and _reasons(exc)[1:2] == [
                "ConditionalCheckFailed"
            ]:
                raise AccountMissing(key.user_id) from None
            raise

    def set_enabled(self, user_id: str, provider: str, enabled: bool, now: str
                    ) -> StoredKey | None:
        """Enable or disable a stored key (and its account flag). None if there is none."""
        current = self.get(user_id, provider)
        if current is None:
            return None
        update = {
            "TableName": self._table,
            "Key": self._key(user_id, provider),
            "UpdateExpression": "SET #enabled = :e, updated_at = :now",
            "ConditionExpression": "attribute_exists(PK)",
            "ExpressionAttributeNames": {"#enabled": "enabled"},
            "ExpressionAttributeValues": to_item({":e": enabled, ":now": now}),
        }
        if not self._with_flag(update, "Update", user_id, provider, enabled):
            return None
        return replace(current, enabled=enabled, updated_at=now)

    def delete(self, user_id: str, provider: str) -> bool:
        delete = {
            "TableName": self._table,
            "Key": self._key(user_id, provider),
            "ConditionExpression": "attribute_exists(PK)",
        }
        return self._with_flag(delete, "Delete", user_id, provider, False)

    def _with_flag(self, op: dict[str, Any], kind: str, user_id: str, provider: str,
                   add: bool) -> bool:
        """``op`` on the key item plus the account flag; False if the key item is gone."""
        try:
            self._client.transact_write_items(
                TransactItems=[{kind: op}, {"Update": self._flag_update(user_id, provider, add)}]
            )
            return True
        except ClientError as exc:
            if _code(exc) != "TransactionCanceledException":
                raise
            reasons = _reasons(exc)
            if reasons[:1] == ["ConditionalCheckFailed"]:
                return False
            if reasons[1:2] != ["ConditionalCheckFailed"]:
                raise
        # No account item (data from before accounts existed): the key item alone.
        call = self._client.update_item if kind == "Update" else self._client.delete_item
        try:
            call(**op)
        except ClientError as exc:
            if _code(exc) == "ConditionalCheckFailedException":
                return False
            raise
        return True

    def scan_all(self) -> Iterator[StoredKey]:
        """Every stored key in the table (operators' rotation), page by page."""
        for item in all_items(
            self._client,
            "scan",
            TableName=self._table,
            FilterExpression="#kind = :kind",
            ExpressionAttributeNames={"#kind": "kind"},
            ExpressionAttributeValues=to_item({":kind": KIND}),
        ):
            where = _location(item)
            if where is not None:
                yield _from_item(item, *where)

    def replace_ciphertext(self, key: StoredKey, token: str, encrypted_data_key: bytes,
                           kms_key_id: str, now: str) -> bool:
        """Swap in a re-encryption of ``key``, only if its ciphertext is still the one read
        (a concurrent replacement by the user wins). Leaves enabled/updated_at alone."""
        try:
            self._client.update_item(
                TableName=self._table,
                Key=self._key(key.user_id, key.provider),
                UpdateExpression=("SET #t = :t, encrypted_data_key = :k, kms_key_id = :id, "
                                  "rotated_at = :now"),
                ConditionExpression="encrypted_data_key = :old",
                ExpressionAttributeNames={"#t": "token"},
                ExpressionAttributeValues=to_item({
                    ":t": token, ":k": encrypted_data_key, ":id": kms_key_id, ":now": now,
                    ":old": key.encrypted_data_key,
                }),
            )
        except ClientError as exc:
            if _code(exc) == "ConditionalCheckFailedException":
                return False
            raise
        return True
