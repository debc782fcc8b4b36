"""A local HTTP server speaking the WhatsApp Cloud API's side of the Graph API.

``POST /{version}/{phone_number_id}/messages`` with ``Authorization: Bearer <token>`` and a JSON
body, answered as Meta does: ``{"messaging_product": "whatsapp", "contacts": [...], "messages":
[{"id": "wamid...", "message_status": "accepted"}]}``, or Graph's error envelope ``{"error":
{"message", "type", "code", "error_data": {"messaging_product", "details"}, "error_subcode",
"fbtrace_id"}}``. Errors can be scripted in order (e.g. one 130429, then success); a bad token
gets Graph's 401 (code 190); any other path a 400 (code 100) also recorded in ``unexpected``.
"""

from __future__ import annotations

import json
import re
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from tests.support.local_server import LocalServer, QuietHandler

PHONE_NUMBER_ID = "106540352242922"
ACCESS_TOKEN = "EAAGtest-access-token-0123456789"
VERSION = "v21.0"

ERRORS: dict[int, tuple[int, str, str]] = {
    130429: (400, "(#130429) Rate limit hit", "Cloud API message throughput has been reached."),
    131026: (400, "(#131026) Message Undeliverable", "Unable to deliver message."),
    131047: (
        400,
        "(#131047) Re-engagement message",
        "Message failed to send because more than 24 hours have passed since the customer "
        "last replied to this number.",
    ),
    131000: (500, "(#131000) Something went wrong", "Message failed to send."),
    2: (503, "(#2) Service temporarily unavailable", "Temporary downtime."),
}


@dataclass
class Scripted:
    code: int
    retry_after_s: float | None = None


@dataclass
class GraphApi(LocalServer):
    phone_number_id: str = PHONE_NUMBER_ID
    token: str = ACCESS_TOKEN
    version: str = VERSION
    sent: list[dict[str, Any]] = field(default_factory=list)
    attempts: list[dict[str, Any]] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    errors: list[Scripted] = field(default_factory=list)
    """Graph error codes to answer, one per request, before succeeding again."""

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        api = self
        path = re.compile(r"^/(?P<version>v\d+\.\d+)/(?P<number>\d+)/messages$")

        class Handler(QuietHandler):
            def _graph_error(
                self, status: int, code: int, message: str, details: str = "", **headers: str
            ) -> None:
                error: dict[str, Any] = {
                    "message": message,
                    "type": "OAuthException",
                    "code": code,
                    "error_subcode": 2494010,
                    "fbtrace_id": "A" + uuid.uuid4().hex[:20],
                }
                if details:
                    error["error_data"] = {"messaging_product": "whatsapp", "details": details}
                data = json.dumps({"error": error}).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for name, value in headers.items():
                    self.send_header(name.replace("_", "-"), value)
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length)
                match = path.match(self.path)
                if (
                    match is None
                    or match["version"] != api.version
                    or match["number"] != api.phone_number_id
                ):
                    with api._lock:
                        api.unexpected.append(f"POST {self.path}")
                    self._graph_error(400, 100, "Unsupported post request.")
                    return
                if self.headers.get("Authorization") != f"Bearer {api.token}":
                    self._graph_error(401, 190, "Invalid OAuth access token.")
                    return
                body = json.loads(raw)
                with api._lock:
                    api.attempts.append(body)
                    scripted = api.errors.pop(0) if api.errors else None
                    if scripted is None:
                        api.sent.append(body)
                if scripted is not None:
                    status, message, details = ERRORS[scripted.code]
                    headers = {}
                    if scripted.retry_after_s is not None:
                        headers["Retry_After"] = str(scripted.retry_after_s)
                    self._graph_error(status, scripted.code, message, details, **headers)
                    return
                self.send_json(
                    200,
                    {
                        "messaging_product": "whatsapp",
                        "contacts": [{"input": body["to"], "wa_id": body["to"].lstrip("+")}],
                        "messages": [
                            {"id": f"wamid.{uuid.uuid4().hex}", "message_status": "accepted"}
                        ],
                    },
                )

        self._serve(Handler)

    def ids(self) -> list[str]:
        return [body.get("biz_opaque_callback_data", "") for body in self.sent]

    def wait_sent(self, count: int, timeout_s: float = 15.0) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout_s
        while len(self.sent) < count:
            if time.monotonic() > deadline:
                raise AssertionError(f"{len(self.sent)} of {count} messages sent: {self.sent}")
            time.sleep(0.02)
        return list(self.sent)
