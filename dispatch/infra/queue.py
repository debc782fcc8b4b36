"""The job transport seam: arq on Redis, or an in-process runner (``workers.inprocess``).

A queue only carries ids. Everything a job needs is re-read from the database, so losing the
queue loses no work: recovery re-drives it (``workers.recovery``).
"""

from __future__ import annotations

import abc
import dataclasses
import time
from collections.abc import Awaitable, Callable, Collection, Iterable, Sequence
from typing import Any

import msgspec

from dispatch.infra.config import (
    Group,
    Matches,
    Within,
    setting,
)
from dispatch.infra.constants import (
    AGAIN,
    DISPATCH_BATCH,
    DISPATCH_MESSAGE,
    RUN_ACTIVITY,
    batch_job_id,
    dispatch_job_id,
    job_kind,
    queue_name,
    run_job_id,
    worker_key,
)
from dispatch.infra.outage import Outage

__all__ = [
    "JOB_MESSAGES",
    "ArqQueue",
    "DispatchBatchJob",
    "DispatchJob",
    "JobQueue",
    "QueueDepth",
    "QueueSettings",
    "RetryLater",
    "RunJob",
    "WorkerBeat",
    "count_waiting",
    "job_deserializer",
    "job_serializer",
    "oldest_waiting",
]


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


@dataclasses.dataclass(frozen=True)
class QueueSettings(Group):
    """The job transport. Redis is only a transport: the database is the record."""

    redis_url: str | None = setting(
        None,
        "REDIS_URL",
        "redis://host:port/db. Unset: jobs run in-process (embedded mode).",
        check=Matches(r"(redis|rediss|unix)://.*", "a redis:// or rediss:// URL"),
    )
    prefix: str = setting(
        "switchboard",
        "REDIS_PREFIX",
        "Prefix of the queue name, job ids and pub/sub channels, so several gateways can share "
        "one Redis.",
        check=Matches(r"[A-Za-z0-9_.-]{1,64}", "1-64 characters of letters, digits, _ . -"),
    )

    redis_timeout_s: float = setting(
        2.0,
        "REDIS_TIMEOUT_S",
        "How long one Redis call may take, connecting included, before Redis counts as down "
        "(work goes on from the database; webhooks are still acknowledged).",
        check=Within(0, 60, open_low=True),
    )


def redis_client(settings: QueueSettings) -> Any:
    """An arq Redis client whose every call gives up after ``redis_timeout_s`` (connecting
    included): a frozen Redis is an outage callers carry on through, not a hang."""
    from arq.connections import ArqRedis
    from redis.asyncio import ConnectionPool

    if not settings.redis_url:
        raise ValueError("no Redis configured")
    pool = ConnectionPool.from_url(
        settings.redis_url,
        socket_timeout=settings.redis_timeout_s,
        socket_connect_timeout=settings.redis_timeout_s,
    )
    return ArqRedis(
        pool,
        job_serializer=job_serializer,
        job_deserializer=job_deserializer,
        default_queue_name=queue_name(settings.prefix),
    )


class DispatchJob(msgspec.Struct, frozen=True):
    """Parse a stored message and record its activity."""

    message_id: int


class DispatchBatchJob(msgspec.Struct, frozen=True):
    """Dispatch newly stored messages, ``[conversation id, message id]`` in arrival order: each
    conversation's in order, conversations side by side."""

    messages: list[tuple[int, int]]


JOB_MESSAGES = 16
"""Messages one dispatch job carries at most (what a job costs in Redis is paid per job)."""


class RunJob(msgspec.Struct, frozen=True):
    """Run an activity's handler and reply."""

    activity_id: int


_encoder = msgspec.msgpack.Encoder(enc_hook=repr)  # results may carry exceptions: keep their repr
_decoder = msgspec.msgpack.Decoder()


def job_serializer(value: Any) -> bytes:
    return _encoder.encode(value)


def job_deserializer(data: bytes) -> Any:
    return _decoder.decode(data)


