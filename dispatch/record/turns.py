"""A conversation's turns: its activities run, and are answered, in the order its messages
arrived. What holds an activity back, which one comes next, and which were left behind (for
recovery to re-drive from the database).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable

from sqlalchemy import and_, bindparam, exists, func, or_, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.orm import aliased

from dispatch.record.activities import SENDING_STALE, ActivityView
from dispatch.record.claims import MESSAGES
from dispatch.record.db import planned_for_values
from dispatch.record.models import (
    BLOCKING_STATUSES,
    UNDISPATCHED,
    Activity,
    ActivityStatus,
    Delivery,
    Direction,
    Message,
    MessageState,
    utcnow,
)
from dispatch.record.rows import any_id

__all__ = ["Turns"]

_FIRSTS = (
    select(Message.conversation_id, func.min(Message.id))
    .where(
        any_id(Message.conversation_id),
        Message.direction == Direction.INBOUND.value,
        Message.state.in_([s.value for s in UNDISPATCHED]),
    )
    .group_by(Message.conversation_id)
)
"""Each of some conversations' first message awaiting its dispatch (built once)."""
_UNFINISHED = (
    select(Activity.conversation_id, Activity.order_key, Activity.id)
    .where(
        any_id(Activity.conversation_id),
        Activity.status.in_([s.value for s in BLOCKING_STATUSES]),
    )
    .order_by(Activity.order_key)
)
"""Some conversations' activities queued or running, in their order (built once)."""
_UNSENT = (
    select(Message.conversation_id, Activity.order_key, Message.id)
    .join(Activity, Message.activity_id == Activity.id)
    .where(
        any_id(Message.conversation_id),
        or_(
            Message.delivery == Delivery.PENDING.value,
            and_(
                Message.delivery == Delivery.SENDING.value,
                Message.updated_at > bindparam("fresh_after"),
            ),
        ),
    )
    .order_by(Message.id)
    .with_for_update(read=True, of=Message)
)
"""Some conversations' replies still to send, or being sent by a live sender, with their
activities' order (built once)."""


