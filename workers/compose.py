"""The composition root: :func:`open_runtime` builds a process's :class:`Runtime` once.

The gateway, the arq worker and the CLI all start here; nothing else constructs services. The
schema is not its business: entry points apply migrations first where the settings ask for it
(``migrations.prepare``).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import AsyncIterator
from typing import Literal

import httpx
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from channels.base import ChannelContext
from channels.bus import RedisBus, ReplyBus
from channels.ratelimit import LocalRateLimiter, RateLimiter, RedisRateLimiter
from channels.registry import ChannelRegistry, check_templates, identity_kinds
from dispatch.infra.constants import reply_channel
from dispatch.infra.metrics import Counters, RedisCounters
from dispatch.infra.queue import ArqQueue, JobQueue
from dispatch.infra.throttle import RedisThrottle, Throttle
from dispatch.policy.catalog import DEFAULT_PROVIDER, Catalog, load_catalog
from dispatch.record.activities import ActivityLog
from dispatch.record.artifacts import ArtifactLinks
from dispatch.record.db import create_engine, create_sessionmaker
from dispatch.record.delivery import Deliveries
from dispatch.record.feed import EventFeed
from dispatch.record.inbox import Inbox
from dispatch.record.keys import deployment_secret
from dispatch.record.retention import Retention
from dispatch.record.stats import Stats
from dispatch.record.store import MessageStore
from dispatch.record.turns import Turns
from dispatch.record.usage import UsageLog
from dispatch.record.users import UserDirectory
from dispatch.understanding.intents import IntentParser
from dispatch.understanding.interpret import Interpreter
from dispatch.understanding.llm import LlmClient
from dispatch.understanding.providers import Providers
from dispatch.work.approvals import ApprovalService
from dispatch.work.councils import CouncilRunner
from dispatch.work.execution import Executor
from dispatch.work.runs import WorkflowRuns
from dispatch.work.service import DispatchService
from dispatch.work.steering import Steering
from dispatch.work.takeover import Takeovers
from dispatch.work.tasks import TaskService
from workers.handlers import BUILTIN_HANDLERS, CouncilHandler
from workers.inprocess import InProcessQueue
from workers.registry import HandlerRegistry
from workers.replies import ReplySender
from workers.runtime import Runtime, RuntimeSettings

__all__ = ["Role", "load_checked_catalog", "open_runtime"]

log = logging.getLogger("switchboard")

Role = Literal["gateway", "worker", "cli"]


def load_checked_catalog(settings: RuntimeSettings) -> Catalog:
    """The catalog, its handlers and its channel templates checked (CatalogError if not)."""
    catalog = load_catalog(
        settings.core.catalog_path,
        HandlerRegistry(BUILTIN_HANDLERS).names(),
        region=settings.core.default_region,
    )
    check_templates(catalog)
    return catalog


@dataclasses.dataclass(frozen=True)
class _Transport:
    """What carries work and counts between processes: Redis when there is one, else this
    process's own."""

    queue: JobQueue
    bus: ReplyBus
    limiter: RateLimiter
    counters: Counters
    throttle: Throttle


async def _transport(settings: RuntimeSettings, stack: contextlib.AsyncExitStack) -> _Transport:
    prefix = settings.queue.prefix
    if not settings.queue.redis_url:
        return _Transport(
            queue=InProcessQueue(prefix, concurrency=settings.worker.max_jobs),
            bus=ReplyBus(),
            limiter=LocalRateLimiter(),
            counters=Counters(),
            throttle=Throttle(),
        )
    arq_queue = await ArqQueue.connect(settings.queue)
    stack.push_async_callback(arq_queue.close)
    # One Redis, one view of its health: what fails one user is skipped by all.
    redis, outage = arq_queue.redis, arq_queue.outage
    return _Transport(
        queue=arq_queue,
        bus=RedisBus(redis, reply_channel(prefix, "*", "*"), outage),
        limiter=RedisRateLimiter(redis, prefix, outage),
        counters=RedisCounters(redis, prefix, outage),
        throttle=RedisThrottle(redis, prefix, outage),
    )


@dataclasses.dataclass(frozen=True)
class _Base:
    """What every service is built on."""

    settings: RuntimeSettings
    engine: AsyncEngine
    sessions: async_sessionmaker[AsyncSession]
    catalog: Catalog
    transport: _Transport
    http: httpx.AsyncClient
    store: MessageStore
    secret: bytes
    channels: ChannelRegistry


def _providers(base: _Base) -> Providers:
    """The named LLMs: ``default`` from SWITCHBOARD_LLM_*, the catalog's others (their keys
    read from the variables it names, once)."""
    settings = base.settings
    return Providers.build(
        base.catalog.providers,
        settings.llm,
        settings.env.values,
        base.http,
        UsageLog(base.sessions),
    )


def _interpreter(base: _Base, providers: Providers) -> Interpreter:
    """From text to an intent: the catalog's rules, then the LLM if one is configured (the
    ``default`` provider, its calls' tokens recorded)."""
    llm = base.settings.llm
    client = None
    if llm.enabled:
        client = LlmClient(
            llm,
            base.http,
            provider=providers.get(DEFAULT_PROVIDER),
            usage=UsageLog(base.sessions),
        )
    return Interpreter(
        catalog=base.catalog,
        parser=IntentParser(base.catalog),
        llm=client,
        counters=base.transport.counters,
        confidence_floor=llm.confidence_floor,
    )


