"""Liveness and readiness."""

from __future__ import annotations

import msgspec
from litestar import get
from litestar.di import NamedDependency
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.settings import Settings

__all__ = ["health"]


class Health(msgspec.Struct, frozen=True):
    status: str
    database: str
    jobs: str


@get("/healthz", tags=["health"], operation_id="getHealth")
async def health(
    engine: NamedDependency[AsyncEngine], settings: NamedDependency[Settings]
) -> Health:
    """Whether the gateway is up and reaches its database (503 if not); no token needed."""
    async with engine.connect() as conn:
        await conn.execute(text("SELECT 1"))
    return Health(
        status="ok",
        database=engine.dialect.name,
        jobs="arq" if settings.queue.redis_url else "in-process",
    )
