"""Liveness and readiness."""

from __future__ import annotations

import msgspec
from litestar import get
from litestar.di import NamedDependency
from sqlalchemy import text

from gateway.services import Services

__all__ = ["health"]


class Health(msgspec.Struct, frozen=True):
    status: str
    database: str
    jobs: str


@get("/healthz", tags=["health"])
async def health(services: NamedDependency[Services]) -> Health:
    async with services.engine.connect() as conn:
        await conn.execute(text("SELECT 1"))
    return Health(
        status="ok",
        database=services.engine.dialect.name,
        jobs="arq" if services.settings.queue.redis_url else "in-process",
    )
