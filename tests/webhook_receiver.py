"""A loopback webhook receiver for the alert tests."""

from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from llmcredits import webhooks


class Receiver:
    """A loopback webhook receiver: records every POST (headers, raw body)."""

    def __init__(self, status: int = 200) -> None:
        self.status = status
        self.requests: list[tuple[dict[str, str], bytes]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                receiver.requests.append(({k.lower(): v for k, v in self.headers.items()}, body))
                # A redirect points at a path of this receiver that would answer 200:
                # following it would count as a delivery.
                status = 200 if self.path.endswith("/moved") else receiver.status
                self.send_response(status)
                if 300 <= status < 400:
                    self.send_header("Location", receiver.url + "/moved")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def events(self, secret: str, tolerance: int = 300) -> list[dict[str, Any]]:
        """Every received event, each checked against its signature."""
        return [webhooks.verify(body, headers.get("llmcredits-signature"), secret, tolerance)
                for headers, body in self.requests]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def wait_for(self, count: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while len(self.requests) < count:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.05)
        return True
