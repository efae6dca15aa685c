"""DELETE /byok/keys/{provider}: forget the caller's stored key."""

from aws_lambda_powertools.event_handler import Response
from llmcredits.bootstrap import byok_service
from llmcredits.http.api import API_PREFIX, entry_point, make_app, require_jwt
from llmcredits.http.openapi_responses import JWT_ONLY, errors, no_content

app = make_app()


@app.delete(
    f"{API_PREFIX}/byok/keys/<provider>",
    summary="Delete your key",
    tags=["byok"],
    description="Only the caller's own key for `provider` is ever affected.",
    responses={**no_content("Deleted"),
               **errors(400, 401, JWT_ONLY, (404, "You have no stored key for this provider"))},
)
def delete_byok_key(provider: str) -> Response[None]:
    byok_service().delete(require_jwt(app).user_id, provider)
    return Response(status_code=204, body=None)


lambda_handler = entry_point(app)
