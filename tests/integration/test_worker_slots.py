"""A job slot is given back exactly once when Redis fails while a job is being started.

arq takes a slot (its semaphore and job counter) before asking Redis whether a job may start,
and keeps it when Redis fails; the worker gives it back. But when arq has already given it
back (the job runs elsewhere) and the error comes from the pipeline's clean-up (UNWATCH),
giving it back again raised ``BoundedSemaphore released too many times`` and ended the worker
(seen with Redis frozen mid-flight, 168 of 200 messages stranded).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from redis.asyncio.client import Pipeline
from redis.exceptions import ConnectionError as RedisConnectionError

from dispatch.infra.queue import queue_name
from gateway.settings import Settings
from workers.worker import create_worker

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
