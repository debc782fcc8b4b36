"""Group commit: what verified providers send, stored in batches.

Every webhook request hands its messages to :class:`Intake` and waits. A flush takes
everything waiting (up to ``MAX_BATCH``) and stores it in one transaction, the way every
inbound message is stored (:func:`dispatch.record.inbound.store_inbound`). Each request is
answered once its batch has committed, so a 2xx still means stored; while one batch commits,
the next one fills. What the batch asks for next (queueing the new messages, telling a sender
to slow down) runs after the commit, off the request path (``after``).

A batch that fails for a reason other than an outage is stored again one message at a time,
so one bad message cannot fail the others; an outage fails the whole batch (each request is
answered 503 and the provider retries).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence

from dispatch.infra.outage import is_overload, is_unavailable
from dispatch.record.inbound import Accepted, Arrival, store_inbound
from dispatch.record.store import MessageStore

__all__ = ["Arrival", "Intake"]

log = logging.getLogger("switchboard.intake")

MAX_BATCH = 500
"""Messages one transaction stores at most."""
FLUSHES = 2
"""Batches stored at once: while one waits for the database, the next is being built."""


Stored = list[tuple[Arrival, Accepted]]
After = Callable[[Stored], Awaitable[None]]


class Intake:
    def __init__(self, store: MessageStore, *, backlog: int | None, after: After) -> None:
        self._store = store
        self._backlog = backlog
        self._after = after
        self._waiting: list[tuple[Arrival, asyncio.Future[Accepted]]] = []
        self._flushing: set[asyncio.Task[None]] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    async def submit(self, arrivals: Sequence[Arrival]) -> list[Accepted]:
        """Store ``arrivals`` with whatever else is waiting; their outcomes, once committed."""
        loop = asyncio.get_running_loop()
        futures = [loop.create_future() for _ in arrivals]
        self._waiting.extend(zip(arrivals, futures, strict=True))
        if len(self._flushing) < FLUSHES:
            task = asyncio.create_task(self._flush(), name="switchboard-intake")
            self._flushing.add(task)
            task.add_done_callback(self._flushing.discard)
        return list(await asyncio.gather(*futures))

    async def _flush(self) -> None:
        while self._waiting:
            batch, self._waiting = self._waiting[:MAX_BATCH], self._waiting[MAX_BATCH:]
            await self._commit(batch)

    async def _commit(self, batch: list[tuple[Arrival, asyncio.Future[Accepted]]]) -> None:
        arrivals = [arrival for arrival, _ in batch]
        try:
            outcomes = await self._store_batch(arrivals)
        except Exception as exc:
            if is_unavailable(exc) or is_overload(exc) or len(batch) == 1:
                for _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                return
            log.exception("batch of %d not stored; storing one by one", len(batch))
            for item in batch:
                await self._commit([item])
            return
        for (_, future), accepted in zip(batch, outcomes, strict=True):
            if not future.done():
                future.set_result(accepted)
        task = asyncio.create_task(self._then(list(zip(arrivals, outcomes, strict=True))))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _then(self, stored: Stored) -> None:
        try:
            await self._after(stored)
        except Exception:
            log.exception("after storing a batch; recovery re-drives what it did not queue")

    async def close(self) -> None:
        """Wait for what is being stored and what follows it."""
        if self._flushing:
            await asyncio.gather(*self._flushing, return_exceptions=True)
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _store_batch(self, arrivals: list[Arrival]) -> list[Accepted]:
        async with self._store.connection() as conn:
            return await store_inbound(conn, arrivals, backlog=self._backlog)
