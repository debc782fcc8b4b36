"""The web chat: a page at ``/`` and the WebSocket at ``/chat/ws`` (see ``channels.webchat``)."""

from __future__ import annotations

import contextlib
from importlib import resources

from litestar import Litestar, MediaType, WebSocket, get, websocket
from litestar.datastructures import CacheControlHeader
from litestar.di import NamedDependency
from litestar.enums import ScopeType
from litestar.exceptions import WebSocketDisconnect
from litestar.middleware import ASGIMiddleware
from litestar.types import ASGIApp, Receive, Scope, Send

from channels.webchat import SUBPROTOCOL, WebChatChannel
from dispatch.infra.outage import is_overload, is_unavailable
from dispatch.infra.throttle import AddressSlots
from dispatch.record.store import MessageStore
from dispatch.work.service import DispatchService
from gateway.exceptions import RETRY_AFTER_S
from gateway.settings import Settings

__all__ = ["ChatDoor", "chat_socket", "index", "widget"]

WS_TRY_AGAIN_LATER = 1013
WS_FORBIDDEN = 4403


@get("/", media_type=MediaType.HTML, include_in_schema=False)
async def index() -> str:
    """The demo page: the widget, embedded as any site would embed it."""
    return resources.files("gateway").joinpath("static/index.html").read_text(encoding="utf-8")


@get(
    "/widget.js",
    media_type="text/javascript; charset=utf-8",
    include_in_schema=False,
    cache_control=CacheControlHeader(max_age=300, public=True),
)
async def widget() -> str:
    """The embeddable chat widget (one ``<script>`` tag; see the README)."""
    return resources.files("gateway").joinpath("static/widget.js").read_text(encoding="utf-8")


class _Socket:
    """Litestar's WebSocket as the channel's ``Connection``."""

    def __init__(self, socket: WebSocket) -> None:  # type: ignore[type-arg]
        self._socket = socket

    async def receive(self) -> str | bytes | None:
        try:
            frame: str | bytes = await self._socket.receive_data(mode="text")
        except WebSocketDisconnect:
            return None
        return frame

    async def send(self, data: bytes) -> None:
        await self._socket.send_data(data, mode="text")

    async def close(self, code: int, reason: str) -> None:
        await self._socket.close(code=code, reason=reason)


class ChatDoor(ASGIMiddleware):
    """One client address holds at most ``SWITCHBOARD_SOCKETS_PER_ADDRESS`` chat sockets in this
    process; the next is refused at the handshake (403) here, before anything is built for it
    (the socket, its dependencies): a flood of sockets is shed at the door at the least cost,
    and what it briefly held comes back when it ends."""

    scopes = (ScopeType.WEBSOCKET,)

    async def handle(self, scope: Scope, receive: Receive, send: Send, next_app: ASGIApp) -> None:
        slots: AddressSlots = Litestar.from_scope(scope).state.chat_slots
        client = scope.get("client")
        address = client[0] if client else "?"
        if not slots.acquire(address):
            await receive()  # websocket.connect
            await send({"type": "websocket.close", "code": WS_TRY_AGAIN_LATER, "reason": ""})
            return
        try:
            await next_app(scope, receive, send)
        finally:
            slots.release(address)


@websocket("/chat/ws", middleware=[ChatDoor()])
async def chat_socket(
    socket: WebSocket,  # type: ignore[type-arg]
    webchat: NamedDependency[WebChatChannel],
    store: NamedDependency[MessageStore],
    dispatcher: NamedDependency[DispatchService],
    settings: NamedDependency[Settings],
) -> None:
    """A page of an allowed origin opens one conversation; the session token, if any, comes in
    ``Sec-WebSocket-Protocol`` (``switchboard, session.<token>``), never in the URL."""
    if not webchat.allows(socket.headers.get("origin"), socket.headers.get("host")):
        await socket.close(code=WS_FORBIDDEN, reason="origin not allowed")
        return
    address = socket.client.host if socket.client else "?"
    offered = list(socket.scope.get("subprotocols") or [])
    await socket.accept(subprotocols=SUBPROTOCOL if SUBPROTOCOL in offered else None)
    try:
        await webchat.serve(
            _Socket(socket),
            webchat.offered_token(offered),
            dispatcher=dispatcher,
            store=store,
            limits=settings.throttle,
            address=address,
        )
    except Exception as exc:
        if not (is_unavailable(exc) or is_overload(exc)):
            raise
        # Nothing of the frame in hand was stored; the page sends it again after reconnecting.
        why = "overloaded" if is_overload(exc) else "unavailable"
        with contextlib.suppress(Exception):
            await socket.close(code=WS_TRY_AGAIN_LATER, reason=f"{why}; retry in {RETRY_AFTER_S} s")
