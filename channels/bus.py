"""Reply fan-out to live sockets: a worker publishes, the gateway process holding the socket
delivers. In-process it is a dict of queues; with Redis, pub/sub carries it between processes."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import defaultdict
from collections.abc import AsyncIterator
from typing import Any

from dispatch.infra.outage import Outage

__all__ = ["RedisBus", "ReplyBus"]

log = logging.getLogger("switchboard.bus")
SUBSCRIBER_BUFFER = 256


class ReplyBus:
    """Topic → subscribers in this process."""

    def __init__(self) -> None:
        self._subscribers: dict[str, set[asyncio.Queue[bytes]]] = defaultdict(set)

    async def publish(self, topic: str, frame: bytes) -> int:
        return self._deliver(topic, frame)

    def _deliver(self, topic: str, frame: bytes) -> int:
        queues = self._subscribers.get(topic, ())
        for queue in queues:
            with contextlib.suppress(asyncio.QueueFull):
                queue.put_nowait(frame)
        return len(queues)

    @contextlib.asynccontextmanager
    async def subscribe(self, topic: str) -> AsyncIterator[asyncio.Queue[bytes]]:
        queue: asyncio.Queue[bytes] = asyncio.Queue(SUBSCRIBER_BUFFER)
        self._subscribers[topic].add(queue)
        try:
            yield queue
        finally:
            self._subscribers[topic].discard(queue)
            if not self._subscribers[topic]:
                del self._subscribers[topic]

    async def start(self) -> None:
        """Begin receiving from other processes (no-op in-process)."""

    async def close(self) -> None:
        """Stop receiving."""


class RedisBus(ReplyBus):
    """Publishes through Redis; one pattern subscription per process feeds local subscribers."""

    def __init__(self, redis: Any, pattern: str, outage: Outage) -> None:
        super().__init__()
        self._redis = redis
        self._pattern = pattern
        self._task: asyncio.Task[None] | None = None
        self._ready = asyncio.Event()
        self._outage = outage

    async def publish(self, topic: str, frame: bytes) -> int:
        """Listeners reached; none while Redis is away (the reply stays stored, and a page
        reads it back from the history)."""

        async def published() -> int:
            return int(await self._redis.publish(topic, frame))

        async def nobody() -> int:
            return 0

        return await self._outage.call(published, nobody, "replies are read from the history")

    async def start(self) -> None:
        self._task = asyncio.create_task(self._listen(), name="switchboard-reply-bus")
        await asyncio.wait_for(self._ready.wait(), timeout=10)

    async def _listen(self) -> None:
        backoff_s = 0.5
        while True:
            pubsub = self._redis.pubsub()
            try:
                await pubsub.psubscribe(self._pattern)
                self._ready.set()
                self._outage.answered()
                backoff_s = 0.5
                while True:
                    message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
                    if message is None or message.get("type") != "pmessage":
                        continue
                    channel = message["channel"]
                    topic = channel.decode() if isinstance(channel, bytes) else str(channel)
                    self._deliver(topic, message["data"])
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                # Replies stay stored; sockets get them again only via history. Reconnect.
                self._outage.failed(exc, "replies are read from the history")
                await asyncio.sleep(backoff_s)
                backoff_s = min(backoff_s * 2, 30.0)
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
