"""Helpers to drive the gateway over HTTP and wait for replies."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import httpx


async def wait_for(predicate: Any, *, timeout_s: float = 15.0, interval_s: float = 0.02) -> Any:
    """Poll ``await predicate()`` until it returns something truthy; fail after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = await predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout_s} s; last value {value!r}")
        await asyncio.sleep(interval_s)


async def outbound(
    client: Any, conversation_id: int, count: int = 1, timeout_s: float = 15.0
) -> list[dict[str, Any]]:
    """Wait until the conversation has ``count`` outbound messages; return them."""

    async def ready() -> list[dict[str, Any]] | None:
        response = await client.get(f"/api/v1/conversations/{conversation_id}/messages")
        assert response.status_code == 200, response.text
        replies = [m for m in response.json() if m["direction"] == "outbound"]
        settled = all(m["delivery"] not in {"pending", "sending"} for m in replies)
        return replies if len(replies) >= count and settled else None

    result: list[dict[str, Any]] = await wait_for(ready, timeout_s=timeout_s)
    return result


async def post(
    client: httpx.AsyncClient | Any,
    text: str,
    *,
    id: str,
    conversation: str = "c1",
    sender: str = "alice",
) -> Any:
    return await client.post(
        "/api/v1/messages",
        json={"id": id, "conversation": conversation, "sender": sender, "text": text},
    )


async def ask(services: Any, text: str, *, sender: str) -> tuple[Any, str]:
    """Send ``text`` as ``sender`` on the REST channel straight into ``services``; wait for the
    settled reply. Returns (the activity with its events, the reply text)."""
    from dispatch.record.messages import InboundMessage

    accepted = await services.dispatcher.ingest(
        InboundMessage(
            channel="rest",
            external_id=f"ask-{uuid.uuid4()}",
            conversation_key=sender,
            sender=sender,
            text=text,
        )
    )

    async def reply() -> tuple[Any, str] | None:
        replies = await services.store.replies_to(accepted.message_id)
        if not replies or any(r.delivery in {"pending", "sending"} for r in replies):
            return None
        activity = await services.activities.get(replies[0].activity_id, with_events=True)
        return activity, replies[0].text

    result: tuple[Any, str] = await wait_for(reply)
    return result


def record_releases(limiter: Any) -> list[tuple[float, tuple[Any, ...]]]:
    """Record (slot, paces) each time ``limiter`` lets a send go: the slot it reserved, which
    is the pace our code promises.

    Arrival times at a local test server add its thread scheduling, and even a waiter's wake-up
    adds the event loop's lag on a loaded machine, so pacing is asserted where it is decided.
    """
    released: list[tuple[float, tuple[Any, ...]]] = []
    acquire = limiter.acquire

    async def recording(*paces: Any) -> float:
        asked = time.monotonic()
        waited: float = await acquire(*paces)
        released.append((asked + waited, paces))
        return waited

    limiter.acquire = recording
    return released
