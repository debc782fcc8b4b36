"""The arq worker: ``switchboard worker``.

Builds the same :class:`~gateway.services.Services` as the gateway once at start-up and keeps it
in arq's ctx under one key; job bodies are the shared ones in ``workers.jobs``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from dispatch.constants import DISPATCH_MESSAGE, RUN_ACTIVITY, queue_name
from dispatch.queue import job_deserializer, job_serializer
from gateway.services import Services, build_services
from gateway.settings import Settings
from workers import jobs
from workers.recovery import recover, recover_forever

__all__ = ["create_worker"]

log = logging.getLogger("switchboard.worker")
SERVICES = "switchboard_services"


def _services(ctx: dict[str, Any]) -> Services:
    services: Services = ctx[SERVICES]
    return services


async def dispatch_message_job(ctx: dict[str, Any], job: dict[str, Any]) -> dict[str, Any]:
    return await jobs.dispatch_message(_services(ctx), int(job["message_id"]))


async def run_activity_job(ctx: dict[str, Any], job: dict[str, Any]) -> dict[str, Any]:
    return await jobs.run_activity(_services(ctx), int(job["activity_id"]))


def create_worker(settings: Settings, *, burst: bool = False) -> Any:
    """An arq ``Worker`` wired to ``settings`` (Redis must be configured)."""
    from arq import func
    from arq.connections import RedisSettings
    from arq.worker import Worker

    if not settings.queue.redis_url:
        raise RuntimeError("SWITCHBOARD_REDIS_URL is not set: the embedded mode needs no worker")

    async def on_startup(ctx: dict[str, Any]) -> None:
        stack = contextlib.AsyncExitStack()
        services = await stack.enter_async_context(build_services(settings, role="worker"))
        ctx[SERVICES] = services
        ctx["switchboard_stack"] = stack
        await recover(services)
        ctx["switchboard_recovery"] = asyncio.create_task(recover_forever(services))

    async def on_shutdown(ctx: dict[str, Any]) -> None:
        task = ctx.get("switchboard_recovery")
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        stack = ctx.get("switchboard_stack")
        if stack is not None:
            await stack.aclose()

    max_timeout_s = 60.0
    return Worker(
        functions=[
            func(dispatch_message_job, name=DISPATCH_MESSAGE, max_tries=10),
            # arq's own timeout is only a backstop: handlers have per-action timeouts.
            func(run_activity_job, name=RUN_ACTIVITY, max_tries=10, timeout=3600),
        ],
        redis_settings=RedisSettings.from_dsn(settings.queue.redis_url),
        queue_name=queue_name(settings.queue.prefix),
        max_jobs=settings.worker.max_jobs,
        poll_delay=settings.worker.poll_delay_s,
        job_timeout=max_timeout_s,
        keep_result=3600,
        job_serializer=job_serializer,
        job_deserializer=job_deserializer,
        on_startup=on_startup,
        on_shutdown=on_shutdown,
        burst=burst,
        handle_signals=not burst,
    )
