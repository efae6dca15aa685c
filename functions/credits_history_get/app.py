"""GET /credits/history: the caller's ledger, newest first, with an opaque cursor."""

from typing import Annotated

from aws_lambda_powertools.event_handler.openapi.params import Query
from llmcredits.bootstrap import ledger_service
from llmcredits.domain.ledger import EntryType
from llmcredits.http.api import API_PREFIX, caller, entry_point, make_app
from llmcredits.http.openapi_responses import errors, ok
from llmcredits.models import EntryTypeName, HistoryResponse, LedgerEntryOut
from llmcredits.views import entry_view

app = make_app()


@app.get(
    f"{API_PREFIX}/credits/history",
    summary="Ledger entries, newest first",
    tags=["credits"],
    description="Pass `next_cursor` back as `cursor` for the next page (null: no more). A "
    "cursor is bound to its user: another user's cursor is refused (400).",
    responses={**ok("A page of your ledger"),
               **errors((400, "Invalid limit, type or cursor"), 401)},
)
def get_history(
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: Annotated[str | None, Query(max_length=2048)] = None,
    type: Annotated[EntryTypeName | None, Query()] = None,
    key_id: Annotated[str | None, Query(max_length=64, pattern=r"^[A-Za-z0-9_-]+$",
                                        description="Only usage made with this API key")] = None,
) -> HistoryResponse:
    page = ledger_service().history(
        caller(app).user_id, limit, cursor, EntryType(type) if type else None, key_id
    )
    return HistoryResponse(
        items=[LedgerEntryOut(**entry_view(e)) for e in page.entries],
        next_cursor=page.next_cursor,
    )


lambda_handler = entry_point(app)
