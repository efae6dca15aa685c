"""GET /health: liveness, no auth, no AWS calls."""

from llmcredits import __version__
from llmcredits.http.api import API_PREFIX, entry_point, make_app
from llmcredits.http.openapi_responses import ok
from llmcredits.models import HealthResponse

app = make_app()


@app.get(f"{API_PREFIX}/health", summary="Liveness", tags=["system"],
         description="No auth, no AWS calls.", responses=ok("Alive"))
def health() -> HealthResponse:
    return HealthResponse(status="ok", version=__version__)


lambda_handler = entry_point(app)
