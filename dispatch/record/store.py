"""Storing messages, conversations and sender identities."""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
from collections.abc import AsyncIterator
from typing import Any

import msgspec
from sqlalchemy import and_, bindparam, case, exists, func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession, async_sessionmaker
from sqlalchemy.orm import aliased

from dispatch.infra.clean import clean_json, clean_text, fit
from dispatch.infra.errors import ForbiddenError, RateLimited
from dispatch.infra.sql import insert_or_get
from dispatch.record.activities import SENDING_STALE, ActivityLog
from dispatch.record.claims import MESSAGES
from dispatch.record.messages import Choice, InboundMessage, Media, StatusReport
from dispatch.record.models import (
    UNDISPATCHED,
    Activity,
    ActivityStatus,
    Conversation,
    Delivery,
    Direction,
    Message,
    MessageState,
    User,
    UserIdentity,
    utcnow,
)
from dispatch.record.outbox import Outbox, add_reply, pending_of, read_outbox
from dispatch.record.turns import Turns

__all__ = ["Accepted", "MessageStore", "MessageView", "storable"]

log = logging.getLogger("switchboard.store")

GUEST_ROLE = "guest"
ANONYMOUS = "web visitor"
UNCERTAIN = (
    "outcome unknown: the process handing this reply to the channel stopped before it could "
    "record the answer; not sent again"
)
KEY_CHARS = 255
"""Width of the columns that key messages, conversations and identities."""
NAME_CHARS = 200


def _delivery_statements() -> tuple[Any, Any]:
    """Built once (building them costs more than running them): record a provider's id for
    message ``:mid`` unless another message of its channel has it; move its delivery status
    to ``:delivery`` (of ``:rank``) only from a lower-ranked one."""
    messages: Any = Message.__table__
    other = messages.alias("other")
    mid: Any = bindparam("mid")
    ext: Any = bindparam("ext")
    record = (
        update(messages)
        .where(
            messages.c.id == mid,
            messages.c.external_id.is_(None),
            ~exists().where(other.c.channel == messages.c.channel, other.c.external_id == ext),
        )
        .values(external_id=ext)
    )
    rank = case(*((messages.c.delivery == d.value, d.rank) for d in Delivery), else_=len(Delivery))
    move = (
        update(messages)
        .where(messages.c.id == mid, rank < bindparam("rank"))
        .values(
            delivery=bindparam("delivery"),
            delivery_error=bindparam("error"),
            updated_at=bindparam("at"),
        )
    )
    return record, move


