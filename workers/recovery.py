"""Re-driving work from the database: Redis may lose everything, the record may not.

Finds messages stored but never dispatched, activities queued but never run, activities whose
worker died mid-run (lease expired), and finished activities whose reply was never reserved, and
enqueues each again. Every job is idempotent, so re-driving something that is in fact still
queued costs one no-op run.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from typing import TYPE_CHECKING

from sqlalchemy import select

from dispatch.models import Message, MessageState, utcnow

if TYPE_CHECKING:
    from gateway.services import Services

__all__ = ["recover", "recover_forever"]

log = logging.getLogger("switchboard.recovery")


async def recover(services: Services, *, older_than_s: float | None = None) -> dict[str, int]:
    """Enqueue everything unfinished that is older than ``older_than_s`` (default: setting)."""
    age_s = services.settings.worker.recover_after_s if older_than_s is None else older_than_s
    cutoff = utcnow() - dt.timedelta(seconds=age_s)
    # Recovery passes get distinct job ids (one per pass) so arq accepts them even though an
    # earlier job id for the same message or activity may still hold a kept (failed) result.
    pass_id = f"recover:{int(utcnow().timestamp())}"
    async with services.sessions() as session:
        messages = [
            int(m)
            for m in (
                await session.execute(
                    select(Message.id)
                    .where(
                        Message.state == MessageState.RECEIVED.value,
                        Message.received_at < cutoff,
                    )
                    .order_by(Message.id)
                    .limit(500)
                )
            ).scalars()
        ]
    for message_id in messages:
        await services.queue.enqueue_dispatch(message_id, reason=pass_id)
    expired = await services.approvals.expire_due()
    stale = await services.activities.stale(older_than=cutoff)
    unanswered = await services.activities.unanswered(older_than=cutoff)
    for activity_id in sorted({*stale, *unanswered}):
        await services.queue.enqueue_run(activity_id, reason=pass_id)
    counts = {
        "messages": len(messages),
        "activities": len(stale),
        "replies": len(unanswered),
        "expired": len(expired),
    }
    if any(counts.values()):
        log.info("recovered unfinished work", extra=counts)
    return counts


async def recover_forever(services: Services) -> None:
    """Re-drive unfinished work every ``recover_every_s`` until cancelled."""
    every_s = services.settings.worker.recover_every_s
    while True:
        await asyncio.sleep(every_s)
        try:
            await recover(services)
        except Exception:
            log.exception("recovery pass failed")
