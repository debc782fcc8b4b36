"""A local HTTP server speaking the Telegram Bot API: ``POST /bot<token>/<method>``.

Answers with Telegram's envelopes: ``{"ok": true, "result": ...}`` or ``{"ok": false,
"error_code": ..., "description": ..., "parameters": {"retry_after": ...}}``. Errors can be
scripted per method, in order. A wrong token gets Telegram's 401; an unknown method a 404 that is
also recorded in ``unexpected``.
"""

from __future__ import annotations

import contextlib
import email.policy
import itertools
import json
import re
import threading
import time
from dataclasses import dataclass, field
from email.message import EmailMessage
from email.parser import BytesParser
from typing import Any
from urllib.parse import parse_qs

from tests.support.local_server import LocalServer, QuietHandler

BOT_TOKEN = "123456789:AAHdqTcvCH1vGWJxfSeofSAs0K5PALDsaw_test"

BLOCKED = (403, "Forbidden: bot was blocked by the user")
CHAT_NOT_FOUND = (400, "Bad Request: chat not found")


def too_many(retry_after: int) -> tuple[int, str, int]:
    return 429, f"Too Many Requests: retry after {retry_after}", retry_after


class BadRequest(Exception):
    """What the Bot API answers 400 with (its ``description``)."""


@dataclass
class Call:
    method: str
    params: dict[str, Any]
    at: float


@dataclass
class TelegramApi(LocalServer):
    token: str = BOT_TOKEN
    calls: list[Call] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    errors: dict[str, list[tuple[Any, ...]]] = field(default_factory=dict)
    webhook: dict[str, Any] = field(default_factory=dict)

    METHODS = frozenset(
        {
            "getMe",
            "sendMessage",
            "sendPhoto",
            "sendDocument",
            "answerCallbackQuery",
            "setWebhook",
            "getWebhookInfo",
            "deleteWebhook",
        }
    )

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._ids: dict[str, itertools.count[int]] = {}  # message ids count per chat
        api = self
        path = re.compile(r"^/bot(?P<token>[^/]+)/(?P<method>\w+)$")

        class Handler(QuietHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length)
                match = path.match(self.path)
                if match is None or match["method"] not in api.METHODS:
                    with api._lock:
                        api.unexpected.append(f"POST {self.path}")
                    self.send_json(
                        404, {"ok": False, "error_code": 404, "description": "Not Found"}
                    )
                    return
                if match["token"] != api.token:
                    self.send_json(
                        401, {"ok": False, "error_code": 401, "description": "Unauthorized"}
                    )
                    return
                params = _params(self.headers.get("Content-Type", ""), raw)
                method = match["method"]
                with api._lock:
                    api.calls.append(Call(method, params, time.monotonic()))
                    scripted = api.errors.get(method)
                    error = scripted.pop(0) if scripted else None
                if error is not None:
                    body: dict[str, Any] = {
                        "ok": False,
                        "error_code": error[0],
                        "description": error[1],
                    }
                    if len(error) > 2:
                        body["parameters"] = {"retry_after": error[2]}
                    self.send_json(error[0], body)
                    return
                try:
                    result = api.result(method, params)
                except BadRequest as exc:
                    self.send_json(400, {"ok": False, "error_code": 400, "description": str(exc)})
                    return
                self.send_json(200, {"ok": True, "result": result})

        self._serve(Handler)

    def result(self, method: str, params: dict[str, Any]) -> Any:
        if method == "getMe":
            return {
                "id": int(self.token.split(":")[0]),
                "is_bot": True,
                "first_name": "Switchboard",
                "username": "switchboard_test_bot",
            }
        if method in {"sendMessage", "sendPhoto", "sendDocument"}:
            if "chat_id" not in params:  # e.g. a sender that died mid-request
                raise BadRequest("Bad Request: chat_id is empty")
            message: dict[str, Any] = {
                "message_id": next(
                    self._ids.setdefault(str(params["chat_id"]), itertools.count(1))
                ),
                "date": int(time.time()),
                "chat": {"id": int(params["chat_id"]), "type": "private"},
            }
            if "text" in params:
                message["text"] = params["text"]
            return message
        if method == "setWebhook":
            self.webhook = {
                "url": params.get("url", ""),
                "secret_token": params.get("secret_token"),
                "allowed_updates": params.get("allowed_updates"),
                "drop_pending_updates": params.get("drop_pending_updates"),
            }
            return True
        if method == "deleteWebhook":
            self.webhook = {}
            return True
        if method == "getWebhookInfo":
            return {
                "url": self.webhook.get("url", ""),
                "has_custom_certificate": False,
                "pending_update_count": 0,
                "allowed_updates": self.webhook.get("allowed_updates") or [],
            }
        return True

    def calls_to(self, method: str) -> list[Call]:
        return [c for c in self.calls if c.method == method]


def _params(content_type: str, raw: bytes) -> dict[str, Any]:
    """Bot API parameters: JSON, or form fields whose values may be JSON (as PTB sends them)."""
    if content_type.startswith("application/json"):
        loaded: dict[str, Any] = json.loads(raw or b"{}")
        return loaded
    if content_type.startswith("multipart/form-data"):
        return _multipart(content_type, raw)
    return {
        key: _field(values[0])
        for key, values in parse_qs(raw.decode(), keep_blank_values=True).items()
    }


def _multipart(content_type: str, raw: bytes) -> dict[str, Any]:
    """An upload's parts: fields as in a form; a file as (its name, its bytes, its type)."""
    whole = BytesParser(policy=email.policy.HTTP).parsebytes(
        f"Content-Type: {content_type}\r\n\r\n".encode() + raw
    )
    params: dict[str, Any] = {}
    for part in whole.iter_parts():
        assert isinstance(part, EmailMessage)
        name = part.get_param("name", header="content-disposition")
        content = part.get_payload(decode=True)
        assert isinstance(name, str)
        assert isinstance(content, bytes)
        filename = part.get_filename()
        params[name] = (
            (filename, content, part.get_content_type()) if filename else _field(content.decode())
        )
    return params


def _field(value: Any) -> Any:
    with contextlib.suppress(ValueError):
        if value[:1] in "[{" or value in {"true", "false"}:
            return json.loads(value)
    return value
