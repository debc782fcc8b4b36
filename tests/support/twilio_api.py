"""A local HTTP server speaking Twilio's Messages REST API, for the outbound side.

``POST /2010-04-01/Accounts/{AccountSid}/Messages.json`` with HTTP basic auth (AccountSid and
auth token) and form fields, answered with Twilio's JSON: a message resource on success, or
Twilio's error body (``code``, ``message``, ``more_info``, ``status``). Errors can be scripted in
order (e.g. one 429 then success); anything else is a loud 404 recorded in ``unexpected``.
"""

from __future__ import annotations

import base64
import re
import threading
import time
import uuid
from dataclasses import dataclass, field
from urllib.parse import parse_qs

from tests.support.local_server import LocalServer, QuietHandler

ERRORS = {
    20003: (401, "Authenticate"),
    20429: (429, "Too Many Requests"),
    21211: (400, "The 'To' number is not a valid phone number."),
    63016: (
        400,
        "Failed to send freeform message because you are outside the allowed window. "
        "If you are using WhatsApp, please use a Message Template.",
    ),
    20500: (500, "An internal server error has occurred"),
    20503: (503, "Service unavailable"),
}


@dataclass
class SentMessage:
    sid: str
    form: dict[str, list[str]]
    at: float

    def one(self, name: str) -> str | None:
        values = self.form.get(name)
        return values[0] if values else None

    @property
    def to(self) -> str | None:
        return self.one("To")

    @property
    def from_(self) -> str | None:
        return self.one("From")

    @property
    def body(self) -> str | None:
        return self.one("Body")

    @property
    def media(self) -> list[str]:
        return self.form.get("MediaUrl", [])


@dataclass
class TwilioApi(LocalServer):
    account_sid: str
    auth_token: str
    sent: list[SentMessage] = field(default_factory=list)
    attempts: list[SentMessage] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    errors: list[int] = field(default_factory=list)
    """Twilio error codes to answer, one per request, before succeeding again."""
    delay_s: float = 0.0

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        api = self
        path = re.compile(r"^/2010-04-01/Accounts/(?P<sid>AC\w+)/Messages\.json$")

        class Handler(QuietHandler):
            def _error(self, code: int) -> None:
                status, message = ERRORS[code]
                self.send_json(
                    status,
                    {
                        "code": code,
                        "message": message,
                        "more_info": f"https://www.twilio.com/docs/errors/{code}",
                        "status": status,
                    },
                )

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length).decode()
                match = path.match(self.path)
                if match is None:
                    with api._lock:
                        api.unexpected.append(f"POST {self.path}")
                    self.send_json(404, {"code": 20404, "message": "not found", "status": 404})
                    return
                expected = (
                    "Basic "
                    + base64.b64encode(f"{api.account_sid}:{api.auth_token}".encode()).decode()
                )
                if match["sid"] != api.account_sid or self.headers.get("Authorization") != expected:
                    self._error(20003)
                    return
                form = parse_qs(raw, keep_blank_values=True)
                record = SentMessage(sid="SM" + uuid.uuid4().hex, form=form, at=time.monotonic())
                with api._lock:
                    api.attempts.append(record)
                    error = api.errors.pop(0) if api.errors else None
                    if error is None:
                        api.sent.append(record)
                if api.delay_s:
                    time.sleep(api.delay_s)
                if error is not None:
                    self._error(error)
                    return
                self.send_json(
                    201,
                    {
                        "sid": record.sid,
                        "account_sid": api.account_sid,
                        "status": "queued",
                        "to": record.to,
                        "from": record.from_,
                        "body": record.body,
                        "num_media": str(len(record.media)),
                        "error_code": None,
                        "error_message": None,
                        "uri": f"/2010-04-01/Accounts/{api.account_sid}/Messages/{record.sid}.json",
                    },
                )

        self._serve(Handler)
