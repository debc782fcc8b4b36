"""Figures read from the record for ``GET /metrics``: what the database says happened.

Counters raised in passing (``dispatch.infra.metrics``) are lost with Redis; these are not: messages
by channel and state, replies by delivery status, activities by status, handler durations, and
approval decisions are counted by the database as rows change (triggers into ``tallies``,
migration 0010), so a scrape reads a few dozen rows whatever the size of the tables.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import msgspec
from sqlalchemy import Float, cast, func, select, text, union_all
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from dispatch.record.db import planned_for_values
from dispatch.record.models import Activity, ActivityStatus, Tally, TallyDelta, utcnow

__all__ = ["DURATION_BUCKETS_S", "ActionFigures", "Stats", "StatsSnapshot", "Summary"]

SUMMARY_ROWS = 100_000
"""Runs a summary reads at most (the newest) to work out its percentiles."""
FOLD_ROWS = 50_000
"""Deltas one fold moves at most (a scrape, or a recovery pass, folds)."""

_FOLD_LOCK = text("SELECT pg_try_advisory_xact_lock(hashtext('switchboard:tallies'))")
_FOLD = text(
    "WITH moved AS ("
    " DELETE FROM tally_deltas WHERE id IN (SELECT id FROM tally_deltas ORDER BY id LIMIT :rows)"
    " RETURNING family, a, b, c, n)"
    " INSERT INTO tallies (family, a, b, c, n)"
    " SELECT family, a, b, c, sum(n) FROM moved GROUP BY family, a, b, c"
    " ON CONFLICT (family, a, b, c) DO UPDATE SET n = tallies.n + excluded.n"
    " RETURNING 1"
)


class ActionFigures(msgspec.Struct, frozen=True, kw_only=True):
    agent: str
    action_type: str
    runs: int
    """Runs that ended (completed or failed) in the window."""
    completed: int
    failed: int
    success_rate: float | None
    p50_ms: float | None
    p95_ms: float | None


class Summary(msgspec.Struct, frozen=True, kw_only=True):
    window_s: float
    since: dt.datetime
    by_status: dict[str, int]
    """Activities created in the window, by status now."""
    by_agent: dict[str, int]
    success_rate: float | None
    """completed / (completed + failed), of those that ran."""
    actions: list[ActionFigures]


def _percentile(ordered: list[float], q: float) -> float | None:
    if not ordered:
        return None
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 3)


def _rate(completed: int, failed: int) -> float | None:
    return None if completed + failed == 0 else round(completed / (completed + failed), 4)


DURATION_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
"""Upper bounds of the handler duration histogram (Prometheus' defaults, and a minute)."""


class StatsSnapshot(msgspec.Struct, frozen=True, kw_only=True):
    messages: list[tuple[str, str, str, int]]
    """(direction, channel, state or delivery status, count)."""
    activities: list[tuple[str, str, str, int]]
    """(agent, action type, status, count)."""
    duration_buckets: list[int]
    """Runs that took at most each of :data:`DURATION_BUCKETS_S` (cumulative)."""
    duration_count: int
    duration_sum_s: float
    decisions: list[tuple[str, int]]
    """(approved or rejected, count)."""


class Stats:
    def __init__(self, sessions: async_sessionmaker[AsyncSession]) -> None:
        self._sessions = sessions

    async def summary(self, *, window_s: float) -> Summary:
        """Activities created in the last ``window_s``: counts by status and agent, the
        success rate, and per action its runs and p50/p95 duration."""
        since = utcnow() - dt.timedelta(seconds=window_s)
        recent = Activity.created_at >= since
        async with self._sessions() as session:
            await planned_for_values(session)
            by_status = dict(
                (
                    await session.execute(
                        select(Activity.status, func.count())
                        .where(recent)
                        .group_by(Activity.status)
                    )
                ).all()
            )
            by_agent = dict(
                (
                    await session.execute(
                        select(Activity.agent_name, func.count())
                        .where(recent)
                        .group_by(Activity.agent_name)
                    )
                ).all()
            )
            duration_ms: Any = cast(Activity.metrics["duration_ms"].as_float(), Float)
            runs = (
                await session.execute(
                    select(Activity.agent_name, Activity.action_type, Activity.status, duration_ms)
                    .where(
                        recent,
                        Activity.started_at.is_not(None),
                        Activity.status.in_(
                            [ActivityStatus.COMPLETED.value, ActivityStatus.FAILED.value]
                        ),
                    )
                    .order_by(Activity.id.desc())
                    .limit(SUMMARY_ROWS)
                )
            ).all()
        per_action: dict[tuple[str, str], list[tuple[str, float | None]]] = {}
        for agent, action_type, status, took in runs:
            per_action.setdefault((agent, action_type), []).append((status, took))
        actions = []
        for (agent, action_type), ended in sorted(per_action.items()):
            durations = sorted(float(took) for _, took in ended if took is not None)
            completed = sum(status == ActivityStatus.COMPLETED.value for status, _ in ended)
            failed = len(ended) - completed
            actions.append(
                ActionFigures(
                    agent=agent,
                    action_type=action_type,
                    runs=len(ended),
                    completed=completed,
                    failed=failed,
                    success_rate=_rate(completed, failed),
                    p50_ms=_percentile(durations, 0.5),
                    p95_ms=_percentile(durations, 0.95),
                )
            )
        return Summary(
            window_s=window_s,
            since=since,
            by_status={str(k): int(v) for k, v in by_status.items()},
            by_agent={str(k): int(v) for k, v in by_agent.items()},
            success_rate=_rate(
                int(by_status.get(ActivityStatus.COMPLETED.value, 0)),
                int(by_status.get(ActivityStatus.FAILED.value, 0)),
            ),
            actions=actions,
        )

    async def fold(self) -> int:
        """Move what PostgreSQL's triggers appended to ``tally_deltas`` into ``tallies`` (at most
        ``FOLD_ROWS`` a call; one caller at a time, the others skip); the tallies changed."""
        async with self._sessions.begin() as session:
            return await self._fold(session)

    async def _fold(self, session: AsyncSession) -> int:
        if session.get_bind().dialect.name != "postgresql":
            return 0  # SQLite's triggers add to ``tallies`` directly
        if not await session.scalar(_FOLD_LOCK):
            return 0
        return len((await session.execute(_FOLD, {"rows": FOLD_ROWS})).all())

    async def snapshot(self) -> StatsSnapshot:
        """The figures as the triggers counted them: a read of ``tallies`` (and what was not
        folded into them yet), whatever the size of the tables."""
        async with self._sessions.begin() as session:
            await self._fold(session)
            every = union_all(
                select(Tally.family, Tally.a, Tally.b, Tally.c, Tally.n),
                select(TallyDelta.family, TallyDelta.a, TallyDelta.b, TallyDelta.c, TallyDelta.n),
            ).subquery()
            rows = await session.execute(
                select(
                    every.c.family, every.c.a, every.c.b, every.c.c, func.sum(every.c.n)
                ).group_by(every.c.family, every.c.a, every.c.b, every.c.c)
            )
            figures: dict[str, list[tuple[str, str, str, int]]] = {}
            for family, a, b, c, n in rows:
                figures.setdefault(str(family), []).append((str(a), str(b), str(c), int(n or 0)))
        return _snapshot(figures)


def _snapshot(figures: dict[str, list[tuple[str, str, str, int]]]) -> StatsSnapshot:
    in_bucket = {a: n for a, _, _, n in figures.get("duration", [])}
    cumulative, buckets = 0, []
    for bound in DURATION_BUCKETS_S:
        cumulative += in_bucket.get(repr(bound), 0)
        buckets.append(cumulative)
    total_us = sum(n for *_, n in figures.get("duration_sum", []))
    return StatsSnapshot(
        messages=[f for f in figures.get("messages", []) if f[3]],
        activities=[f for f in figures.get("activities", []) if f[3]],
        duration_buckets=buckets,
        duration_count=sum(in_bucket.values()),
        duration_sum_s=round(total_us / 1_000_000, 6),
        decisions=[(a, n) for a, _, _, n in figures.get("decisions", [])],
    )
