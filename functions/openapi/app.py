"""GET /openapi.json: the OpenAPI document generated from every handler's models.

It is generated at build time (`make openapi`) and shipped in the layer, so this
function needs no other handler's code; a test fails when it is out of date.
"""

from typing import Any

from llmcredits.http.api import API_PREFIX, entry_point, make_app
from llmcredits.http.openapi_responses import ok
from llmcredits.openapi_doc import load_document

app = make_app()


@app.get(f"{API_PREFIX}/openapi.json", summary="This API's OpenAPI 3 document", tags=["system"],
         description="No auth.", responses=ok("The OpenAPI 3.1 document"))
def openapi() -> dict[str, Any]:
    return load_document()


lambda_handler = entry_point(app)
