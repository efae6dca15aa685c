"""The caller seam: a JWT's claims or a Lambda authorizer's context, and the JWT-only rule."""

from __future__ import annotations

import pytest

from tests.support import event, invoke


@pytest.mark.usefixtures("aws")
def test_api_key_caller_is_refused_on_a_jwt_only_route() -> None:
    status, _, body = invoke("credits_monthly_cap_put", event(
        "PUT", "/api/v1/llm/credits/monthly-cap", body={"monthly_cap": "5.00"},
        kind="api_key", key_id="k1"))
    assert status == 403
    assert body["error"]["code"] == "jwt_required"


@pytest.mark.usefixtures("aws")
def test_api_key_caller_reads_its_own_account() -> None:
    status, _, body = invoke("credits_get", event("GET", "/api/v1/llm/credits", sub="u-key",
                                                  kind="api_key", key_id="k1"))
    assert status == 200
    assert body["user_id"] == "u-key"


@pytest.mark.usefixtures("aws")
def test_api_key_with_admin_scope_is_no_admin() -> None:
    status, _, _ = invoke("admin_user_get", event(
        "GET", "/api/v1/llm/admin/users/x", path_params={"user_id": "x"},
        scopes=["llmcredits/admin"], kind="api_key", key_id="k1"))
    assert status == 403
