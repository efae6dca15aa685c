"""The API's OpenAPI document, merged from every handler's resolver.

Each function has its own resolver (one Lambda per route), so no single resolver knows
the whole API. Powertools' OpenAPI merge (``configure_openapi_merge``, made for this
layout) loads every ``functions/*/app.py`` resolver and merges their documents. Its
discovery finds resolvers by the literal ``app = APIGatewayRestResolver(...)``, and ours
come from ``make_app()``, so the files are named to its ``OpenAPIMerge`` (the class
``configure_openapi_merge`` wraps) with ``add_file``. ``build_document``
then says what the gateway adds: which credential each route takes (the authorizer's
route table, :mod:`llmcredits.domain.access`) and the errors ``make_app`` really answers.
``make openapi`` writes the result into the layer, where GET /openapi.json serves it.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from functools import cache
from pathlib import Path
from types import ModuleType
from typing import Any

from llmcredits import __version__

DOCUMENT_PATH = Path(__file__).parent / "data" / "openapi.json"
TITLE = "llmcredits"
DESCRIPTION = (
    "Prepaid credits and per-token metering for OpenAI-compatible LLM APIs. Money is a "
    "decimal string with 6 places; errors use the OpenAI shape "
    '{"error": {"message", "type", "code", "param"}}.'
)


@cache
def load_document() -> dict[str, Any]:
    document: dict[str, Any] = json.loads(DOCUMENT_PATH.read_text())
    return document


def import_handler(app_file: Path) -> ModuleType:
    """Import functions/<name>/app.py under a unique module name."""
    name = f"llmcredits_fn_{app_file.parent.name}"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, app_file)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot import {app_file}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


#: The two credentials the authorizer accepts, both as ``Authorization: Bearer ...``.
SECURITY_SCHEMES: dict[str, Any] = {
    "loginToken": {
        "type": "http", "scheme": "bearer", "bearerFormat": "JWT",
        "description": "A login JWT of the configured OIDC issuer (RS256/ES256). Admin "
                       "routes need the `llmcredits/admin` scope (`scope` or `scp`).",
    },
    "apiKey": {
        "type": "http", "scheme": "bearer", "bearerFormat": "llmc-...",
        "description": "An API key (`llmc-` + 43 characters), for server-side clients. It "
                       "may call chat, models, GET credits, credits/history, usage, key "
                       "and generations only.",
    },
}


def _security(audience: Any) -> list[dict[str, list[str]]]:
    from llmcredits.domain.access import Audience

    if audience is Audience.PUBLIC:
        return []
    if audience is Audience.KEY_OR_JWT:
        return [{"loginToken": []}, {"apiKey": []}]
    return [{"loginToken": []}]


#: Powertools documents its own error bodies; make_app answers every error in the
#: OpenAI shape instead (validation errors are 400, never 422).
POWERTOOLS_ERROR_SCHEMAS = ("HTTPValidationError", "ValidationError", "ResponseValidationError")
INTERNAL_ERROR = {
    "description": "Internal error (`server_error`); retry with the same Idempotency-Key",
    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorResponse"}}},
}


def _what_we_answer(responses: dict[str, Any]) -> None:
    """Replace Powertools' 422/500 entries with what make_app really answers."""
    responses.pop("422", None)
    if "500" in responses:
        responses["500"] = INTERNAL_ERROR
    for response in responses.values():
        if response.get("content") == {}:  # no body (204)
            del response["content"]


def build_document(functions_dir: Path, template_path: Path) -> dict[str, Any]:
    """The merged document. ``template_path`` is read by the tests that keep the
    template's routes and the access table equal; here the table decides security."""
    from aws_lambda_powertools.event_handler.openapi.merge import OpenAPIMerge

    from llmcredits.domain.access import ROUTES
    from llmcredits.http.openapi_responses import documenting

    merger = OpenAPIMerge(title=TITLE, version=__version__, description=DESCRIPTION,
                          security_schemes=SECURITY_SCHEMES, on_conflict="error")
    for app_file in sorted(functions_dir.glob("*/app.py")):
        if "make_app()" in app_file.read_text():  # an HTTP route (not a stream/schedule)
            merger.add_file(app_file, resolver_name="app")
    with documenting():  # the handlers are loaded here: their routes carry the responses
        doc: dict[str, Any] = json.loads(merger.get_openapi_json_schema())  # JSON-mode values
    access = {(r.method.lower(), r.path): r.audience for r in ROUTES}
    for path, operations in doc.get("paths", {}).items():
        for method, operation in operations.items():
            audience = access.get((method, path))
            if audience is None:
                raise ValueError(f"{method.upper()} {path} is not in domain/access.ROUTES")
            operation["security"] = _security(audience)
            _what_we_answer(operation.get("responses", {}))
    components = doc.setdefault("components", {})
    schemas = components.get("schemas", {})
    for unused in POWERTOOLS_ERROR_SCHEMAS:
        schemas.pop(unused, None)
    components["schemas"] = dict(sorted(schemas.items()))
    doc.pop("servers", None)  # relative to wherever it is served
    doc["paths"] = dict(sorted(doc.get("paths", {}).items()))
    return doc


def render(document: dict[str, Any]) -> str:
    return json.dumps(document, indent=2, sort_keys=False) + "\n"
