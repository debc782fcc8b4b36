"""A local OpenAI-compatible server: ``POST /v1/chat/completions`` answered per scenario."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from tests.support.local_server import LocalServer, QuietHandler

Scenario = Callable[[dict[str, Any]], tuple[int, Any, float]]
"""request body → (status, response body, delay in seconds)."""


def completion(message: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": "chatcmpl-test",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": "test-model",
        "choices": [{"index": 0, "message": message, "finish_reason": "tool_calls"}],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
    }


def tool_call(name: str, arguments: Any) -> tuple[int, Any, float]:
    raw = arguments if isinstance(arguments, str) else json.dumps(arguments)
    message = {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": name, "arguments": raw}}
        ],
    }
    return 200, completion(message), 0.0


def text_only(content: str) -> tuple[int, Any, float]:
    return 200, completion({"role": "assistant", "content": content}), 0.0


@dataclass
class LlmApi(LocalServer):
    scenario: Scenario = field(default=lambda body: text_only("no idea"))
    requests: list[dict[str, Any]] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        api = self

        class Handler(QuietHandler):
            def do_GET(self) -> None:
                """The models it offers (what a provider's check reads)."""
                with api._lock:
                    api.headers.append(dict(self.headers))
                if self.path != "/v1/models":
                    with api._lock:
                        api.unexpected.append(self.path)
                    self.send_json(404, {"error": {"message": "not found"}})
                    return
                self.send_json(200, {"object": "list", "data": [{"id": "test-model"}]})

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length) or b"{}")
                if self.path != "/v1/chat/completions":
                    with api._lock:
                        api.unexpected.append(self.path)
                    self.send_json(404, {"error": {"message": "not found"}})
                    return
                with api._lock:
                    api.requests.append(body)
                    api.headers.append(dict(self.headers))
                status, answer, delay_s = api.scenario(body)
                if delay_s:
                    time.sleep(delay_s)
                self.send_json(status, answer)

        self._serve(Handler)

    @property
    def base_url(self) -> str:
        return f"{self.url}/v1"
