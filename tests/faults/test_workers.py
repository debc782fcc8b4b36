"""Faults under real processes: a worker killed or stopped mid-job, Redis flushed or unreachable
mid-flight. Each activity completes once and each message is answered once; nothing is left
unfinished. `switchboard serve` and `switchboard worker` run as processes on the real PostgreSQL
(a database of the test's own) and Redis (behind a fault proxy where it is the fault); the
action's upstream and the Telegram Bot API are local servers that count what reaches them."""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest
from sqlalchemy import select

from dispatch.record.models import ActivityEvent
from tests.conftest import open_db
from tests.support.cluster import Cluster, Figures, redis_through
from tests.support.flow import wait_for
from tests.support.processes import free_port
from tests.support.proxy import FaultProxy
from tests.support.services import flush_redis

pytestmark = pytest.mark.services

SETTLE_S = 90.0
ACK_BUDGET_S = 5.0
IN_FLIGHT_S = 0.2
"""How late the upstream may note a call a worker sent just before it was killed."""
REDIS_TIMEOUT_S = 2.0


@pytest.fixture
def env(make_env: Callable[..., dict[str, str]], own_pg: str, redis_url: str) -> dict[str, str]:
    return make_env(database_url=own_pg, redis_url=redis_url, port=free_port())


@pytest.fixture
async def sessions(own_pg: str) -> AsyncIterator[Any]:
    async with open_db(own_pg) as opened:
        yield opened


@pytest.fixture
def redis_proxy(redis_url: str) -> Iterator[FaultProxy]:
    with FaultProxy("127.0.0.1", urlparse(redis_url).port or 6379) as proxy:
        yield proxy


async def _running(cluster: Cluster, at_least: int) -> None:
    async def enough() -> bool:
        return cluster.work.running() >= at_least

    await wait_for(enough, timeout_s=30)


async def _settled(cluster: Cluster, sessions: Any) -> Figures:
    if not await cluster.settle(sessions, timeout_s=SETTLE_S):
        figures = await cluster.figures(sessions)
        raise AssertionError(f"not settled in {SETTLE_S} s: {figures}\n{cluster.logs()}")
    return await cluster.figures(sessions)


def _once_each(figures: Figures, messages: int) -> None:
    """Every message acted on once and answered once; nothing doubled, lost or stuck."""
    assert (figures.sent, figures.accepted, figures.activities) == (messages,) * 3, figures
    assert (figures.replies, figures.doubled, figures.lost, figures.stuck) == (
        messages,
        0,
        0,
        0,
    ), figures


async def _events(sessions: Any, kind: str) -> list[int]:
    async with sessions() as session:
        rows = await session.scalars(
            select(ActivityEvent.activity_id).where(ActivityEvent.kind == kind)
        )
        return sorted(rows)


async def test_a_worker_killed_mid_job_is_rerun_once_and_never_alongside(
    env: dict[str, str], tmp_path: Path, sessions: Any
) -> None:
    """SIGKILL: the dead worker's runs are re-run once their lease lapses (never while a live
    run holds it), by the other worker; each completes once and is answered once."""
    async with Cluster(env, tmp_path, delay_s=2.0) as cluster:
        doomed = cluster.start_worker(worker_lease_s=4)
        await cluster.send(20, conversations=20)
        await _running(cluster, 10)
        assert await cluster.stop(doomed, signal.SIGKILL) == -signal.SIGKILL
        killed_at = time.monotonic()
        cluster.start_worker(worker_lease_s=4)
        figures = await _settled(cluster, sessions)
        runs = list(cluster.work.runs)
    _once_each(figures, 20)
    assert figures.overlapping_runs == 0, figures
    # Only what the dead worker had started ran again, and once: its runs still upstream, and
    # those whose answer had come back but whose result it had not yet recorded. (Counting
    # what is upstream at the kill misses the latter: the bound is per activity.)
    assert figures.handler_runs > 20, figures
    by_activity: dict[int, list[float]] = {}
    for run in runs:
        by_activity.setdefault(run.activity_id, []).append(run.started)
    for activity_id, started in by_activity.items():
        assert len(started) <= 2, (activity_id, started)
        if len(started) == 2:
            # The first run was the dead worker's: its call may land just after the kill (the
            # upstream notes a call when its thread reads it, a request the kernel still held
            # then), but long before the new worker, a second away, could make one.
            assert min(started) < killed_at + IN_FLIGHT_S, (activity_id, started, killed_at)
    assert len(await _events(sessions, "completed")) == 20


