"""Group commit: what verified providers send, stored in batches.

Every webhook request hands its messages to :class:`Intake` and waits. A flush takes
everything waiting (up to ``MAX_BATCH``) and stores it in one transaction, the way every
inbound message is stored (:func:`dispatch.record.inbound.store_inbound`). Each request is
answered once its batch has committed, so a 2xx still means stored; while one batch commits,
the next one fills. What the batch asks for next (queueing the new messages, telling a sender
to slow down) runs after the commit, off the request path (``after``).

The batching is :class:`~dispatch.infra.group.GroupCommit`'s: a batch that fails for a reason
other than an outage is stored again one message at a time, so one bad message cannot fail the
others; an outage fails the whole batch (each request is answered 503 and the provider
retries).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence

from dispatch.infra.group import GroupCommit
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
        self._group = GroupCommit(
            self._store_batch, name="intake", max_batch=MAX_BATCH, flushes=FLUSHES
        )
        self._tasks: set[asyncio.Task[None]] = set()

    async def submit(self, arrivals: Sequence[Arrival]) -> list[Accepted]:
        """Store ``arrivals`` with whatever else is waiting; their outcomes, once committed."""
        return await self._group.submit_all(arrivals)

    async def _store_batch(self, arrivals: Sequence[Arrival]) -> list[Accepted]:
        async with self._store.connection() as conn:
            outcomes = await store_inbound(conn, arrivals, backlog=self._backlog)
        task = asyncio.create_task(self._then(list(zip(arrivals, outcomes, strict=True))))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return outcomes

    async def _then(self, stored: Stored) -> None:
        try:
            await self._after(stored)
        except Exception:
            log.exception("after storing a batch; recovery re-drives what it did not queue")

    async def close(self) -> None:
        """Wait for what is being stored and what follows it."""
        await self._group.close()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
