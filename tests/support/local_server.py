"""The part every local test double shares: a threaded HTTP server on 127.0.0.1."""

from __future__ import annotations

import contextlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Self


class QuietHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    """Connections kept alive between calls, as at the real providers (every answer says its
    Content-Length)."""
    disable_nagle_algorithm = True
    """An answer's headers and body go out at once (with Nagle's algorithm the body waited for
    the client's delayed ACK of the headers: 40 ms per call on a kept-alive connection)."""

    def log_message(self, format: str, *args: Any) -> None:
        return

    def send_json(self, status: int, body: Any) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            self.wfile.write(data)


class _Server(ThreadingHTTPServer):
    request_queue_size = 128
    """A burst of calls waits to be accepted, as at a real server: socketserver's backlog of 5
    overflowed when a worker called with 20 jobs in flight on a loaded machine, and the
    connections it could not queue were reset (the handler saw ``ReadError``)."""


class LocalServer:
    """Serve ``handler`` on a free port while used as a context manager; ``url`` is its base."""

    def _serve(self, handler: type[BaseHTTPRequestHandler]) -> None:
        self._server = _Server(("127.0.0.1", 0), handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
