"""``GET /metrics``: Prometheus' text format."""

from __future__ import annotations

import logging

from litestar import MediaType, get
from litestar.di import NamedDependency

from dispatch.infra.metrics import Counters
from dispatch.infra.queue import JobQueue, QueueDepth
from dispatch.record.stats import DURATION_BUCKETS_S, Stats, StatsSnapshot
from gateway.auth import ApiRole, require

__all__ = ["metrics"]

log = logging.getLogger("switchboard.http")


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _series(name: str, labels: dict[str, str], value: float) -> str:
    if not labels:
        return f"{name} {value:g}"
    inner = ",".join(f'{key}="{_label(val)}"' for key, val in labels.items())
    return f"{name}{{{inner}}} {value:g}"


def _family(name: str, kind: str, help_text: str) -> list[str]:
    return [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}"]


def _recorded(stats: StatsSnapshot) -> list[str]:
    lines = _family(
        "switchboard_messages",
        "gauge",
        "Messages stored, by direction, channel and state (inbound) or delivery (outbound).",
    )
    for direction, channel, state, count in sorted(stats.messages):
        labels = {"direction": direction, "channel": channel, "state": state}
        lines.append(_series("switchboard_messages", labels, count))
    lines += _family(
        "switchboard_activities", "gauge", "Activities, by agent, action type and status."
    )
    for agent, action_type, status, count in sorted(stats.activities):
        labels = {"agent": agent, "action_type": action_type, "status": status}
        lines.append(_series("switchboard_activities", labels, count))
    name = "switchboard_handler_duration_seconds"
    lines += _family(name, "histogram", "How long handlers ran, per run that ended.")
    for bound, count in zip(DURATION_BUCKETS_S, stats.duration_buckets, strict=True):
        lines.append(_series(f"{name}_bucket", {"le": f"{bound:g}"}, count))
    lines.append(_series(f"{name}_bucket", {"le": "+Inf"}, stats.duration_count))
    lines.append(_series(f"{name}_sum", {}, stats.duration_sum_s))
    lines.append(_series(f"{name}_count", {}, stats.duration_count))
    name = "switchboard_approval_decisions_total"
    lines += _family(name, "counter", "Approval decisions counted, by decision.")
    for decision, count in sorted(stats.decisions):
        lines.append(_series(name, {"decision": decision}, count))
    return lines


def _queued(depth: QueueDepth) -> list[str]:
    lines = _family("switchboard_queue_waiting", "gauge", "Jobs due in the queue, by kind.")
    for kind, count in sorted(depth.waiting.items()):
        lines.append(_series("switchboard_queue_waiting", {"kind": kind}, count))
    lines += _family("switchboard_queue_scheduled", "gauge", "Jobs deferred in the queue.")
    lines.append(_series("switchboard_queue_scheduled", {}, depth.scheduled))
    lines += _family("switchboard_queue_running", "gauge", "Jobs taken by a worker, not ended.")
    lines.append(_series("switchboard_queue_running", {}, depth.running))
    name = "switchboard_queue_oldest_waiting_seconds"
    lines += _family(name, "gauge", "How long the oldest due job has waited.")
    lines.append(_series(name, {}, depth.oldest_waiting_s or 0.0))
    return lines


@get(
    "/metrics",
    media_type=MediaType.TEXT,
    tags=["health"],
    guards=[require(ApiRole.ACTIONS)],
    operation_id="getMetrics",
)
async def metrics(
    counters: NamedDependency[Counters],
    stats: NamedDependency[Stats],
    queue: NamedDependency[JobQueue],
) -> str:
    """Prometheus' text format: messages by channel and state, activities by status, handler
    durations, approval decisions (from the database), the queue's depth, and the counters
    raised in passing (LLM calls, refusals)."""
    lines = _recorded(await stats.snapshot())
    try:
        lines += _queued(await queue.depth())
    except Exception:  # the queue down costs its series, not the scrape
        log.warning("queue depth unavailable for /metrics", exc_info=True)
    values = await counters.snapshot()
    for name in sorted(values):
        lines.append(f"# TYPE switchboard_{name} counter")
        lines.append(f"switchboard_{name} {values[name]}")
    return "\n".join(lines) + "\n"
