"""What a process runs with: its settings, and the typed, frozen set of services built from them.

:class:`RuntimeSettings` gathers the settings groups a gateway or worker reads at start-up, each
declared beside its owner (the database in ``dispatch.record.db``, each channel in its module, the
worker's here). :class:`Runtime` is the one dependencies object: built by
:func:`workers.compose.open_runtime`, kept in arq's ctx by the worker and in the app state by the
gateway, which hands each route only the service it uses.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar, Self, TypeVar

from channels.registry import settings_types
from dispatch.infra.config import (
    AT_LEAST_ONE,
    NOT_NEGATIVE,
    POSITIVE,
    CoreSettings,
    Environment,
    Group,
    SettingView,
    Within,
    describe_group,
    read_group,
    setting,
)
from dispatch.infra.queue import QueueSettings
from dispatch.infra.throttle import ThrottleSettings
from dispatch.record.db import DatabaseSettings
from dispatch.understanding.llm import LlmSettings

if TYPE_CHECKING:
    import httpx
    from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

    from channels.bus import ReplyBus
    from channels.registry import ChannelRegistry
    from dispatch.infra.metrics import Counters
    from dispatch.infra.queue import JobQueue
    from dispatch.policy.catalog import Catalog
    from dispatch.record.activities import ActivityLog
    from dispatch.record.delivery import Deliveries
    from dispatch.record.feed import EventFeed
    from dispatch.record.inbox import Inbox
    from dispatch.record.retention import Retention
    from dispatch.record.stats import Stats
    from dispatch.record.store import MessageStore
    from dispatch.record.turns import Turns
    from dispatch.record.users import UserDirectory
    from dispatch.understanding.providers import Providers
    from dispatch.work.approvals import ApprovalService
    from dispatch.work.execution import Executor
    from dispatch.work.runs import WorkflowRuns
    from dispatch.work.service import DispatchService
    from dispatch.work.steering import Steering
    from dispatch.work.takeover import Takeovers
    from dispatch.work.tasks import TaskService
    from workers.registry import HandlerRegistry
    from workers.replies import ReplySender

__all__ = ["Runtime", "RuntimeSettings", "WorkerSettings"]

S = TypeVar("S")


@dataclasses.dataclass(frozen=True)
class WorkerSettings(Group):
    """How jobs run, in the arq worker or in-process."""

    max_jobs: int = setting(
        64,
        "WORKER_MAX_JOBS",
        "Jobs one worker runs at a time, and conversations it works on at once (a job may "
        "carry up to 16 new messages). More at once make larger batches: fewer statements a "
        "message.",
        check=AT_LEAST_ONE,
    )
    poll_delay_s: float = setting(
        0.05,
        "WORKER_POLL_DELAY_S",
        "Seconds between queue polls (arq's default of 0.5 s adds up to half a second per hop).",
        check=Within(0, 10, open_low=True),
    )
    lease_s: float = setting(
        30.0,
        "WORKER_LEASE_S",
        "How long a claim on a running activity or a message being interpreted holds without "
        "renewal; a live run renews it every third of that, so a dead worker's work is run "
        "again within it (and a run that cannot renew stops itself before it runs out).",
        check=POSITIVE,
    )
    shutdown_grace_s: float = setting(
        30.0,
        "WORKER_SHUTDOWN_GRACE_S",
        "On SIGTERM, how long a worker lets running jobs finish (taking no new ones) before it "
        "gives the rest back to be run at once elsewhere.",
        check=NOT_NEGATIVE,
    )
    recover_every_s: float = setting(
        10.0,
        "WORKER_RECOVER_EVERY_S",
        "How often stored-but-unfinished messages and activities are re-driven from the database.",
        check=POSITIVE,
    )
    recover_after_s: float = setting(
        5.0,
        "WORKER_RECOVER_AFTER_S",
        "Age a stored message or queued activity must reach before recovery re-drives it.",
        check=POSITIVE,
    )


DEFAULT_BASE_URL = "http://127.0.0.1:8000"


@dataclasses.dataclass(frozen=True)
class RuntimeSettings:
    """The settings a gateway or worker reads once at start-up; build with :meth:`from_env`."""

    GROUPS: ClassVar[dict[str, type[Any]]] = {
        "core": CoreSettings,
        "database": DatabaseSettings,
        "queue": QueueSettings,
        "llm": LlmSettings,
        "worker": WorkerSettings,
        "throttle": ThrottleSettings,
    }

    core: CoreSettings = dataclasses.field(default_factory=CoreSettings)
    database: DatabaseSettings = dataclasses.field(default_factory=DatabaseSettings)
    queue: QueueSettings = dataclasses.field(default_factory=QueueSettings)
    llm: LlmSettings = dataclasses.field(default_factory=LlmSettings)
    worker: WorkerSettings = dataclasses.field(default_factory=WorkerSettings)
    throttle: ThrottleSettings = dataclasses.field(default_factory=ThrottleSettings)
    channels: Mapping[type[Any], Any] = dataclasses.field(default_factory=dict, compare=False)
    """Each channel's settings group, by its type (see :meth:`channel`)."""
    env: Environment = dataclasses.field(default_factory=Environment, repr=False, compare=False)

    def __post_init__(self) -> None:
        for kind in settings_types():
            self.channel(kind).check(self.core)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | Environment | None = None) -> Self:
        """Read every group from ``env`` (default: ``.env`` overlaid by the environment)."""
        if isinstance(env, Environment):
            environment = env
        else:
            environment = Environment.read() if env is None else Environment(dict(env))
        groups = {name: read_group(kind, environment) for name, kind in cls.GROUPS.items()}
        channels = {kind: read_group(kind, environment) for kind in settings_types()}
        return cls(**groups, channels=channels, env=environment)

    @property
    def base_url(self) -> str:
        """Where people reach the gateway, for links in replies: ``SWITCHBOARD_PUBLIC_URL``,
        else the gateway's default address (the gateway's own settings know its bind)."""
        return (self.core.public_url or DEFAULT_BASE_URL).rstrip("/")

    def channel(self, kind: type[S]) -> S:
        """The settings group ``kind`` of a channel (its defaults when not read)."""
        found = self.channels.get(kind)
        return found if isinstance(found, kind) else kind()

    def describe(self) -> list[SettingView]:
        """Every setting with its value in effect and where it came from (secrets masked)."""
        groups = [getattr(self, name) for name in self.GROUPS]
        groups += [self.channel(kind) for kind in settings_types()]
        return [row for group in groups for row in describe_group(group, self.env)]


@dataclasses.dataclass(frozen=True)
class Runtime:
    """Everything a process's jobs and routes use, built once (see ``workers.compose``)."""

    settings: RuntimeSettings
    secret: bytes
    """This deployment's secret (``dispatch.record.keys``): derive a key per purpose from it."""
    engine: AsyncEngine
    sessions: async_sessionmaker[AsyncSession]
    catalog: Catalog
    handlers: HandlerRegistry
    store: MessageStore
    activities: ActivityLog
    turns: Turns
    deliveries: Deliveries
    dispatcher: DispatchService
    approvals: ApprovalService
    steering: Steering
    executor: Executor
    workflows: WorkflowRuns
    takeovers: Takeovers
    tasks: TaskService
    providers: Providers
    stats: Stats
    retention: Retention
    inbox: Inbox
    feed: EventFeed
    users: UserDirectory
    queue: JobQueue
    bus: ReplyBus
    channels: ChannelRegistry
    replies: ReplySender
    http: httpx.AsyncClient
    counters: Counters
    slots: asyncio.Semaphore = dataclasses.field(default_factory=asyncio.Semaphore)
    """Conversations this process works on at once (``max_jobs``; a job may carry several)."""
