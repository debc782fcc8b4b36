"""Small SQL helpers that behave the same on PostgreSQL and SQLite."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import Table, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession

__all__ = ["insert_ignore", "insert_or_get"]


async def insert_or_get(
    session: AsyncSession,
    table: Table,
    values: dict[str, Any],
    conflict: Sequence[str],
) -> tuple[int, bool]:
    """Insert a row unless one with the same ``conflict`` columns exists; return (id, created).

    ``INSERT ... ON CONFLICT DO NOTHING`` makes concurrent duplicates wait for the first writer
    and then do nothing, on both backends, so exactly one caller sees ``created=True``.
    """
    stmt = _insert(session, table, values, conflict).returning(table.c.id)
    new_id = (await session.execute(stmt)).scalar_one_or_none()
    if new_id is not None:
        return int(new_id), True
    where = [table.c[name] == values[name] for name in conflict]
    existing = (await session.execute(select(table.c.id).where(*where))).scalar_one()
    return int(existing), False


async def insert_ignore(
    session: AsyncSession, table: Table, values: dict[str, Any], conflict: Sequence[str]
) -> None:
    """Insert a row unless one with the same ``conflict`` columns exists (then do nothing)."""
    await session.execute(_insert(session, table, values, conflict))


def _insert(
    session: AsyncSession, table: Table, values: dict[str, Any], conflict: Sequence[str]
) -> Any:
    dialect = session.get_bind().dialect.name
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    return insert(table).values(**values).on_conflict_do_nothing(index_elements=list(conflict))
