"""Counters every process raises and ``GET /metrics`` reads (Prometheus text format).

With Redis they live in one hash shared by the gateway and all workers; in-process, a dict.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

__all__ = ["Counters", "RedisCounters"]


class Counters:
    def __init__(self) -> None:
        self._values: Counter[str] = Counter()

    async def incr(self, name: str, by: int = 1) -> None:
        self._values[name] += by

    async def snapshot(self) -> dict[str, int]:
        return dict(self._values)


class RedisCounters(Counters):
    def __init__(self, redis: Any, prefix: str) -> None:
        super().__init__()
        self._redis = redis
        self._key = f"{prefix}:metrics"

    async def incr(self, name: str, by: int = 1) -> None:
        await self._redis.hincrby(self._key, name, by)

    async def snapshot(self) -> dict[str, int]:
        raw = await self._redis.hgetall(self._key)
        return {(k.decode() if isinstance(k, bytes) else str(k)): int(v) for k, v in raw.items()}
