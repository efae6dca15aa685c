"""POSTs a signed alert to a user's webhook URL (httpx).

Short timeouts (a slow receiver holds one attempt for seconds, never the stream or a
chat request), redirects are not followed (a 3xx is a failed attempt: the URL was
checked when it was saved, its redirect target was not), the response body is never
read, and the environment's proxies are ignored.
"""

from __future__ import annotations

import httpx

from llmcredits.units import Seconds

CONNECT_TIMEOUT: Seconds = 2.0
TOTAL_TIMEOUT: Seconds = 5.0


class HttpWebhookSender:
    def __init__(self, timeout: Seconds = TOTAL_TIMEOUT, connect: Seconds = CONNECT_TIMEOUT
                 ) -> None:
        self._client = httpx.Client(
            timeout=httpx.Timeout(timeout, connect=connect), follow_redirects=False,
            trust_env=False,
        )

    def post(self, url: str, body: bytes, headers: dict[str, str]) -> int:
        """The response's status; raises httpx.HTTPError when no answer came."""
        with self._client.stream("POST", url, content=body, headers=headers) as resp:
            return resp.status_code  # the body is never read
