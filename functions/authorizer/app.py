"""The REST API's Lambda REQUEST authorizer: a login JWT or an API key → a policy.

Identity source: the Authorization header (API Gateway caches the answer per header
value for the template's AuthorizerCacheTtl). "Unauthorized" is the one exception text
API Gateway turns into a 401; anything else would be a 500.
"""

from typing import Any

from aws_lambda_powertools.utilities.typing import LambdaContext
from llmcredits import bootstrap
from llmcredits.domain.principal import InvalidCredential
from llmcredits.http.api import logger


@logger.inject_lambda_context
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    try:
        return bootstrap.authorizer().authorize(event)
    except InvalidCredential as exc:
        # Why, for our logs (never the credential itself); the client sees a plain 401.
        logger.info("credential refused", extra={"reason": str(exc)})
        raise Exception("Unauthorized") from None
