"""``GET /metrics``: Prometheus' text format (written in :mod:`gateway.metrics`)."""

from __future__ import annotations

import logging

from litestar import Response, get
from litestar.di import NamedDependency

from channels.registry import ChannelRegistry
from dispatch.infra.metrics import Counters
from dispatch.infra.queue import JobQueue
from dispatch.policy.catalog import Catalog
from dispatch.record.stats import Stats
from gateway.auth import ApiRole, require
from gateway.metrics import Exposition

__all__ = ["metrics"]

log = logging.getLogger("switchboard.http")

EXPOSITION = "text/plain; version=1.0.0"
"""Prometheus' text format (litestar adds the charset, UTF-8)."""


@get(
    "/metrics",
    tags=["health"],
    guards=[require(ApiRole.ACTIONS)],
    operation_id="getMetrics",
    media_type=EXPOSITION,
)
async def metrics(
    counters: NamedDependency[Counters],
    stats: NamedDependency[Stats],
    queue: NamedDependency[JobQueue],
    catalog: NamedDependency[Catalog],
    channels: NamedDependency[ChannelRegistry],
) -> Response[bytes]:
    """Prometheus' text format: messages by channel and state, activities by status, handler
    durations, approval decisions (from the database), the queue's depth, and the counters
    raised in passing (LLM calls). Label values are the catalog's agents and actions and the
    configured channels; anything else is counted as ``other``."""
    page = Exposition(catalog, channels.channels())
    families = page.recorded(await stats.snapshot())
    try:
        families += page.queued(await queue.depth())
    except Exception:  # the queue down costs its series, not the scrape
        log.warning("queue depth unavailable for /metrics", exc_info=True)
    families += page.counted(await counters.snapshot())
    return Response(page.text(families), media_type=EXPOSITION)
