"""Reading the record of an app under ``AsyncTestClient`` (its own engine, this loop)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

from sqlalchemy import select

from dispatch.record.models import Activity, Message, User
from tests.conftest import count_rows, open_db
from tests.support.flow import wait_for


def _url(client: Any) -> str:
    return str(client.app.state.runtime.settings.database.url)


@contextlib.asynccontextmanager
async def db_session(client: Any) -> AsyncIterator[Any]:
    async with open_db(_url(client)) as sessions, sessions() as session:
        yield session


async def stored(client: Any, model: Any, *where: Any) -> int:
    async with open_db(_url(client)) as sessions:
        return await count_rows(sessions, model, *where)


async def rows_held(client: Any) -> tuple[int, int, int]:
    """Messages, activities and users in the app's database (other tests' too, in a shared
    one): compared before and after what must store nothing."""
    async with open_db(_url(client)) as sessions:
        return (
            await count_rows(sessions, Message),
            await count_rows(sessions, Activity),
            await count_rows(sessions, User),
        )


async def outbound_rows(client: Any, settled: int) -> list[Message]:
    """Every outbound message once at least ``settled`` have left pending/sending."""

    async def ready() -> list[Message] | None:
        async with db_session(client) as session:
            rows = list(
                (
                    await session.execute(
                        select(Message).where(Message.direction == "outbound").order_by(Message.id)
                    )
                ).scalars()
            )
        done = [r for r in rows if r.delivery not in {"pending", "sending"}]
        return rows if len(done) >= settled else None

    result: list[Message] = await wait_for(ready)
    return result
