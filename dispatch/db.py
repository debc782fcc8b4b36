"""Engine and session factory for PostgreSQL (asyncpg) and the embedded SQLite default."""

from __future__ import annotations

from typing import Any

from sqlalchemy import event
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

from gateway.settings import DatabaseSettings

__all__ = ["create_engine", "create_sessionmaker"]

SQLITE_BUSY_TIMEOUT_MS = 30_000


def create_engine(settings: DatabaseSettings) -> AsyncEngine:
    """An engine tuned for its backend: WAL and a busy timeout on SQLite, a pool on PostgreSQL."""
    if settings.is_sqlite:
        engine = create_async_engine(
            settings.url,
            echo=settings.echo,
            connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000},
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
    return create_async_engine(
        settings.url,
        echo=settings.echo,
        pool_size=settings.pool_size,
        max_overflow=settings.pool_size,
        pool_pre_ping=True,
    )


def create_sessionmaker(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False)