def _handlers(base: _Base, providers: Providers) -> HandlerRegistry:
    """The built-in handlers, and the one every council runs on."""
    return HandlerRegistry(
        (*BUILTIN_HANDLERS, CouncilHandler(CouncilRunner(base.sessions, providers)))
    )


def _tasks(base: _Base, approvals: ApprovalService) -> TaskService:
    """The work external agents claim, and the links that show what they handed in."""
    return TaskService(
        sessions=base.sessions,
        catalog=base.catalog,
        queue=base.transport.queue,
        approvals=approvals,
        routing=base.channels,
        link=ArtifactLinks(base.secret, base.settings.base_url).url,
    )


def _runtime(base: _Base) -> Runtime:
    """Every service of the core, wired once."""
    settings, sessions, catalog, channels = (
        base.settings,
        base.sessions,
        base.catalog,
        base.channels,
    )
    queue, store = base.transport.queue, base.store
    activities, turns, deliveries = ActivityLog(sessions), Turns(sessions), Deliveries(sessions)
    approvals = ApprovalService(sessions=sessions, catalog=catalog, queue=queue, routing=channels)
    workflows = WorkflowRuns(
        sessions=sessions,
        activities=activities,
        catalog=catalog,
        approvals=approvals,
        queue=queue,
        routing=channels,
    )
    providers = _providers(base)
    interpreter = _interpreter(base, providers)
    return Runtime(
        settings=settings,
        secret=base.secret,
        engine=base.engine,
        sessions=sessions,
        catalog=catalog,
        handlers=_handlers(base, providers),
        store=store,
        activities=activities,
        turns=turns,
        deliveries=deliveries,
        dispatcher=DispatchService(
            sessions=sessions,
            store=store,
            deliveries=deliveries,
            turns=turns,
            activities=activities,
            catalog=catalog,
            interpreter=interpreter,
            queue=queue,
            routing=channels,
            history_turns=settings.llm.history_turns,
            clarify_timeout_s=settings.core.clarify_timeout_s,
            approvals=approvals,
            throttle=base.transport.throttle,
            limits=settings.throttle,
        ),
        approvals=approvals,
        steering=Steering(activities=activities, queue=queue, routing=channels),
        stats=Stats(sessions),
        retention=Retention(sessions, days=settings.database.retention_days),
        inbox=Inbox(sessions),
        feed=EventFeed(sessions),
        executor=Executor(
            sessions=sessions,
            activities=activities,
            catalog=catalog,
            interpreter=interpreter,
            approvals=approvals,
            queue=queue,
            workflows=workflows,
        ),
        workflows=workflows,
        takeovers=Takeovers(
            sessions=sessions, activities=activities, queue=queue, routing=channels
        ),
        tasks=_tasks(base, approvals),
        providers=providers,
        users=UserDirectory(sessions, identity_kinds()),
        queue=queue,
        bus=base.transport.bus,
        channels=channels,
        replies=ReplySender(
            deliveries=deliveries, channels=channels, activities=activities, catalog=catalog
        ),
        http=base.http,
        counters=base.transport.counters,
        slots=asyncio.Semaphore(settings.worker.max_jobs),
    )


@contextlib.asynccontextmanager
async def open_runtime(settings: RuntimeSettings, *, role: Role) -> AsyncIterator[Runtime]:
    """Open everything a process needs and close it all on exit.

    ``role`` decides who runs jobs: with Redis, the gateway and CLI only enqueue and the arq
    worker runs them; without Redis, every role runs them in-process.
    """
    catalog = load_checked_catalog(settings)
    engine = create_engine(settings.database)
    async with contextlib.AsyncExitStack() as stack:
        stack.push_async_callback(engine.dispose)
        sessions = create_sessionmaker(engine)
        transport = await _transport(settings, stack)
        http = httpx.AsyncClient(follow_redirects=False)
        stack.push_async_callback(http.aclose)
        store = MessageStore(sessions)
        secret = await deployment_secret(sessions)
        context = ChannelContext(
            core=settings.core,
            prefix=settings.queue.prefix,
            limiter=transport.limiter,
            bus=transport.bus,
            choices=store.choices_of,
            secret=secret,
        )
        channels = ChannelRegistry.create(settings.channel, context)
        stack.push_async_callback(channels.close)
        runtime = _runtime(
            _Base(settings, engine, sessions, catalog, transport, http, store, secret, channels)
        )
        # (closed last to first: what is dispatched, then finished, then recorded as sent)
        stack.push_async_callback(runtime.deliveries.close)
        stack.push_async_callback(runtime.activities.close)
        stack.push_async_callback(runtime.dispatcher.close)
        if role == "gateway" and settings.queue.redis_url:
            await transport.bus.start()
            stack.push_async_callback(transport.bus.close)
        if isinstance(transport.queue, InProcessQueue):
            await transport.queue.start(runtime)
            stack.push_async_callback(transport.queue.close)
        log.info(
            "runtime ready",
            extra={
                "role": role,
                "database": settings.database.url.split("@")[-1],
                "jobs": "arq" if settings.queue.redis_url else "in-process",
                "channels": ",".join(channels.channels()),
                "catalog": catalog.source,
            },
        )
        yield runtime
