"""Floods: one sender's burst costs everyone else almost nothing. Per-sender limits across
processes, per-socket frame limits, a cap on a conversation's backlog, one polite "slow down"
per window — on PostgreSQL and Redis with a real arq worker."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest
from litestar.exceptions import WebSocketDisconnect
from litestar.testing import AsyncTestClient
from sqlalchemy import select

from channels.webchat import MAX_REFUSED_FRAMES
from dispatch.record.models import Message
from dispatch.work.service import slow_down
from gateway.app import create_app
from gateway.settings import Settings
from tests.conftest import ADMIN
from tests.support.db import db_session
from tests.support.flow import outbound, post, wait_for
from tests.support.runtime import running_worker
from tests.support.telegram_api import TelegramApi
from tests.support.telegram_updates import SECRET, telegram_env, text_update

pytestmark = pytest.mark.services


@pytest.fixture
def telegram() -> Iterator[TelegramApi]:
    with TelegramApi() as api:
        yield api
        assert api.unexpected == []


@pytest.fixture
def settings(
    make_settings: Callable[..., Settings], pg_migrated: str, redis_url: str, telegram: TelegramApi
) -> Settings:
    return make_settings(
        database_url=pg_migrated,
        redis_url=redis_url,
        **telegram_env(telegram.url, telegram_chat_rate_per_s="50"),
    )


@pytest.fixture
async def client(settings: Settings) -> AsyncIterator[AsyncTestClient[Any]]:
    async with AsyncTestClient(create_app(settings)) as test_client:
        test_client.headers.update(ADMIN)
        yield test_client


async def test_a_2000_frame_flood_delays_another_conversation_by_under_2_s(
    client: AsyncTestClient[Any], settings: Settings
) -> None:
    async with running_worker(settings):
        with await client.websocket_connect("/chat/ws", subprotocols=["switchboard"]) as socket:
            socket.receive_json()
            started = time.monotonic()
            for n in range(2000):
                socket.send_json({"id": f"flood-{n}", "text": f"echo flood {n}"})
            flood_s = time.monotonic() - started
            sent_at = time.monotonic()
            body = (await post(client, "echo unrelated", id="calm-1", conversation="calm")).json()
            [reply] = await outbound(client, body["conversation_id"], timeout_s=30)
            other_s = time.monotonic() - sent_at
            frames: list[dict[str, Any]] = []
            with pytest.raises(WebSocketDisconnect) as closed:
                _read_until_closed(socket, frames)
    assert flood_s < 5
    assert reply["text"] == "unrelated"
    assert other_s < 2.0, other_s
    # The socket took its burst, refused what came faster, then closed on the sender.
    assert closed.value.code == 1008
    kinds = [f["type"] for f in frames]
    assert kinds.count("ack") <= settings.throttle.socket_burst + 2
    # MAX_REFUSED_FRAMES refused for the socket's rate, then closed; the sender's own rate may
    # have refused a few more before that.
    assert kinds.count("error") >= MAX_REFUSED_FRAMES
    async with db_session(client) as session:
        stored = (
            await session.execute(select(Message.id).where(Message.external_id.like("%:flood-%")))
        ).all()
    assert len(stored) <= settings.throttle.socket_burst + 2


def _read_until_closed(socket: Any, frames: list[dict[str, Any]]) -> None:
    while True:
        frames.append(socket.receive_json())


async def test_a_rest_sender_over_the_rate_gets_429_and_nothing_is_stored(
    client: AsyncTestClient[Any], settings: Settings
) -> None:
    burst = settings.throttle.sender_burst
    responses = [
        await post(client, "echo uno", id=f"burst-{n}", conversation="burst", sender="busy")
        for n in range(burst + 5)
    ]
    codes = [r.status_code for r in responses]
    assert codes[:burst] == [202] * burst
    refused = [r for r in responses if r.status_code == 429]
    assert len(refused) >= 4
    assert int(refused[0].headers["retry-after"]) >= 1
    assert refused[0].json()["error"] == "rate_limited"
    async with db_session(client) as session:
        kept = (
            await session.execute(select(Message.id).where(Message.external_id.like("burst-%")))
        ).all()
    assert len(kept) == len(responses) - len(refused)


async def test_a_provider_sender_over_the_rate_is_kept_not_acted_on_and_told_once(
    client: AsyncTestClient[Any], settings: Settings, telegram: TelegramApi
) -> None:
    burst = settings.throttle.sender_burst
    async with running_worker(settings):
        for n in range(burst + 10):
            update = text_update(90_000 + n, f"echo t{n}", chat_id=4242, user_id=4242)
            response = await client.post(
                "/webhooks/telegram",
                json=update,
                headers={"X-Telegram-Bot-Api-Secret-Token": SECRET},
            )
            assert response.status_code == 200  # Telegram is never refused: it would retry

        async def answered() -> list[str] | None:
            texts = [c.params["text"] for c in telegram.calls_to("sendMessage")]
            return texts if len(texts) >= burst + 1 else None

        texts = await wait_for(answered, timeout_s=30)
        await asyncio.sleep(1.0)
        texts = [c.params["text"] for c in telegram.calls_to("sendMessage")]
    assert texts.count(slow_down("en")) == 1  # "echo t1" reads as English
    assert len([t for t in texts if t.startswith("t")]) <= burst + 2
    async with db_session(client) as session:
        states = [
            s
            for (s,) in (
                await session.execute(
                    select(Message.state).where(
                        Message.channel == "telegram", Message.direction == "inbound"
                    )
                )
            ).all()
        ]
    assert len(states) >= burst + 10  # every update kept
    assert states.count("ignored") >= 8


async def test_a_conversations_backlog_is_capped(
    make_settings: Callable[..., Settings], pg_migrated: str, redis_url: str
) -> None:
    """No worker runs: messages pile up. Past the cap, a client is refused."""
    settings = make_settings(
        database_url=pg_migrated, redis_url=redis_url, conversation_backlog="3"
    )
    async with AsyncTestClient(create_app(settings)) as client:
        client.headers.update(ADMIN)
        codes = [
            (
                await post(client, "echo", id=f"pile-{n}", conversation="pile", sender="piler")
            ).status_code
            for n in range(5)
        ]
    assert codes == [202, 202, 202, 429, 429]