class RetryLater(Exception):
    """A job asks to be run again after ``defer_s`` (its attempt failed, not for good)."""

    def __init__(self, defer_s: float, reason: str) -> None:
        super().__init__(reason)
        self.defer_s = defer_s


AHEAD_S = {"critical": 2_000_000.0, "high": 1_000_000.0}
"""How far ahead of the queue's due times a run of this priority is placed (arq takes due jobs
in score order): a critical run before any high one, a high one before any normal or low one
queued in the last eleven days. Priority orders jobs only: a conversation's order is kept by
the database, whatever order its jobs come in."""
_AHEAD_FLOOR_S = 500_000.0
"""A score this far in the past is a prioritized job's (its due time is its score plus its
priority's lead)."""


OLDEST_SCAN = 100
"""Jobs at the head of the queue read to find the one waiting longest."""


def due_at(score_s: float, now: float) -> float:
    """When a queued job fell due, its priority's lead taken back out of its score."""
    for lead in sorted(AHEAD_S.values(), reverse=True):
        if score_s < now - lead + _AHEAD_FLOOR_S:
            return score_s + lead
    return score_s


class QueueDepth(msgspec.Struct, frozen=True, kw_only=True):
    """What waits in the queue: jobs due now per kind, deferred ones, and how long the oldest
    due one has waited."""

    waiting: dict[str, int]
    scheduled: int
    oldest_waiting_s: float | None
    running: int = 0
    """Jobs a worker has taken and not finished (arq keeps them queued until they end)."""


class WorkerBeat(msgspec.Struct, frozen=True, kw_only=True):
    """A worker as its latest heartbeat shows it."""

    id: str
    host: str
    pid: int
    started_at: float
    """Unix time."""
    last_seen: float
    jobs_running: int
    jobs_done: int
    jobs_failed: int
    jobs_retried: int


def oldest_waiting(
    jobs: Iterable[tuple[str, float]], now: float, running: Collection[str] = ()
) -> float | None:
    """When the one that has waited longest of (job id, due at) pairs, due and not
    ``running``, fell due."""
    return min((due for job_id, due in jobs if due <= now and job_id not in running), default=None)


def count_waiting(
    jobs: Iterable[tuple[str, float]], now: float, running: Collection[str] = ()
) -> QueueDepth:
    """(job id, due at) pairs as a :class:`QueueDepth`; ``running``: the ids of those a
    worker is running."""
    waiting: dict[str, int] = {}
    scheduled = 0
    busy = 0
    oldest: float | None = None
    for job_id, due in jobs:
        if job_id in running:
            busy += 1
            continue
        if due > now:
            scheduled += 1
            continue
        kind = job_kind(job_id)
        waiting[kind] = waiting.get(kind, 0) + 1
        oldest = due if oldest is None else min(oldest, due)
    return QueueDepth(
        waiting=waiting,
        scheduled=scheduled,
        oldest_waiting_s=None if oldest is None else round(now - oldest, 3),
        running=busy,
    )


