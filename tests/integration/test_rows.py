"""``any_id``: a list of ids bound as one parameter, on each database."""

from __future__ import annotations

from typing import Any

from sqlalchemy import event, func, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from dispatch.record.models import Conversation
from dispatch.record.rows import any_id


async def test_a_list_of_any_length_is_one_statement_and_finds_its_rows(
    migrated_engine: AsyncEngine,
) -> None:
    async with migrated_engine.begin() as conn:
        for n in range(6):
            await conn.execute(Conversation.__table__.insert().values(channel="rest", key=f"k{n}"))
        ids = sorted((await conn.execute(select(Conversation.id))).scalars())
    seen: list[str] = []

    def remember(*args: Any) -> None:
        if args[2].startswith("SELECT"):
            seen.append(args[2])

    event.listen(migrated_engine.sync_engine, "before_cursor_execute", remember)
    found = select(Conversation.key).where(any_id(Conversation.id)).order_by(Conversation.id)
    async with migrated_engine.begin() as conn:
        for wanted in ([], ids[:1], ids[1:4], {ids[5], ids[0]}, ids * 2):
            keys = (await conn.execute(found, {"ids": wanted})).scalars().all()
            assert keys == [f"k{ids.index(i)}" for i in sorted(set(wanted))]
        renamed = await conn.execute(
            update(Conversation.__table__)
            .where(any_id(Conversation.__table__.c.id, "these"))
            .values(language="es"),
            {"these": ids[2:4]},
        )
        assert renamed.rowcount == 2
        # Its column's table is the statement's FROM, as with IN.
        counted = select(func.count()).where(any_id(Conversation.id))
        assert (await conn.execute(counted, {"ids": ids[:3]})).scalar_one() == 3
    event.remove(migrated_engine.sync_engine, "before_cursor_execute", remember)
    assert len(seen) == 6
    assert len(set(seen[:5])) == 1  # the same text, whatever the list's length
