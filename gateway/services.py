"""One typed, frozen dependencies object, built once per process (gateway, worker or CLI)."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from collections.abc import AsyncIterator
from typing import Literal

import httpx
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from channels.base import ChannelAdapter
from channels.bus import RedisBus, ReplyBus
from channels.ratelimit import LocalRateLimiter, RateLimiter, RedisRateLimiter
from channels.registry import ChannelRegistry
from channels.rest import RestChannel
from channels.telegram import TelegramChannel
from channels.twilio import TwilioChannel
from channels.webchat import WebChatChannel
from dispatch.activities import ActivityLog
from dispatch.approvals import ApprovalService
from dispatch.catalog import Catalog, load_catalog
from dispatch.constants import reply_channel
from dispatch.db import create_engine, create_sessionmaker
from dispatch.intents import IntentParser
from dispatch.interpret import Interpreter
from dispatch.llm import LlmClient
from dispatch.metrics import Counters, RedisCounters
from dispatch.queue import ArqQueue, JobQueue
from dispatch.service import DispatchService
from dispatch.store import MessageStore
from dispatch.users import UserDirectory
from gateway.auth import TokenStore
from gateway.settings import Settings
from migrations import upgrade
from workers.handlers import BUILTIN_HANDLERS
from workers.inprocess import InProcessQueue
from workers.registry import HandlerRegistry
from workers.replies import ReplySender

__all__ = ["Role", "Services", "build_services", "load_checked_catalog"]

log = logging.getLogger("switchboard")

Role = Literal["gateway", "worker", "cli"]


@dataclasses.dataclass(frozen=True)
class Services:
    settings: Settings
    engine: AsyncEngine
    sessions: async_sessionmaker[AsyncSession]
    catalog: Catalog
    handlers: HandlerRegistry
    store: MessageStore
    activities: ActivityLog
    dispatcher: DispatchService
    queue: JobQueue
    bus: ReplyBus
    channels: ChannelRegistry
    replies: ReplySender
    http: httpx.AsyncClient
    counters: Counters
    approvals: ApprovalService
    users: UserDirectory
    tokens: TokenStore

    @property
    def webchat(self) -> WebChatChannel:
        return self.channels.of(WebChatChannel)

    @property
    def twilio(self) -> TwilioChannel:
        return self.channels.of(TwilioChannel)

    @property
    def telegram(self) -> TelegramChannel:
        return self.channels.of(TelegramChannel)

    @property
    def rest(self) -> RestChannel:
        return self.channels.of(RestChannel)


def load_checked_catalog(settings: Settings, handlers: HandlerRegistry) -> Catalog:
    return load_catalog(settings.catalog_path, handlers.names())


def _channels(
    settings: Settings, bus: ReplyBus, limiter: RateLimiter, store: MessageStore
) -> list[ChannelAdapter]:
    """Every configured channel: adding one is a module and a line here."""
    prefix = settings.queue.prefix
    adapters: list[ChannelAdapter] = [
        RestChannel(max_text_chars=settings.http.max_text_chars),
        WebChatChannel(
            bus=bus,
            prefix=prefix,
            max_frame_bytes=settings.http.max_body_bytes,
            max_text_chars=settings.http.max_text_chars,
        ),
    ]
    if settings.twilio.enabled:
        assert settings.http.public_url is not None  # checked by Settings
        adapters.append(
            TwilioChannel(
                settings=settings.twilio,
                public_url=settings.http.public_url,
                limiter=limiter,
                max_text_chars=settings.http.max_text_chars,
            )
        )
    if settings.telegram.enabled:
        adapters.append(
            TelegramChannel(
                settings=settings.telegram,
                limiter=limiter,
                lookup=store.choices_of,
                max_text_chars=settings.http.max_text_chars,
            )
        )
    return adapters


@contextlib.asynccontextmanager
async def build_services(settings: Settings, *, role: Role) -> AsyncIterator[Services]:
    """Open everything a process needs and close it all on exit.

    ``role`` decides who runs jobs: with Redis, the gateway and CLI only enqueue and the arq
    worker runs them; without Redis, every role runs them in-process.
    """
    handlers = HandlerRegistry(BUILTIN_HANDLERS)
    catalog = load_checked_catalog(settings, handlers)
    engine = create_engine(settings.database)
    async with contextlib.AsyncExitStack() as stack:
        stack.push_async_callback(engine.dispose)
        if settings.database.should_auto_migrate:
            await upgrade(engine)
        sessions = create_sessionmaker(engine)
        prefix = settings.queue.prefix
        queue: JobQueue
        bus: ReplyBus
        if settings.queue.redis_url:
            arq_queue = await ArqQueue.connect(settings.queue.redis_url, prefix)
            stack.push_async_callback(arq_queue.close)
            queue = arq_queue
            bus = RedisBus(arq_queue.redis, reply_channel(prefix, "*", "*"))
        else:
            queue = InProcessQueue(prefix, concurrency=settings.worker.max_jobs)
            bus = ReplyBus()
        http = httpx.AsyncClient(follow_redirects=False)
        stack.push_async_callback(http.aclose)
        limiter: RateLimiter = (
            RedisRateLimiter(queue.redis, prefix)
            if isinstance(queue, ArqQueue)
            else LocalRateLimiter()
        )
        counters: Counters = (
            RedisCounters(queue.redis, prefix) if isinstance(queue, ArqQueue) else Counters()
        )
        store = MessageStore(sessions)
        channels = ChannelRegistry(_channels(settings, bus, limiter, store))
        stack.push_async_callback(channels.close)
        activities = ActivityLog(sessions)
        approvals = ApprovalService(
            sessions=sessions, catalog=catalog, queue=queue, split=channels.split
        )
        services = Services(
            settings=settings,
            engine=engine,
            sessions=sessions,
            catalog=catalog,
            handlers=handlers,
            store=store,
            activities=activities,
            dispatcher=DispatchService(
                sessions=sessions,
                store=store,
                activities=activities,
                catalog=catalog,
                interpreter=Interpreter(
                    catalog=catalog,
                    parser=IntentParser(catalog),
                    llm=LlmClient(settings.llm, http) if settings.llm.enabled else None,
                    counters=counters,
                    confidence_floor=settings.llm.confidence_floor,
                ),
                queue=queue,
                split=channels.split,
                history_turns=settings.llm.history_turns,
                clarify_timeout_s=settings.clarify_timeout_s,
                approvals=approvals,
            ),
            queue=queue,
            bus=bus,
            channels=channels,
            replies=ReplySender(
                store=store, channels=channels, activities=activities, catalog=catalog
            ),
            http=http,
            counters=counters,
            approvals=approvals,
            users=UserDirectory(sessions),
            tokens=TokenStore(sessions, settings.http.admin_token),
        )
        if role == "gateway" and settings.queue.redis_url:
            await bus.start()
            stack.push_async_callback(bus.close)
        if isinstance(queue, InProcessQueue):
            await queue.start(services)
            stack.push_async_callback(queue.close)
        log.info(
            "services ready",
            extra={
                "role": role,
                "database": settings.database.url.split("@")[-1],
                "jobs": "arq" if settings.queue.redis_url else "in-process",
                "catalog": catalog.source,
            },
        )
        yield services
