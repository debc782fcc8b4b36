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

from dispatch.record.inbox import ChangeWatch
from gateway.params import MAX_ID
from gateway.portal import COOKIE, PortalSessions
from gateway.routes.events import HELLO_TIMEOUT_S, WS_BAD_FRAME, WS_UNAUTHORIZED
from gateway.routes.portal import portal_user

__all__ = ["portal_live"]

WATCH_EVERY_S = 0.25
"""How often the server looks for what changed (the browser asks nothing)."""

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
    sessions = socket.app.state.runtime.sessions
    watch = await ChangeWatch.now(sessions)
    if hello.last_message_id is not None:
        watch.last_message_id = hello.last_message_id
    if hello.last_event_id is not None:
        watch.last_event_id = hello.last_event_id
    await socket.send_data(
        msgspec.json.encode(
            {
                "type": "ready",
                "last_message_id": watch.last_message_id,
                "last_event_id": watch.last_event_id,
            }
        ).decode()
    )

    async def watching() -> None:
        while True:
            changes = await watch.poll()
            if changes is not None:
                await socket.send_data(msgspec.json.encode(changes).decode())
            await asyncio.sleep(WATCH_EVERY_S)

    async def until_closed() -> None:
        with contextlib.suppress(WebSocketDisconnect):
            while True:
                await socket.receive_data(mode="text")

    tasks = {asyncio.create_task(watching()), asyncio.create_task(until_closed())}
    _, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    for task in pending:
        task.cancel()
    for task in pending:
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
