"""Every HTTP request is answered within ``SWITCHBOARD_REQUEST_TIMEOUT_S``, whatever it waits on.

The database's own timeouts bound each wait (a free connection, connecting, one statement), but
a request that needs several in a row, behind others doing the same while PostgreSQL hangs,
can add them up past what a provider or a client waits. :class:`RequestDeadline` answers such a
request ``503`` when its time is up and lets its work run on unseen (never cancelled inside a
database call: its own timeouts end it), dropping whatever it would have answered. The answer
says ``unavailable`` when a dependency has just been seen down, else ``overloaded``: the
gateway is up but too much arrives at once.
"""

from __future__ import annotations

import asyncio
import time
from functools import partial
from typing import Any

import msgspec
from litestar.enums import ScopeType
from litestar.types import (
    ASGIApp,
    HTTPResponseBodyEvent,
    HTTPResponseStartEvent,
    Message,
    Receive,
    Scope,
    Send,
)
from sqlalchemy import event
from sqlalchemy.engine import ExceptionContext
from sqlalchemy.ext.asyncio import AsyncEngine

from dispatch.infra.errors import Overloaded, Unavailable
from dispatch.infra.outage import is_unavailable
from gateway.exceptions import RETRY_AFTER_S

__all__ = ["DEADLINE", "Deadline", "OutageWatch", "RequestDeadline"]

DEADLINE = "switchboard_deadline"
"""Where a request's :class:`Deadline` is in its ASGI scope."""
RECENT_S = 10.0
"""A dependency seen down this recently explains a request that ran out of time."""
ANSWERING_S = 1.0
"""The database answered this recently: it is up, whatever waits for it."""


class OutageWatch:
    """When a dependency (the database, Redis) was last seen down: by a request answered 503,
    or by the database engine itself, the moment a statement or a connection fails (before the
    clean-up after it, which can hang as long again on a frozen server)."""

    def __init__(self) -> None:
        self._last = -RECENT_S
        self._answered = -RECENT_S

    def watch(self, engine: AsyncEngine) -> None:
        """Be told of the engine's connection and statement failures, and of its answers."""

        def failed(context: ExceptionContext) -> None:
            if is_unavailable(context.original_exception):
                self.seen()

        def answered(*_: Any) -> None:
            self._answered = time.monotonic()

        event.listen(engine.sync_engine, "handle_error", failed)
        event.listen(engine.sync_engine, "after_cursor_execute", answered)

    def seen(self) -> None:
        self._last = time.monotonic()

    def recent(self) -> bool:
        return time.monotonic() - self._last < RECENT_S

    def overloaded(self) -> bool:
        """Whether a request that could not be served in time was held up by our own load:
        the database answered a statement within the last second and nothing was seen down.
        (Every connection busy while it answers is a queue; busy while it answers nothing,
        a frozen server.)"""
        return not self.recent() and time.monotonic() - self._answered < ANSWERING_S


class Deadline:
    """When a request must be answered by; a route that waits on purpose (a synchronous
    execution) extends it once it is past what could hang."""

    def __init__(self, budget_s: float) -> None:
        self._at = time.monotonic() + budget_s
        self.budget_s = budget_s

    def remaining_s(self) -> float:
        return self._at - time.monotonic()

    def extend(self, wait_s: float) -> None:
        """Allow ``wait_s`` of deliberate waiting more, from now, plus the usual budget."""
        self._at = max(self._at, time.monotonic() + wait_s + self.budget_s)


def _wake(future: asyncio.Future[None], *_: object) -> None:
    if not future.done():
        future.set_result(None)


def _body(error: Unavailable | Overloaded) -> bytes:
    return msgspec.json.encode({"error": error.code, "detail": error.detail})


class RequestDeadline:
    """ASGI middleware (route level, so the scope knows its route): see the module."""

    def __init__(self, app: ASGIApp, *, budget_s: float, outages: OutageWatch) -> None:
        self._app = app
        self._budget_s = budget_s
        self._outages = outages
        self._abandoned: set[asyncio.Future[Any]] = set()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != ScopeType.HTTP:
            await self._app(scope, receive, send)
            return
        deadline = Deadline(self._budget_s)
        scope[DEADLINE] = deadline  # type: ignore[literal-required]
        started = False
        abandoned = False

        async def guarded(message: Message) -> None:
            nonlocal started
            if abandoned:
                return  # answered already: what the work says now reaches no one
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        loop = asyncio.get_running_loop()
        task = asyncio.ensure_future(self._app(scope, receive, guarded))
        while not task.done() and (remaining_s := deadline.remaining_s()) > 0:
            # One future woken by whichever comes first, the work's end or the deadline: what
            # asyncio.wait does, without its sets and per-call waiter machinery (every request
            # passes here).
            woken = loop.create_future()
            task.add_done_callback(partial(_wake, woken))
            timer = loop.call_later(remaining_s, _wake, woken)
            try:
                await woken
            finally:
                timer.cancel()
        if task.done() or started:
            await task
            return
        abandoned = True
        self._abandoned.add(task)
        task.add_done_callback(self._finished)
        await self._answer(send, deadline.budget_s)

    def _finished(self, task: asyncio.Future[Any]) -> None:
        self._abandoned.discard(task)
        if not task.cancelled():
            task.exception()  # retrieved: it was answered for (503) already

    async def _answer(self, send: Send, budget_s: float) -> None:
        error: Unavailable | Overloaded
        if not self._outages.overloaded():
            error = Unavailable(
                f"not answered within {budget_s:g} s: a service Switchboard depends on is not "
                f"answering; it may or may not have been stored, send it again in "
                f"{RETRY_AFTER_S} s (a repeat of the same id is not stored twice)"
            )
        else:
            error = Overloaded(
                f"not answered within {budget_s:g} s: too much is arriving at once; it may or "
                f"may not have been stored, send it again in {RETRY_AFTER_S} s (a repeat of the "
                "same id is not stored twice)"
            )
        body = _body(error)
        start: HTTPResponseStartEvent = {
            "type": "http.response.start",
            "status": 503,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"retry-after", str(RETRY_AFTER_S).encode()),
            ],
        }
        end: HTTPResponseBodyEvent = {
            "type": "http.response.body",
            "body": body,
            "more_body": False,
        }
        await send(start)
        await send(end)
