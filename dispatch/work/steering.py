"""Steering activities from outside their conversation: an operator withdraws one.

The requester is told on the channel they asked on, and the conversation goes on: what waited
behind the withdrawn activity runs (a job delivers the notice and carries the conversation on).
"""

from __future__ import annotations

import logging

from dispatch.infra.errors import ConflictError, NotFoundError
from dispatch.infra.queue import JobQueue
from dispatch.infra.routing import ChannelRouting
from dispatch.language.i18n import language_of
from dispatch.record.activities import ActivityLog, ActivityView
from dispatch.record.models import ActivityStatus
from dispatch.record.outbox import cancelled_notice

__all__ = ["Steering"]

log = logging.getLogger("switchboard.steering")


class Steering:
    def __init__(
        self, *, activities: ActivityLog, queue: JobQueue, routing: ChannelRouting
    ) -> None:
        self._activities = activities
        self._queue = queue
        self._routing = routing

    async def cancel(self, activity_id: int, *, actor: str) -> ActivityView:
        """Withdraw an activity that has not started (queued, or awaiting approval): it ends
        ``cancelled``, with an event naming ``actor``, and its requester is told. One that is
        running is asked to stop (``cancel_requested``): its worker stops it at its next lease
        renewal, and it ends ``cancelled`` the same way (returned still ``in_progress``, with
        ``cancel_requested_at``). Raises :class:`NotFoundError`, or :class:`ConflictError` once
        it has ended."""
        before = await self._activities.get(activity_id)
        text = cancelled_notice(activity_id, language_of(before.details) if before else None)

        async def withdraw() -> bool:
            return await self._activities.cancel(
                activity_id, actor=actor, notice=lambda channel: self._routing.split(channel, text)
            )

        cancelled = await withdraw()
        found = await self._activities.get(activity_id)
        if found is None:
            raise NotFoundError(f"no activity {activity_id}")
        if not cancelled and found.status == ActivityStatus.IN_PROGRESS:
            if await self._activities.request_cancel(activity_id, actor=actor):
                log.info("cancel requested", extra={"activity_id": activity_id, "actor": actor})
            stopping = await self._activities.get(activity_id)
            if stopping is not None and stopping.status == ActivityStatus.IN_PROGRESS:
                return stopping
            # It ended, or was given back to wait (a stopping worker): withdraw it then.
            cancelled = await withdraw()
            found = await self._activities.get(activity_id) or found
        if not cancelled:
            raise ConflictError(
                f"request #{activity_id} is {found.status}; only one that has not ended can be "
                "cancelled",
                extra={"status": found.status},
            )
        log.info("activity cancelled", extra={"activity_id": activity_id, "actor": actor})
        # Delivers the notice and runs what waited behind it; if the queue is down, recovery.
        await self._queue.try_enqueue(self._queue.enqueue_run, activity_id)
        return found
