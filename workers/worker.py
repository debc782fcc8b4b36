"""The arq worker: ``switchboard worker``.

Builds the same :class:`~workers.runtime.Runtime` as the gateway once at start-up
(``workers.compose``) and keeps it in arq's ctx under one key; job bodies are the shared ones in
``workers.jobs``. Recovery is a cron job only one worker takes per tick (``unique``).

On SIGTERM the worker takes no new jobs and lets running ones finish for
``SWITCHBOARD_WORKER_SHUTDOWN_GRACE_S``; what is still running then is cancelled, and each
cancelled run gives its activity back at once (``workers.jobs``), for arq to hand to another
worker. A Redis outage does not stop the worker: polling backs off and resumes, running jobs
go on (the database is their record), and recovery re-drives whatever Redis lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from typing import Any

import msgspec
from arq import cron, func
from arq.constants import in_progress_key_prefix
from arq.utils import timestamp_ms
from arq.worker import Worker
from redis.exceptions import RedisError, ResponseError, WatchError

from dispatch.infra.constants import (
    DISPATCH_BATCH,
    DISPATCH_MESSAGE,
    RUN_ACTIVITY,
    queue_name,
    recover_job_id,
    worker_key,
)
from dispatch.infra.queue import (
    RetryLater,
    WorkerBeat,
    job_deserializer,
    job_serializer,
    redis_client,
)
from dispatch.infra.retry import RetryPolicy
from dispatch.record.activities import RUNNER
from workers import jobs
from workers.compose import open_runtime
from workers.recovery import recover
from workers.runtime import Runtime, RuntimeSettings

__all__ = ["HEARTBEAT_S", "beat_on_this_host", "create_worker"]

log = logging.getLogger("switchboard.worker")
RUNTIME = "switchboard_runtime"
POLL_AGAIN = RetryPolicy(retries=0, first_s=0.1, max_s=5.0)
"""How long a worker whose poll could not reach Redis waits before the next (the n-th outage in
a row waits the n-th delay)."""
FINISHING = RetryPolicy(retries=1000, first_s=0.1, max_s=5.0, within_s=60.0)
"""A finished job's bookkeeping in Redis, tried through an outage for a minute."""
HEARTBEAT_S = 5.0
"""How often a worker says it is alive (``GET /api/v1/workers``; gone after three missed)."""
ELSEWHERE_RECHECK_S = 0.5
"""A due job found claimed by another worker is not asked about again for this long. arq lists
a job as due until it ends, and a dead worker's for as long as its claim holds (an hour): asked
at every poll (20 a second), each cost four Redis commands, 2,560 a second for one killed
worker's 32 jobs. A job that comes free meanwhile waits at most this long for this worker
(any other may take it at once)."""


async def beat_on_this_host(settings: RuntimeSettings) -> WorkerBeat | None:
    """The latest heartbeat of a worker running on this host, if one has beaten within three
    heartbeats (what ``switchboard worker --check`` reads: a container's healthcheck runs on the
    worker's own host). Redis errors are the caller's to report."""
    pool = redis_client(settings.queue)
    try:
        pattern = worker_key(settings.queue.prefix, f"{socket.gethostname()}:*")
        keys = [key async for key in pool.scan_iter(match=pattern)]
        values = await pool.mget(keys) if keys else []
    finally:
        await pool.aclose()
    fresh = [
        beat
        for beat in (msgspec.json.decode(value, type=WorkerBeat) for value in values if value)
        if time.time() - beat.last_seen <= HEARTBEAT_S * 3
    ]
    return max(fresh, key=lambda beat: beat.last_seen, default=None)


def _runtime(ctx: dict[str, Any]) -> Runtime:
    runtime: Runtime = ctx[RUNTIME]
    return runtime


async def _job(name: str, outcome: Any) -> dict[str, Any]:
    """Await a job body; one INFO line per job run (``bench/faults.py`` counts them)."""
    from arq import Retry

    try:
        done: jobs.JobOutcome = await outcome
    except RetryLater as later:
        log.info("job %s: retry in %.1f s", name, later.defer_s, extra={"reason": str(later)})
        raise Retry(defer=later.defer_s) from later
    result: dict[str, Any] = msgspec.to_builtins(done)
    log.info("job %s: %s", name, done.outcome, extra={"ran": done.ran})
    return result


async def dispatch_message_job(ctx: dict[str, Any], job: dict[str, Any]) -> dict[str, Any]:
    return await _job(
        DISPATCH_MESSAGE, jobs.dispatch_message(_runtime(ctx), int(job["message_id"]))
    )


async def dispatch_batch_job(ctx: dict[str, Any], job: dict[str, Any]) -> dict[str, Any]:
    messages = [(int(c), int(m)) for c, m in job["messages"]]
    return await _job(DISPATCH_BATCH, jobs.dispatch_batch(_runtime(ctx), messages))


