"""The web chat: a page at ``/`` and the WebSocket at ``/chat/ws``."""

from __future__ import annotations

import asyncio
import contextlib
from importlib import resources

import msgspec
from litestar import MediaType, WebSocket, get, websocket
from litestar.di import NamedDependency
from litestar.exceptions import WebSocketDisconnect

from channels.webchat import AckFrame, ErrorFrame, HelloFrame, PastMessage
from gateway.errors import ClientError
from gateway.services import Services

__all__ = ["chat_socket", "index"]

HISTORY_MESSAGES = 50


@get("/", media_type=MediaType.HTML, include_in_schema=False)
async def index() -> str:
    return resources.files("gateway").joinpath("static/index.html").read_text(encoding="utf-8")


@websocket("/chat/ws")
async def chat_socket(socket: WebSocket, services: NamedDependency[Services]) -> None:  # type: ignore[type-arg]
    """One socket, one conversation. Frames are validated one by one: a bad frame gets an error
    frame and the socket stays open; nothing of it is stored."""
    channel = services.webchat
    await socket.accept()
    session = channel.session_for(socket.query_params.get("session"))
    async with services.bus.subscribe(channel.topic(session)) as replies:
        past = await services.store.recent(channel.name, session, limit=HISTORY_MESSAGES)
        history = tuple(
            PastMessage(direction=m.direction, text=m.text, message_id=m.id)
            for m in past
            if m.direction == "inbound" or m.delivery not in {"pending", "sending"}
        )
        hello = HelloFrame(session=session, history=history)
        await socket.send_data(msgspec.json.encode(hello), mode="text")
        forward = asyncio.create_task(_forward(socket, replies))
        try:
            while True:
                try:
                    frame = await socket.receive_data(mode="text")
                except WebSocketDisconnect:
                    return
                try:
                    inbound = channel.parse_frame(session, frame)
                    accepted = await services.dispatcher.ingest(inbound)
                except ClientError as exc:
                    error = ErrorFrame(error=exc.code, detail=exc.detail, id=_frame_id(frame))
                    await socket.send_data(msgspec.json.encode(error), mode="text")
                    continue
                ack = AckFrame(
                    id=inbound.external_id.partition(":")[2],
                    message_id=accepted.message_id,
                    conversation_id=accepted.conversation_id,
                    duplicate=accepted.duplicate,
                )
                await socket.send_data(msgspec.json.encode(ack), mode="text")
        finally:
            forward.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await forward


async def _forward(socket: WebSocket, replies: asyncio.Queue[bytes]) -> None:  # type: ignore[type-arg]
    while True:
        frame = await replies.get()
        await socket.send_data(frame, mode="text")


def _frame_id(frame: str | bytes) -> str | None:
    with contextlib.suppress(Exception):
        value = msgspec.json.decode(frame)
        if isinstance(value, dict) and isinstance(value.get("id"), str):
            return str(value["id"])[:128]
    return None
