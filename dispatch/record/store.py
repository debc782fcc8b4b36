"""Storing messages, conversations and sender identities."""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
from collections.abc import AsyncIterator
from typing import Any

import msgspec
from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession, async_sessionmaker

from dispatch.infra.clean import clean_json, clean_text, fit
from dispatch.infra.errors import ForbiddenError, RateLimited
from dispatch.infra.sql import insert_or_get
from dispatch.record.messages import Choice, InboundMessage, Media
from dispatch.record.models import (
    UNDISPATCHED,
    Activity,
    ActivityStatus,
    Conversation,
    Direction,
    Message,
    MessageState,
    User,
    UserIdentity,
)

__all__ = ["Accepted", "MessageStore", "MessageView", "storable"]

log = logging.getLogger("switchboard.store")

GUEST_ROLE = "guest"
ANONYMOUS = "web visitor"
KEY_CHARS = 255
"""Width of the columns that key messages, conversations and identities."""
NAME_CHARS = 200


class Accepted(msgspec.Struct, frozen=True, kw_only=True):
    """The outcome of storing an inbound message."""

    message_id: int
    conversation_id: int
    user_id: int | None
    duplicate: bool
    over_backlog: bool = False
    """Its conversation owed too many messages already: kept, not to be acted on."""
    over_rate: bool = False
    """Its sender sent too fast: kept, not to be acted on."""


class Backlog(msgspec.Struct, frozen=True, kw_only=True):
    """What the database says is still to be done (the record, whatever the queue holds)."""

    messages_awaiting_dispatch: int
    activities_queued: int


class ConversationView(msgspec.Struct, frozen=True, kw_only=True):
    """A conversation as the API shows it: where replies go (``channel``, ``key``)."""

    id: int
    channel: str
    key: str
    user_id: int | None
    created_at: dt.datetime
    last_inbound_at: dt.datetime | None

    @classmethod
    def of(cls, row: Conversation) -> ConversationView:
        return cls(
            id=row.id,
            channel=row.channel,
            key=row.key,
            user_id=row.user_id,
            created_at=row.created_at,
            last_inbound_at=row.last_inbound_at,
        )


class MessageView(msgspec.Struct, frozen=True, kw_only=True):
    """A stored message as the API shows it."""

    id: int
    direction: str
    channel: str
    text: str
    media: list[dict[str, Any]]
    sender: str
    received_at: dt.datetime
    external_id: str | None = None
    state: str | None = None
    delivery: str | None = None
    delivery_error: str | None = None
    activity_id: int | None = None

    @classmethod
    def of(cls, row: Message) -> MessageView:
        return cls(
            id=row.id,
            direction=row.direction,
            channel=row.channel,
            text=row.text,
            media=row.media,
            sender=row.sender,
            received_at=row.received_at,
            external_id=row.external_id,
            state=row.state,
            delivery=row.delivery,
            delivery_error=row.delivery_error,
            activity_id=row.activity_id,
        )


def storable(message: InboundMessage) -> InboundMessage:
    """The message as the columns can hold it (see :mod:`dispatch.infra.clean`)."""
    return msgspec.structs.replace(
        message,
        external_id=fit(message.external_id, KEY_CHARS),
        conversation_key=fit(message.conversation_key, KEY_CHARS),
        sender=fit(message.sender, KEY_CHARS),
        sender_name=None if message.sender_name is None else fit(message.sender_name, NAME_CHARS),
        text=clean_text(message.text),
        media=tuple(
            Media(url=clean_text(m.url), content_type=fit(m.content_type, KEY_CHARS))
            for m in message.media
        ),
        raw=clean_json(message.raw),
    )


