"""Counters every process raises and ``GET /metrics`` reads (Prometheus text format).

With Redis they live in one hash shared by the gateway and all workers; in-process, a dict.
"""

from __future__ import annotations

import logging
from collections import Counter
from typing import Any

from dispatch.infra.outage import Outage

__all__ = ["COUNTERS", "Counters", "RedisCounters"]

log = logging.getLogger("switchboard.metrics")

COUNTERS = {
    "llm_accepted_total": "LLM proposals acted on (a catalog action, allowed, its payload valid).",
    "llm_rejected_total": "LLM proposals refused in code (unknown or forbidden action, bad "
    "payload, low confidence).",
    "llm_unavailable_total": "Texts the LLM could not be asked about (down, timed out, breaker "
    "open).",
}
"""Every counter raised in passing, with its HELP: ``/metrics`` shows each from the start."""


class Counters:
    def __init__(self) -> None:
        self._values: Counter[str] = Counter()

    async def incr(self, name: str, by: int = 1) -> None:
        _declared(name)
        self._values[name] += by

    async def snapshot(self) -> dict[str, int]:
        return dict(self._values)


class RedisCounters(Counters):
    def __init__(self, redis: Any, prefix: str, outage: Outage) -> None:
        super().__init__()
        self._redis = redis
        self._key = f"{prefix}:metrics"
        self._outage = outage

    async def incr(self, name: str, by: int = 1) -> None:
        """Counting is best effort: a Redis outage costs counts, never the work counted."""
        _declared(name)

        async def counted() -> None:
            await self._redis.hincrby(self._key, name, by)

        async def lost() -> None:
            return None

        await self._outage.call(counted, lost, "counts are lost meanwhile")

    async def snapshot(self) -> dict[str, int]:
        raw = await self._redis.hgetall(self._key)
        return {(k.decode() if isinstance(k, bytes) else str(k)): int(v) for k, v in raw.items()}


def _declared(name: str) -> None:
    if name not in COUNTERS:
        raise ValueError(f"counter {name!r} is not declared in COUNTERS")
