"""The web chat channel: JSON frames over the WebSocket at ``/chat/ws``.

Sessions are the server's: a new visitor gets one in the ``hello`` frame, a token the page
keeps (``localStorage``) and offers again when it reconnects, in the WebSocket handshake's
``Sec-WebSocket-Protocol`` header (``switchboard, session.<token>``), never in a URL. A token is
signed with this deployment's key, expires (``SWITCHBOARD_WEBCHAT_SESSION_TTL_S``) and is
renewed each time it is used; a session id is never shown to anyone (a visitor is "web visitor
#N", or the name they gave). Only pages of ``SWITCHBOARD_WIDGET_ORIGINS`` (default: the
gateway's own origin) may open a socket.

Client → server: ``{"id": "<client message id>", "text": "..."}``.
Server → client: ``{"type": "hello", "session": <token>, "history": [...]}``, ``{"type": "ack",
"id", "message_id", ...}``, ``{"type": "reply", "text", "in_reply_to", "choices", ...}``,
``{"type": "error", "error", "detail", "id"}``.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import datetime as dt
import hashlib
import hmac
import secrets
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Protocol
from urllib.parse import urlparse

import msgspec

from channels.base import Channel, ChannelContext, ChannelSettings
from channels.bus import ReplyBus
from channels.validation import decode_body, require_text
from dispatch.infra.config import POSITIVE, PREFIX, setting
from dispatch.infra.constants import reply_channel
from dispatch.infra.errors import ClientError, InvalidInput, PayloadTooLarge, SettingsError
from dispatch.infra.outage import is_overload, is_unavailable
from dispatch.infra.throttle import Throttle, ThrottleSettings
from dispatch.record.keys import derive
from dispatch.record.messages import Choice, Delivered, InboundMessage, Media, OutboundMessage
from dispatch.record.models import Delivery, utcnow
from dispatch.record.users import IdentityKind

if TYPE_CHECKING:
    from dispatch.record.store import MessageStore
    from dispatch.work.service import DispatchService

__all__ = [
    "AckFrame",
    "ClientFrame",
    "Connection",
    "ErrorFrame",
    "HelloFrame",
    "ReplyFrame",
    "WebChatChannel",
    "WebChatSettings",
]

SUBPROTOCOL = "switchboard"
TOKEN_PROTOCOL = "session."  # noqa: S105 - a prefix, not a secret
HISTORY_MESSAGES = 50
MAX_REFUSED_FRAMES = 200
"""Frames refused for their rate before the socket is closed (policy violation)."""
WS_POLICY_VIOLATION = 1008
_SIG_CHARS = 22


@dataclasses.dataclass(frozen=True)
class WebChatSettings(ChannelSettings):
    """The web chat (always on)."""

    widget_origins: str | None = setting(
        None,
        "WIDGET_ORIGINS",
        "Comma-separated origins (https://shop.example.com) whose pages may open the web chat. "
        "Unset: only pages of the gateway's own origin.",
    )
    session_ttl_s: float = setting(
        30 * 86400.0,
        "WEBCHAT_SESSION_TTL_S",
        "How long a web chat session lasts unused (each visit renews it).",
        check=POSITIVE,
    )

    @property
    def enabled(self) -> bool:
        return True

    @property
    def origins(self) -> frozenset[str]:
        return frozenset(_origin(o) for o in (self.widget_origins or "").split(",") if o.strip())

    def validate(self) -> None:
        for origin in (self.widget_origins or "").split(","):
            if origin.strip() and not _origin(origin):
                raise SettingsError(
                    PREFIX + "WIDGET_ORIGINS",
                    f"{origin.strip()!r} is not an origin like https://host",
                )


def _origin(value: str) -> str:
    """``scheme://host[:port]``, lower-cased, or "" for something that is not an origin."""
    parsed = urlparse(value.strip().rstrip("/").lower())
    if parsed.scheme not in {"http", "https"} or not parsed.netloc or parsed.path:
        return ""
    return f"{parsed.scheme}://{parsed.netloc}"


class Connection(Protocol):
    """The socket, as the channel needs it (the gateway adapts its framework's)."""

    async def receive(self) -> str | bytes | None:
        """The next frame, or None once the client is gone."""
        ...

    async def send(self, data: bytes) -> None: ...

    async def close(self, code: int, reason: str) -> None: ...


