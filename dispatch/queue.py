"""The job transport seam: arq on Redis, or an in-process runner (``workers.inprocess``).

A queue only carries ids. Everything a job needs is re-read from the database, so losing the
queue loses no work: recovery re-drives it (``workers.recovery``).
"""

from __future__ import annotations

import abc
from typing import Any

import msgspec

from dispatch.constants import (
    DISPATCH_MESSAGE,
    RUN_ACTIVITY,
    dispatch_job_id,
    queue_name,
    run_job_id,
)

__all__ = ["ArqQueue", "DispatchJob", "JobQueue", "RunJob", "job_deserializer", "job_serializer"]


class DispatchJob(msgspec.Struct, frozen=True):
    """Parse a stored message and record its activity."""

    message_id: int


class RunJob(msgspec.Struct, frozen=True):
    """Run an activity's handler and reply."""

    activity_id: int


_encoder = msgspec.msgpack.Encoder(enc_hook=repr)  # results may carry exceptions: keep their repr
_decoder = msgspec.msgpack.Decoder()


def job_serializer(value: Any) -> bytes:
    return _encoder.encode(value)


def job_deserializer(data: bytes) -> Any:
    return _decoder.decode(data)


class JobQueue(abc.ABC):
    """Where dispatch puts work. ``enqueue_*`` return False when that job id is already queued."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix

    @abc.abstractmethod
    async def _enqueue(self, function: str, job: msgspec.Struct, job_id: str) -> bool: ...

    async def enqueue_dispatch(self, message_id: int, *, reason: str = "") -> bool:
        return await self._enqueue(
            DISPATCH_MESSAGE,
            DispatchJob(message_id),
            dispatch_job_id(self.prefix, message_id, reason),
        )

    async def enqueue_run(self, activity_id: int, *, reason: str = "") -> bool:
        return await self._enqueue(
            RUN_ACTIVITY, RunJob(activity_id), run_job_id(self.prefix, activity_id, reason)
        )

    async def close(self, *, grace_s: float = 10.0) -> None:  # noqa: B027 - optional hook
        """Release resources (letting running work finish for up to ``grace_s``)."""


class ArqQueue(JobQueue):
    """Enqueue on arq with deterministic job ids and msgspec (msgpack) job bodies."""

    def __init__(self, pool: Any, prefix: str) -> None:
        super().__init__(prefix)
        self._pool = pool
        self.queue_name = queue_name(prefix)

    @classmethod
    async def connect(cls, redis_url: str, prefix: str) -> ArqQueue:
        from arq import create_pool
        from arq.connections import RedisSettings

        pool = await create_pool(
            RedisSettings.from_dsn(redis_url),
            job_serializer=job_serializer,
            job_deserializer=job_deserializer,
            default_queue_name=queue_name(prefix),
        )
        return cls(pool, prefix)

    @property
    def redis(self) -> Any:
        return self._pool

    async def _enqueue(self, function: str, job: msgspec.Struct, job_id: str) -> bool:
        enqueued = await self._pool.enqueue_job(
            function, msgspec.to_builtins(job), _job_id=job_id, _queue_name=self.queue_name
        )
        return enqueued is not None

    async def close(self, *, grace_s: float = 10.0) -> None:
        await self._pool.aclose()
