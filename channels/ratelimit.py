"""Outbound pacing: at most ``rate`` sends per second per key, across every process.

A send reserves one slot on every key it is paced by (say, its chat and the whole bot) at once:
the slot is the earliest time free on all of them, and each key's next slot moves to a little
over ``1/rate`` after it. The send then waits for its slot. So in any window of one second at
most ``rate`` sends start per key, however the keys combine. With Redis the slots live there (one
Lua script, Redis's own clock), shared by all workers; in-process, a dict. A reservation costs
Redis the script, ``TIME``, one ``MGET`` and a ``SET`` per key: five commands for a chat and
its bot.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from typing import Any

from dispatch.infra.outage import Outage

__all__ = ["LocalRateLimiter", "RateLimiter", "RedisRateLimiter"]

log = logging.getLogger("switchboard.ratelimit")

# Slots are spaced 10 % wider than 1/rate: the provider counts arrivals, and arrival times
# jitter by a few tens of milliseconds, which would let two sends bunch into one window.
MARGIN = 1.1

Pace = tuple[str, float]
"""(key, most sends per second)."""


class RateLimiter:
    async def acquire(self, *paces: Pace) -> float:
        """Wait for the next slot free on every key; return the seconds waited."""
        wait_s = await self._reserve(paces)
        if wait_s > 0:
            await asyncio.sleep(wait_s)
        return wait_s

    async def _reserve(self, paces: Sequence[Pace]) -> float:
        raise NotImplementedError


class LocalRateLimiter(RateLimiter):
    def __init__(self) -> None:
        self._next: dict[str, float] = {}
        self._lock = asyncio.Lock()

    async def _reserve(self, paces: Sequence[Pace]) -> float:
        async with self._lock:
            now = time.monotonic()
            slot = max([now, *(self._next.get(key, 0.0) for key, _ in paces)])
            for key, rate_per_s in paces:
                self._next[key] = slot + MARGIN / rate_per_s
        return slot - now


_RESERVE = """
local t = redis.call('TIME')
local now_us = tonumber(t[1]) * 1000000 + tonumber(t[2])
local slot = now_us
for i, taken in ipairs(redis.call('MGET', unpack(KEYS))) do
  if taken then slot = math.max(slot, tonumber(taken)) end
end
for i, key in ipairs(KEYS) do
  local next_us = slot + tonumber(ARGV[i])
  local ttl_ms = math.ceil((next_us - now_us) / 1000) + 1000
  redis.call('SET', key, tostring(next_us), 'PX', ttl_ms)
end
return slot - now_us
"""


class RedisRateLimiter(RateLimiter):
    """Slots in Redis, shared by every process; while Redis is unreachable, this process paces
    on its own (a reply is not failed because the pacing store is away)."""

    def __init__(self, redis: Any, prefix: str, outage: Outage) -> None:
        self._prefix = prefix
        self._script = redis.register_script(_RESERVE)
        self._fallback = LocalRateLimiter()
        self._outage = outage

    async def _reserve(self, paces: Sequence[Pace]) -> float:
        keys = [f"{self._prefix}:rate:{key}" for key, _ in paces]
        intervals = [max(1, round(MARGIN * 1_000_000 / rate)) for _, rate in paces]

        async def shared() -> float:
            return int(await self._script(keys=keys, args=intervals)) / 1_000_000

        return await self._outage.call(
            shared, lambda: self._fallback._reserve(paces), "replies are paced per process"
        )
