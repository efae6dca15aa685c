"""GET /generations/{request_id}: the caller's own charge for one chat request.

At most three consistent GetItems in the caller's partition, no query or scan: the
hold (open: ``pending``), else the ``hold-charged`` marker, then the entry it names.
The hold is read first: a settle deletes the hold and writes the marker and the entry
in one transaction, so a hold found absent means any settle of it is already visible.
"""

from __future__ import annotations

import logging

from llmcredits.domain.generations import Generation, generation_of
from llmcredits.domain.ledger import hold_charged_key, hold_id_for
from llmcredits.domain.ports import GenerationReads
from llmcredits.errors import NotFound

log = logging.getLogger(__name__)

NOT_FOUND_MESSAGE = (
    "No charge for this request id on your account: the id is unknown, belongs to "
    "another account, or the request charged nothing (it failed before an answer)."
)


class GenerationsService:
    def __init__(self, store: GenerationReads) -> None:
        self._store = store

    def get(self, user_id: str, request_id: str) -> Generation:
        """The generation, or 404 (the same answer whoever's id it is: no oracle)."""
        hold_id = hold_id_for(user_id, request_id)
        hold = self._store.get_hold(user_id, hold_id)
        entry = None
        if hold is None:
            marker = self._store.get_record(hold_charged_key(hold_id), user_id)
            if marker is not None and marker.get("entry_created_at"):
                entry = self._store.get_entry(user_id, str(marker["entry_created_at"]),
                                              str(marker["entry_id"]))
                if entry is None:  # written with the marker, in one transaction
                    log.error("hold-charged marker names no entry",
                              extra={"hold_id": hold_id, "entry_id": marker["entry_id"]})
        generation = generation_of(request_id, hold, entry)
        if generation is None:
            raise NotFound(NOT_FOUND_MESSAGE, code="generation_not_found", param="request_id")
        return generation
