"""``/api/v1/events``: activity events live over a WebSocket, resumable (see
:mod:`dispatch.record.feed`).

The client's first frame says who it is and where to start: ``{"token": "<operator token>",
"last_event_id": 1234, "filter": {"agent": ..., "action_type": ..., "activity_id": ...,
"kinds": [...]}}`` (the token may come in an ``Authorization: Bearer`` header instead; without
``last_event_id`` the stream starts now). The server answers ``{"type": "ready",
"last_event_id"}`` and then ``{"type": "event", "id", "activity_id", "agent", "action_type",
"kind", "status", "actor", "data", "at"}`` frames in id order.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import msgspec
from litestar import WebSocket, websocket
from litestar.di import NamedDependency
from litestar.exceptions import WebSocketDisconnect

from channels.validation import require_depth
from dispatch.infra.errors import InvalidInput
from dispatch.record.feed import EventFeed, EventFilter
from gateway.auth import ApiRole, TokenStore
from gateway.params import MAX_ID

__all__ = ["events_socket"]

HELLO_TIMEOUT_S = 10.0
WS_UNAUTHORIZED = 4401
WS_FORBIDDEN = 4403
WS_BAD_FRAME = 4400


class Hello(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    token: str | None = None
    last_event_id: int | None = msgspec.field(default=None)
    filter: EventFilter = EventFilter()


class Ready(msgspec.Struct, frozen=True, kw_only=True, tag="ready"):
    last_event_id: int


async def _refuse(socket: WebSocket[Any, Any, Any], code: int, detail: str) -> None:
    with contextlib.suppress(Exception):
        await socket.send_data(msgspec.json.encode({"type": "error", "detail": detail}).decode())
        await socket.close(code=code, reason=detail[:120])


async def _hello(socket: WebSocket[Any, Any, Any]) -> Hello | None:
    """The client's first frame; None once the socket has been refused for it."""
    try:
        raw = await asyncio.wait_for(socket.receive_data(mode="text"), HELLO_TIMEOUT_S)
    except (TimeoutError, WebSocketDisconnect):
        await _refuse(socket, WS_UNAUTHORIZED, 'send {"token": ...} first')
        return None
    try:
        require_depth(raw.encode())
        hello = msgspec.json.decode(raw, type=Hello)
    except InvalidInput as exc:
        problem = exc.detail
    except msgspec.ValidationError as exc:
        problem = str(exc)
    except msgspec.DecodeError:
        problem = "not JSON"
    else:
        if hello.last_event_id is None or 0 <= hello.last_event_id <= MAX_ID:
            return hello
        problem = "last_event_id out of range"
    await _refuse(socket, WS_BAD_FRAME, f"first frame: {problem}")
    return None


@websocket("/api/v1/events")
async def events_socket(socket: WebSocket[Any, Any, Any], feed: NamedDependency[EventFeed]) -> None:
    await socket.accept()
    hello = await _hello(socket)
    if hello is None:
        return
    header = socket.headers.get("authorization", "")
    token = hello.token or header.partition(" ")[2]  # exactly as issued, as over HTTP
    tokens: TokenStore = socket.app.state.tokens
    caller = await tokens.identify(token) if token else None
    if caller is None:
        await _refuse(socket, WS_UNAUTHORIZED, "unknown or revoked token")
        return
    if caller.role.rank < ApiRole.OPERATOR.rank:
        await _refuse(socket, WS_FORBIDDEN, "this needs a token with role operator or above")
        return
    start = hello.last_event_id if hello.last_event_id is not None else await feed.last_id()
    await socket.send_data(msgspec.json.encode(Ready(last_event_id=start)).decode())

    async def stream() -> None:
        async for event in feed.follow(start, hello.filter):
            await socket.send_data(msgspec.json.encode(event).decode())

    async def until_closed() -> None:
        with contextlib.suppress(WebSocketDisconnect):
            while True:
                await socket.receive_data(mode="text")  # anything else the client says: ignored

    sending = asyncio.create_task(stream())
    listening = asyncio.create_task(until_closed())
    done, pending = await asyncio.wait({sending, listening}, return_when=asyncio.FIRST_COMPLETED)
    for task in pending:
        task.cancel()
    for task in pending:
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
    failure = sending.exception() if sending in done and not sending.cancelled() else None
    if failure is not None and not isinstance(failure, WebSocketDisconnect):
        raise failure
