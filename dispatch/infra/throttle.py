"""Inbound limits: how fast one sender may write, and how much one conversation may owe.

A token bucket per sender (its identity), shared by every gateway process through Redis (one Lua
script, Redis's clock) or, embedded, in this process: ``rate_per_s`` sustained, ``burst`` at
once. A client over the limit (REST, web chat) is refused and told when to try again; a
verified provider's message over it is stored, not acted on. Either way the sender is told to
slow down at most once per window. A conversation with ``backlog`` messages not yet interpreted
takes no more until it catches up. So one sender's flood costs others almost nothing.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from typing import Any

from dispatch.infra.config import (
    AT_LEAST_ONE,
    POSITIVE,
    Group,
    setting,
)
from dispatch.infra.outage import Outage

__all__ = ["AddressSlots", "RedisThrottle", "Throttle", "ThrottleSettings"]

log = logging.getLogger("switchboard.throttle")


@dataclasses.dataclass(frozen=True)
class ThrottleSettings(Group):
    """What one sender, one socket and one conversation may send."""

    sender_rate_per_s: float = setting(
        2.0, "SENDER_RATE_PER_S", "Messages per second one sender may keep sending.", check=POSITIVE
    )
    sender_burst: int = setting(
        20,
        "SENDER_BURST",
        "Messages one sender may send at once before the rate applies.",
        check=AT_LEAST_ONE,
    )
    socket_frames_per_s: float = setting(
        5.0,
        "SOCKET_FRAMES_PER_S",
        "Frames per second one web chat socket may send.",
        check=POSITIVE,
    )
    socket_burst: int = setting(
        20, "SOCKET_BURST", "Frames one web chat socket may send at once.", check=AT_LEAST_ONE
    )
    conversation_backlog: int = setting(
        50,
        "CONVERSATION_BACKLOG",
        "Messages of one conversation that may wait to be interpreted; more are kept but not "
        "acted on until it catches up.",
        check=AT_LEAST_ONE,
    )
    notice_window_s: float = setting(
        60.0,
        "SLOW_DOWN_WINDOW_S",
        "A sender is told to slow down at most once in this time.",
        check=POSITIVE,
    )
    sockets_per_address: int = setting(
        20,
        "SOCKETS_PER_ADDRESS",
        "Web chat sockets one client address may hold open at once in one gateway process; "
        "more are refused at the handshake (HTTP 403) before anything is built for them.",
        check=AT_LEAST_ONE,
    )
    new_chats_per_address_per_min: int = setting(
        20,
        "NEW_CHATS_PER_ADDRESS_PER_MIN",
        "Web chat conversations (each a guest user) one client address may start per minute; "
        "a new chat's first message beyond it is refused (nothing stored) and told when to "
        "try again.",
        check=AT_LEAST_ONE,
    )


class AddressSlots:
    """How many of something (open sockets) each client address holds in this process, up to
    a limit."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._held: dict[str, int] = {}

    def acquire(self, address: str) -> bool:
        held = self._held.get(address, 0)
        if held >= self._limit:
            return False
        self._held[address] = held + 1
        return True

    def release(self, address: str) -> None:
        held = self._held.get(address, 0) - 1
        if held > 0:
            self._held[address] = held
        else:
            self._held.pop(address, None)


class Throttle:
    """Token buckets by key, in this process."""

    def __init__(self) -> None:
        self._buckets: dict[str, tuple[float, float]] = {}
        self._told: dict[str, float] = {}

    async def take(self, key: str, *, rate_per_s: float, burst: int) -> float:
        """Take one token: 0 if there was one, else the seconds until there will be."""
        now = time.monotonic()
        tokens, at = self._buckets.get(key, (float(burst), now))
        tokens = min(float(burst), tokens + (now - at) * rate_per_s)
        wait_s = 0.0
        if tokens >= 1:
            tokens -= 1
        else:
            wait_s = (1 - tokens) / rate_per_s
        self._buckets[key] = (tokens, now)
        if len(self._buckets) > 100_000:  # forget the idle ones
            self._buckets = {k: v for k, v in self._buckets.items() if now - v[1] < 3600}
        return wait_s

    async def first_in_window(self, key: str, *, window_s: float) -> bool:
        """True once per ``window_s`` for ``key`` (whether to tell a sender now)."""
        now = time.monotonic()
        if now - self._told.get(key, -math.inf) < window_s:
            return False
        self._told[key] = now
        return True


_TAKE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local v = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens = tonumber(v[1]) or burst
local at = tonumber(v[2]) or now
tokens = math.min(burst, tokens + (now - at) * rate) - tonumber(ARGV[3])
local wait = 0
if tokens >= 1 then tokens = tokens - 1 else wait = (1 - tokens) / rate end
redis.call('HSET', KEYS[1], 'tokens', tokens, 'at', now)
redis.call('PEXPIRE', KEYS[1], math.ceil(burst / rate * 1000) + 1000)
return tostring(wait)
"""


class RedisThrottle(Throttle):
    """Buckets in Redis, shared by every process, asked only for senders near their limit.

    Each process keeps its own bucket per sender too. While a sender has more than half the
    burst left in this process's bucket, they are far below the limit and Redis is not asked;
    past that, every message asks Redis, reporting the ones let through meanwhile, and Redis's
    answer holds. So one process enforces the limit exactly; across N processes a sender whose
    messages are spread evenly over all of them is held back once any one of them sees them
    near the limit (at worst N times the rate). While Redis is unreachable, this process's own
    buckets stand in (limits are kept per process rather than dropped).
    """

    def __init__(self, redis: Any, prefix: str, outage: Outage) -> None:
        super().__init__()
        self._redis = redis
        self._prefix = prefix
        self._script = redis.register_script(_TAKE)
        self._outage = outage
        self._unreported: dict[str, int] = {}
        """Messages let through by this process's bucket alone, by sender."""

    async def take(self, key: str, *, rate_per_s: float, burst: int) -> float:
        local_s = await Throttle.take(self, key, rate_per_s=rate_per_s, burst=burst)
        if local_s == 0 and self._buckets[key][0] >= burst / 2:
            self._unreported[key] = self._unreported.get(key, 0) + 1
            if len(self._unreported) > 100_000:
                self._unreported.clear()  # only counts of senders far below their limit
            return 0.0
        before = self._unreported.pop(key, 0)

        async def shared() -> float:
            wait = await self._script(
                keys=[f"{self._prefix}:flood:{key}"], args=[rate_per_s, burst, before]
            )
            return float(wait.decode() if isinstance(wait, bytes) else wait)

        async def alone() -> float:
            return local_s

        return await self._outage.call(shared, alone, "senders are limited per process")

    async def first_in_window(self, key: str, *, window_s: float) -> bool:
        async def shared() -> bool:
            return bool(
                await self._redis.set(
                    f"{self._prefix}:told:{key}", b"1", nx=True, px=math.ceil(window_s * 1000)
                )
            )

        return await self._outage.call(
            shared,
            lambda: Throttle.first_in_window(self, key, window_s=window_s),
            "senders are limited per process",
        )
