"""Engine and session factory for PostgreSQL (asyncpg) and the embedded SQLite default."""

from __future__ import annotations

import dataclasses
from typing import Any
from urllib.parse import urlparse

from sqlalchemy import event, text
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

from dispatch.infra.clean import storable_json
from dispatch.infra.config import (
    AT_LEAST_ONE,
    NOT_NEGATIVE,
    POSITIVE,
    PREFIX,
    Group,
    setting,
)
from dispatch.infra.errors import SettingsError

__all__ = [
    "DEFAULT_SQLITE_URL",
    "DatabaseSettings",
    "create_engine",
    "create_sessionmaker",
    "planned_for_values",
]

SQLITE_BUSY_TIMEOUT_MS = 30_000
DEFAULT_SQLITE_URL = "sqlite+aiosqlite:///./switchboard.db"


@dataclasses.dataclass(frozen=True)
class DatabaseSettings(Group):
    """Where the record lives."""

    url: str = setting(
        DEFAULT_SQLITE_URL,
        "DATABASE_URL",
        "SQLAlchemy URL: postgresql+asyncpg://... in production; default: SQLite file in the "
        "working directory (embedded mode).",
    )
    auto_migrate: bool | None = setting(
        None,
        "AUTO_MIGRATE",
        "Apply migrations when the gateway starts. Default: yes on SQLite, no on PostgreSQL "
        "(run `switchboard migrate`).",
    )
    pool_size: int = setting(
        10, "DATABASE_POOL_SIZE", "Connections per process (PostgreSQL).", check=AT_LEAST_ONE
    )
    echo: bool = setting(False, "DATABASE_ECHO", "Log every SQL statement.")
    retention_days: int = setting(
        0,
        "RETENTION_DAYS",
        "Days the record keeps what has ended: older finished activities (with their events) "
        "and settled messages are removed by the workers, a batch at a time; nothing "
        "unfinished is. 0: kept for ever. To archive before removing, see `switchboard retain`.",
        check=NOT_NEGATIVE,
    )
    connect_timeout_s: float = setting(
        2.0,
        "DATABASE_CONNECT_TIMEOUT_S",
        "Longest wait for a new connection (PostgreSQL).",
        check=POSITIVE,
    )
    pool_timeout_s: float = setting(
        3.0,
        "DATABASE_POOL_TIMEOUT_S",
        "Longest wait for a free connection of the pool. A burst queues here: long enough to "
        "absorb one (a retry storm of 2,000 webhooks on two busy cores waits up to 4 s), "
        "within the gateway's `SWITCHBOARD_REQUEST_TIMEOUT_S`, which answers 503 first.",
        check=POSITIVE,
    )
    statement_timeout_s: float = setting(
        2.5,
        "DATABASE_STATEMENT_TIMEOUT_S",
        "Longest wait for one statement's answer (PostgreSQL; migrations have none). Together "
        "these bound how long a request waits on an unreachable or frozen database before it is "
        "answered 503.",
        check=POSITIVE,
    )

    def validate(self) -> None:
        scheme = urlparse(self.url).scheme
        if scheme not in {"sqlite+aiosqlite", "postgresql+asyncpg"}:
            raise SettingsError(
                PREFIX + "DATABASE_URL",
                f"scheme {scheme!r} is not supported; use sqlite+aiosqlite:/// or "
                "postgresql+asyncpg://",
            )

    @property
    def is_sqlite(self) -> bool:
        return self.url.startswith("sqlite")

    @property
    def should_auto_migrate(self) -> bool:
        return self.is_sqlite if self.auto_migrate is None else self.auto_migrate


def create_engine(settings: DatabaseSettings, *, migrating: bool = False) -> AsyncEngine:
    """An engine tuned for its backend: WAL and a busy timeout on SQLite; on PostgreSQL a pool
    whose every wait is bounded (connecting, a free connection, a statement's answer: an outage
    is an error within seconds, not a hang), except for migrations, which may take long."""
    if settings.is_sqlite:
        engine = create_async_engine(
            settings.url,
            echo=settings.echo,
            connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000},
            json_serializer=storable_json,
        )

        @event.listens_for(engine.sync_engine, "connect")
        def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
            # Let SQLAlchemy's "begin" below open transactions, so they can be IMMEDIATE.
            dbapi_connection.isolation_level = None
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.close()

        @event.listens_for(engine.sync_engine, "begin")
        def _sqlite_begin(connection: Any) -> None:
            # Take the write lock up front: a deferred transaction that reads then writes gets
            # SQLITE_BUSY at once under concurrency instead of waiting for busy_timeout.
            connection.exec_driver_sql("BEGIN IMMEDIATE")

        return engine
    connect_args: dict[str, Any] = {"timeout": settings.connect_timeout_s}
    if not migrating:
        connect_args["command_timeout"] = settings.statement_timeout_s
        # The hot path runs a few dozen short statements over and over, each prepared once per
        # connection: plan each once, not on every execution (a custom plan costs more than
        # the index lookup it plans).
        connect_args["server_settings"] = {"plan_cache_mode": "force_generic_plan"}
    return create_async_engine(
        settings.url,
        echo=settings.echo,
        pool_size=settings.pool_size,
        max_overflow=settings.pool_size,
        pool_timeout=settings.pool_timeout_s,
        # No ping per checkout (a round trip each time): a dead connection fails its statement,
        # which invalidates the pool, and the next checkout connects afresh.
        json_serializer=storable_json,
        connect_args=connect_args,
    )


def create_sessionmaker(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False)


async def planned_for_values(session: AsyncSession) -> None:
    """Plan the statements of ``session``'s transaction for the values they are given (on
    PostgreSQL; nothing on SQLite). For the lists and reports whose best plan depends on what
    is asked (a rare status, a time window, a page of fifty of an action): the generic plan
    the hot path's connections keep is made for no value in particular, and on a grown record
    it reads a whole index or table for them. One statement (a round trip) more."""
    if session.get_bind().dialect.name == "postgresql":
        await session.execute(text("SET LOCAL plan_cache_mode = force_custom_plan"))
