"""The embedded transport: jobs run on asyncio tasks inside the gateway process.

Same job bodies as the arq worker (``workers.jobs``); on start it re-drives whatever the
database says is unfinished, so a restart resumes queued work.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import socket
import time
from typing import TYPE_CHECKING, Any

import msgspec

from dispatch.infra.constants import DISPATCH_BATCH, DISPATCH_MESSAGE, RUN_ACTIVITY
from dispatch.infra.queue import (
    DispatchBatchJob,
    DispatchJob,
    JobQueue,
    QueueDepth,
    RetryLater,
    RunJob,
    WorkerBeat,
    count_waiting,
    oldest_waiting,
)
from dispatch.record.activities import RUNNER
from workers import jobs
from workers.recovery import recover, recover_forever

if TYPE_CHECKING:
    from workers.runtime import Runtime

__all__ = ["InProcessQueue"]

log = logging.getLogger("switchboard.inprocess")


class InProcessQueue(JobQueue):
    def __init__(self, prefix: str, *, concurrency: int) -> None:
        super().__init__(prefix)
        self._concurrency = concurrency
        self._queue: asyncio.PriorityQueue[tuple[float, int, tuple[str, str, Any]]] = (
            asyncio.PriorityQueue()
        )
        """(-lead, arrival, job): a prioritized run first, then in arrival order."""
        self._arrivals = itertools.count()
        self._pending: set[str] = set()
        """Ids queued, deferred or running."""
        self._active: set[str] = set()
        """Ids running now."""
        self._tasks: list[asyncio.Task[None]] = []
        self._runtime: Runtime | None = None
        self._idle = asyncio.Event()
        self._idle.set()
        self._busy = 0
        self._closed = False
        self._due: dict[str, float] = {}
        """When each queued job is due (Unix time)."""
        self._started_at = time.time()
        self._done = 0
        self._failed = 0
        self._retried = 0

    async def _enqueue(
        self,
        function: str,
        job: msgspec.Struct,
        job_id: str,
        *,
        defer_s: float = 0,
        ahead_s: float = 0,
    ) -> bool:
        if self._closed or job_id in self._pending:
            return False
        self._pending.add(job_id)
        self._due[job_id] = time.time() + defer_s
        self._idle.clear()
        entry = (-ahead_s, next(self._arrivals), (function, job_id, job))
        if defer_s > 0:
            loop = asyncio.get_running_loop()
            loop.call_later(defer_s, self._queue.put_nowait, entry)
        else:
            self._queue.put_nowait(entry)
        return True

    async def _running(self, job_id: str) -> bool:
        return job_id in self._active

    async def start(self, runtime: Runtime) -> None:
        self._runtime = runtime
        self._tasks = [
            asyncio.create_task(self._work(), name=f"switchboard-job-{n}")
            for n in range(self._concurrency)
        ]
        self._tasks.append(asyncio.create_task(recover_forever(runtime), name="recovery"))
        await recover(runtime, older_than_s=0)

    async def _work(self) -> None:
        assert self._runtime is not None
        while True:
            _, _, (function, job_id, job) = await self._queue.get()
            self._busy += 1
            self._active.add(job_id)
            self._due.pop(job_id, None)
            retry: RetryLater | None = None
            try:
                if function == DISPATCH_MESSAGE and isinstance(job, DispatchJob):
                    await jobs.dispatch_message(self._runtime, job.message_id)
                elif function == DISPATCH_BATCH and isinstance(job, DispatchBatchJob):
                    await jobs.dispatch_batch(self._runtime, job.messages)
                elif function == RUN_ACTIVITY and isinstance(job, RunJob):
                    await jobs.run_activity(self._runtime, job.activity_id)
                else:
                    log.error("unknown job %s", function)
                self._done += 1
            except RetryLater as later:
                retry = later
                self._retried += 1
            except Exception:
                log.exception("job failed", extra={"job_id": job_id})
                self._failed += 1
            finally:
                self._active.discard(job_id)
                self._pending.discard(job_id)
                if retry is not None and not self._closed:
                    await self._enqueue(function, job, job_id, defer_s=retry.defer_s)
                self._busy -= 1
                self._queue.task_done()
                if not self._pending and self._busy == 0:
                    self._idle.set()

    async def oldest_due_at(self) -> float | None:
        return oldest_waiting(self._due.items(), time.time())

    async def depth(self) -> QueueDepth:
        depth = count_waiting(self._due.items(), time.time())
        return msgspec.structs.replace(depth, running=self._busy)

    async def workers(self) -> list[WorkerBeat]:
        """This process: it runs the jobs itself."""
        return [
            WorkerBeat(
                id=RUNNER,
                host=socket.gethostname(),
                pid=os.getpid(),
                started_at=self._started_at,
                last_seen=time.time(),
                jobs_running=self._busy,
                jobs_done=self._done,
                jobs_failed=self._failed,
                jobs_retried=self._retried,
            )
        ]

    async def drain(self, timeout_s: float = 30.0) -> None:
        """Wait until no job is queued or running (for the CLI and tests)."""
        await asyncio.wait_for(self._idle.wait(), timeout=timeout_s)

    async def close(self, *, grace_s: float = 10.0) -> None:
        """Let running and queued jobs finish (up to ``grace_s``), then stop.

        A job cut off mid-way is not lost: the database still says what is unfinished and the
        next start re-drives it.
        """
        if self._tasks and grace_s > 0:
            with contextlib.suppress(TimeoutError):
                await self.drain(timeout_s=grace_s)
        self._closed = True
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