class ClientFrame(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    id: Annotated[str, msgspec.Meta(min_length=1, max_length=128)]
    text: str
    name: Annotated[str, msgspec.Meta(min_length=1, max_length=100)] | None = None
    """What the visitor wants to be called (otherwise they are "web visitor #N")."""
    lang: Annotated[str, msgspec.Meta(max_length=35)] | None = None
    """The browser's language (``navigator.language``): replies' language when the text
    does not show it."""


class PastMessage(msgspec.Struct, frozen=True):
    """One message of the conversation so far, for a client that reconnects."""

    direction: str
    text: str
    message_id: int
    at: dt.datetime | None = None
    """When it was received (inbound) or written (a reply)."""
    author: str | None = None
    """A reply's writer: a person's name (a supervisor answering); None: the bot."""
    choices: tuple[Choice, ...] = ()
    """The answers a reply offered (the client offers the last reply's again)."""


class HelloFrame(msgspec.Struct, frozen=True, tag="hello", tag_field="type"):
    session: str
    """The session token to keep and offer again on reconnecting (renewed each time)."""
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
    """Answers offered as buttons: a click sends the choice's ``label`` (or ``text``) as the
    user's message."""
    at: dt.datetime | None = None
    """When it was sent."""
    author: str | None = None
    """Who wrote it: a person's name (a supervisor answering); None: the bot."""


class ErrorFrame(msgspec.Struct, frozen=True, tag="error", tag_field="type"):
    error: str
    detail: str
    id: str | None = None


WEB_SESSION = IdentityKind(
    name="webchat", normalize=str.strip, help="web chat session id", hidden=True
)


class WebChatChannel(Channel):
    name: ClassVar[str] = "webchat"
    buttons: ClassVar[bool] = True
    identity: ClassVar[IdentityKind] = WEB_SESSION
    settings_type: ClassVar[type[ChannelSettings] | None] = WebChatSettings

    def __init__(self, settings: WebChatSettings, context: ChannelContext) -> None:
        self._settings = settings
        self._bus: ReplyBus = context.bus
        self._prefix = context.prefix
        self._max_frame_bytes = context.core.max_body_bytes
        self._max_text_chars = context.core.max_text_chars
        self._own_origin = _origin(context.core.public_url or "")
        self._key = derive(context.secret, "webchat-sessions")

    # -- who may connect, and as whom ---------------------------------------------------------

    def allows(self, origin: str | None, host: str | None) -> bool:
        """Whether a page of ``origin`` may open a socket (a client that sends no Origin is not
        a browser page: it cannot be a cross-site request)."""
        if origin is None:
            return True
        origin = _origin(origin)
        if origin in self._settings.origins or origin == self._own_origin:
            return True
        return bool(host) and urlparse(origin).netloc == (host or "").lower()

    @staticmethod
    def offered_token(subprotocols: list[str]) -> str | None:
        for offered in subprotocols:
            if offered.startswith(TOKEN_PROTOCOL):
                return offered.removeprefix(TOKEN_PROTOCOL)
        return None

    def _sign(self, payload: str) -> str:
        mac = hmac.new(self._key, payload.encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(mac).decode().rstrip("=")[:_SIG_CHARS]

    def issue(self, session: str | None = None) -> tuple[str, str]:
        """(session id, token): a new session, or a renewed token for ``session``."""
        session = session or secrets.token_urlsafe(18)
        expires = int(time.time() + self._settings.session_ttl_s)
        payload = f"{session}.{expires}"
        return session, f"{payload}.{self._sign(payload)}"

    def resume(self, token: str | None) -> str | None:
        """The session a token stands for, if it is ours and has not expired."""
        parts = (token or "").split(".")
        if len(parts) != 3 or not parts[1].isdigit():
            return None
        session, expires, signature = parts
        if not hmac.compare_digest(signature, self._sign(f"{session}.{expires}")):
            return None
        return session if int(expires) > time.time() else None

    def topic(self, session: str) -> str:
        return reply_channel(self._prefix, self.name, session)

    # -- a socket's life ----------------------------------------------------------------------

    async def serve(
        self,
        connection: Connection,
        token: str | None,
        *,
        dispatcher: DispatchService,
        store: MessageStore,
        limits: ThrottleSettings,
        address: str = "?",
    ) -> None:
        """One socket, one conversation. Frames are validated one by one: a bad frame gets an
        error frame and the socket stays open; nothing of it is stored. Frames beyond the
        socket's rate are refused the same way, and a socket that keeps pushing is closed. A
        session that has stored nothing yet (nobody's guest so far) is a new chat: its first
        message counts against what its ``address`` may start in a minute."""
        session, token = self.issue(self.resume(token))
        async with self._bus.subscribe(self.topic(session)) as replies:
            past = await store.recent(self.name, session, limit=HISTORY_MESSAGES)
            history = tuple(
                PastMessage(
                    direction=m.direction,
                    text=m.text,
                    message_id=m.id,
                    at=m.received_at,
                    author=m.author,
                    choices=msgspec.convert(m.choices, tuple[Choice, ...]),
                )
                for m in past
                if m.direction == "inbound" or m.delivery not in {"pending", "sending"}
            )
            await connection.send(msgspec.json.encode(HelloFrame(session=token, history=history)))
            async with _forwarding(connection, replies):
                frames = Throttle()
                refused = 0
                new_chat = not past
                while (frame := await connection.receive()) is not None:
                    wait_s = await frames.take(
                        "frames", rate_per_s=limits.socket_frames_per_s, burst=limits.socket_burst
                    )
                    if wait_s > 0:
                        refused += 1
                        if refused > MAX_REFUSED_FRAMES:
                            await connection.close(WS_POLICY_VIOLATION, "too many frames")
                            return
                        await _error(
                            connection,
                            "rate_limited",
                            f"slow down: try again in {wait_s:.1f} s",
                            frame,
                        )
                        continue
                    if new_chat:
                        wait_s = await dispatcher.new_chat_wait_s(address)
                        if wait_s > 0:
                            await _error(
                                connection,
                                "rate_limited",
                                f"too many new chats from one address; try again in {wait_s:.0f} s",
                                frame,
                            )
                            continue
                    if await self._take(connection, session, frame, dispatcher):
                        new_chat = False  # it has written: its guest exists

    async def _take(
        self, connection: Connection, session: str, frame: str | bytes, dispatcher: DispatchService
    ) -> bool:
        """Store one frame's message and acknowledge it; whether it was stored."""
        try:
            inbound = self.parse_frame(session, frame)
            accepted = await dispatcher.ingest(inbound, client=True)
        except ClientError as exc:
            await _error(connection, exc.code, exc.detail, frame)
            return False
        except Exception as exc:
            if is_overload(exc):
                code = "overloaded"
            elif is_unavailable(exc):
                code = "unavailable"
            else:
                raise
            # Not stored: the page keeps the message and sends it again.
            await _error(connection, code, "not stored; try again in a few seconds", frame)
            return False
        ack = AckFrame(
            id=inbound.external_id.partition(":")[2],
            message_id=accepted.message_id,
            conversation_id=accepted.conversation_id,
            duplicate=accepted.duplicate,
        )
        await connection.send(msgspec.json.encode(ack))
        return True

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
            sender_name=parsed.name,
            anonymous=True,
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
            at=utcnow(),
            author=message.author,
        )
        listeners = await self._bus.publish(
            self.topic(message.conversation_key), msgspec.json.encode(frame)
        )
        # Stored either way: a client that was away reads it back from the history.
        status = Delivery.DELIVERED if listeners else Delivery.SENT
        return Delivered(status=status.value)


@contextlib.asynccontextmanager
async def _forwarding(connection: Connection, replies: Any) -> AsyncIterator[None]:
    """Replies published for this session go to the socket while it is open."""

    async def forward() -> None:
        while True:
            await connection.send(await replies.get())

    task = asyncio.create_task(forward())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(BaseException):
            await task


async def _error(connection: Connection, code: str, detail: str, frame: str | bytes) -> None:
    error = ErrorFrame(error=code, detail=detail, id=_frame_id(frame))
    await connection.send(msgspec.json.encode(error))


def _frame_id(frame: str | bytes) -> str | None:
    with contextlib.suppress(Exception):
        value = msgspec.json.decode(frame)
        if isinstance(value, dict) and isinstance(value.get("id"), str):
            return str(value["id"])[:128]
    return None
