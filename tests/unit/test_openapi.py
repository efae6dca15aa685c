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
            # /console/ serves the console's files: a web page, not part of the API.
            if evt["Type"] == "HttpApi" and evt["Properties"]["Path"].startswith("/api/"):
                path, method = evt["Properties"]["Path"], evt["Properties"]["Method"].lower()
                assert method in doc["paths"][path], f"{method} {path} missing"


def test_money_is_a_string_in_the_schema():
    doc = load_document()
    credits = doc["components"]["schemas"]["CreditsResponse"]["properties"]
    assert credits["balance"]["type"] == "string"


def test_public_routes_need_no_token_and_the_rest_do():
    doc = load_document()
    assert doc["paths"]["/api/v1/llm/health"]["get"]["security"] == []
    assert doc["security"] == [{"bearer": []}]
    assert "security" not in doc["paths"]["/api/v1/llm/credits"]["get"]
