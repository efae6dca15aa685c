"""Alert events onto the EventBridge bus (``EVENT_BUS_NAME``; the template's AlertsEventBus).

Each event is one entry: source ``llmcredits``, detail-type the event type
(``balance.low``, ...), detail the event's payload (with its ``id``: PutEvents may
deliver twice, so rules' targets dedupe by it, as webhook receivers do).
"""

from __future__ import annotations

import json
import os
from typing import Any, Protocol

import boto3
from botocore.config import Config

from llmcredits.dal.aws import region

SOURCE = "llmcredits"
_CONFIG = Config(retries={"mode": "standard", "max_attempts": 3}, connect_timeout=2, read_timeout=5)


class EventPublisher(Protocol):
    def publish(self, detail_type: str, user_id: str, detail: dict[str, Any],
                event_id: str) -> None:
        """Put one event on the bus; raises when it was not accepted."""
        ...


class PublishFailed(Exception):
    pass


class EventBridgePublisher:
    def __init__(self, client: Any, bus_name: str) -> None:
        self._client = client
        self._bus = bus_name

    @classmethod
    def from_env(cls) -> EventBridgePublisher:
        client = boto3.client("events", region_name=region(), config=_CONFIG,
                              endpoint_url=os.environ.get("EVENTS_ENDPOINT") or None)
        return cls(client, os.environ.get("EVENT_BUS_NAME", "default"))

    def publish(self, detail_type: str, user_id: str, detail: dict[str, Any],
                event_id: str) -> None:
        resp = self._client.put_events(Entries=[{
            "Source": SOURCE,
            "DetailType": detail_type,
            "Detail": json.dumps(detail, sort_keys=True),
            "EventBusName": self._bus,
            "Resources": [],
        }])
        if resp.get("FailedEntryCount"):
            entry = (resp.get("Entries") or [{}])[0]
            raise PublishFailed(f"event {event_id} not accepted by the bus: "
                                f"{entry.get('ErrorCode')} {entry.get('ErrorMessage')}")
