"""DELETE /byok/keys/{provider}: forget the caller's stored key."""

from aws_lambda_powertools.event_handler import Response
from llmcredits.bootstrap import byok_service
from llmcredits.http.api import API_PREFIX, caller, entry_point, make_app

app = make_app()


@app.delete(
    f"{API_PREFIX}/byok/keys/<provider>",
    summary="Delete your key",
    tags=["byok"],
    responses={204: {"description": "Deleted"}},
)
def delete_byok_key(provider: str) -> Response[None]:
    byok_service().delete(caller(app).user_id, provider)
    return Response(status_code=204, body=None)


lambda_handler = entry_point(app)
