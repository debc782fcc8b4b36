"""The web chat channel: JSON frames over the WebSocket at ``/chat/ws``.

Client → server: ``{"id": "<client message id>", "text": "..."}``.
Server → client: ``{"type": "hello", "session": ...}``, ``{"type": "ack", "id": ...,
"message_id": ...}``, ``{"type": "reply", "text": ..., "in_reply_to": ...}``,
``{"type": "error", "error": ..., "detail": ...}``.
"""

from __future__ import annotations

import re
import secrets
from typing import Annotated, Any, ClassVar

import msgspec

from channels.base import ChannelAdapter
from channels.bus import ReplyBus
from channels.messages import Choice, Delivered, InboundMessage, Media, OutboundMessage
from channels.validation import decode_body, require_text
from dispatch.constants import reply_channel
from dispatch.models import Delivery
from gateway.errors import InvalidInput, PayloadTooLarge

__all__ = [
    "AckFrame",
    "ClientFrame",
    "ErrorFrame",
    "HelloFrame",
    "ReplyFrame",
    "WebChatChannel",
]

_SESSION = re.compile(r"[A-Za-z0-9_-]{16,64}")


class ClientFrame(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    id: Annotated[str, msgspec.Meta(min_length=1, max_length=128)]
    text: str


class PastMessage(msgspec.Struct, frozen=True):
    """One message of the conversation so far, for a client that reconnects."""

    direction: str
    text: str
    message_id: int


class HelloFrame(msgspec.Struct, frozen=True, tag="hello", tag_field="type"):
    session: str
    history: tuple[PastMessage, ...] = ()
    """The session's latest messages, oldest first (empty for a new session)."""


class AckFrame(msgspec.Struct, frozen=True, tag="ack", tag_field="type"):
    id: str
    message_id: int
    conversation_id: int
    duplicate: bool


class ReplyFrame(msgspec.Struct, frozen=True, tag="reply", tag_field="type"):
    text: str
    media: tuple[Media, ...] = ()
    activity_id: int | None = None
    message_id: int | None = None
    in_reply_to: str | None = None
    choices: tuple[Choice, ...] = ()
    """Answers offered as buttons: a click sends the choice's ``text`` as the user's message."""


class ErrorFrame(msgspec.Struct, frozen=True, tag="error", tag_field="type"):
    error: str
    detail: str
    id: str | None = None


class WebChatChannel(ChannelAdapter):
    name: ClassVar[str] = "webchat"

    def __init__(self, *, bus: ReplyBus, prefix: str, max_frame_bytes: int, max_text_chars: int):
        self._bus = bus
        self._prefix = prefix
        self._max_frame_bytes = max_frame_bytes
        self._max_text_chars = max_text_chars

    @staticmethod
    def session_for(requested: str | None) -> str:
        """Resume a well-formed session id, or start a new one."""
        if requested and _SESSION.fullmatch(requested):
            return requested
        return secrets.token_urlsafe(18)

    def topic(self, session: str) -> str:
        return reply_channel(self._prefix, self.name, session)

    async def parse(self, request: Any) -> InboundMessage:
        session, frame = request
        return self.parse_frame(session, frame)

    def parse_frame(self, session: str, frame: str | bytes) -> InboundMessage:
        data = frame.encode() if isinstance(frame, str) else frame
        if len(data) > self._max_frame_bytes:
            raise PayloadTooLarge(
                f"frame is {len(data)} bytes; the limit is {self._max_frame_bytes}"
            )
        parsed = decode_body(data, ClientFrame)
        text = require_text(parsed.text, self._max_text_chars)
        if ":" in parsed.id:
            raise InvalidInput("id may not contain ':'", extra={"field": "id"})
        return InboundMessage(
            channel=self.name,
            external_id=f"{session}:{parsed.id}",
            conversation_key=session,
            sender=session,
            text=text,
            raw=msgspec.json.decode(data),
        )

    async def send(self, message: OutboundMessage) -> Delivered:
        in_reply_to = None
        if message.in_reply_to is not None:
            in_reply_to = message.in_reply_to.partition(":")[2] or None
        frame = ReplyFrame(
            text=message.text,
            media=message.media,
            activity_id=message.activity_id,
            message_id=message.message_id,
            in_reply_to=in_reply_to,
            choices=message.choices,
        )
        listeners = await self._bus.publish(
            self.topic(message.conversation_key), msgspec.json.encode(frame)
        )
        # Stored either way: a client that was away reads it back from the history.
        status = Delivery.DELIVERED if listeners else Delivery.SENT
        return Delivered(status=status.value)