class Turns:
    def __init__(self, sessions: async_sessionmaker[AsyncSession]) -> None:
        self._sessions = sessions

    async def blocker(self, activity: ActivityView, *, overtakes: bool = False) -> str | None:
        """What holds this activity back in its conversation, or None if it may run now.

        Activities of one conversation run, and are answered, in the order their messages
        arrived: an earlier activity still queued or running, an earlier message not yet
        dispatched, or an earlier reply not yet handed to its channel, blocks. A control
        intent (``overtakes``: cancel, status, a decision) is held back by nothing.
        """
        order_key = activity.order_key
        if activity.conversation_id is None or order_key is None or overtakes:
            return None
        async with self._sessions() as session:
            return await self.blocking(session, activity.conversation_id, order_key)

    @classmethod
    async def blocking(
        cls, session: AsyncSession, conversation_id: int, order_key: int
    ) -> str | None:
        """What holds back an activity at ``order_key`` of its conversation (:meth:`blocker`)."""
        return (await cls.blockers(session, {conversation_id: order_key})).get(conversation_id)

    @staticmethod
    async def blockers(session: AsyncSession, turns: dict[int, int]) -> dict[int, str]:
        """:meth:`blocking` for many conversations at once ({conversation id: order key}):
        what holds each one back (absent: nothing), three statements whatever their number."""
        if not turns:
            return {}
        ids = sorted(turns)
        held: dict[int, str] = {}
        activities = await session.execute(_UNFINISHED, {"ids": ids})
        for conversation_id, key, activity_id in activities:
            if conversation_id is not None and key is not None and key < turns[conversation_id]:
                held.setdefault(conversation_id, f"activity {activity_id}")
        for conversation_id, first in (await Turns.firsts(session, ids)).items():
            if first < turns[conversation_id]:
                held.setdefault(conversation_id, "an earlier message")
        # A reply whose sender is recording its outcome right now is waited for, then read as
        # recorded (the statement locks what it finds): that transaction looks for what waits
        # behind the reply, so an activity recorded as held must be either seen by it or not
        # held at all.
        replies = await session.execute(
            _UNSENT, {"ids": ids, "fresh_after": utcnow() - SENDING_STALE}
        )
        for conversation_id, key, reply_id in replies:
            if key is not None and key < turns[int(conversation_id)]:
                held.setdefault(int(conversation_id), f"reply {reply_id}")
        return held

    async def next_in_conversation(self, conversation_id: int, after_key: int) -> int | None:
        """The next activity waiting its turn in a conversation, if any."""
        async with self._sessions() as session:
            return await self.waiting_after(session, conversation_id, after_key)

    @classmethod
    async def waiting_after(
        cls, session: AsyncSession, conversation_id: int, after_key: int
    ) -> int | None:
        """:meth:`next_in_conversation` in the caller's transaction."""
        return (await cls.waiting_after_many(session, {conversation_id: after_key})).get(
            conversation_id
        )

    @staticmethod
    async def firsts(session: AsyncSession, conversation_ids: Iterable[int]) -> dict[int, int]:
        """Each conversation's first message still awaiting its dispatch (absent: none), in
        one statement."""
        found = await session.execute(_FIRSTS, {"ids": sorted(conversation_ids)})
        return {int(c): int(m) for c, m in found}

    @staticmethod
    async def waiting_after_many(session: AsyncSession, turns: dict[int, int]) -> dict[int, int]:
        """:meth:`waiting_after` for many conversations ({conversation id: order key}), in
        one statement: each one's next activity waiting its turn (absent: none)."""
        if not turns:
            return {}
        waiting = await session.execute(_UNFINISHED, {"ids": sorted(turns)})
        found: dict[int, int] = {}
        for conversation_id, key, activity_id in waiting:
            if conversation_id is not None and key is not None and key > turns[conversation_id]:
                found.setdefault(conversation_id, activity_id)
        return found

    async def heads(self, *, older_than: dt.datetime, limit: int = 500) -> list[int]:
        """Activities to re-drive: each conversation's first queued or running one, if queued
        before ``older_than`` or running past its lease. Those behind it wait their turn (its
        end wakes the next), so re-driving them would only add jobs."""
        now = utcnow()
        earlier = aliased(Activity)
        async with self._sessions() as session:
            await planned_for_values(session)
            rows = await session.execute(
                select(Activity.id)
                .where(
                    or_(
                        and_(
                            Activity.status == ActivityStatus.QUEUED.value,
                            Activity.created_at < older_than,
                        ),
                        and_(
                            Activity.status == ActivityStatus.IN_PROGRESS.value,
                            Activity.lease_expires_at < now,
                        ),
                    ),
                    or_(
                        Activity.conversation_id.is_(None),
                        ~exists().where(
                            earlier.conversation_id == Activity.conversation_id,
                            earlier.order_key < Activity.order_key,
                            earlier.status.in_([s.value for s in BLOCKING_STATUSES]),
                        ),
                    ),
                )
                .order_by(Activity.id)
                .limit(limit)
            )
            return [int(r) for r in rows.scalars()]

    async def unanswered(self, *, older_than: dt.datetime, limit: int = 500) -> list[int]:
        """Activities with a reply written but never handed to its channel."""
        async with self._sessions() as session:
            await planned_for_values(session)
            rows = await session.execute(
                select(Message.activity_id)
                .where(
                    Message.delivery == Delivery.PENDING.value,
                    Message.activity_id.is_not(None),
                    Message.updated_at < older_than,
                )
                .distinct()
                .limit(limit)
            )
            return sorted(int(r) for r in rows.scalars() if r is not None)

    # -- a conversation's messages, in turn --------------------------------------------

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
            await planned_for_values(session)
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
