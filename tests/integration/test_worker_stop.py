"""A worker told to stop stops, even when the request is swallowed on the way.

arq stops a worker by cancelling its poll loop once. Under a socket timeout redis-py sends
commands through ``asyncio.wait_for``, which on Python 3.11 swallows a cancellation that
arrives just as the send completes (CPython gh-86296): seen as a test worker that polled on
for minutes after being stopped. The poll loop re-raises a stop request it finds pending.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any

import pytest

from gateway.settings import Settings
from workers.worker import create_worker

pytestmark = pytest.mark.services


async def test_a_stop_swallowed_inside_a_poll_still_stops_the_worker(
    make_settings: Callable[..., Settings], pg_migrated: str, redis_url: str
) -> None:
    settings = make_settings(database_url=pg_migrated, redis_url=redis_url)
    worker: Any = create_worker(settings, burst=False)
    beating = asyncio.Event()
    heart_beat = worker.heart_beat

    async def swallowing_heart_beat() -> None:
        # What 3.11's wait_for does when the cancellation and the send's completion meet.
        beating.set()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.sleep(0.2)
        await heart_beat()

    worker.heart_beat = swallowing_heart_beat
    task = asyncio.create_task(worker.async_run())
    try:
        await asyncio.wait_for(beating.wait(), 10)
        beating.clear()
        await asyncio.wait_for(beating.wait(), 10)  # inside a heart beat now
        task.cancel()
        done, _ = await asyncio.wait({task}, timeout=5)
        assert done, "the worker went on polling after it was told to stop"
        assert task.cancelled()
    finally:
        if not task.done():
            worker.main_task.cancel()  # the old way out: arq's own second cancellation
            await asyncio.wait({task}, timeout=5)
        await worker.close()