_RECORD_EXTERNAL_ID, _MOVE_DELIVERY = _delivery_statements()


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

    async def pending_replies(self, activity_id: int) -> list[Message]:
        async with self._sessions() as session:
            return list(await session.scalars(pending_of(activity_id)))

    async def outbox(self, activity_id: int, source_message_id: int | None) -> Outbox:
        """An activity's replies still to send (see :class:`~dispatch.record.outbox.Outbox`)."""
        async with self._sessions() as session:
            pending = await session.scalars(pending_of(activity_id))
            return await read_outbox(session, list(pending), source_message_id)

    # -- dispatch claims ------------------------------------------------------------------

    async def release_message(self, message_id: int, *, attempt: int) -> bool:
        """Give a claimed message back to be interpreted again (its attempt failed)."""
        async with self._sessions.begin() as session:
            result = await session.execute(
                MESSAGES.update_held(
                    message_id, attempt, state=MessageState.RECEIVED.value, claimed_until=None
                )
            )
            return bool(result.rowcount == 1)  # type: ignore[attr-defined]

    @staticmethod
    async def earlier_undispatched_in(session: AsyncSession, message: Message) -> bool:
        """Whether an earlier message of the conversation still awaits its dispatch."""
        return bool(
            await session.scalar(
                select(
                    exists().where(
                        Message.conversation_id == message.conversation_id,
                        Message.direction == Direction.INBOUND.value,
                        Message.state.in_([s.value for s in UNDISPATCHED]),
                        Message.id < message.id,
                    )
                )
            )
        )

    async def next_undispatched(self, conversation_id: int, *, after_id: int) -> int | None:
        """The next message of the conversation awaiting its dispatch, if any."""
        async with self._sessions() as session:
            return await self.next_undispatched_in(session, conversation_id, after_id=after_id)

    @staticmethod
    async def next_undispatched_in(
        session: AsyncSession, conversation_id: int, *, after_id: int
    ) -> int | None:
        found = await session.scalar(
            select(Message.id)
            .where(
                Message.conversation_id == conversation_id,
                Message.direction == Direction.INBOUND.value,
                Message.state.in_([s.value for s in UNDISPATCHED]),
                Message.id > after_id,
            )
            .order_by(Message.id)
            .limit(1)
        )
        return None if found is None else int(found)

    async def undispatched_heads(self, *, older_than: dt.datetime, limit: int = 500) -> list[int]:
        """For recovery: each conversation's first message awaiting dispatch (unclaimed, or
        whose claim ran out), received before ``older_than``."""
        now = utcnow()
        earlier = aliased(Message)
        async with self._sessions() as session:
            rows = await session.execute(
                select(Message.id)
                .where(
                    Message.direction == Direction.INBOUND.value,
                    Message.received_at < older_than,
                    or_(
                        Message.state == MessageState.RECEIVED.value,
                        and_(
                            Message.state == MessageState.DISPATCHING.value,
                            Message.claimed_until < now,
                        ),
                    ),
                    ~exists().where(
                        earlier.conversation_id == Message.conversation_id,
                        earlier.direction == Direction.INBOUND.value,
                        earlier.state.in_([s.value for s in UNDISPATCHED]),
                        earlier.id < Message.id,
                    ),
                )
                .order_by(Message.id)
                .limit(limit)
            )
            return [int(r) for r in rows.scalars()]

    # -- replies ---------------------------------------------------------------------------

    async def claim_reply(self, message_id: int) -> bool:
        """pending → sending for exactly one caller: the at-most-once gate of a reply."""
        async with self._sessions.begin() as session:
            result = await session.execute(
                update(Message)
                .where(Message.id == message_id, Message.delivery == Delivery.PENDING.value)
                .values(delivery=Delivery.SENDING.value, updated_at=utcnow())
            )
            return bool(result.rowcount == 1)  # type: ignore[attr-defined]

    async def release_replies(self, message_ids: list[int]) -> None:
        """sending → pending: replies reserved to be sent that were never handed to their
        channel (the sender was stopped first), for a later delivery to send."""
        async with self._sessions.begin() as session:
            await session.execute(
                update(Message)
                .where(Message.id.in_(message_ids), Message.delivery == Delivery.SENDING.value)
                .values(delivery=Delivery.PENDING.value, updated_at=utcnow())
                .execution_options(synchronize_session=False)
            )

    async def update_delivery(
        self,
        message_id: int,
        status: Delivery,
        *,
        external_id: str | None = None,
        error: str | None = None,
        event: tuple[int, str] | None = None,
    ) -> bool:
        """Move an outbound message's delivery status forward; an older status is ignored.

        Provider callbacks arrive out of order and may overtake our own record of the send, so
        the update only applies over a lower-ranked status (one conditional statement).
        ``external_id`` (the provider's message id) is recorded whatever the status outcome,
        unless another message of the channel has it already (ids a provider re-uses must not
        cost the status: the send happened), and ``event`` ((activity id, kind):
        ``reply_sent``, ``reply_failed``) in the same transaction, so the record never shows a
        delivery without its event.
        """
        async with self._sessions.begin() as session:
            return await self._move_delivery(
                session, message_id, status, external_id=external_id, error=error, event=event
            )

    async def end_delivery(
        self,
        message_id: int,
        status: Delivery,
        *,
        external_id: str | None = None,
        error: str | None = None,
        event: tuple[int, str] | None = None,
        turn: tuple[int, int],
    ) -> int | None:
        """:meth:`update_delivery` for the last reply an activity owes its conversation, and
        in the same transaction the conversation's next activity waiting its turn after
        ``turn`` (conversation id, order key), now that this reply holds it back no more.

        An activity recorded meanwhile that found this reply still being sent waited for this
        transaction (:meth:`Turns.blocking` locks the reply it finds) and so either saw
        it sent, or was committed first and is found here."""
        async with self._sessions.begin() as session:
            await self._move_delivery(
                session, message_id, status, external_id=external_id, error=error, event=event
            )
            return await Turns.waiting_after(session, *turn)

    @staticmethod
    async def _move_delivery(
        session: AsyncSession,
        message_id: int,
        status: Delivery,
        *,
        external_id: str | None,
        error: str | None,
        event: tuple[int, str] | None,
    ) -> bool:
        if external_id is not None:
            await session.execute(_RECORD_EXTERNAL_ID, {"mid": message_id, "ext": external_id})
        result = await session.execute(
            _MOVE_DELIVERY,
            {
                "mid": message_id,
                "rank": status.rank,
                "delivery": status.value,
                "error": error,
                "at": utcnow(),
            },
        )
        if event is not None:
            activity_id, kind = event
            ActivityLog.add_event(
                session,
                activity_id,
                kind,
                data={"message_id": message_id, "delivery": status.value, "error": error},
            )
        return bool(result.rowcount == 1)  # type: ignore[attr-defined]

    async def touch_sending(self, message_id: int) -> None:
        """The sender of this reply is alive and still handing it over (a heartbeat)."""
        async with self._sessions.begin() as session:
            await session.execute(
                update(Message)
                .where(Message.id == message_id, Message.delivery == Delivery.SENDING.value)
                .values(updated_at=utcnow())
                .execution_options(synchronize_session=False)
            )

    async def resolve_stale_sending(self, *, limit: int = 500) -> list[int]:
        """Replies whose sender died while handing them over: marked failed with the outcome
        unknown (never sent again: a reply goes out at most once), each with an event. Returns
        their activities, whose requesters are to be told."""
        stale_before = utcnow() - SENDING_STALE
        async with self._sessions.begin() as session:
            rows = (
                await session.execute(
                    select(
                        Message.id, Message.activity_id, Message.conversation_id, Message.channel
                    )
                    .where(
                        Message.delivery == Delivery.SENDING.value,
                        Message.updated_at < stale_before,
                    )
                    .limit(limit)
                    .with_for_update(skip_locked=True)
                )
            ).all()
            for message_id, activity_id, conversation_id, channel in rows:
                await session.execute(
                    update(Message)
                    .where(Message.id == message_id, Message.delivery == Delivery.SENDING.value)
                    .values(
                        delivery=Delivery.FAILED.value,
                        delivery_error=UNCERTAIN,
                        updated_at=utcnow(),
                    )
                    .execution_options(synchronize_session=False)
                )
                if activity_id is not None:
                    ActivityLog.add_event(
                        session,
                        activity_id,
                        "reply_uncertain",
                        data={"message_id": message_id, "error": UNCERTAIN},
                    )
                    note = (
                        f"I may not have been able to send you part of my answer to request "
                        f'#{activity_id}. Send "status {activity_id}" to see where it stands.'
                    )
                    await add_reply(
                        session,
                        activity_id=activity_id,
                        conversation_id=conversation_id,
                        channel=channel,
                        parts=[note],
                    )
        return sorted({int(row[1]) for row in rows if row[1] is not None})

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

    async def apply_status(self, channel: str, report: StatusReport) -> bool:
        """A provider's status report on one of our messages on ``channel``: its delivery
        status moves forward only; a report on a message we do not know changes nothing."""
        message_id = report.message_id or await self._outbound_by_external_id(
            channel, report.external_id
        )
        if message_id is None:
            return False
        return await self.update_delivery(
            message_id, Delivery(report.status), external_id=report.external_id, error=report.error
        )

    async def _outbound_by_external_id(self, channel: str, external_id: str) -> int | None:
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
