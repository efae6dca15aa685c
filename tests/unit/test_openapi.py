"""GET /openapi.json serves a document generated from the handlers, and it is current."""

from llmcredits.openapi_doc import build_document, load_document

from tests.support import FUNCTIONS, ROOT, event, invoke, template


def test_committed_document_is_current():
    assert load_document() == build_document(FUNCTIONS, ROOT / "template.yaml"), (
        "layers/shared/llmcredits/data/openapi.json is stale: run `make openapi`"
    )


def test_served_document_lists_every_route_of_the_template():
    status, _, doc = invoke("openapi", event("GET", "/api/v1/llm/openapi.json", sub=None))
    assert status == 200 and doc["openapi"].startswith("3.")
    for res in template()["Resources"].values():
        for evt in res.get("Properties", {}).get("Events", {}).values():
            # /console serves the console's files: a web page, not part of the API.
            if evt["Type"] == "Api" and evt["Properties"]["Path"].startswith("/api/"):
                path, method = evt["Properties"]["Path"], evt["Properties"]["Method"].lower()
                assert method in doc["paths"][path], f"{method} {path} missing"


def test_money_is_a_string_in_the_schema():
    doc = load_document()
    credits = doc["components"]["schemas"]["CreditsResponse"]["properties"]
    assert credits["balance"]["type"] == "string"


def test_each_route_names_the_credentials_the_authorizer_accepts_for_it():
    doc = load_document()
    schemes = doc["components"]["securitySchemes"]
    assert {"loginToken", "apiKey"} == set(schemes)
    assert schemes["loginToken"]["bearerFormat"] == "JWT"
    paths = doc["paths"]
    assert paths["/api/v1/llm/health"]["get"]["security"] == []
    assert paths["/api/v1/llm/stripe/webhook"]["post"]["security"] == []
    either = [{"loginToken": []}, {"apiKey": []}]
    assert paths["/api/v1/llm/credits"]["get"]["security"] == either
    assert paths["/api/v1/llm/chat/completions"]["post"]["security"] == either
    jwt_only = [{"loginToken": []}]
    assert paths["/api/v1/llm/credits/purchase"]["post"]["security"] == jwt_only
    assert paths["/api/v1/llm/admin/users/{user_id}"]["get"]["security"] == jwt_only
    assert all("security" in op for ops in paths.values() for op in ops.values())
