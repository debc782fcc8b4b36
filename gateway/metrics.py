"""``GET /metrics`` as Prometheus reads it, written by ``prometheus_client``.

Every family has its HELP and TYPE; the counters raised in passing are there from the start (at
0); label values are only what this deployment declares (the catalog's agents and actions, the
configured channels), anything else counted under ``other``, so no client can add a series.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Collection, Iterable, Iterator, Sequence

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.utils import floatToGoString

from dispatch.infra.metrics import COUNTERS
from dispatch.infra.queue import QueueDepth
from dispatch.policy.catalog import Catalog
from dispatch.record.stats import DURATION_BUCKETS_S, StatsSnapshot

__all__ = ["OTHER", "Exposition"]

OTHER = "other"
"""The label value of everything this deployment did not declare."""


class _Families:
    """A registry's collector over families already built (the figures are read before)."""

    def __init__(self, families: Sequence[Metric]) -> None:
        self._families = families

    def collect(self) -> Iterator[Metric]:
        return iter(self._families)


class Exposition:
    """One scrape: figures in, Prometheus' text format out, label values bounded."""

    def __init__(self, catalog: Catalog, channels: Collection[str]) -> None:
        self._actions = {(agent, action) for agent, action, _ in catalog.actions()}
        self._agents = set(catalog.agents)
        self._channels = set(channels)

    def _channel(self, name: str) -> str:
        return name if name in self._channels else OTHER

    def _action(self, agent: str, action: str) -> tuple[str, str]:
        if (agent, action) in self._actions:
            return agent, action
        return (agent if agent in self._agents else OTHER), OTHER

    def recorded(self, stats: StatsSnapshot) -> list[Metric]:
        """What the database says happened."""
        messages = GaugeMetricFamily(
            "switchboard_messages",
            "Messages stored, by direction, channel and state (inbound) or delivery (outbound).",
            labels=["direction", "channel", "state"],
        )
        _add(messages, [((d, self._channel(c), s), n) for d, c, s, n in stats.messages])
        activities = GaugeMetricFamily(
            "switchboard_activities",
            "Activities, by agent, action type and status.",
            labels=["agent", "action_type", "status"],
        )
        _add(activities, [((*self._action(a, t), s), n) for a, t, s, n in stats.activities])
        durations = HistogramMetricFamily(
            "switchboard_handler_duration_seconds", "How long handlers ran, per run that ended."
        )
        bounds = zip(DURATION_BUCKETS_S, stats.duration_buckets, strict=True)
        buckets = [(floatToGoString(b), float(n)) for b, n in bounds]  # type: ignore[no-untyped-call]
        durations.add_metric(
            [], [*buckets, ("+Inf", float(stats.duration_count))], stats.duration_sum_s
        )
        decisions = CounterMetricFamily(
            "switchboard_approval_decisions",
            "Approval decisions counted, by decision.",
            labels=["decision"],
        )
        seen = dict(stats.decisions)
        for decision in ("approved", "rejected"):
            decisions.add_metric([decision], seen.get(decision, 0))
        return [messages, activities, durations, decisions]

    @staticmethod
    def queued(depth: QueueDepth) -> list[Metric]:
        """The queue's depth, as the transport reports it."""
        waiting = GaugeMetricFamily(
            "switchboard_queue_waiting", "Jobs due in the queue, by kind.", labels=["kind"]
        )
        for kind, count in sorted(depth.waiting.items()):
            waiting.add_metric([kind], count)
        return [
            waiting,
            GaugeMetricFamily(
                "switchboard_queue_scheduled",
                "Jobs deferred in the queue.",
                value=depth.scheduled,
            ),
            GaugeMetricFamily(
                "switchboard_queue_running",
                "Jobs taken by a worker, not ended.",
                value=depth.running,
            ),
            GaugeMetricFamily(
                "switchboard_queue_oldest_waiting_seconds",
                "How long the oldest due job has waited.",
                value=depth.oldest_waiting_s or 0.0,
            ),
        ]

    @staticmethod
    def counted(values: dict[str, int]) -> list[Metric]:
        """The counters raised in passing: every one declared, at 0 until raised."""
        return [
            CounterMetricFamily(f"switchboard_{name}", help_text, value=values.get(name, 0))
            for name, help_text in COUNTERS.items()
        ]

    @staticmethod
    def text(families: Sequence[Metric]) -> bytes:
        registry = CollectorRegistry(auto_describe=False)
        registry.register(_Families(families))
        return generate_latest(registry)


def _add(family: GaugeMetricFamily, rows: Iterable[tuple[tuple[str, ...], int]]) -> None:
    """Rows summed by their (bounded) labels: several undeclared values become one ``other``."""
    summed: Counter[tuple[str, ...]] = Counter()
    for labels, count in rows:
        summed[labels] += count
    for labels, count in sorted(summed.items()):
        family.add_metric(list(labels), count)
