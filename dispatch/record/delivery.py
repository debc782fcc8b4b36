"""Replies on their way: what an activity still owes its conversation, the at-most-once gate
of each reply (``pending`` → ``sending`` for exactly one sender), its outcome as the channel
tells it, and the status reports providers send later (delivered, read, failed).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import msgspec
from sqlalchemy import Integer, Text, bindparam, case, exists, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from dispatch.infra.group import GroupCommit
from dispatch.record.activities import SENDING_STALE, ActivityLog, ManyActivities, event_row
from dispatch.record.db import planned_for_values
from dispatch.record.messages import StatusReport
from dispatch.record.models import (
    Delivery,
    Direction,
    Message,
    utcnow,
)
from dispatch.record.outbox import Outbox, add_reply, give_back, pending_of, read_outbox
from dispatch.record.rows import ID, KEY, TIME, BatchStatement
from dispatch.record.turns import Turns

__all__ = ["Deliveries", "DeliveryUpdate"]

log = logging.getLogger("switchboard.store")

UNCERTAIN = (
    "outcome unknown: the process handing this reply to the channel stopped before it could "
    "record the answer; not sent again"
)


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

_OUTCOME = (
    ("id", ID),
    ("ext", KEY),
    ("rank", Integer()),
    ("delivery", KEY),
    ("error", Text()),
    ("at", TIME),
)
_RANK = " ".join(f"WHEN '{d.value}' THEN {d.rank}" for d in Delivery)
_MOVES = f"(CASE messages.delivery {_RANK} ELSE {len(Delivery)} END) < w.rank"
_TAKES = """(messages.external_id IS NULL AND w.ext IS NOT NULL AND NOT EXISTS (
    SELECT 1 FROM messages AS other
    WHERE other.channel = messages.channel AND other.external_id = w.ext))"""
_RECORD_OUTCOMES = BatchStatement(
    "outcomes",
    _OUTCOME,
    lambda w: (
        f"""
        UPDATE messages SET
            external_id = CASE WHEN {_TAKES} THEN w.ext ELSE messages.external_id END,
            delivery = CASE WHEN {_MOVES} THEN w.delivery ELSE messages.delivery END,
            delivery_error = CASE WHEN {_MOVES} THEN w.error ELSE messages.delivery_error END,
            updated_at = CASE WHEN {_MOVES} THEN w.at ELSE messages.updated_at END
        FROM {w}
        WHERE messages.id = w.id AND ({_MOVES} OR {_TAKES})"""  # noqa: S608 - no value in it: all bound
    ),
)
""":data:`_RECORD_EXTERNAL_ID` and :data:`_MOVE_DELIVERY` for many replies in one statement
(one new version of each row, one execution whatever their number): each message takes the
provider's id unless it has one or another message of its channel has it, and the status
unless its own ranks as high."""


def _moved(change: DeliveryUpdate, now: Any) -> dict[str, Any]:
    return {
        "mid": change.message_id,
        "rank": change.status.rank,
        "delivery": change.status.value,
        "error": change.error,
        "at": now,
    }


def _event_of(change: DeliveryUpdate, now: Any) -> dict[str, Any] | None:
    """The event a change records with it, as a row."""
    if change.event is None:
        return None
    activity_id, kind = change.event
    data = {"message_id": change.message_id, "delivery": change.status.value, "error": change.error}
    return event_row(activity_id, kind, None, data, now)


class DeliveryUpdate(msgspec.Struct, frozen=True, kw_only=True):
    """What became of one of our outbound messages: its delivery ``status``, the provider's id
    for it, why it failed, and the event to record with it ((activity id, kind):
    ``reply_sent``, ``reply_failed``)."""

    message_id: int
    status: Delivery
    external_id: str | None = None
    error: str | None = None
    event: tuple[int, str] | None = None


class Deliveries:
    """Replies from written to delivered (or failed), each sent at most once."""

    def __init__(self, sessions: async_sessionmaker[AsyncSession]) -> None:
        self._sessions = sessions
        self._ending: GroupCommit[tuple[DeliveryUpdate, tuple[int, int]], int | None] = GroupCommit(
            self._end_many, name="delivery"
        )

    async def close(self) -> None:
        """Let the outcomes being recorded commit."""
        await self._ending.close()

    async def pending_replies(self, activity_id: int) -> list[Message]:
        async with self._sessions() as session:
            return list(await session.scalars(pending_of(activity_id)))

    async def outbox(self, activity_id: int, source_message_id: int | None) -> Outbox:
        """An activity's replies still to send (see :class:`~dispatch.record.outbox.Outbox`)."""
        async with self._sessions() as session:
            pending = await session.scalars(pending_of(activity_id))
            return await read_outbox(session, list(pending), source_message_id)

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
            await give_back(session, message_ids)

    async def update_delivery(self, change: DeliveryUpdate) -> bool:
        """Move an outbound message's delivery status forward; an older status is ignored.

        Provider callbacks arrive out of order and may overtake our own record of the send, so
        the update only applies over a lower-ranked status (one conditional statement). The
        provider's message id is recorded whatever the status outcome, unless another message
        of the channel has it already (ids a provider re-uses must not cost the status: the
        send happened), and the change's event in the same transaction, so the record never
        shows a delivery without its event.
        """
        async with self._sessions.begin() as session:
            return await self._move_delivery(session, change)

    async def end_delivery(self, change: DeliveryUpdate, *, turn: tuple[int, int]) -> int | None:
        """:meth:`update_delivery` for the last reply an activity owes its conversation, and
        in the same transaction the conversation's next activity waiting its turn after
        ``turn`` (conversation id, order key), now that this reply holds it back no more.

        An activity recorded meanwhile that found this reply still being sent waited for this
        transaction (:meth:`Turns.blocking` locks the reply it finds) and so either saw
        it sent, or was committed first and is found here. Outcomes recorded at about the
        same time are recorded together (one transaction, a few statements)."""
        return await self._ending.submit((change, turn))

    async def _end_many(
        self, ends: Sequence[tuple[DeliveryUpdate, tuple[int, int]]]
    ) -> list[int | None]:
        now = utcnow()
        changes = [change for change, _ in ends]
        # One outcome a message, and a provider's id to one message of the batch: a second
        # (a provider that re-uses ids) is recorded after it, as it would be alone.
        together: dict[int, DeliveryUpdate] = {}
        after: list[DeliveryUpdate] = []
        ids: set[str] = set()
        for change in changes:
            if change.message_id in together or change.external_id in ids:
                after.append(change)
                continue
            together[change.message_id] = change
            if change.external_id is not None:
                ids.add(change.external_id)
        async with self._sessions.begin() as session:
            statement, params = _RECORD_OUTCOMES(
                session,
                [
                    (c.message_id, c.external_id, c.status.rank, c.status.value, c.error, now)
                    for c in together.values()
                ],
            )
            await session.execute(statement, params)
            for change in after:
                await self._move(session, change, now)
            await ManyActivities.append(session, [e for c in changes if (e := _event_of(c, now))])
            turns: dict[int, int] = {}
            for _, (conversation_id, key) in ends:
                turns[conversation_id] = min(key, turns.get(conversation_id, key))
            waiting = await Turns.waiting_after_many(session, turns)
            return [
                waiting.get(conversation_id)
                if turns[conversation_id] == key
                else await Turns.waiting_after(session, conversation_id, key)
                for _, (conversation_id, key) in ends
            ]

    @classmethod
    async def _move_delivery(cls, session: AsyncSession, change: DeliveryUpdate) -> bool:
        now = utcnow()
        moved = await cls._move(session, change, now)
        if (event := _event_of(change, now)) is not None:
            await ManyActivities.append(session, [event])
        return moved

    @staticmethod
    async def _move(session: AsyncSession, change: DeliveryUpdate, now: Any) -> bool:
        """One message's outcome: its provider's id, then its status (whether it moved)."""
        if change.external_id is not None:
            await session.execute(
                _RECORD_EXTERNAL_ID, {"mid": change.message_id, "ext": change.external_id}
            )
        result = await session.execute(_MOVE_DELIVERY, _moved(change, now))
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
            await planned_for_values(session)
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

    async def apply_status(self, channel: str, report: StatusReport) -> bool:
        """A provider's status report on one of our messages on ``channel``: its delivery
        status moves forward only; a report on a message we do not know changes nothing."""
        message_id = report.message_id or await self._outbound_by_external_id(
            channel, report.external_id
        )
        if message_id is None:
            return False
        return await self.update_delivery(
            DeliveryUpdate(
                message_id=message_id,
                status=Delivery(report.status),
                external_id=report.external_id,
                error=report.error,
            )
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
