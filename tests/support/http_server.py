"""A real HTTP server on 127.0.0.1 for outbound calls, answering from a script.

Each expected path has a list of answers consumed in order; a call nobody scripted is answered
599 and recorded in ``unexpected``, which the fixture asserts empty at teardown.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from tests.support.local_server import LocalServer, QuietHandler


@dataclass
class Answer:
    status: int = 200
    body: Any = None
    delay_s: float = 0.0
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


class ScriptedServer(LocalServer):
    def __init__(self) -> None:
        self.script: dict[str, list[Answer]] = {}
        self.seen: list[Seen] = []
        self.unexpected: list[str] = []
        self._lock = threading.Lock()
        owner = self

        class Handler(QuietHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length)
                with owner._lock:
                    owner.seen.append(Seen("POST", self.path, dict(self.headers), body))
                    answers = owner.script.get(self.path)
                    answer = answers.pop(0) if answers else None
                    if answer is None:
                        owner.unexpected.append(f"POST {self.path}")
                if answer is None:
                    answer = Answer(599, {"error": "unexpected call"})
                if answer.delay_s:
                    time.sleep(answer.delay_s)
                payload = (
                    answer.body.encode()
                    if isinstance(answer.body, str)
                    else json.dumps(answer.body).encode()
                )
                self.send_response(answer.status)
                content_type = "text/plain" if isinstance(answer.body, str) else "application/json"
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(payload)))
                for key, value in answer.headers.items():
                    self.send_header(key, value)
                self.end_headers()
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                    self.wfile.write(payload)

        self._serve(Handler)

    def expect(self, path: str, *answers: Answer) -> None:
        with self._lock:
            self.script.setdefault(path, []).extend(answers)
