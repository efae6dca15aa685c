"""The API's OpenAPI document, merged from every handler's resolver.

Each function has its own resolver (one Lambda per route), so no single resolver knows
the whole API. ``build_document`` imports every handler and merges their documents;
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


def public_routes(template_path: Path) -> set[tuple[str, str]]:
    """(method, path) of the routes the template serves without the JWT authorizer."""
    from llmcredits.local.template import Template

    return {
        (route.method.lower(), route.path)
        for route in Template(template_path).routes()
        if route.authorizer is None
    }


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
    public = public_routes(template_path)
    paths: dict[str, Any] = {}
    schemas: dict[str, Any] = {}
    for app_file in sorted(functions_dir.glob("*/app.py")):
        app = getattr(import_handler(app_file), "app", None)
        if app is None or not hasattr(app, "get_openapi_schema"):
            continue
        doc = app.get_openapi_schema(title=TITLE, version=__version__).model_dump(
            mode="json", by_alias=True, exclude_none=True
        )
        for path, operations in doc.get("paths", {}).items():
            for method, operation in operations.items():
                if (method, path) in public:
                    operation["security"] = []  # no bearer token needed
                _what_we_answer(operation.get("responses", {}))
            paths.setdefault(path, {}).update(operations)
        schemas.update(doc.get("components", {}).get("schemas", {}))
    for unused in POWERTOOLS_ERROR_SCHEMAS:
        schemas.pop(unused, None)
    return {
        "openapi": "3.1.0",
        "info": {"title": TITLE, "version": __version__, "description": DESCRIPTION},
        "paths": dict(sorted(paths.items())),
        "components": {
            "schemas": dict(sorted(schemas.items())),
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}
            },
        },
        "security": [{"bearer": []}],
    }


def render(document: dict[str, Any]) -> str:
    return json.dumps(document, indent=2, sort_keys=False) + "\n"