async def run_activity_job(ctx: dict[str, Any], job: dict[str, Any]) -> dict[str, Any]:
    return await _job(RUN_ACTIVITY, jobs.run_activity(_runtime(ctx), int(job["activity_id"])))


async def recover_job(ctx: dict[str, Any]) -> dict[str, int]:
    return await recover(_runtime(ctx))


async def _patiently(call: Any, *args: Any, **kwargs: Any) -> None:
    """Retry a Redis bookkeeping ``call`` through an outage (:data:`FINISHING`); then leave it:
    a job left in the queue runs again later and finds its work done."""
    try:
        async for attempt in FINISHING.attempts(_redis_down):
            with attempt:
                await call(*args, **kwargs)
    except (RedisError, OSError):
        log.warning("Redis unreachable for a minute; a finished job stays queued")


def _redis_down(exc: BaseException) -> bool:
    return isinstance(exc, RedisError | OSError)


def _ticks(every_s: float) -> tuple[set[int] | None, set[int]]:
    """arq cron (minute, second) for a pass every ``every_s`` seconds (rounded to a divisor of
    the clock's minute or hour)."""
    if every_s < 60:
        return None, set(range(0, 60, max(1, round(every_s))))
    return set(range(0, 60, max(1, round(every_s / 60)))), {0}


