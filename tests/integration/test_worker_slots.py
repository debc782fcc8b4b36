"""A job slot is given back exactly once when Redis fails while a job is being started.

arq takes a slot (its semaphore and job counter) before asking Redis whether a job may start,
and keeps it when Redis fails; the worker gives it back. But when arq has already given it
back (the job runs elsewhere) and the error comes from the pipeline's clean-up (UNWATCH),
giving it back again raised ``BoundedSemaphore released too many times`` and ended the worker
(seen with Redis frozen mid-flight, 168 of 200 messages stranded).

The worker starts due jobs side by side (arq starts them one after another, four round trips
each): a start that fails gives back its own slot and no other's.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from redis.asyncio.client import Pipeline
from redis.exceptions import ConnectionError as RedisConnectionError

from dispatch.infra.queue import queue_name
from gateway.settings import Settings
from workers.worker import ELSEWHERE_RECHECK_S, create_worker

pytestmark = pytest.mark.services

JOB = "slots-test-job"


@pytest.fixture
async def worker(
    make_settings: Callable[..., Settings], pg_migrated: str, redis_url: str
) -> AsyncIterator[Any]:
    settings = make_settings(database_url=pg_migrated, redis_url=redis_url)
    worker: Any = create_worker(settings, burst=True)
    await worker.pool.zadd(queue_name(settings.queue.prefix), {JOB: 1})
    try:
        yield worker
    finally:
        await worker.pool.flushdb()
        await worker.pool.aclose()


def _free_slots(worker: Any) -> int:
    return int(worker.sem._value)


async def test_redis_failing_while_a_job_is_checked_gives_its_slot_back(
    worker: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = _free_slots(worker)

    async def unreachable(self: Any, *args: Any, **kwargs: Any) -> Any:
        raise RedisConnectionError("Redis went away")

    monkeypatch.setattr(Pipeline, "zscore", unreachable, raising=False)
    monkeypatch.setattr(Pipeline, "immediate_execute_command", unreachable)
    with pytest.raises(RedisConnectionError):
        await worker.start_jobs([JOB.encode()])
    assert (_free_slots(worker), worker.job_counter) == (before, 0)


async def test_a_failing_clean_up_after_arq_gave_the_slot_back_gives_it_back_once(
    worker: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    await worker.pool.set("arq:in-progress:" + JOB, b"1")  # runs elsewhere: arq lets go
    before = _free_slots(worker)
    reset = Pipeline.reset

    async def unwatch_fails(self: Any) -> None:
        watching = self.watching
        await reset(self)
        if watching:
            raise RedisConnectionError("Redis went away")

    monkeypatch.setattr(Pipeline, "reset", unwatch_fails)
    with pytest.raises(RedisConnectionError):
        await worker.start_jobs([JOB.encode()])
    assert (_free_slots(worker), worker.job_counter) == (before, 0)


async def _ended(worker: Any) -> None:
    """Wait for the jobs started to end (each gives its slot back as it does)."""
    await asyncio.gather(*worker.tasks.values(), return_exceptions=True)


async def test_due_jobs_start_side_by_side(worker: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    jobs = [f"{JOB}-{n}" for n in range(6)]
    await worker.pool.zadd(worker.queue_name, dict.fromkeys(jobs, 1))
    before = _free_slots(worker)
    watching = 0
    most = 0
    watch = Pipeline.watch

    async def counted(self: Any, *names: Any) -> Any:
        nonlocal watching, most
        watching += 1
        most = max(most, watching)
        try:
            await asyncio.sleep(0.05)  # a busy loop's round trip
            return await watch(self, *names)
        finally:
            watching -= 1

    monkeypatch.setattr(Pipeline, "watch", counted)
    await worker.start_jobs([job.encode() for job in jobs])
    assert set(worker.tasks) == set(jobs)
    assert most == len(jobs)  # every start in flight at once, not one after another
    await _ended(worker)
    assert (_free_slots(worker), worker.job_counter) == (before, 0)


async def test_a_start_that_fails_gives_back_its_own_slot_only(
    worker: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    jobs = [f"{JOB}-{n}" for n in range(4)]
    await worker.pool.zadd(worker.queue_name, dict.fromkeys(jobs, 1))
    before = _free_slots(worker)
    failing = jobs[1]

    async def one_fails(self: Any, name: Any, value: Any) -> Any:
        if value == failing:
            raise RedisConnectionError("Redis went away")
        return await self.immediate_execute_command("ZSCORE", name, value)  # as watching does

    release = asyncio.Event()

    async def running(job_id: str, score: int) -> None:
        await release.wait()  # holds its slot until told

    monkeypatch.setattr(Pipeline, "zscore", one_fails)
    monkeypatch.setattr(worker, "run_job", running)
    with pytest.raises(RedisConnectionError):
        await worker.start_jobs([job.encode() for job in jobs])
    assert set(worker.tasks) == set(jobs) - {failing}  # the others started all the same
    assert (_free_slots(worker), worker.job_counter) == (before - 3, 3)
    release.set()
    await _ended(worker)
    assert (_free_slots(worker), worker.job_counter) == (before, 0)


async def test_jobs_running_elsewhere_ahead_in_the_queue_do_not_hide_those_behind(
    worker: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A killed worker's jobs stay listed, claimed, until their claims expire (an hour): as
    many as this worker has slots, first in the queue. The due jobs behind them still start
    (seen: checked side by side, the dead jobs took every slot at each poll, and nothing after
    them was ever looked at)."""
    dead = [f"{JOB}-dead-{n}" for n in range(worker.max_jobs)]
    alive = [f"{JOB}-due-{n}" for n in range(3)]
    await worker.pool.zrem(worker.queue_name, JOB)
    await worker.pool.zadd(worker.queue_name, {job: n + 1 for n, job in enumerate(dead + alive)})
    for job in dead:
        await worker.pool.set("arq:in-progress:" + job, b"1")
    release = asyncio.Event()

    async def running(job_id: str, score: int) -> None:
        await release.wait()

    monkeypatch.setattr(worker, "run_job", running)
    listed = await worker.pool.zrangebyscore(worker.queue_name, min=0, max=float("inf"))
    assert [job.decode() for job in listed] == dead + alive  # as a poll reads them
    await worker.start_jobs(listed)
    assert set(worker.tasks) == set(alive)
    release.set()
    await _ended(worker)
    assert worker.job_counter == 0


