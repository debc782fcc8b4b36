"""``/metrics`` figures are counted by the database as rows change (migration 0010), on
PostgreSQL and SQLite: after inserts, updates, deletes and a rollback they equal a full count of
the tables, and a scrape reads none of those tables."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import pytest
from sqlalchemy import Float, case, cast, delete, event, func, select, update
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from dispatch.record.db import create_sessionmaker
from dispatch.record.inbound import Arrival, store_inbound
from dispatch.record.messages import InboundMessage
from dispatch.record.models import Activity, ActivityEvent, Message, TallyDelta, utcnow
from dispatch.record.stats import DURATION_BUCKETS_S, Stats, StatsSnapshot
from tests.conftest import count_rows


@pytest.fixture
def engine(migrated_engine: AsyncEngine) -> AsyncEngine:
    return migrated_engine


async def counted_from_the_tables(sessions: async_sessionmaker[AsyncSession]) -> StatsSnapshot:
    """The figures as a full count of the tables gives them (what a scrape used to run)."""
    async with sessions() as session:
        outcome = func.coalesce(Message.delivery, Message.state, "unknown")
        messages = await session.execute(
            select(Message.direction, Message.channel, outcome, func.count()).group_by(
                Message.direction, Message.channel, outcome
            )
        )
        activities = await session.execute(
            select(
                Activity.agent_name, Activity.action_type, Activity.status, func.count()
            ).group_by(Activity.agent_name, Activity.action_type, Activity.status)
        )
        duration_ms: Any = cast(Activity.metrics["duration_ms"].as_float(), Float)
        ran = Activity.started_at.is_not(None) & duration_ms.is_not(None)
        *buckets, count, total_ms = (
            await session.execute(
                select(
                    *(
                        func.sum(case((ran & (duration_ms <= bound * 1000), 1), else_=0))
                        for bound in DURATION_BUCKETS_S
                    ),
                    func.sum(case((ran, 1), else_=0)),
                    func.sum(case((ran, duration_ms), else_=0.0)),
                )
            )
        ).one()
        decisions = await session.execute(
            select(ActivityEvent.kind, func.count())
            .where(ActivityEvent.kind.in_(["approved", "rejected"]))
            .group_by(ActivityEvent.kind)
        )
    return StatsSnapshot(
        messages=[(str(d), str(c), str(o), int(n)) for d, c, o, n in messages],
        activities=[(str(a), str(t), str(s), int(n)) for a, t, s, n in activities],
        duration_buckets=[int(b or 0) for b in buckets],
        duration_count=int(count or 0),
        duration_sum_s=round(float(total_ms or 0.0) / 1000, 6),
        decisions=[(str(k), int(n)) for k, n in decisions],
    )


def same(scraped: StatsSnapshot, counted: StatsSnapshot) -> None:
    assert sorted(scraped.messages) == sorted(counted.messages)
    assert sorted(scraped.activities) == sorted(counted.activities)
    assert scraped.duration_buckets == counted.duration_buckets
    assert scraped.duration_count == counted.duration_count
    assert scraped.duration_sum_s == pytest.approx(counted.duration_sum_s, abs=1e-5)
    assert sorted(scraped.decisions) == sorted(counted.decisions)


def message(n: int, channel: str = "twilio") -> Arrival:
    return Arrival(
        message=InboundMessage(
            channel=channel,
            external_id=f"m{n}",
            conversation_key=f"c{n % 3}",
            sender=f"+3461111111{n % 3}",
            text=f"hello {n}",
        )
    )


async def test_tallies_equal_a_full_count_through_every_kind_of_change(
    engine: AsyncEngine, backend: str
) -> None:
    sessions = create_sessionmaker(engine)
    stats = Stats(sessions)
    async with sessions.begin() as session:
        conn = await session.connection()
        await store_inbound(conn, [message(n) for n in range(6)], backlog=None)
        await store_inbound(conn, [message(n, "telegram") for n in range(6, 9)], backlog=None)
    async with sessions.begin() as session:
        await session.execute(
            update(Message)
            .where(Message.external_id.in_(["m0", "m1", "m6"]))
            .values(state="dispatched")
        )
        durations = [None, 3.0, 80.0, 1_500.0, 120_000.0]
        for took in durations:
            session.add(
                Activity(
                    agent_name="assistant",
                    action_type="echo",
                    status="queued" if took is None else "completed",
                    metrics={} if took is None else {"duration_ms": took},
                    started_at=None if took is None else utcnow(),
                )
            )
        await session.flush()
        first = await session.scalar(select(func.min(Activity.id)))
        session.add_all(
            [
                ActivityEvent(activity_id=first, kind="approved"),
                ActivityEvent(activity_id=first, kind="rejected"),
                ActivityEvent(activity_id=first, kind="started"),
            ]
        )
    scraped = await stats.snapshot()
    same(scraped, await counted_from_the_tables(sessions))
    assert scraped.duration_count == 4
    assert scraped.duration_buckets[0] == 1  # 3 ms
    assert scraped.duration_buckets[-1] == 3  # 120 s is over the last bound
    assert scraped.duration_sum_s == pytest.approx(121.583)
    assert sorted(scraped.decisions) == [("approved", 1), ("rejected", 1)]

    # A retried run: its status, then its duration change; a message moves twice in one
    # statement's worth of rows; one message is deleted.
    async with sessions.begin() as session:
        await session.execute(
            update(Activity)
            .where(Activity.id == first + 1)
            .values(status="failed", metrics={"duration_ms": 7_000.0})
        )
        await session.execute(update(Message).values(state="ignored"))
        await session.execute(delete(Message).where(Message.external_id == "m8"))
    same(await stats.snapshot(), await counted_from_the_tables(sessions))

    # A rollback takes its counts with it.
    with contextlib.suppress(RuntimeError):
        async with sessions.begin() as session:
            await store_inbound(await session.connection(), [message(50)], backlog=None)
            raise RuntimeError("rolled back")
    scraped = await stats.snapshot()
    same(scraped, await counted_from_the_tables(sessions))
    assert sum(n for *_, n in scraped.messages) == 8

    if backend == "postgresql":
        # Writers append deltas; a fold moves them, concurrent folds count nothing twice.
        async with sessions.begin() as session:
            await store_inbound(
                await session.connection(), [message(n) for n in range(60, 90)], backlog=None
            )
        assert await count_rows(sessions, TallyDelta) > 0
        await asyncio.gather(*(stats.fold() for _ in range(4)))
        assert await count_rows(sessions, TallyDelta) == 0
        same(await stats.snapshot(), await counted_from_the_tables(sessions))


async def test_a_scrape_reads_no_table_it_counts(engine: AsyncEngine) -> None:
    sessions = create_sessionmaker(engine)
    async with sessions.begin() as session:
        await store_inbound(
            await session.connection(), [message(n) for n in range(20)], backlog=None
        )
    statements: list[str] = []

    def seen(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        statements.append(statement)

    event.listen(engine.sync_engine, "before_cursor_execute", seen)
    try:
        snapshot = await Stats(sessions).snapshot()
    finally:
        event.remove(engine.sync_engine, "before_cursor_execute", seen)
    assert sum(n for *_, n in snapshot.messages) == 20
    assert statements
    for statement in statements:
        for table in ("messages", "agent_activities", "activity_events"):
            assert f" {table}" not in statement.lower(), statement