async def test_sigterm_lets_running_jobs_finish_with_zero_reruns(
    env: dict[str, str], tmp_path: Path, sessions: Any
) -> None:
    async with Cluster(env, tmp_path, delay_s=2.0) as cluster:
        stopping = cluster.start_worker()
        await cluster.send(20, conversations=20)
        await _running(cluster, 10)
        started = time.monotonic()
        assert await cluster.stop(stopping, signal.SIGTERM) == 0
        assert time.monotonic() - started < 10  # it finished what ran (2 s), then left
        cluster.start_worker()  # for what it had not started
        figures = await _settled(cluster, sessions)
    _once_each(figures, 20)
    assert figures.handler_runs == 20, figures
    assert await _events(sessions, "released") == []


async def test_sigterm_past_its_grace_gives_work_back_to_run_at_once(
    env: dict[str, str], tmp_path: Path, sessions: Any
) -> None:
    """A job longer than the grace is given back (a ``released`` event) and run by another
    worker at once: well before its 60 s lease would have lapsed."""
    async with Cluster(env, tmp_path, delay_s=5.0) as cluster:
        stopping = cluster.start_worker(worker_shutdown_grace_s=1, worker_lease_s=60)
        await cluster.send(6, conversations=6)
        await _running(cluster, 6)
        assert await cluster.stop(stopping, signal.SIGTERM, timeout_s=15) == 0
        released = await _events(sessions, "released")
        restarted = time.monotonic()
        cluster.start_worker(worker_lease_s=60)
        figures = await _settled(cluster, sessions)
        took_s = time.monotonic() - restarted
    assert len(released) == 6
    _once_each(figures, 6)
    assert figures.handler_runs == 12, figures  # each cut short once, run again once
    assert took_s < 30, took_s


async def test_redis_flushed_mid_flight_loses_nothing(
    env: dict[str, str], tmp_path: Path, sessions: Any, redis_url: str
) -> None:
    async with Cluster(env, tmp_path, delay_s=0.05) as cluster:
        cluster.start_worker()
        sending = asyncio.create_task(cluster.send(200, conversations=20))

        async def under_way() -> bool:
            return sum(cluster.replies().values()) >= 40

        await wait_for(under_way, timeout_s=60)
        await flush_redis(redis_url)
        await sending
        figures = await _settled(cluster, sessions)
    _once_each(figures, 200)
    assert figures.handler_runs == 200, figures


@pytest.mark.parametrize("fault", ["refuse", "freeze"])
async def test_redis_unreachable_mid_flight_loses_nothing_and_the_worker_stays_up(
    env: dict[str, str], tmp_path: Path, sessions: Any, redis_proxy: FaultProxy, fault: str
) -> None:
    env = {
        **env,
        "SWITCHBOARD_REDIS_URL": redis_through(env["SWITCHBOARD_REDIS_URL"], redis_proxy.port),
        "SWITCHBOARD_REDIS_TIMEOUT_S": str(REDIS_TIMEOUT_S),
    }
    async with Cluster(env, tmp_path, delay_s=0.05) as cluster:
        worker = cluster.start_worker()
        await cluster.send(100, conversations=20)

        async def under_way() -> bool:
            return sum(cluster.replies().values()) >= 20

        await wait_for(under_way, timeout_s=60)
        getattr(redis_proxy, fault)()
        try:
            before = len(cluster.ack_s)
            await cluster.send(100, conversations=20)  # accepted all the same: stored first
            acks = [round(a, 2) for a in cluster.ack_s[before:]]
            assert max(acks) < ACK_BUDGET_S, acks
            # Most never wait for Redis: once a call has failed, the others skip it until a
            # probe finds it back (without that, each would wait out the timeout while it is
            # frozen). The bound is the timeout, not a speed: load decides the rest.
            assert sorted(acks)[len(acks) // 2] < REDIS_TIMEOUT_S / 4, acks
            await asyncio.sleep(5)
            assert worker.poll() is None, cluster.logs()
        finally:
            redis_proxy.heal()
        figures = await _settled(cluster, sessions)
        assert worker.poll() is None, cluster.logs()
        # An outage is not a bug: a line when it starts and one when it ends, no tracebacks.
        assert "Traceback" not in cluster.logs(tail_chars=0), cluster.logs()
    _once_each(figures, 200)
    assert figures.handler_runs == 200, figures
