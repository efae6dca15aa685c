"""The local stack's HTTP server: one thread per connection (keep-alive), a listen
backlog deep enough that 64 concurrent clients are never refused, and chunked
responses for streamed bodies."""

from __future__ import annotations

import sys
import time
import traceback
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

from llmcredits.local import gateway
from llmcredits.local.gateway import HttpResponse

if TYPE_CHECKING:
    from llmcredits.local.server import LocalStack

#: listen(2) backlog: connections the kernel queues before accept(); Python's default 5
#: refused clients when 64 connected at once.
LISTEN_BACKLOG = 256


class LocalHttpServer(ThreadingHTTPServer):
    request_queue_size = LISTEN_BACKLOG
    daemon_threads = True
    allow_reuse_address = True


class RequestHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body go out in separate writes: without TCP_NODELAY, Nagle plus the
    # client's delayed ACK adds ~40 ms to every keep-alive response.
    disable_nagle_algorithm = True
    server_version = "llmcredits-local"
    stack: LocalStack  # set on the subclass made by LocalStack

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        pass

    def log_message(self, format: str, *args: Any) -> None:
        sys.stderr.write("local-api: " + (format % args) + "\n")

    def do_GET(self) -> None:
        self._handle()

    # Every method reaches the gateway, which answers an undeclared one (TRACE, ...) as
    # API Gateway does, instead of http.server's HTML 501.
    do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = do_TRACE = do_GET
    do_CONNECT = do_PROPFIND = do_LINK = do_UNLINK = do_GET

    def _read_body(self) -> bytes | None:
        """The request body, or None when it exceeds the HTTP API limit."""
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            chunks: list[bytes] = []
            total = 0
            while True:
                size_line = self.rfile.readline(1024).split(b";")[0].strip()
                size = int(size_line or b"0", 16)
                if size == 0:
                    while self.rfile.readline(1024) not in (b"\r\n", b"\n", b""):
                        pass
                    break
                total += size
                if total > gateway.MAX_REQUEST_BODY_BYTES:
                    self.close_connection = True
                    return None
                chunks.append(self.rfile.read(size))
                self.rfile.readline(1024)
            return b"".join(chunks)
        length = int(self.headers.get("Content-Length") or 0)
        if length > gateway.MAX_REQUEST_BODY_BYTES:
            self.close_connection = True
            return None
        return self.rfile.read(length) if length > 0 else b""

    def _send(self, resp: HttpResponse, request_id: str) -> None:
        self.send_response(resp.status)
        skip = {"content-length", "transfer-encoding", "connection", "date", "server"}
        for name, value in resp.headers:
            if name.lower() not in skip:
                self.send_header(name, value)
        self.send_header("x-amzn-RequestId", request_id)
        if resp.chunks is not None:
            self._send_chunks(resp)
            return
        self.send_header("Content-Length", str(len(resp.body)))
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD" and resp.body:
            self.wfile.write(resp.body)

    def _send_chunks(self, resp: HttpResponse) -> None:
        """A streamed body: each chunk is on the wire as soon as the function yields it."""
        assert resp.chunks is not None
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        try:
            for chunk in resp.chunks:
                if chunk:
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                    self.wfile.flush()
            self.wfile.write(b"0\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True  # the client left; the producer sees GeneratorExit
        except Exception:
            # The function failed mid-stream (in AWS: error trailers, then the stream
            # ends): the status is out, so end the connection without the last chunk.
            traceback.print_exc(file=sys.stderr)
            self.close_connection = True
        finally:
            close = getattr(resp.chunks, "close", None)
            if callable(close):
                close()

    def _handle(self) -> None:
        started = time.monotonic()
        stack = self.stack
        request_id = str(uuid.uuid4())  # API Gateway's request ids are UUIDs (URL-safe)
        raw_path, _, raw_query = self.path.partition("?")
        function_id = "-"
        try:
            resp, function_id = stack.handle_request(
                method=self.command,
                raw_path=raw_path,
                raw_query=raw_query,
                header_items=list(self.headers.items()),
                read_body=self._read_body,
                source_ip=self.client_address[0],
                request_id=request_id,
                protocol=self.request_version,
            )
        except Exception:
            traceback.print_exc(file=sys.stderr)
            resp = HttpResponse(
                500, [("content-type", "application/json")], b'{"message":"Internal server error"}'
            )
        # One access line per request, written before the response is sent.
        sys.stderr.write(
            f"{self.client_address[0]} - [{time.strftime('%d/%b/%Y %H:%M:%S')}] "
            f'"{self.command} {self.path} {self.request_version}" '
            f"{resp.status} {len(resp.body)} "
            f"{(time.monotonic() - started) * 1000:.1f}ms {function_id} {request_id}\n"
        )
        self._send(resp, request_id)


