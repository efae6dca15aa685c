"""EventBridge schedules → Lambda: every ``rate(...)`` event of the template, scaled."""

from __future__ import annotations

import logging
import time
import traceback
import uuid
from typing import TYPE_CHECKING, Any

from llmcredits.local.embedded import (
    region,
)
from llmcredits.local.streams import Worker
from llmcredits.local.template import (
    LOCAL_ACCOUNT_ID,
    ScheduleEvent,
)
from llmcredits.units import Seconds

if TYPE_CHECKING:
    from llmcredits.local.server import LocalStack

log = logging.getLogger("llmcredits.local")


def scheduled_event(rule_name: str, region_name: str) -> dict[str, Any]:
    """The EventBridge "Scheduled Event" Lambda receives from a rate() rule."""
    return {
        "version": "0",
        "id": str(uuid.uuid4()),
        "detail-type": "Scheduled Event",
        "source": "aws.events",
        "account": LOCAL_ACCOUNT_ID,
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "region": region_name,
        "resources": [f"arn:aws:events:{region_name}:{LOCAL_ACCOUNT_ID}:rule/{rule_name}"],
        "detail": {},
    }


class ScheduleWorker(Worker):
    """Invokes a function every rate(...) period (scaled), as EventBridge would."""

    def __init__(self, stack: LocalStack, event: ScheduleEvent, period: Seconds) -> None:
        super().__init__(f"schedule-{event.function_id}-{event.event_name}")
        self.stack = stack
        self.event = event
        self.period = period
        self.invocations = 0

    def run(self) -> None:
        while not self.stop_event.wait(self.period):
            self.fire()

    def fire(self) -> Any:
        ev = self.event
        payload = (
            ev.input
            if ev.input is not None
            else scheduled_event(
                f"{self.stack.stack_name}-{ev.function_id}{ev.event_name}", region()
            )
        )
        try:
            return self.stack.functions.invoke(ev.function_id, payload)
        except Exception:
            log.error("scheduled %s failed\n%s", ev.function_id, traceback.format_exc())
            return None
        finally:
            self.invocations += 1