class MessageStore:
    def __init__(self, sessions: async_sessionmaker[AsyncSession]) -> None:
        self._sessions = sessions

    @contextlib.asynccontextmanager
    async def connection(self) -> AsyncIterator[AsyncConnection]:
        """A connection in a transaction, committed on exit (for set-based Core statements)."""
        async with self._sessions.begin() as session:
            yield await session.connection()

    @property
    def postgres(self) -> bool:
        return bool(self._sessions.kw["bind"].dialect.name == "postgresql")

    async def accept(
        self,
        message: InboundMessage,
        *,
        backlog: int | None = None,
        refuse: bool = False,
        over_rate: bool = False,
    ) -> Accepted:
        """Store an inbound message with its sender and conversation, in one transaction.

        A second message with the same (channel, external_id) stores nothing new and comes back
        with ``duplicate=True`` and the first one's ids. A message ``over_rate`` (its sender
        sends too fast) is kept, not to be acted on. An ignored message (something a
        provider sent that nobody acts on) is kept, but makes no one a guest.
        """
        message = storable(message)
        async with self._sessions.begin() as session:
            user_id = await self._identify(session, message)
            conversation_id, _ = await insert_or_get(
                session,
                Conversation.__table__,  # type: ignore[arg-type]
                {"channel": message.channel, "key": message.conversation_key, "user_id": user_id},
                ("channel", "key"),
            )
            over = (
                backlog is not None
                and not message.ignored
                and await self._owed(session, conversation_id) >= backlog
            )
            if over and refuse:
                raise RateLimited(
                    f"this conversation has {backlog} messages waiting to be read; "
                    "send again once they are answered",
                    retry_after_s=5,
                )
            if over:
                message = msgspec.structs.replace(message, ignored="conversation backlog full")
            message_id, created = await insert_or_get(
                session,
                Message.__table__,  # type: ignore[arg-type]
                {
                    "direction": Direction.INBOUND,
                    "channel": message.channel,
                    "external_id": message.external_id,
                    "conversation_id": conversation_id,
                    "user_id": user_id,
                    "sender": message.sender,
                    "text": message.text,
                    "media": msgspec.to_builtins(message.media),
                    "raw": message.raw,
                    "state": MessageState.IGNORED
                    if message.ignored or over_rate
                    else MessageState.RECEIVED,
                    "received_at": message.received_at,
                },
                ("channel", "external_id"),
            )
            if created and not message.ignored:
                await session.execute(
                    update(Conversation)
                    .where(Conversation.id == conversation_id)
                    .values(last_inbound_at=message.received_at)
                )
            return Accepted(
                message_id=message_id,
                conversation_id=conversation_id,
                user_id=user_id,
                duplicate=not created,
                over_backlog=over and created,
                over_rate=over_rate and created,
            )

    async def stored(self, message: InboundMessage) -> Accepted | None:
        """The message as already stored (a repeat of a provider's or a client's id), or None:
        one look-up on the unique (channel, external_id) index, storing nothing."""
        async with self._sessions() as session:
            row = (
                await session.execute(
                    select(Message.id, Message.conversation_id, Message.user_id).where(
                        Message.channel == message.channel,
                        Message.external_id == fit(message.external_id, KEY_CHARS),
                    )
                )
            ).first()
        if row is None:
            return None
        return Accepted(
            message_id=row.id,
            conversation_id=row.conversation_id,
            user_id=row.user_id,
            duplicate=True,
        )

    @staticmethod
    async def _owed(session: AsyncSession, conversation_id: int) -> int:
        """Messages of the conversation not interpreted yet."""
        owed = await session.scalar(
            select(func.count())
            .select_from(Message)
            .where(
                Message.conversation_id == conversation_id,
                Message.state.in_([s.value for s in UNDISPATCHED]),
            )
        )
        return int(owed or 0)

    async def _identify(self, session: AsyncSession, message: InboundMessage) -> int | None:
        """The sender's user id; an unknown sender becomes a guest user (unless ignored)."""
        if message.as_user is not None:
            return message.as_user
        kind, address = message.identity
        existing = await self._identity_owner(session, kind, address)
        if existing is not None and message.guests_only:
            role = await session.scalar(select(User.role).where(User.id == existing))
            if role != GUEST_ROLE:
                raise ForbiddenError(
                    f"{address!r} is a {role}'s address; a token acting for no user speaks only "
                    "for guests (create one with `switchboard tokens create --user ...`)",
                    extra={"field": "sender"},
                )
        if existing is not None or message.ignored:
            return existing
        async with session.begin_nested() as savepoint:
            shown = message.sender_name or (ANONYMOUS if message.anonymous else address)
            user = User(name=fit(shown, NAME_CHARS), role=GUEST_ROLE)
            session.add(user)
            await session.flush()
            if not message.sender_name and message.anonymous:
                user.name = f"{ANONYMOUS} #{user.id}"
            _, created = await insert_or_get(
                session,
                UserIdentity.__table__,  # type: ignore[arg-type]
                {"user_id": user.id, "channel": kind, "address": address},
                ("channel", "address"),
            )
            if created:
                return user.id
            # Another request registered this sender first: keep theirs, drop ours.
            await savepoint.rollback()
        winner = await self._identity_owner(session, kind, address)
        assert winner is not None
        return winner

    @staticmethod
    async def _identity_owner(session: AsyncSession, kind: str, address: str) -> int | None:
        owner = (
            await session.execute(
                select(UserIdentity.user_id).where(
                    UserIdentity.channel == kind, UserIdentity.address == address
                )
            )
        ).scalar_one_or_none()
        return None if owner is None else int(owner)

    async def conversation(self, conversation_id: int) -> Conversation | None:
        async with self._sessions() as session:
            return await session.get(Conversation, conversation_id)

    async def conversations(
        self, *, channel: str | None, user_id: int | None, before_id: int | None, limit: int
    ) -> list[ConversationView]:
        """Conversations, newest first, older than ``before_id``, of a channel or a user."""
        query = select(Conversation).order_by(Conversation.id.desc()).limit(limit)
        if channel is not None:
            query = query.where(Conversation.channel == channel)
        if user_id is not None:
            query = query.where(Conversation.user_id == user_id)
        if before_id is not None:
            query = query.where(Conversation.id < before_id)
        async with self._sessions() as session:
            return [ConversationView.of(row) for row in await session.scalars(query)]

    async def backlog(self) -> Backlog:
        async with self._sessions() as session:
            messages = await session.scalar(
                select(func.count())
                .select_from(Message)
                .where(
                    Message.direction == Direction.INBOUND.value,
                    Message.state.in_([s.value for s in UNDISPATCHED]),
                )
            )
            activities = await session.scalar(
                select(func.count())
                .select_from(Activity)
                .where(Activity.status == ActivityStatus.QUEUED.value)
            )
        return Backlog(messages_awaiting_dispatch=messages or 0, activities_queued=activities or 0)

    async def conversation_by_key(self, channel: str, key: str) -> Conversation | None:
        async with self._sessions() as session:
            found: Conversation | None = await session.scalar(
                select(Conversation).where(Conversation.channel == channel, Conversation.key == key)
            )
            return found

    async def list_messages(
        self, conversation_id: int, *, after_id: int = 0, limit: int = 100
    ) -> list[MessageView]:
        async with self._sessions() as session:
            rows = (
                await session.execute(
                    select(Message)
                    .where(Message.conversation_id == conversation_id, Message.id > after_id)
                    .order_by(Message.id)
                    .limit(limit)
                )
            ).scalars()
            return [MessageView.of(row) for row in rows]

    async def recent(self, channel: str, key: str, *, limit: int = 50) -> list[MessageView]:
        """The latest ``limit`` messages of the conversation (channel, key), oldest first."""
        async with self._sessions() as session:
            rows = (
                await session.execute(
                    select(Message)
                    .join(Conversation, Conversation.id == Message.conversation_id)
                    .where(Conversation.channel == channel, Conversation.key == key)
                    .order_by(Message.id.desc())
                    .limit(limit)
                )
            ).scalars()
            return [MessageView.of(row) for row in reversed(list(rows))]

    async def replies_to(self, message_id: int) -> list[MessageView]:
        """The outbound messages answering inbound message ``message_id``, in order."""
        async with self._sessions() as session:
            rows = await session.execute(
                select(Message)
                .join(Activity, Message.activity_id == Activity.id)
                .where(
                    Activity.source_message_id == message_id,
                    Message.direction == Direction.OUTBOUND.value,
                )
                .order_by(Message.id)
            )
            return [MessageView.of(row) for row in rows.scalars()]

    async def history(
        self, conversation_id: int, *, before_id: int, limit: int
    ) -> list[tuple[str, str]]:
        """The last ``limit`` turns before ``before_id`` as (role, text), oldest first."""
        if limit <= 0:
            return []
        async with self._sessions() as session:
            rows = (
                await session.execute(
                    select(Message.direction, Message.text)
                    .where(
                        Message.conversation_id == conversation_id,
                        Message.id < before_id,
                        Message.text != "",
                    )
                    .order_by(Message.id.desc())
                    .limit(limit)
                )
            ).all()
        return [
            ("user" if direction == Direction.INBOUND.value else "assistant", text)
            for direction, text in reversed(rows)
        ]

    async def choices_of(self, message_id: int) -> tuple[str, list[Choice]] | None:
        """(conversation key, offered choices) of one of our outbound messages."""
        async with self._sessions() as session:
            row = (
                await session.execute(
                    select(Message.raw, Conversation.key)
                    .join(Conversation, Message.conversation_id == Conversation.id)
                    .where(Message.id == message_id, Message.direction == Direction.OUTBOUND.value)
                )
            ).one_or_none()
        if row is None:
            return None
        choices = msgspec.convert((row[0] or {}).get("choices") or [], list[Choice])
        return str(row[1]), choices
