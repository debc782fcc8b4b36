"""One path stores every inbound message, on PostgreSQL and on the embedded SQLite alike: the
same batch gives the same outcomes, rows and refusals on both."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from dispatch.infra.errors import ForbiddenError, RateLimited
from dispatch.record.db import create_sessionmaker
from dispatch.record.inbound import ANONYMOUS, Arrival, store_inbound
from dispatch.record.messages import InboundMessage, Media
from dispatch.record.models import Conversation, Message, MessageState, User, UserIdentity
from dispatch.record.store import MessageStore
from tests.conftest import count_rows

T0 = dt.datetime(2026, 12, 5, 12, 0, tzinfo=dt.UTC)


@pytest.fixture
def sessions(migrated_engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return create_sessionmaker(migrated_engine)


def whatsapp(external_id: str, sender: str, text: str, **fields: Any) -> InboundMessage:
    return InboundMessage(
        channel="twilio",
        identity_kind="whatsapp",
        external_id=external_id,
        conversation_key=sender,
        sender=sender,
        text=text,
        received_at=T0 + dt.timedelta(seconds=len(external_id)),
        **fields,
    )


async def stored(
    sessions: async_sessionmaker[AsyncSession], arrivals: list[Arrival], **options: Any
) -> list[Any]:
    async with sessions.begin() as session:
        return await store_inbound(await session.connection(), arrivals, **options)


async def test_one_batch_gives_the_same_outcomes_on_both_databases(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    ana = "+34612345678"
    visitor = "session-secret-0123456789"
    batch = [
        Arrival(
            message=whatsapp(
                "w1", ana, "hola", sender_name="Ana", media=(Media(url="https://m/1"),)
            )
        ),
        Arrival(message=whatsapp("w1", ana, "hola")),  # the provider's retry, same batch
        Arrival(
            message=InboundMessage(
                channel="webchat",
                external_id="c1",
                conversation_key=visitor,
                sender=visitor,
                text="hi",
                anonymous=True,
            )
        ),
        Arrival(message=whatsapp("w2-status", "+34600000001", "", ignored="status update")),
        Arrival(message=whatsapp("w3", ana, "too fast"), over_rate=True),
        Arrival(message=whatsapp("w4", ana, "second")),
        Arrival(message=whatsapp("w5", ana, "third: over the backlog")),
    ]
    first, again, webchat, ignored, fast, second, third = await stored(sessions, batch, backlog=2)

    assert not first.duplicate
    assert first.user_id is not None
    assert again.duplicate
    assert (again.message_id, again.conversation_id, again.user_id) == (
        first.message_id,
        first.conversation_id,
        first.user_id,
    )
    assert ignored.user_id is None  # kept, makes no one a guest
    assert not ignored.duplicate
    assert fast.over_rate
    assert not fast.over_backlog
    assert not second.over_backlog
    assert third.over_backlog
    assert len({first.message_id, webchat.message_id, fast.message_id, third.message_id}) == 4

    async with sessions() as session:
        users = {u.id: u for u in await session.scalars(select(User))}
        assert sorted(u.role for u in users.values()) == ["guest", "guest"]
        assert users[first.user_id].name == "Ana"
        assert webchat.user_id is not None
        assert users[webchat.user_id].name == f"{ANONYMOUS} #{webchat.user_id}"
        states = {
            m.external_id: (m.state, m.user_id, m.media)
            for m in await session.scalars(select(Message))
        }
        assert states == {
            "w1": (
                MessageState.RECEIVED,
                first.user_id,
                [{"url": "https://m/1", "content_type": "application/octet-stream"}],
            ),
            "c1": (MessageState.RECEIVED, webchat.user_id, []),
            "w2-status": (MessageState.IGNORED, None, []),
            "w3": (MessageState.IGNORED, first.user_id, []),
            "w4": (MessageState.RECEIVED, first.user_id, []),
            "w5": (MessageState.IGNORED, first.user_id, []),
        }
        conversation = await session.get(Conversation, first.conversation_id)
        assert conversation is not None
        assert conversation.user_id == first.user_id
        assert conversation.last_inbound_at == T0 + dt.timedelta(seconds=2)  # "w5", the latest

    # The same message again later: a duplicate, with the first one's ids, nothing stored.
    [later] = await stored(sessions, [Arrival(message=whatsapp("w1", ana, "hola"))], backlog=2)
    assert later.duplicate
    assert later.message_id == first.message_id
    assert await count_rows(sessions, Message) == 6


async def test_refusals_store_nothing_on_both_databases(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    store = MessageStore(sessions)
    owed = whatsapp("r1", "+34611111111", "one")
    await store.accept(owed, backlog=1)

    # A client over its conversation's backlog is refused: nothing of it is stored.
    with pytest.raises(RateLimited):
        await store.accept(whatsapp("r2", "+34611111111", "two"), backlog=1, refuse=True)

    # A token speaking only for guests names an operator's address: refused, nothing stored.
    async with sessions.begin() as session:
        operator = User(name="Olga", role="operator")
        session.add(operator)
        await session.flush()
        session.add(UserIdentity(user_id=operator.id, channel="whatsapp", address="+34622222222"))
    with pytest.raises(ForbiddenError):
        await store.accept(whatsapp("r3", "+34622222222", "hi", guests_only=True))
    # ... and a new sender whose message is refused leaves no guest and no conversation behind.
    with pytest.raises(RateLimited):
        await store.accept(whatsapp("r4", "+34633333333", "x"), backlog=0, refuse=True)

    assert await count_rows(sessions, Message) == 1
    assert await count_rows(sessions, User) == 2  # the first sender's guest, and Olga
    assert await count_rows(sessions, Conversation) == 1
    # Speaking for a guest is allowed.
    accepted = await store.accept(whatsapp("r5", "+34611111111", "again", guests_only=True))
    assert not accepted.duplicate
