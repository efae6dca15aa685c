"""GET/PUT credits, history and the admin routes, through the real handlers on moto."""

from decimal import Decimal

import pytest

from tests.support import event, invoke

ADMIN = {"sub": "ops", "scopes": ["llmcredits/admin"]}


def grant(user, body, key=None, **who):
    who = who or ADMIN
    headers = {"Idempotency-Key": key} if key else {}
    return invoke(
        "admin_user_credits_post",
        event("POST", f"/api/v1/llm/admin/users/{user}/credits", body=body, headers=headers,
              path_params={"user_id": user}, **who),
    )


def credits(user):
    return invoke("credits_get", event("GET", "/api/v1/llm/credits", sub=user))


def history(user, **query):
    return invoke("credits_history_get",
                  event("GET", "/api/v1/llm/credits/history", sub=user,
                        query={k: str(v) for k, v in query.items()}))


def assert_openai_error(status, body, expected_status, code=None):
    assert status == expected_status, body
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "type", "code", "param"}
    assert body["error"]["message"]
    if code:
        assert body["error"]["code"] == code


def test_first_use_creates_a_free_account(aws):
    status, _, body = credits("alice")
    assert status == 200
    assert body["balance"] == "0.000000" and body["held"] == "0.000000"
    assert body["tier"] == "free" and body["monthly_cap"] is None
    assert body["month_spent"] == "0.000000" and body["user_id"] == "alice"


def test_grant_with_idempotency_key_twice_credits_once(aws):
    body = {"amount": "10", "type": "bonus", "reason": "welcome"}
    s1, _, b1 = grant("bob", body, key="grant-1")
    s2, h2, b2 = grant("bob", body, key="grant-1")
    assert s1 == 201 and b1["balance"] == "10.000000"
    assert (s2, b2) == (201, b1) and h2.get("Idempotent-Replayed") == "true"
    assert credits("bob")[2]["balance"] == "10.000000"
    status, _, hist = history("bob")
    assert status == 200 and [i["type"] for i in hist["items"]] == ["bonus"]
    item = hist["items"][0]
    assert item["amount"] == "10.000000" and item["balance_after"] == "10.000000"
    assert item["metadata"] == {"reason": "welcome", "by": "ops"}


def test_same_key_different_body_is_409(aws):
    grant("bob", {"amount": "10"}, key="k")
    status, _, body = grant("bob", {"amount": "11"}, key="k")
    assert_openai_error(status, body, 409, "idempotency_conflict")
    assert credits("bob")[2]["balance"] == "10.000000"


def test_grants_without_key_each_count(aws):
    grant("bob", {"amount": "1.5"})
    grant("bob", {"amount": "0.000001", "type": "adjustment"})
    assert credits("bob")[2]["balance"] == "1.500001"


def test_no_token_is_401(aws):
    status, _, body = invoke("credits_get", event("GET", "/api/v1/llm/credits", sub=None))
    assert_openai_error(status, body, 401)


def test_non_admin_on_admin_routes_is_403(aws):
    status, _, body = grant("bob", {"amount": "10"}, sub="mallory")
    assert_openai_error(status, body, 403)
    status, _, body = invoke("admin_user_get", event(
        "GET", "/api/v1/llm/admin/users/bob", path_params={"user_id": "bob"}, sub="mallory"))
    assert_openai_error(status, body, 403)
    assert credits("bob")[2]["balance"] == "0.000000"


@pytest.mark.parametrize(
    "raw",
    ['{"amount": "10"', "not json", "", "[1, 2]", "null"],
)
def test_malformed_json_is_400(aws, raw):
    status, _, body = invoke("admin_user_credits_post", event(
        "POST", "/api/v1/llm/admin/users/bob/credits", raw_body=raw,
        path_params={"user_id": "bob"}, **ADMIN))
    assert_openai_error(status, body, 400)


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"amount": "-5"}, "amount"),
        ({"amount": "0"}, "amount"),
        ({"amount": "abc"}, "amount"),
        ({"amount": 1.5}, "amount"),  # a JSON number arrives as Decimal and is accepted...
        ({"amount": "10.0000001"}, "amount"),
        ({"amount": "NaN"}, "amount"),
        ({"amount": True}, "amount"),
        ({}, "amount"),
        ({"amount": "10", "type": "usage"}, "type"),
        ({"amount": "10", "type": "gift"}, "type"),
        ({"amount": "10", "extra": 1}, "extra"),
    ],
)
def test_bad_grant_is_400_and_changes_nothing(aws, body, param):
    status, _, resp = grant("bob", body)
    if body.get("amount") == 1.5:
        # ...because JSON numbers are decoded as exact Decimals, never floats.
        assert status == 201 and resp["balance"] == "1.500000"
        return
    assert_openai_error(status, resp, 400)
    assert resp["error"]["param"] == param
    assert credits("bob")[2]["balance"] == "0.000000"