class JobQueue(abc.ABC):
    """Where work is put. A queue carries ids only: the database says what is to be done.

    ``enqueue_*`` *wake* a job: it will run after now. A job already queued is not queued twice;
    one running at this moment (it may have looked before the change that woke it) is asked to
    run once more after it ends.
    """

    def __init__(self, prefix: str, outage: Outage | None = None) -> None:
        self.prefix = prefix
        self.outage = outage or Outage("the job queue")
        """What callers that carry on without the queue know of its health."""

    @abc.abstractmethod
    async def _enqueue(
        self,
        function: str,
        job: msgspec.Struct,
        job_id: str,
        *,
        defer_s: float = 0,
        ahead_s: float = 0,
    ) -> bool:
        """Queue it unless that id is queued or running; True if queued now. ``ahead_s``: how
        far ahead of the others' due times it is taken (its priority, :data:`AHEAD_S`)."""

    @abc.abstractmethod
    async def _running(self, job_id: str) -> bool:
        """Whether the job with that id is running at this moment."""

    async def _put(self, function: str, jobs: Sequence[tuple[str, msgspec.Struct]]) -> None:
        """Queue (job id, job) pairs whose ids are new (never queued before)."""
        for job_id, job in jobs:
            await self._enqueue(function, job, job_id)

    async def wake(
        self, function: str, job: msgspec.Struct, job_id: str, *, ahead_s: float = 0
    ) -> bool:
        if await self._enqueue(function, job, job_id, ahead_s=ahead_s):
            return True
        if await self._running(job_id):
            return await self._enqueue(function, job, job_id + AGAIN, ahead_s=ahead_s)
        return False

    async def enqueue_dispatch(self, message_id: int, *, defer_s: float = 0) -> bool:
        job_id = dispatch_job_id(self.prefix, message_id)
        if defer_s > 0:
            return await self._enqueue(
                DISPATCH_MESSAGE, DispatchJob(message_id), job_id, defer_s=defer_s
            )
        return await self.wake(DISPATCH_MESSAGE, DispatchJob(message_id), job_id)

    async def enqueue_dispatches(self, messages: Sequence[tuple[int, int]]) -> None:
        """Queue the dispatch of newly stored messages ((conversation id, message id), in
        arrival order), up to ``JOB_MESSAGES`` per job, a conversation's together where they
        fit; each message is queued this way once, when it is stored."""
        conversations: dict[int, list[int]] = {}
        for conversation_id, message_id in messages:
            conversations.setdefault(conversation_id, []).append(message_id)
        jobs: list[list[tuple[int, int]]] = [[]]
        for conversation_id, ids in conversations.items():
            for message_id in ids:
                if len(jobs[-1]) >= JOB_MESSAGES:
                    jobs.append([])
                jobs[-1].append((conversation_id, message_id))
        await self._put(
            DISPATCH_BATCH,
            [(batch_job_id(self.prefix, job[0][1]), DispatchBatchJob(job)) for job in jobs if job],
        )

    async def enqueue_run(self, activity_id: int, *, priority: str = "normal") -> bool:
        job_id = run_job_id(self.prefix, activity_id)
        ahead_s = AHEAD_S.get(priority, 0.0)
        return await self.wake(RUN_ACTIVITY, RunJob(activity_id), job_id, ahead_s=ahead_s)

    async def try_enqueue(
        self, enqueue: Callable[[int], Awaitable[bool]], target: int, **extra: Any
    ) -> bool:
        """``enqueue(target)`` (e.g. ``self.enqueue_run``) unless the queue is down; an outage is
        reported, not raised: what was not woken now is re-driven from the database."""

        return await self.attempt(lambda: enqueue(target), **extra)

    async def attempt(self, enqueue: Callable[[], Awaitable[Any]], **extra: Any) -> bool:
        """``enqueue()`` unless the queue is down; False if it was not done."""

        async def done() -> bool:
            await enqueue()
            return True

        async def not_now() -> bool:
            return False

        return await self.outage.call(
            done, not_now, "work stays stored; recovery re-drives it", **extra
        )

    @abc.abstractmethod
    async def depth(self) -> QueueDepth:
        """What waits in the queue now."""

    @abc.abstractmethod
    async def oldest_due_at(self) -> float | None:
        """When the job waiting longest (due, not taken by a worker) fell due (Unix time);
        None if none waits. What was stored after it may still have its job in the queue:
        recovery leaves it alone (:func:`workers.recovery.recover`). Running jobs do not
        count: one a worker died in (or could not mark finished) stays in arq's queue until
        its timeout, and would hold recovery back that long."""

    @abc.abstractmethod
    async def workers(self) -> list[WorkerBeat]:
        """The workers alive (their heartbeat not expired)."""

    async def close(self, *, grace_s: float = 10.0) -> None:  # noqa: B027 - optional hook
        """Release resources (letting running work finish for up to ``grace_s``)."""


