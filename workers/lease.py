"""Keeping a claim alive while its work runs, and stopping the work when the claim is lost.

A run holds its activity by a lease that expires (``SWITCHBOARD_WORKER_LEASE_S``). While the
handler runs, :class:`Lease` renews it every third of that, fenced by the attempt number. If a
renewal says the claim is gone (another attempt took over), or renewals fail for so long that
the lease may have run out (the database is frozen or unreachable), the handler is cancelled:
a stale run stops before another may start, so one activity's handler never runs twice at the
same time. A renewal also tells whether an operator asked for the run to stop: then it is
stopped the same way, and ends ``cancelled``. The time it allows itself is measured from before
the claim was asked for, on this process's clock, so it ends before the lease does.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable
from typing import TypeVar

from dispatch.record.activities import ActivityLog, Renewal

__all__ = ["Lease", "LeaseLost", "RunCancelled"]

log = logging.getLogger("switchboard.lease")

T = TypeVar("T")


class LeaseLost(Exception):
    """The run's claim passed to someone else, or could not be kept: its work was stopped."""


class RunCancelled(Exception):
    """An operator asked for the run to stop, and it was stopped (its claim still held)."""


class Lease:
    def __init__(
        self,
        activities: ActivityLog,
        activity_id: int,
        *,
        attempt: int,
        lease_s: float,
        claimed_at: float,
    ) -> None:
        self._activities = activities
        self._activity_id = activity_id
        self._attempt = attempt
        self._lease_s = lease_s
        self._held_since = claimed_at
        """Monotonic time at or before which the current lease was granted."""
        self.lost = False
        self.cancelled = False

    async def run(self, work: Awaitable[T], *, timeout_s: float) -> T:
        """Await ``work`` under the lease, at most ``timeout_s``; LeaseLost if it was stopped."""
        task = asyncio.ensure_future(work)
        keeper = asyncio.create_task(self._keep(task), name=f"lease-{self._activity_id}")
        try:
            return await asyncio.wait_for(task, timeout_s)
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if current is not None and not current.cancelling():
                if self.lost:
                    raise LeaseLost(
                        f"activity {self._activity_id}, attempt {self._attempt}"
                    ) from None
                if self.cancelled:
                    raise RunCancelled(f"activity {self._activity_id}") from None
            raise
        finally:
            keeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await keeper

    async def _keep(self, task: asyncio.Future[T]) -> None:
        every_s = self._lease_s / 3
        while not task.done():
            await asyncio.sleep(every_s)
            asked_at = time.monotonic()
            try:
                kept = await asyncio.wait_for(
                    self._activities.renew(
                        self._activity_id, attempt=self._attempt, lease_s=self._lease_s
                    ),
                    timeout=every_s,
                )
            except Exception:  # the database may be frozen or gone: try again, within limits
                log.warning("lease renewal failed", exc_info=True)
                kept = None
            if kept is Renewal.HELD:
                self._held_since = asked_at
                continue
            if kept is Renewal.CANCEL:
                log.info(
                    "cancel requested; stopping the run", extra={"activity_id": self._activity_id}
                )
                self.cancelled = True
                task.cancel()
                return
            if (
                kept is Renewal.LOST
                or time.monotonic() >= self._held_since + self._lease_s - every_s
            ):
                log.warning(
                    "lease lost; stopping the run",
                    extra={"activity_id": self._activity_id, "attempt": self._attempt},
                )
                self.lost = True
                task.cancel()
                return
