"""events/<function>.json: one sample per function, usable with `sam local invoke`."""

import json

import pytest

from tests.support import FUNCTIONS, ROOT, invoke

NAMES = sorted(p.name for p in FUNCTIONS.iterdir() if (p / "app.py").is_file())


@pytest.mark.parametrize("name", NAMES)
def test_sample_event_exists_and_is_served(upstream, monkeypatch, name):
    path = ROOT / "events" / f"{name}.json"
    assert path.is_file(), f"add a sample event {path.relative_to(ROOT)}"
    evt = json.loads(path.read_text())
    if evt.get("source") == "aws.events":  # a scheduled function
        from llmcredits.openapi_doc import import_handler

        from tests.support import Context

        result = import_handler(FUNCTIONS / name / "app.py").lambda_handler(evt, Context())
        assert isinstance(result, dict)
        return
    if (evt.get("Records") or [{}])[0].get("eventSource") == "aws:dynamodb":  # stream consumer
        from llmcredits.openapi_doc import import_handler

        from tests.support import Context

        result = import_handler(FUNCTIONS / name / "app.py").lambda_handler(evt, Context())
        assert result == {"batchItemFailures": []}
        return
    if evt.get("type") == "REQUEST":  # the Lambda authorizer: no key store wired, so 401
        from llmcredits.openapi_doc import import_handler

        from tests.support import Context

        handler = import_handler(FUNCTIONS / name / "app.py").lambda_handler
        with pytest.raises(Exception, match=r"^Unauthorized$"):
            handler(evt, Context())
        return
    assert evt["httpMethod"] and evt["resource"].startswith(("/api/v1/llm/", "/console"))
    if name == "console":  # its sign-in settings are template parameters
        for var, value in (("CONSOLE_OIDC_ISSUER", "https://issuer.example.com"),
                           ("CONSOLE_CLIENT_ID", "console"),
                           ("CONSOLE_AUTHORIZATION_ENDPOINT", "https://issuer.example.com/auth"),
                           ("CONSOLE_TOKEN_ENDPOINT", "https://issuer.example.com/token")):
            monkeypatch.setenv(var, value)
    if name == "admin_user_get":  # the sample's user exists once they have used the API
        invoke("credits_get", json.loads((ROOT / "events" / "credits_get.json").read_text()))
    if name.startswith("byok_keys_"):  # the template's KMS key; PATCH/DELETE need a stored key
        import boto3
        from llmcredits import bootstrap

        key_id = boto3.client("kms").create_key()["KeyMetadata"]["KeyId"]
        monkeypatch.setenv("BYOK_KMS_KEY_ID", key_id)
        bootstrap.reset()
        if name in ("byok_keys_patch", "byok_keys_delete"):
            post = (ROOT / "events" / "byok_keys_post.json").read_text()
            invoke("byok_keys_post", json.loads(post))
    if name == "generation_get":  # the sample asks for the chat sample's request id
        chat = json.loads((ROOT / "events" / "chat_completions.json").read_text())
        status, _, body = invoke("chat_completions", chat)
        assert status == 200, body
    if name.startswith("key") and name != "keys_post" and name != "keys_get":
        evt = with_sample_key(evt)
    from tests.fakes.stripe_api import sample_ready

    with sample_ready(name, evt) as ready:
        status, _, body = invoke(name, ready)
    assert 200 <= status < 300, body


def with_sample_key(evt: dict) -> dict:
    """The sample's key id (and, for GET /key, its secret) replaced by a key that exists."""
    post = json.loads((ROOT / "events" / "keys_post.json").read_text())
    _, _, created = invoke("keys_post", post)
    text = json.dumps(evt).replace("key_0000000000000000", created["id"])
    text = text.replace("llmc-" + "A" * 43, created["key"])
    return json.loads(text)
