"""Alembic migrations: the same scripts create the schema on PostgreSQL and SQLite."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

from dispatch.record.db import DatabaseSettings, create_engine

__all__ = ["SCRIPT_LOCATION", "alembic_config", "prepare", "upgrade"]

SCRIPT_LOCATION = Path(__file__).resolve().parent


def alembic_config(url: str) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(SCRIPT_LOCATION))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


async def upgrade(engine: AsyncEngine, revision: str = "head") -> None:
    """Apply migrations up to ``revision`` on ``engine`` (idempotent)."""

    def _run(connection: Connection) -> None:
        cfg = alembic_config(engine.url.render_as_string(hide_password=False))
        cfg.attributes["connection"] = connection
        command.upgrade(cfg, revision)

    async with engine.begin() as conn:
        await conn.run_sync(_run)


async def prepare(settings: DatabaseSettings) -> None:
    """Apply migrations if the settings ask for it at start-up (the embedded default does;
    PostgreSQL is migrated by ``switchboard migrate`` as a release step)."""
    if not settings.should_auto_migrate:
        return
    engine = create_engine(settings, migrating=True)
    try:
        await upgrade(engine)
    finally:
        await engine.dispose()
