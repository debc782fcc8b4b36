"""The ``/metrics`` page itself: exact values and bounded labels, read by Prometheus' parser."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from dispatch.policy.catalog import load_catalog
from dispatch.record.stats import DURATION_BUCKETS_S, StatsSnapshot
from gateway.metrics import Exposition
from workers.handlers import BUILTIN_HANDLER_NAMES


def test_a_large_count_keeps_every_digit_and_an_unknown_channel_is_other() -> None:
    page = Exposition(load_catalog(None, BUILTIN_HANDLER_NAMES), ["rest"])
    stats = StatsSnapshot(
        messages=[
            ("inbound", "rest", "dispatched", 1_234_567),
            ("inbound", "smoke-signals", "dispatched", 2),
            ("inbound", "pigeon", "dispatched", 3),
        ],
        activities=[],
        duration_buckets=[0] * len(DURATION_BUCKETS_S),
        duration_count=0,
        duration_sum_s=0.0,
        decisions=[],
    )
    text = page.text(page.recorded(stats) + page.counted({})).decode()
    samples = {
        (s.name, s.labels.get("channel")): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    assert samples["switchboard_messages", "rest"] == 1_234_567
    assert samples["switchboard_messages", "other"] == 5
    assert samples["switchboard_llm_unavailable_total", None] == 0
