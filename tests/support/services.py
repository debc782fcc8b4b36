"""The shared PostgreSQL and Redis, borrowed without disturbing anyone: a database of one's own
(created, migrated, dropped) and a Redis db number claimed with a lock key (flushed, released).
Used by the test fixtures and by ``bench/``."""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import AsyncIterator

import asyncpg
import redis.asyncio as aioredis

__all__ = ["PG_ADMIN_DSN", "REDIS_BASE", "own_database", "own_redis_db"]

PG_ADMIN_DSN = os.environ.get(
    "SWITCHBOARD_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres"
)
REDIS_BASE = os.environ.get("SWITCHBOARD_TEST_REDIS", "redis://127.0.0.1:6379")


async def _admin(sql: str) -> None:
    conn = await asyncpg.connect(PG_ADMIN_DSN, timeout=5)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


async def create_database(name: str) -> str:
    """CREATE DATABASE ``name``; its SQLAlchemy URL."""
    await _admin(f'CREATE DATABASE "{name}"')
    base = PG_ADMIN_DSN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+asyncpg://")
    return f"{base}/{name}"


async def drop_database(name: str) -> None:
    await _admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextlib.asynccontextmanager
async def own_database(prefix: str, *, migrated: bool = True) -> AsyncIterator[str]:
    """A fresh database (migrated to the latest revision), dropped afterwards."""
    from dispatch.record.db import DatabaseSettings, create_engine
    from migrations import upgrade

    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    url = await create_database(name)
    try:
        if migrated:
            engine = create_engine(DatabaseSettings(url=url))
            try:
                await upgrade(engine)
            finally:
                await engine.dispose()
        yield url
    finally:
        await drop_database(name)


async def claim_redis_db() -> int:
    client = aioredis.from_url(f"{REDIS_BASE}/0", socket_timeout=5)
    try:
        for db in range(15, 0, -1):
            if await client.set(f"switchboard-test-db-lock:{db}", "1", nx=True, ex=3600):
                return db
        raise RuntimeError("every Redis db 1-15 is claimed by another test run")
    finally:
        await client.aclose()


async def flush_redis(url: str) -> None:
    """Empty the Redis db at ``url`` (as if Redis had lost everything)."""
    client = aioredis.from_url(url)
    try:
        await client.flushdb()
    finally:
        await client.aclose()


async def release_redis_db(db: int) -> None:
    await flush_redis(f"{REDIS_BASE}/{db}")
    lock = aioredis.from_url(f"{REDIS_BASE}/0")
    await lock.delete(f"switchboard-test-db-lock:{db}")
    await lock.aclose()


@contextlib.asynccontextmanager
async def own_redis_db() -> AsyncIterator[str]:
    """A Redis db number nobody else uses meanwhile (its URL), flushed afterwards."""
    db = await claim_redis_db()
    try:
        yield f"{REDIS_BASE}/{db}"
    finally:
        await release_redis_db(db)
