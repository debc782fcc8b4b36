"""How long the record keeps what is over: ``SWITCHBOARD_RETENTION_DAYS``.

What has ended and is older than the retention is removed, a batch at a time: finished
activities (completed, failed, cancelled, rejected, expired; by when they were created) with
their events, approvals, artifacts, votes and council steps (their rows go with the activity)
and their messages; then messages that nothing still open refers to (an inbound one whose
dispatch has settled, a reply or notice handed over or given up). Nothing unfinished is touched,
however old: a question still open, an approval still waiting, a reply not yet sent. Users,
their addresses and conversations stay (a returning person is known).

``/metrics`` stays right: the figures of what is stored (messages, activities by status) count
down with what is removed; what happened (handler durations, approval decisions) does not.

The worker removes at most ``PASS_ROWS`` rows per recovery pass, once an hour, or at every pass
while more are left. ``switchboard retain --older-than-days N --archive FILE`` runs the same
removal at once and writes each batch, before it goes, to FILE (JSON lines; gzip if it ends in
``.gz``): the way to archive old messages and events (``README``: "Retention and archives").
"""

from __future__ import annotations

import datetime as dt
import gzip
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from time import monotonic
from typing import Any

import msgspec
from sqlalchemy import and_, delete, exists, or_, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from dispatch.record.db import planned_for_values
from dispatch.record.models import (
    Activity,
    ActivityEvent,
    ActivityStatus,
    Base,
    Delivery,
    Direction,
    Message,
    MessageState,
    utcnow,
)

__all__ = ["Archive", "ArchiveFile", "Removed", "Retention"]

BATCH_ROWS = 1000
"""Activities (or messages) removed per transaction."""
PASS_ROWS = 20_000
"""At most this many per worker pass: the recovery pass it rides on is not held up long."""
EVERY_S = 3600.0
"""A worker's passes, once caught up."""

FINISHED = [
    s.value
    for s in (
        ActivityStatus.COMPLETED,
        ActivityStatus.FAILED,
        ActivityStatus.CANCELLED,
        ActivityStatus.REJECTED,
        ActivityStatus.EXPIRED,
    )
]
SETTLED_INBOUND = [
    s.value
    for s in (
        MessageState.DISPATCHED,
        MessageState.IGNORED,
        MessageState.HUMAN,
        MessageState.AGENT,
        MessageState.FAILED,
    )
]
SETTLED_OUTBOUND = [
    d.value
    for d in (
        Delivery.QUEUED,
        Delivery.SENT,
        Delivery.DELIVERED,
        Delivery.READ,
        Delivery.UNDELIVERED,
        Delivery.FAILED,
    )
]

Archive = Callable[[str, list[dict[str, Any]]], Awaitable[None]]
"""Where a batch goes before it is removed: (table, rows as dicts)."""


class Removed(msgspec.Struct, kw_only=True):
    activities: int = 0
    messages: int = 0

    @property
    def rows(self) -> int:
        return self.activities + self.messages


def _as_dict(row: Base) -> dict[str, Any]:
    return {c.key: getattr(row, c.key) for c in row.__table__.columns}


class Retention:
    def __init__(self, sessions: async_sessionmaker[AsyncSession], *, days: int) -> None:
        self._sessions = sessions
        self.days = days
        self._next_at = 0.0
        """Monotonic time of this process's next pass (0: at the next recovery pass)."""

    async def pass_if_due(self) -> Removed | None:
        """A worker's pass, if retention is on and one is due (None otherwise)."""
        if not self.days or monotonic() < self._next_at:
            return None
        before = utcnow() - dt.timedelta(days=self.days)
        removed = await self.remove(before=before, budget_rows=PASS_ROWS)
        caught_up = removed.rows < PASS_ROWS
        self._next_at = monotonic() + (EVERY_S if caught_up else 0.0)
        return removed

    async def remove(
        self, *, before: dt.datetime, budget_rows: int | None = None, archive: Archive | None = None
    ) -> Removed:
        """Remove what ended before ``before`` (at most about ``budget_rows``; None: all of
        it), each batch handed to ``archive`` first."""
        removed = Removed()
        while budget_rows is None or removed.rows < budget_rows:
            count = await self._activities(before, archive)
            removed.activities += count
            if count < BATCH_ROWS:
                break
        while budget_rows is None or removed.rows < budget_rows:
            count = await self._messages(before, archive)
            removed.messages += count
            if count < BATCH_ROWS:
                break
        return removed

    async def _activities(self, before: dt.datetime, archive: Archive | None) -> int:
        async with self._sessions.begin() as session:
            await planned_for_values(session)
            ids = list(
                await session.scalars(
                    select(Activity.id)
                    .where(Activity.created_at < before, Activity.status.in_(FINISHED))
                    .order_by(Activity.id)
                    .limit(BATCH_ROWS)
                    .with_for_update(skip_locked=True)
                )
            )
            if not ids:
                return 0
            if archive is not None:
                await self._archive(session, archive, ids)
            # Their messages first (they refer to them); events and the rest go with them.
            await session.execute(delete(Message).where(Message.activity_id.in_(ids)))
            await session.execute(delete(Activity).where(Activity.id.in_(ids)))
            return len(ids)

    @staticmethod
    async def _archive(session: AsyncSession, archive: Archive, ids: Sequence[int]) -> None:
        for model, where, order in (
            (Activity, Activity.id.in_(ids), Activity.id),
            (ActivityEvent, ActivityEvent.activity_id.in_(ids), ActivityEvent.id),
            (Message, Message.activity_id.in_(ids), Message.id),
        ):
            rows = await session.scalars(select(model).where(where).order_by(order))
            found = [_as_dict(r) for r in rows]
            if found:
                await archive(str(model.__tablename__), found)

    async def _messages(self, before: dt.datetime, archive: Archive | None) -> int:
        settled = or_(
            and_(
                Message.direction == Direction.INBOUND.value,
                Message.state.in_(SETTLED_INBOUND),
            ),
            and_(
                Message.direction == Direction.OUTBOUND.value,
                Message.delivery.in_(SETTLED_OUTBOUND),
            ),
        )
        async with self._sessions.begin() as session:
            await planned_for_values(session)
            oldest = await session.scalar(select(Message.received_at).order_by(Message.id).limit(1))
            if oldest is None or oldest >= before:  # ids grow with time: nothing is that old
                return 0
            found = list(
                await session.scalars(
                    select(Message)
                    .where(
                        Message.received_at < before,
                        Message.activity_id.is_(None),
                        settled,
                        ~exists().where(Activity.source_message_id == Message.id),
                    )
                    .order_by(Message.id)
                    .limit(BATCH_ROWS)
                    .with_for_update(skip_locked=True)
                )
            )
            if not found:
                return 0
            if archive is not None:
                await archive(str(Message.__tablename__), [_as_dict(m) for m in found])
            await session.execute(delete(Message).where(Message.id.in_([m.id for m in found])))
            return len(found)


class ArchiveFile:
    """An :data:`Archive` to a file: a JSON line per row, ``{"table": ..., "row": {...}}``,
    appended (gzip if the name ends in ``.gz``), flushed with each batch before it is removed."""

    def __init__(self, path: Path) -> None:
        self._file = gzip.open(path, "ab") if path.suffix == ".gz" else path.open("ab")  # noqa: SIM115 - closed in close()
        self.rows = 0

    async def __call__(self, table: str, rows: list[dict[str, Any]]) -> None:
        for row in rows:
            self._file.write(msgspec.json.encode({"table": table, "row": row}) + b"\n")
        self._file.flush()
        self.rows += len(rows)

    def close(self) -> None:
        self._file.close()