class ResilientWorker(Worker):
    """arq's worker, made to live through Redis outages.

    A poll that cannot reach Redis waits (backing off) and tries again instead of ending
    the worker; a job slot taken for a job Redis then failed to start is given back (arq
    keeps it, so a worker that lived through a few outages would take no more jobs); and a
    finished job's bookkeeping waits for Redis to answer (for a while) instead of failing
    the poll loop. Running jobs go on meanwhile: their record is the database.
    """

    _outages = 0
    """Polls in a row that could not reach Redis."""
    _started_at = time.time()

    def __init__(self, *args: Any, prefix: str, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._prefix = prefix
        self._elsewhere: dict[str, float] = {}
        """Due jobs claimed by another worker: when to ask about each again (monotonic s)."""

    async def close(self) -> None:
        """A worker that stops says so at once (no wait for its heartbeat to lapse)."""
        with contextlib.suppress(Exception):
            await self.pool.delete(worker_key(self._prefix, RUNNER))
        await super().close()

    async def record_health(self) -> None:
        """arq's health check, and this worker's heartbeat for ``GET /api/v1/workers``
        (it expires when the worker stops beating)."""
        due = time.time() - self._last_health_check >= self.health_check_interval
        await super().record_health()
        if not due:
            return
        beat = WorkerBeat(
            id=RUNNER,
            host=socket.gethostname(),
            pid=os.getpid(),
            started_at=self._started_at,
            last_seen=time.time(),
            jobs_running=sum(not task.done() for task in self.tasks.values()),
            jobs_done=self.jobs_complete,
            jobs_failed=self.jobs_failed,
            jobs_retried=self.jobs_retried,
        )
        await self.pool.psetex(
            worker_key(self._prefix, RUNNER),
            int(HEARTBEAT_S * 3 * 1000),
            msgspec.json.encode(beat),
        )

    async def _poll_iteration(self) -> None:
        try:
            await super()._poll_iteration()
        except (RedisError, OSError):
            self._outages += 1
            pause_s = POLL_AGAIN.delay_s(self._outages)
            log.warning("Redis unreachable; polling again in %.1f s", pause_s)
            await asyncio.sleep(pause_s)
        else:
            self._outages = 0
        # A stop (arq cancels this task once) must not be lost on the way: under a socket
        # timeout redis-py sends with asyncio.wait_for, which on Python 3.11 swallows a
        # cancellation that arrives as the send completes (CPython gh-86296), and the
        # worker would poll on, never stopping. The request is still counted on the task.
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            raise asyncio.CancelledError

    async def start_jobs(self, job_ids: list[bytes]) -> None:
        """Start the due jobs side by side.

        arq starts them one after another, four Redis round trips each (watch, exists, score,
        claim) on a loop busy with the running jobs: a worker then started fewer jobs a second
        than one webhook a message brings at a trickle, and a message waited seconds in the
        queue with a core a third idle (open loop at 100 messages/s, end to end p50: 5.0 to
        6.7 s one after another, 1.2 to 1.9 s side by side, back to back on one machine).
        A job running here is not checked again (arq lists it as due until it ends: at
        saturation every poll asked Redis about each running job, four commands a job), nor
        one running elsewhere for :data:`ELSEWHERE_RECHECK_S`. Each start is arq's, and owns
        its slot: a start that leaves no running job gives the slot back, once, whatever Redis
        did on the way.
        """
        now = time.monotonic()
        if self._elsewhere:
            self._elsewhere = {job: at for job, at in self._elsewhere.items() if at > now}
        due = [
            job_id
            for job_id in map(bytes.decode, job_ids)
            if (job_id not in self.tasks or self.tasks[job_id].done())
            and job_id not in self._elsewhere
        ]
        # As many starters as free slots, each taking the next id in the queue's order: a job
        # that turns out to run elsewhere (a dead worker's, until its claim expires) hands its
        # place on to the next, as arq's loop does; never more checks in flight than slots,
        # or the oldest such jobs would take every slot at each poll and none after them would
        # ever be looked at.
        ids = iter(due)

        async def starter() -> None:
            for job_id in ids:
                await self._start(job_id)

        free = max(1, self.max_jobs - self.job_counter)
        done = await asyncio.gather(
            *(starter() for _ in range(min(free, len(due)))), return_exceptions=True
        )
        failed = next((r for r in done if isinstance(r, BaseException)), None)
        if failed is not None:
            raise failed

    async def _start(self, job_id: str) -> None:
        await self.sem.acquire()
        if self.job_counter >= self.max_jobs:
            self.sem.release()
            return
        self.job_counter += 1
        running: list[asyncio.Task[None]] = []
        try:
            await self._claim(job_id, running)
        finally:
            if not running:  # else the job's task gives the slot back when it ends
                self.job_counter -= 1
                self.sem.release()

    async def _claim(self, job_id: str, running: list[asyncio.Task[None]]) -> None:
        """arq's check and claim of a due job, which starts it (its task into ``running``)
        unless it runs elsewhere, is gone, or was deferred meanwhile. The task is made as soon
        as Redis says the job is ours, before the pipeline's clean-up (which may fail: the job
        runs all the same)."""
        in_progress = in_progress_key_prefix + job_id
        async with self.pool.pipeline(transaction=True) as pipe:
            await pipe.watch(in_progress)
            ongoing = await pipe.exists(in_progress)
            score = await pipe.zscore(self.queue_name, job_id)
            if ongoing:
                self._elsewhere[job_id] = time.monotonic() + ELSEWHERE_RECHECK_S
                return
            if not score or score > timestamp_ms():
                return
            pipe.multi()  # type: ignore[no-untyped-call]
            pipe.psetex(in_progress, int(self.in_progress_timeout_s * 1000), b"1")
            try:
                await pipe.execute()
            except (ResponseError, WatchError):
                return  # another worker claimed it since
            task = self.loop.create_task(self.run_job(job_id, int(score)))
            task.add_done_callback(lambda _: self._release_sem_dec_counter_on_complete())
            self.tasks[job_id] = task
            running.append(task)

    async def finish_job(self, *args: Any, **kwargs: Any) -> None:
        await _patiently(super().finish_job, *args, **kwargs)

    async def finish_failed_job(self, *args: Any, **kwargs: Any) -> None:
        await _patiently(super().finish_failed_job, *args, **kwargs)


def create_worker(settings: RuntimeSettings, *, burst: bool = False) -> Any:
    """An arq ``Worker`` wired to ``settings`` (Redis must be configured)."""
    if not settings.queue.redis_url:
        raise RuntimeError("SWITCHBOARD_REDIS_URL is not set: the embedded mode needs no worker")

    async def on_startup(ctx: dict[str, Any]) -> None:
        stack = contextlib.AsyncExitStack()
        ctx[RUNTIME] = await stack.enter_async_context(open_runtime(settings, role="worker"))
        ctx["switchboard_stack"] = stack

    async def on_shutdown(ctx: dict[str, Any]) -> None:
        stack = ctx.get("switchboard_stack")
        if stack is not None:
            await stack.aclose()

    # arq's own timeout is only a backstop: handlers have per-action timeouts and leases.
    backstop_s = 3600
    minute, second = _ticks(settings.worker.recover_every_s)
    return ResilientWorker(
        prefix=settings.queue.prefix,
        functions=[
            func(dispatch_message_job, name=DISPATCH_MESSAGE, max_tries=10, timeout=backstop_s),
            func(run_activity_job, name=RUN_ACTIVITY, max_tries=10, timeout=backstop_s),
            func(dispatch_batch_job, name=DISPATCH_BATCH, max_tries=10, timeout=backstop_s),
        ],
        cron_jobs=[
            cron(
                recover_job,
                # arq's job keys are global: several deployments may share one Redis.
                name=recover_job_id(settings.queue.prefix),
                unique=True,
                run_at_startup=True,
                timeout=max(60.0, settings.worker.recover_every_s * 3),
                minute=minute,
                second=second,
            )
        ],
        # Our client, not one arq makes from settings: every call is bounded by a timeout.
        redis_pool=redis_client(settings.queue),
        queue_name=queue_name(settings.queue.prefix),
        max_jobs=settings.worker.max_jobs,
        poll_delay=settings.worker.poll_delay_s,
        job_timeout=backstop_s,
        # No results kept: a deterministic job id can be enqueued again once it has run.
        keep_result=0,
        job_serializer=job_serializer,
        job_deserializer=job_deserializer,
        on_startup=on_startup,
        on_shutdown=on_shutdown,
        job_completion_wait=round(settings.worker.shutdown_grace_s),
        health_check_interval=HEARTBEAT_S,
        burst=burst,
        handle_signals=not burst,
    )
