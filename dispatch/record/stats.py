"""Figures read from the record for ``GET /metrics``: what the database says happened.

Counters raised in passing (``dispatch.infra.metrics``) are lost with Redis; these are not: messages
by channel and state, replies by delivery status, activities by status, handler durations, and
approval decisions are counted from their rows when Prometheus scrapes, in a few grouped
queries on indexed columns.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import msgspec
from sqlalchemy import Float, case, cast, func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from dispatch.record.models import Activity, ActivityEvent, ActivityStatus, Message, utcnow

__all__ = ["DURATION_BUCKETS_S", "ActionFigures", "Stats", "StatsSnapshot", "Summary"]

SUMMARY_ROWS = 100_000
"""Runs a summary reads at most (the newest) to work out its percentiles."""


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

    async def snapshot(self) -> StatsSnapshot:
        async with self._sessions() as session:
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
            histogram = (
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
        *buckets, count, total_ms = histogram
        return StatsSnapshot(
            messages=[(str(d), str(c), str(o), int(n)) for d, c, o, n in messages],
            activities=[(str(a), str(t), str(s), int(n)) for a, t, s, n in activities],
            duration_buckets=[int(b or 0) for b in buckets],
            duration_count=int(count or 0),
            duration_sum_s=round(float(total_ms or 0.0) / 1000, 6),
            decisions=[(str(k), int(n)) for k, n in decisions],
        )
