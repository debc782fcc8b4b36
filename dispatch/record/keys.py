"""This deployment's own secret: generated once, kept in the database, the same for every
process (no setting to configure, nothing to share by hand). Uses derive their own keys from it
by purpose, so one use's key says nothing of another's."""

from __future__ import annotations

import hashlib
import hmac
import secrets

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from dispatch.infra.sql import insert_ignore
from dispatch.record.models import DeploymentSecret

__all__ = ["deployment_secret", "derive"]

NAME = "deployment"


async def deployment_secret(sessions: async_sessionmaker[AsyncSession]) -> bytes:
    """The deployment's secret, created by whichever process asks first."""
    async with sessions.begin() as session:
        await insert_ignore(
            session,
            DeploymentSecret.__table__,  # type: ignore[arg-type]
            {"name": NAME, "value": secrets.token_bytes(32)},
            ("name",),
        )
        value = await session.scalar(
            select(DeploymentSecret.value).where(DeploymentSecret.name == NAME)
        )
    assert value is not None
    return bytes(value)


def derive(secret: bytes, purpose: str) -> bytes:
    """A key for one purpose only."""
    return hmac.new(secret, f"switchboard:{purpose}".encode(), hashlib.sha256).digest()
