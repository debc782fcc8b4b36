"""The activity event feed: every event as it is recorded, in id order, resumable.

Event ids come from the database in the order their rows were *inserted*, not committed: a
transaction that took an id may commit after a later one. So the feed hands out events only
up to its high-water mark — the last id before which nothing is missing — and waits for a
missing id (a transaction still in flight) up to :data:`GAP_WAIT_S` before passing it for good
(a rolled-back transaction leaves a gap that never fills). A reader that resumes after the
last id it saw therefore gets everything after it, with no gap and nothing twice.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from collections.abc import AsyncIterator
from typing import Any

import msgspec
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from dispatch.record.models import Activity, ActivityEvent, utcnow

__all__ = ["GAP_WAIT_S", "EventFeed", "EventFilter", "FeedEvent"]

GAP_WAIT_S = 2.0
"""How long a missing event id is waited for before the feed moves past it."""
POLL_S = 0.2
BATCH = 500


class EventFilter(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Which events a reader wants (every field optional, all must hold)."""

    agent: str | None = None
    action_type: str | None = None
    activity_id: int | None = None
    kinds: list[str] | None = None

    def admits(self, event: FeedEvent) -> bool:
        return (
            (self.agent is None or event.agent == self.agent)
            and (self.action_type is None or event.action_type == self.action_type)
            and (self.activity_id is None or event.activity_id == self.activity_id)
            and (self.kinds is None or event.kind in self.kinds)
        )


class FeedEvent(msgspec.Struct, frozen=True, kw_only=True, tag="event"):
    id: int
    activity_id: int
    agent: str
    action_type: str
    kind: str
    status: str | None
    actor: str
    data: dict[str, Any]
    at: dt.datetime


def _long_after(event: FeedEvent) -> bool:
    """Recorded long enough ago that a missing id before it will not come any more (a gap a
    rolled-back transaction left): passed at once, not waited for again."""
    return event.at < utcnow() - dt.timedelta(seconds=GAP_WAIT_S * 2)


class EventFeed:
    def __init__(
        self, sessions: async_sessionmaker[AsyncSession], *, poll_s: float = POLL_S
    ) -> None:
        self._sessions = sessions
        self._poll_s = poll_s

    async def last_id(self) -> int:
        """Where "from now" starts: the high-water mark, the last id before which nothing is
        missing among the latest events (a lower id still in flight is then delivered)."""
        async with self._sessions() as session:
            top = int(await session.scalar(select(func.max(ActivityEvent.id))) or 0)
            ids = list(
                await session.scalars(
                    select(ActivityEvent.id)
                    .where(ActivityEvent.id > top - BATCH)
                    .order_by(ActivityEvent.id)
                )
            )
        mark = max(top - BATCH, 0)
        for event_id in ids:
            if event_id != mark + 1:
                break
            mark = event_id
        return mark

    async def follow(self, after_id: int, where: EventFilter) -> AsyncIterator[FeedEvent]:
        """Events after ``after_id`` that ``where`` admits, as they are recorded, for ever."""
        mark = after_id
        missing_since: float | None = None
        while True:
            rows = await self._after(mark)
            advanced = False
            for event in rows:
                if event.id != mark + 1 and not _long_after(event):
                    now = time.monotonic()
                    missing_since = missing_since or now
                    if now - missing_since < GAP_WAIT_S:
                        break  # an earlier id may still commit: hold what follows it
                missing_since = None
                mark = event.id
                advanced = True
                if where.admits(event):
                    yield event
            if not advanced or len(rows) < BATCH:
                await asyncio.sleep(self._poll_s)

    async def _after(self, after_id: int) -> list[FeedEvent]:
        async with self._sessions() as session:
            rows = await session.execute(
                select(ActivityEvent, Activity.agent_name, Activity.action_type)
                .join(Activity, Activity.id == ActivityEvent.activity_id)
                .where(ActivityEvent.id > after_id)
                .order_by(ActivityEvent.id)
                .limit(BATCH)
            )
            return [
                FeedEvent(
                    id=event.id,
                    activity_id=event.activity_id,
                    agent=agent,
                    action_type=action_type,
                    kind=event.kind,
                    status=event.status,
                    actor=event.actor,
                    data=event.data,
                    at=event.at,
                )
                for event, agent, action_type in rows
            ]
