"""What operators watch: the workers alive and what waits for them."""

from __future__ import annotations

from typing import Annotated

import msgspec
from litestar import Controller, get
from litestar.di import NamedDependency
from litestar.params import Parameter

from dispatch.infra.queue import JobQueue, QueueDepth, WorkerBeat
from dispatch.record.stats import Stats, Summary
from dispatch.record.store import Backlog, MessageStore
from gateway.auth import ApiRole, require

__all__ = ["OperationsController"]


class QueueView(msgspec.Struct, frozen=True, kw_only=True):
    queue: QueueDepth
    """In the transport (arq on Redis, or in-process): jobs due per kind, deferred ones, the
    oldest due one's wait in seconds."""
    database: Backlog
    """In the record: what is still to be done, whatever the transport holds (recovery
    re-drives it if the transport lost it)."""


class OperationsController(Controller):
    path = "/api/v1"
    tags = ["operations"]  # noqa: RUF012 - litestar reads a class attribute
    guards = [require(ApiRole.OPERATOR)]  # noqa: RUF012

    @get("/workers")
    async def list_workers(self, queue: NamedDependency[JobQueue]) -> list[WorkerBeat]:
        """Live workers, from their heartbeats (every 5 s; one missing for 15 s is gone): id,
        host, pid, when it started and was last seen (Unix time), jobs running, done, failed
        and retried. On the embedded default: the gateway process, which runs the jobs."""
        return await queue.workers()

    @get("/metrics/summary")
    async def get_metrics_summary(
        self,
        stats: NamedDependency[Stats],
        window_s: Annotated[
            float, Parameter(gt=0, le=31 * 86400, description="The window, in seconds")
        ] = 3600.0,
    ) -> Summary:
        """Activities created in the last ``window_s`` (default an hour): counts by status and
        by agent, the success rate, and per action its runs, success rate and p50/p95 handler
        duration."""
        return await stats.summary(window_s=window_s)

    @get("/queue")
    async def get_queue(
        self, queue: NamedDependency[JobQueue], store: NamedDependency[MessageStore]
    ) -> QueueView:
        """Jobs waiting per kind and the oldest one's wait, and the database's backlog."""
        return QueueView(queue=await queue.depth(), database=await store.backlog())
