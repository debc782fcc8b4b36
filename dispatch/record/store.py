"""Messages and conversations: storing what arrives (through :mod:`dispatch.record.inbound`)
and reading them back."""

from __future__ import annotations

import contextlib
import datetime as dt
from collections.abc import AsyncIterator
from typing import Any

import msgspec
from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession, async_sessionmaker

from dispatch.infra.clean import fit
from dispatch.record.db import planned_for_values
from dispatch.record.inbound import KEY_CHARS, Accepted, Arrival, store_inbound
from dispatch.record.messages import Choice, InboundMessage
from dispatch.record.models import (
    UNDISPATCHED,
    Activity,
    ActivityStatus,
    Conversation,
    Direction,
    Message,
)

__all__ = ["MessageStore", "MessageView", "conversation_language"]


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
    author: str | None = None
    """Who wrote an outbound message: a person's name (a supervisor answering); None: the bot."""
    choices: list[dict[str, Any]] = []
    """The answers it offered (buttons)."""

    @classmethod
    def of(cls, row: Message) -> MessageView:
        raw = row.raw if row.direction == Direction.OUTBOUND.value and row.raw else {}
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
            author=raw.get("author"),
            choices=raw.get("choices") or [],
        )


async def conversation_language(
    session: AsyncSession, conversation_id: int, shown: str | None
) -> str | None:
    """The conversation's language: ``shown`` (what a message of it showed, or its person's
    choice), remembered for the notices to come, else the one remembered."""
    if shown is None:
        found: str | None = await session.scalar(
            select(Conversation.language).where(Conversation.id == conversation_id)
        )
        return found
    await session.execute(
        update(Conversation)
        .where(Conversation.id == conversation_id, Conversation.language.is_distinct_from(shown))
        .values(language=shown)
    )
    return shown


class MessageStore:
    def __init__(self, sessions: async_sessionmaker[AsyncSession]) -> None:
        self._sessions = sessions

    @contextlib.asynccontextmanager
    async def connection(self) -> AsyncIterator[AsyncConnection]:
        """A connection in a transaction, committed on exit (for set-based Core statements)."""
        async with self._sessions.begin() as session:
            yield await session.connection()

    async def accept(
        self,
        message: InboundMessage,
        *,
        backlog: int | None = None,
        refuse: bool = False,
        over_rate: bool = False,
    ) -> Accepted:
        """Store one inbound message with its sender and conversation, in one transaction
        (:func:`~dispatch.record.inbound.store_inbound`, as every inbound message is)."""
        async with self.connection() as conn:
            (accepted,) = await store_inbound(
                conn,
                [Arrival(message=message, over_rate=over_rate)],
                backlog=backlog,
                refuse=refuse,
            )
        return accepted

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
            await planned_for_values(session)
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
        self, conversation_id: int, *, after_id: int = 0, limit: int = 100, latest: bool = False
    ) -> list[MessageView]:
        """Messages after ``after_id``, oldest first: the first ``limit`` of them, or with
        ``latest`` the last ``limit``."""
        query = select(Message).where(
            Message.conversation_id == conversation_id, Message.id > after_id
        )
        order = Message.id.desc() if latest else Message.id
        async with self._sessions() as session:
            rows = list((await session.execute(query.order_by(order).limit(limit))).scalars())
        return [MessageView.of(row) for row in (reversed(rows) if latest else rows)]

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
