"""Opening a runtime as the entry points do: migrations first where the settings ask for it."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

from migrations import prepare
from workers.compose import Role, open_runtime
from workers.runtime import Runtime, RuntimeSettings
from workers.worker import create_worker

STOP_TIMEOUT_S = 30.0


@contextlib.asynccontextmanager
async def runtime_for(settings: RuntimeSettings, role: Role = "gateway") -> AsyncIterator[Runtime]:
    await prepare(settings.database)
    async with open_runtime(settings, role=role) as runtime:
        yield runtime


@contextlib.asynccontextmanager
async def running_worker(settings: RuntimeSettings) -> AsyncIterator[Any]:
    worker = create_worker(settings)
    task = asyncio.create_task(worker.async_run())
    try:
        yield worker
    finally:
        # Stop the poll loop before closing the pool it polls with: closing first races a
        # poll in flight ("Connection lost"), since arq's close() only cancels the main task
        # when the worker does not handle signals itself.
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            async with asyncio.timeout(STOP_TIMEOUT_S):  # a worker that will not stop fails
                await task
        await worker.close()