async def test_a_job_running_elsewhere_is_asked_about_again_only_after_a_while(
    worker: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """arq lists a job as due until it ends (a dead worker's for an hour): asked about at
    every poll, each costs four Redis commands. Found claimed elsewhere, it is left alone for
    ``ELSEWHERE_RECHECK_S``, then asked about again, and started once its claim is gone."""
    await worker.pool.set("arq:in-progress:" + JOB, b"1")
    asked: list[str] = []
    watch = Pipeline.watch

    async def counted(self: Any, *names: Any) -> Any:
        asked.extend(name if isinstance(name, str) else name.decode() for name in names)
        return await watch(self, *names)

    release = asyncio.Event()

    async def running(job_id: str, score: int) -> None:
        await release.wait()

    monkeypatch.setattr(Pipeline, "watch", counted)
    monkeypatch.setattr(worker, "run_job", running)
    polls = 0
    loop = asyncio.get_running_loop()
    until = loop.time() + ELSEWHERE_RECHECK_S * 0.8
    while loop.time() < until:  # polls as often as the worker's own
        await worker.start_jobs([JOB.encode()])
        polls += 1
        await asyncio.sleep(0.01)
    assert polls > 10
    assert asked == ["arq:in-progress:" + JOB]  # once, not at every poll
    assert worker.tasks == {}
    await worker.pool.delete("arq:in-progress:" + JOB)  # its claim lapsed
    await asyncio.sleep(ELSEWHERE_RECHECK_S * 0.3)
    await worker.start_jobs([JOB.encode()])
    assert len(asked) == 2
    assert set(worker.tasks) == {JOB}
    release.set()
    await _ended(worker)
    assert worker.job_counter == 0
