"""The Alembic revisions create exactly the schema the models declare, on both backends."""

from __future__ import annotations

from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy.engine import Connection

from dispatch.record.db import DatabaseSettings, create_engine
from dispatch.record.models import Base
from migrations import upgrade


def _diff(connection: Connection) -> list[Any]:
    context = MigrationContext.configure(connection, opts={"compare_type": True})
    return list(compare_metadata(context, Base.metadata))


async def _assert_no_drift(url: str) -> None:
    engine = create_engine(DatabaseSettings(url=url))
    try:
        await upgrade(engine)
        await upgrade(engine)  # idempotent
        async with engine.connect() as conn:
            assert await conn.run_sync(_diff) == []
    finally:
        await engine.dispose()


async def test_sqlite_schema_matches_the_models(sqlite_url: str) -> None:
    await _assert_no_drift(sqlite_url)


@pytest.mark.services
async def test_postgres_schema_matches_the_models(pg_migrated: str) -> None:
    await _assert_no_drift(pg_migrated)
