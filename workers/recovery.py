"""Re-driving work from the database: Redis may lose everything, the record may not.

One pass (``recover``) runs per tick across the cluster: an arq cron job that only one worker
takes (``unique``), or the embedded runner's loop. It re-drives only what is neither queued nor
running nor waiting its turn: each conversation's first message still awaiting dispatch and its
first activity still queued (or running past its lease), activities with a reply written but
never handed over, approvals that ran out, and workflow runs whose advance after a step's end
never happened. Job ids are deterministic, so what is in fact
still queued or running is not queued again; and what is younger (by ``recover_after_s``) than
the job that has waited longest in the queue is left alone, as its own job (a batch's, whose id
recovery cannot know) may be waiting behind it: a backlog is not a loss. It also resolves
replies whose sender died while handing them over (marked failed, outcome unknown; the
recipient is told), puts back in the queue the tasks whose external agent's claim lapsed (or
fails them after their ``max_attempts``), and folds what the database counted for
``/metrics`` into its tallies.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from typing import TYPE_CHECKING

from dispatch.record.models import utcnow

if TYPE_CHECKING:
    from workers.runtime import Runtime

__all__ = ["recover", "recover_forever"]

log = logging.getLogger("switchboard.recovery")


async def recover(runtime: Runtime, *, older_than_s: float | None = None) -> dict[str, int]:
    """One pass over what is unfinished and older than ``older_than_s`` (default: setting)."""
    age_s = runtime.settings.worker.recover_after_s if older_than_s is None else older_than_s
    cutoff = utcnow() - dt.timedelta(seconds=age_s)
    oldest = await runtime.queue.oldest_due_at()
    if oldest is not None:
        # Behind a backlog, work stored after the oldest job still in the queue may well have
        # its own job waiting behind it: re-driving it would only queue it twice.
        backlog = dt.datetime.fromtimestamp(oldest, dt.UTC) - dt.timedelta(seconds=age_s)
        cutoff = min(cutoff, backlog)
    messages = await runtime.turns.undispatched_heads(older_than=cutoff)
    for message_id in messages:
        await runtime.queue.enqueue_dispatch(message_id)
    expired = await runtime.approvals.expire_due()
    lapsed = await runtime.tasks.lapse()  # agents' claims that ran out; reviews nobody made
    uncertain = await runtime.deliveries.resolve_stale_sending()
    heads = await runtime.turns.heads(older_than=cutoff)
    unanswered = await runtime.turns.unanswered(older_than=cutoff)
    for activity_id in sorted({*heads, *unanswered, *uncertain}):
        await runtime.queue.enqueue_run(activity_id)
    runs = await runtime.workflows.unfinished()
    for run_id in runs:
        # An end whose job died before advancing its run (no-op for a run that is up to date).
        try:
            await runtime.workflows.advance(run_id)
        except Exception:  # one run's trouble does not hold up the others
            log.exception("advancing a workflow run failed", extra={"run": run_id})
    await runtime.stats.fold()  # /metrics' deltas, should nobody scrape for a while
    removed = await runtime.retention.pass_if_due()  # SWITCHBOARD_RETENTION_DAYS
    counts = {
        "messages": len(messages),
        "activities": len(heads),
        "replies": len(unanswered),
        "uncertain": len(uncertain),
        "expired": len(expired),
        "tasks": len(lapsed),
    }
    if removed is not None and removed.rows:
        log.info(
            "removed what ended %d days ago",
            runtime.retention.days,
            extra={"activities": removed.activities, "messages": removed.messages},
        )
    if any(counts.values()):
        log.info("re-driven from the database", extra=counts)
    return counts


async def recover_forever(runtime: Runtime) -> None:
    """The embedded runner's recovery: a pass every ``recover_every_s`` until cancelled."""
    every_s = runtime.settings.worker.recover_every_s
    while True:
        await asyncio.sleep(every_s)
        try:
            await recover(runtime)
        except Exception:
            log.exception("recovery pass failed")