def test_monthly_cap_set_and_removed(aws):
    status, _, body = invoke("credits_monthly_cap_put", event(
        "PUT", "/api/v1/llm/credits/monthly-cap", body={"monthly_cap": "50.00"}, sub="carol"))
    assert status == 200 and body["monthly_cap"] == "50.000000"
    status, _, body = invoke("credits_monthly_cap_put", event(
        "PUT", "/api/v1/llm/credits/monthly-cap", body={"monthly_cap": None}, sub="carol"))
    assert status == 200 and body["monthly_cap"] is None
    for bad in ({"monthly_cap": "-1"}, {"monthly_cap": "x"}, {}):
        status, _, body = invoke("credits_monthly_cap_put", event(
            "PUT", "/api/v1/llm/credits/monthly-cap", body=bad, sub="carol"))
        assert_openai_error(status, body, 400)


def test_history_pages_newest_first_with_a_cursor_bound_to_its_user(aws):
    for i in range(1, 6):
        grant("dave", {"amount": str(i), "type": "bonus" if i % 2 else "refund"})
    status, _, page1 = history("dave", limit=2)
    assert status == 200
    assert [i["amount"] for i in page1["items"]] == ["5.000000", "4.000000"]
    _, _, page2 = history("dave", limit=2, cursor=page1["next_cursor"])
    assert [i["amount"] for i in page2["items"]] == ["3.000000", "2.000000"]
    _, _, page3 = history("dave", limit=2, cursor=page2["next_cursor"])
    assert [i["amount"] for i in page3["items"]] == ["1.000000"]
    assert page3["next_cursor"] is None
    # balance_after is the running balance in ledger order
    assert [i["balance_after"] for i in page1["items"] + page2["items"] + page3["items"]] == [
        "15.000000", "10.000000", "6.000000", "3.000000", "1.000000"]
    # another user cannot use dave's cursor
    status, _, body = history("eve", limit=2, cursor=page1["next_cursor"])
    assert_openai_error(status, body, 400)
    assert body["error"]["param"] == "cursor"
    _, _, refunds = history("dave", type="refund")
    assert [i["amount"] for i in refunds["items"]] == ["4.000000", "2.000000"]
    _, _, refunds = history("dave", type="refund", limit=1)
    assert [i["amount"] for i in refunds["items"]] == ["4.000000"] and refunds["next_cursor"]


@pytest.mark.parametrize(
    "query", [{"limit": 0}, {"limit": 201}, {"limit": "x"}, {"type": "gift"},
              {"cursor": "!!!"}, {"cursor": "eyJ1IjoiZGF2ZSJ9"}],
)
def test_bad_history_query_is_400(aws, query):
    status, _, body = history("dave", **query)
    assert_openai_error(status, body, 400)


def test_admin_get_and_patch(aws):
    status, _, body = invoke("admin_user_get", event(
        "GET", "/api/v1/llm/admin/users/nobody", path_params={"user_id": "nobody"}, **ADMIN))
    assert_openai_error(status, body, 404)
    credits("frank")
    status, _, body = invoke("admin_user_patch", event(
        "PATCH", "/api/v1/llm/admin/users/frank", path_params={"user_id": "frank"},
        body={"tier": "professional", "monthly_cap": "20"}, **ADMIN))
    assert status == 200, body
    assert body["tier"] == "professional" and body["monthly_cap"] == "20.000000"
    status, _, body = invoke("admin_user_get", event(
        "GET", "/api/v1/llm/admin/users/frank", path_params={"user_id": "frank"}, **ADMIN))
    assert status == 200 and body["tier"] == "professional"
    for bad in ({"tier": "platinum"}, {}, {"tier": None}, {"monthly_cap": "-3"}):
        status, _, body = invoke("admin_user_patch", event(
            "PATCH", "/api/v1/llm/admin/users/frank", path_params={"user_id": "frank"},
            body=bad, **ADMIN))
        assert_openai_error(status, body, 400)
    status, _, body = invoke("admin_user_patch", event(
        "PATCH", "/api/v1/llm/admin/users/frank", path_params={"user_id": "frank"},
        body={"monthly_cap": None}, **ADMIN))
    assert status == 200 and body["monthly_cap"] is None and body["tier"] == "professional"


def test_amounts_are_exact_decimals(aws):
    for _ in range(10):
        grant("gina", {"amount": "0.1"})
    assert credits("gina")[2]["balance"] == "1.000000"
    assert Decimal(credits("gina")[2]["balance"]) == Decimal("1")
