"""``/portal/live``: what changed, pushed to a logged-in portal as it happens (no polling from
the browser).

The portal's first frame proves the session: ``{"csrf": "<its token>", "last_message_id": n,
"last_event_id": n}`` (the marks of the last ``changed`` frame it saw, to resume after a drop;
none: from now). The cookie alone is no login on a socket (a page of another site could open
one); the CSRF token, which only the portal's own page can read, is. The server then sends
``{"type": "changed", "conversations": [...], "activities": [...], "last_message_id",
"last_event_id"}`` whenever messages or activity events were recorded, and nothing while
nothing happens; the page fetches what it shows.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Annotated, Any

import msgspec
from litestar import WebSocket, websocket
from litestar.exceptions import WebSocketDisconnect

from dispatch.record.inbox import ChangeHub, Changes, ChangeWatch
from gateway.params import MAX_ID
from gateway.portal import COOKIE, PortalSessions
from gateway.routes.events import HELLO_TIMEOUT_S, WS_BAD_FRAME, WS_UNAUTHORIZED
from gateway.routes.portal import portal_user

__all__ = ["portal_live"]

WATCH_EVERY_S = 0.25
"""How often the server looks for what changed (the browser asks nothing): once per process
for all its open portals (:class:`ChangeHub`)."""
CATCH_UP_READS = 5
WS_TRY_AGAIN = 1013
"""Close code for a reader let go for falling behind ("try again later")."""

Mark = Annotated[int, msgspec.Meta(ge=0, le=MAX_ID)]


class LiveHello(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    csrf: Annotated[str, msgspec.Meta(max_length=200)]
    last_message_id: Mark | None = None
    last_event_id: Mark | None = None


async def _refuse(socket: WebSocket[Any, Any, Any], code: int, detail: str) -> None:
    with contextlib.suppress(Exception):
        await socket.send_data(msgspec.json.encode({"type": "error", "detail": detail}).decode())
        await socket.close(code=code, reason=detail[:120])


async def _admitted(socket: WebSocket[Any, Any, Any], hello: LiveHello) -> bool:
    """The socket carries a portal session of someone who may use the portal, and the
    session's own CSRF token."""
    sessions: PortalSessions = socket.app.state.portal
    cookie = socket.cookies.get(COOKIE)
    if cookie is None or not sessions.csrf_matches(cookie, hello.csrf):
        return False
    return await portal_user(socket) is not None


@websocket("/portal/live", include_in_schema=False)
async def portal_live(socket: WebSocket[Any, Any, Any]) -> None:
    await socket.accept()
    try:
        raw = await asyncio.wait_for(socket.receive_data(mode="text"), HELLO_TIMEOUT_S)
        hello = msgspec.json.decode(raw, type=LiveHello)
    except (TimeoutError, WebSocketDisconnect):
        await _refuse(socket, WS_UNAUTHORIZED, 'send {"csrf": ...} first')
        return
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        await _refuse(socket, WS_BAD_FRAME, f"first frame: {exc}")
        return
    if not await _admitted(socket, hello):
        await _refuse(socket, WS_UNAUTHORIZED, "log in to the portal first")
        return
    hub: ChangeHub = socket.app.state.change_hub
    async with hub.subscribe() as (marks, queue):
        caught_up = await _catch_up(socket, hello, marks)
        await socket.send_data(
            msgspec.json.encode(
                {
                    "type": "ready",
                    "last_message_id": max(marks.last_message_id, caught_up.last_message_id),
                    "last_event_id": max(marks.last_event_id, caught_up.last_event_id),
                }
            ).decode()
        )

        async def relaying() -> None:
            while (changes := await queue.get()) is not None:
                await socket.send_data(msgspec.json.encode(changes).decode())
            await _refuse(socket, WS_TRY_AGAIN, "too far behind: reconnect with your marks")

        async def until_closed() -> None:
            with contextlib.suppress(WebSocketDisconnect):
                while True:
                    await socket.receive_data(mode="text")

        tasks = {asyncio.create_task(relaying()), asyncio.create_task(until_closed())}
        _, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for task in pending:
            task.cancel()
        for task in pending:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task


async def _catch_up(socket: WebSocket[Any, Any, Any], hello: LiveHello, marks: Changes) -> Changes:
    """A reader back after a drop: what changed between its marks and the hub's, read once
    for it (up to ``CATCH_UP_READS`` reads; the page reads its views again anyway)."""
    if hello.last_message_id is None and hello.last_event_id is None:
        return marks
    watch = ChangeWatch(
        socket.app.state.runtime.sessions,
        messages=hello.last_message_id
        if hello.last_message_id is not None
        else marks.last_message_id,
        events=hello.last_event_id if hello.last_event_id is not None else marks.last_event_id,
    )
    for _ in range(CATCH_UP_READS):
        changes = await watch.poll()
        if changes is None:
            break
        await socket.send_data(msgspec.json.encode(changes).decode())
        if (
            watch.last_message_id >= marks.last_message_id
            and watch.last_event_id >= marks.last_event_id
        ):
            break
    return Changes(
        conversations=[],
        activities=[],
        last_message_id=watch.last_message_id,
        last_event_id=watch.last_event_id,
    )
