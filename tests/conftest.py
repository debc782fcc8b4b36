"""Shared fixtures: real PostgreSQL and Redis, one database and one Redis db per run.

Without the services, tests that need them skip, unless ``SWITCHBOARD_REQUIRE_SERVICES=1``
(as in CI), where they fail.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import redis.asyncio as aioredis

from gateway.settings import Settings
from tests.support.runtime import runtime_for
from tests.support.services import (
    REDIS_BASE,
    claim_redis_db,
    create_database,
    drop_database,
    own_database,
    release_redis_db,
)
from workers.runtime import Runtime

REQUIRE = os.environ.get("SWITCHBOARD_REQUIRE_SERVICES") == "1"
ROOT = Path(__file__).resolve().parent.parent

ADMIN_TOKEN = "test-admin-token-0123456789abcdef"
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
"""Headers for API calls in tests (the bootstrap admin token every test gateway has)."""


def _unavailable(what: str, exc: BaseException) -> None:
    message = f"{what} unavailable: {exc!r}"
    if REQUIRE:
        pytest.fail(message + " (SWITCHBOARD_REQUIRE_SERVICES=1)")
    pytest.skip(message)


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    """A fresh PostgreSQL database for this run, dropped afterwards."""
    name = f"switchboard_test_{uuid.uuid4().hex[:12]}"
    try:
        url = asyncio.run(create_database(name))
    except (OSError, asyncpg.PostgresError) as exc:
        _unavailable("PostgreSQL", exc)
    yield url
    asyncio.run(drop_database(name))


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """A Redis db number of our own for this run (claimed with a lock key), flushed after."""
    try:
        db = asyncio.run(claim_redis_db())
    except (OSError, aioredis.ConnectionError) as exc:
        _unavailable("Redis", exc)
    yield f"{REDIS_BASE}/{db}"
    asyncio.run(release_redis_db(db))


@pytest.fixture
def prefix() -> str:
    return f"sbtest{uuid.uuid4().hex[:10]}"


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite+aiosqlite:///{tmp_path / 'switchboard.db'}"


@pytest.fixture
def make_env(prefix: str) -> Callable[..., dict[str, str]]:
    """Environment for a gateway/worker: SWITCHBOARD_* values, extra ones as keyword args."""

    def make(**values: Any) -> dict[str, str]:
        env = {
            "SWITCHBOARD_REDIS_PREFIX": prefix,
            # Recovery keeps its defaults (a pass every 10 s): nothing may wait for it to move on.
            "SWITCHBOARD_LOG_LEVEL": "WARNING",
            "SWITCHBOARD_ADMIN_TOKEN": ADMIN_TOKEN,
        }
        for key, value in values.items():
            if value is not None:
                env[f"SWITCHBOARD_{key.upper()}"] = str(value)
        return env

    return make


@pytest.fixture
def make_settings(make_env: Callable[..., dict[str, str]]) -> Callable[..., Settings]:
    def make(**values: Any) -> Settings:
        return Settings.from_env(make_env(**values))

    return make


@pytest.fixture
async def embedded(
    make_settings: Callable[..., Settings], sqlite_url: str
) -> AsyncIterator[Runtime]:
    """Runtime on the embedded default: SQLite file, in-process jobs."""
    async with runtime_for(make_settings(database_url=sqlite_url), role="gateway") as services:
        yield services


@pytest.fixture
async def own_pg(pg_url: str) -> AsyncIterator[str]:
    """A migrated PostgreSQL database of this test's own (for figures counted over a whole
    database), dropped afterwards. (``pg_url`` first: it skips or fails without PostgreSQL.)"""
    async with own_database("switchboard_test") as url:
        yield url


@pytest.fixture
async def pg_migrated(pg_url: str) -> str:
    from dispatch.record.db import DatabaseSettings, create_engine
    from migrations import upgrade

    engine = create_engine(DatabaseSettings(url=pg_url))
    await upgrade(engine)
    await engine.dispose()
    return pg_url


@pytest.fixture(params=["postgresql", "sqlite"])
def backend(request: pytest.FixtureRequest) -> str:
    """Each database the product runs on, in turn."""
    if request.param == "postgresql":
        request.getfixturevalue("pg_url")  # skips (or fails, in CI) without PostgreSQL
    return str(request.param)


@pytest.fixture
async def migrated_engine(backend: str, tmp_path: Path) -> AsyncIterator[Any]:
    """An engine on a migrated database of this test's own, on each ``backend`` in turn."""
    from dispatch.record.db import DatabaseSettings, create_engine
    from migrations import upgrade

    async with contextlib.AsyncExitStack() as stack:
        if backend == "postgresql":
            url = await stack.enter_async_context(own_database("switchboard_test", migrated=False))
        else:
            url = f"sqlite+aiosqlite:///{tmp_path / 'own.db'}"
        engine = create_engine(DatabaseSettings(url=url))
        stack.push_async_callback(engine.dispose)
        await upgrade(engine)
        yield engine


@contextlib.asynccontextmanager
async def open_db(url: str) -> AsyncIterator[Any]:
    """A session factory on its own engine, in the test's event loop, for assertions."""
    from dispatch.record.db import DatabaseSettings, create_engine, create_sessionmaker

    engine = create_engine(DatabaseSettings(url=url))
    try:
        yield create_sessionmaker(engine)
    finally:
        await engine.dispose()


async def count_rows(sessions: Any, model: Any, *where: Any) -> int:
    from sqlalchemy import func, select

    async with sessions() as session:
        stmt = select(func.count()).select_from(model).where(*where)
        return int((await session.execute(stmt)).scalar_one())