class ArqQueue(JobQueue):
    """Enqueue on arq with deterministic job ids and msgspec (msgpack) job bodies."""

    def __init__(self, pool: Any, prefix: str, *, timeout_s: float | None = None) -> None:
        super().__init__(prefix, Outage("Redis", timeout_s=timeout_s))
        self._pool = pool
        self.queue_name = queue_name(prefix)

    @classmethod
    async def connect(cls, settings: QueueSettings) -> ArqQueue:
        pool = redis_client(settings)
        await pool.ping()
        return cls(pool, settings.prefix, timeout_s=settings.redis_timeout_s)

    @property
    def redis(self) -> Any:
        return self._pool

    async def _enqueue(
        self,
        function: str,
        job: msgspec.Struct,
        job_id: str,
        *,
        defer_s: float = 0,
        ahead_s: float = 0,
    ) -> bool:
        enqueued = await self._pool.enqueue_job(
            function,
            msgspec.to_builtins(job),
            _job_id=job_id,
            _queue_name=self.queue_name,
            _defer_by=defer_s or None,
        )
        if enqueued is not None and ahead_s:
            # arq takes due jobs lowest score first (it has no priority of its own); XX: only
            # the job just queued (one a worker took meanwhile is not added back).
            score_ms = (time.time() + defer_s - ahead_s) * 1000
            await self._pool.zadd(self.queue_name, {job_id: score_ms}, xx=True)
        return enqueued is not None

    async def _put(self, function: str, jobs: Sequence[tuple[str, msgspec.Struct]]) -> None:
        """One round trip for all: new ids need none of arq's check-and-set (its job format)."""
        from arq.constants import job_key_prefix
        from arq.jobs import serialize_job

        now_ms = int(time.time() * 1000)
        async with self._pool.pipeline(transaction=False) as pipe:
            for job_id, job in jobs:
                body = (msgspec.to_builtins(job),)
                data = serialize_job(function, body, {}, None, now_ms, serializer=job_serializer)
                pipe.psetex(job_key_prefix + job_id, self._pool.expires_extra_ms, data)
                pipe.zadd(self.queue_name, {job_id: now_ms})
            await pipe.execute()

    async def _running(self, job_id: str) -> bool:
        from arq.constants import in_progress_key_prefix

        return bool(await self._pool.exists(in_progress_key_prefix + job_id))

    async def oldest_due_at(self) -> float | None:
        # The head of the queue holds the prioritized jobs, then the rest by due time.
        scored = await self._pool.zrange(self.queue_name, 0, OLDEST_SCAN - 1, withscores=True)
        jobs, now, running = await self._taken(scored)
        return oldest_waiting(jobs, now, running)

    async def depth(self) -> QueueDepth:
        # Counted in full: fine for an operator's look at a queue of some hundred thousand jobs.
        scored = await self._pool.zrange(self.queue_name, 0, -1, withscores=True)
        return count_waiting(*await self._taken(scored))

    async def _taken(
        self, scored: list[tuple[bytes, float]]
    ) -> tuple[list[tuple[str, float]], float, set[str]]:
        """arq's queue entries (scored by when they are due, in ms; kept until they have run)
        as (job id, due at) pairs, now, and the ids of those a worker is running."""
        from arq.constants import in_progress_key_prefix

        now = time.time()
        jobs = [(_text(m), due_at(s / 1000, now)) for m, s in scored]
        due = [job_id for job_id, at in jobs if at <= now]
        running: set[str] = set()
        if due:
            async with self._pool.pipeline(transaction=False) as pipe:
                for job_id in due:
                    pipe.exists(in_progress_key_prefix + job_id)
                found = await pipe.execute()
            running = {job_id for job_id, there in zip(due, found, strict=True) if there}
        return jobs, now, running

    async def workers(self) -> list[WorkerBeat]:
        keys = [key async for key in self._pool.scan_iter(match=worker_key(self.prefix, "*"))]
        if not keys:
            return []
        beats = [msgspec.json.decode(v, type=WorkerBeat) for v in await self._pool.mget(keys) if v]
        return sorted(beats, key=lambda beat: beat.started_at)

    async def close(self, *, grace_s: float = 10.0) -> None:
        await self._pool.aclose()
