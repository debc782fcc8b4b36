"""Storing messages, conversations and sender identities."""

from __future__ import annotations

import datetime as dt
from typing import Any

import msgspec
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from channels.messages import Choice, InboundMessage
from dispatch.models import (
    Activity,
    Conversation,
    Delivery,
    Direction,
    Message,
    MessageState,
    User,
    UserIdentity,
    utcnow,
)
from dispatch.sql import insert_or_get

__all__ = ["Accepted", "MessageStore", "MessageView"]

GUEST_ROLE = "guest"


class Accepted(msgspec.Struct, frozen=True, kw_only=True):
    """The outcome of storing an inbound message."""

    message_id: int
    conversation_id: int
    user_id: int
    duplicate: bool


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


class MessageStore:
    def __init__(self, sessions: async_sessionmaker[AsyncSession]) -> None:
        self._sessions = sessions

    async def accept(self, message: InboundMessage) -> Accepted:
        """Store an inbound message with its sender and conversation, in one transaction.

        A second message with the same (channel, external_id) stores nothing new and comes back
        with ``duplicate=True`` and the first one's ids.
        """
        async with self._sessions.begin() as session:
            user_id = await self._identify(session, message)
            conversation_id, _ = await insert_or_get(
                session,
                Conversation.__table__,  # type: ignore[arg-type]
                {"channel": message.channel, "key": message.conversation_key, "user_id": user_id},
                ("channel", "key"),
            )
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
                    "state": MessageState.IGNORED if message.ignored else MessageState.RECEIVED,
                    "received_at": message.received_at,
                },
                ("channel", "external_id"),
            )
            if created:
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
            )

    async def _identify(self, session: AsyncSession, message: InboundMessage) -> int:
        """The sender's user id; an unknown sender becomes a guest user."""
        existing = await self._identity_owner(session, message)
        if existing is not None:
            return int(existing)
        async with session.begin_nested() as savepoint:
            user = User(name=message.sender_name or message.sender, role=GUEST_ROLE)
            session.add(user)
            await session.flush()
            _, created = await insert_or_get(
                session,
                UserIdentity.__table__,  # type: ignore[arg-type]
                {"user_id": user.id, "channel": message.channel, "address": message.sender},
                ("channel", "address"),
            )
            if created:
                return user.id
            # Another request registered this sender first: keep theirs, drop ours.
            await savepoint.rollback()
        winner = await self._identity_owner(session, message)
        assert winner is not None
        return winner

    @staticmethod
    async def _identity_owner(session: AsyncSession, message: InboundMessage) -> int | None:
        owner = (
            await session.execute(
                select(UserIdentity.user_id).where(
                    UserIdentity.channel == message.channel,
                    UserIdentity.address == message.sender,
                )
            )
        ).scalar_one_or_none()
        return None if owner is None else int(owner)

    async def get(self, message_id: int) -> Message | None:
        async with self._sessions() as session:
            return await session.get(Message, message_id)

    async def conversation(self, conversation_id: int) -> Conversation | None:
        async with self._sessions() as session:
            return await session.get(Conversation, conversation_id)

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

    async def pending_replies(self, activity_id: int) -> list[Message]:
        async with self._sessions() as session:
            rows = await session.execute(
                select(Message)
                .where(
                    Message.activity_id == activity_id,
                    Message.delivery == Delivery.PENDING.value,
                )
                .order_by(Message.part)
            )
            return list(rows.scalars())

    async def claim_reply(self, message_id: int) -> bool:
        """pending → sending for exactly one caller: the at-most-once gate of a reply."""
        async with self._sessions.begin() as session:
            result = await session.execute(
                update(Message)
                .where(Message.id == message_id, Message.delivery == Delivery.PENDING.value)
                .values(delivery=Delivery.SENDING.value, updated_at=utcnow())
            )
            return bool(result.rowcount == 1)  # type: ignore[attr-defined]

    async def update_delivery(
        self,
        message_id: int,
        status: Delivery,
        *,
        external_id: str | None = None,
        error: str | None = None,
    ) -> bool:
        """Move an outbound message's delivery status forward; an older status is ignored.

        Provider callbacks arrive out of order and may overtake our own record of the send, so
        each update is a compare-and-set on the current status. ``external_id`` (the provider's
        message id) is recorded whatever the status outcome.
        """
        async with self._sessions.begin() as session:
            if external_id is not None:
                await session.execute(
                    update(Message)
                    .where(Message.id == message_id, Message.external_id.is_(None))
                    .values(external_id=external_id)
                )
        for _ in range(5):
            async with self._sessions.begin() as session:
                current = (
                    await session.execute(select(Message.delivery).where(Message.id == message_id))
                ).scalar_one_or_none()
                if current is None or Delivery(current).rank >= status.rank:
                    return False
                result = await session.execute(
                    update(Message)
                    .where(Message.id == message_id, Message.delivery == current)
                    .values(delivery=status.value, delivery_error=error, updated_at=utcnow())
                )
                if result.rowcount == 1:  # type: ignore[attr-defined]
                    return True
        return False

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

    async def outbound_by_external_id(self, channel: str, external_id: str) -> int | None:
        async with self._sessions() as session:
            found = (
                await session.execute(
                    select(Message.id).where(
                        Message.channel == channel,
                        Message.external_id == external_id,
                        Message.direction == Direction.OUTBOUND.value,
                    )
                )
            ).scalar_one_or_none()
            return None if found is None else int(found)
