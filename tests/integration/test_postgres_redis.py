"""The loop on the production parts: PostgreSQL, Redis and a real arq worker."""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from litestar.testing import AsyncTestClient
from sqlalchemy import update

from dispatch.record.messages import InboundMessage
from dispatch.record.models import Activity, ActivityStatus, Message
from gateway.app import create_app
from gateway.settings import Settings
from tests.conftest import ADMIN, count_rows, open_db
from tests.support.flow import outbound, post, wait_for
from tests.support.runtime import running_worker, runtime_for
from workers import jobs
from workers.recovery import recover

pytestmark = pytest.mark.services


@pytest.fixture
def settings(make_settings: Callable[..., Settings], pg_migrated: str, redis_url: str) -> Settings:
    return make_settings(database_url=pg_migrated, redis_url=redis_url)


def rest_message(external_id: str, text: str) -> InboundMessage:
    return InboundMessage(
        channel="rest",
        external_id=external_id,
        conversation_key=external_id,
        sender=f"sender-{external_id}",
        text=text,
    )


@pytest.fixture
async def client(settings: Settings) -> AsyncIterator[AsyncTestClient[Any]]:
    async with AsyncTestClient(create_app(settings)) as test_client:
        test_client.headers.update(ADMIN)
        yield test_client


async def test_rest_message_through_arq_worker(
    client: AsyncTestClient[Any], settings: Settings
) -> None:
    async with running_worker(settings):
        body = (await post(client, "echo vía arq", id="pg-1", conversation="pg-c1")).json()
        [reply] = await outbound(client, body["conversation_id"])
    assert reply["text"] == "vía arq"
    activity = (await client.get(f"/api/v1/activities/{reply['activity_id']}")).json()
    assert activity["status"] == "completed"


async def test_twenty_concurrent_duplicates_on_postgres(
    client: AsyncTestClient[Any], settings: Settings
) -> None:
    async with running_worker(settings):
        responses = await asyncio.gather(
            *(post(client, "echo una vez", id="pg-dup", conversation="pg-dup") for _ in range(20))
        )
        assert {r.status_code for r in responses} == {202}
        bodies = [r.json() for r in responses]
        assert len({b["message_id"] for b in bodies}) == 1
        assert sum(not b["duplicate"] for b in bodies) == 1
        conversation_id = bodies[0]["conversation_id"]
        await outbound(client, conversation_id)
        await asyncio.sleep(0.5)
    async with open_db(settings.database.url) as sessions:
        activities = await count_rows(
            sessions, Activity, Activity.conversation_id == conversation_id
        )
        replies = await count_rows(
            sessions,
            Message,
            Message.conversation_id == conversation_id,
            Message.direction == "outbound",
        )
    assert (activities, replies) == (1, 1)


async def test_websocket_reply_crosses_processes_through_redis(
    client: AsyncTestClient[Any], settings: Settings
) -> None:
    async with running_worker(settings):
        with await client.websocket_connect("/chat/ws") as socket:
            assert socket.receive_json()["type"] == "hello"
            socket.send_json({"id": "ws-pg", "text": "echo desde redis"})
            # The test client blocks; receive in a thread so the worker (this loop) can run.
            frames = [
                await asyncio.to_thread(socket.receive_json, timeout=15),
                await asyncio.to_thread(socket.receive_json, timeout=15),
            ]
    replies = [f for f in frames if f["type"] == "reply"]
    assert [r["text"] for r in replies] == ["desde redis"]


async def test_same_activity_enqueued_twice_runs_once_and_replies_once(
    settings: Settings,
) -> None:
    async with runtime_for(settings, "gateway") as services:
        accepted = await services.store.accept(rest_message("twice-1", "echo twice"))
        dispatched = await services.dispatcher.dispatch_message(accepted.message_id, lease_s=30)
        assert dispatched is not None
        assert dispatched.created
        assert dispatched.activity_id is not None
        # Woken twice: the same job id while it is queued is not queued again.
        assert await services.queue.enqueue_run(dispatched.activity_id) is True
        assert await services.queue.enqueue_run(dispatched.activity_id) is False
        # Two deliveries of the job at once (at-least-once), straight into the job body.
        results = await asyncio.gather(
            jobs.run_activity(services, dispatched.activity_id),
            jobs.run_activity(services, dispatched.activity_id),
        )
        assert sorted(r.ran for r in results) == [0, 1]
        # And once more after it finished: nothing runs, nothing is sent.
        again = await jobs.run_activity(services, dispatched.activity_id)
        assert again.ran == 0
        activity = await services.activities.get(dispatched.activity_id, with_events=True)
        assert activity is not None
        assert activity.status == ActivityStatus.COMPLETED
        assert activity.attempts == 1
        assert [e.kind for e in activity.events].count("started") == 1
        replies = await services.store.list_messages(accepted.conversation_id)
        assert [m.text for m in replies if m.direction == "outbound"] == ["twice"]


async def test_work_lost_by_redis_is_redriven_from_postgres(settings: Settings) -> None:
    """Redis forgets everything between accept and work: recovery finds it in the record."""

    async with runtime_for(settings, "gateway") as services:
        accepted = await services.store.accept(rest_message("lost-1", "echo recovered"))
        await services.queue.redis.flushdb()  # everything queued is gone
        async with running_worker(settings):
            counts = await recover(services, older_than_s=0)
            assert counts["messages"] == 1

            async def replied() -> list[Any]:
                messages = await services.store.list_messages(accepted.conversation_id)
                return [
                    m for m in messages if m.direction == "outbound" and m.delivery != "pending"
                ]

            [reply] = await wait_for(replied)
    assert reply.text == "recovered"


async def test_one_conversation_is_answered_in_arrival_order_by_concurrent_workers(
    client: AsyncTestClient[Any], settings: Settings
) -> None:
    async with running_worker(settings), running_worker(settings):
        conversation_id = 0
        for n in range(12):
            response = await post(client, f"echo {n}", id=f"ord-{n}", conversation="pg-ordered")
            conversation_id = response.json()["conversation_id"]
        replies = await outbound(client, conversation_id, count=12, timeout_s=30)
    assert [r["text"] for r in replies] == [str(n) for n in range(12)]


async def test_a_backlog_is_not_a_loss_recovery_leaves_queued_messages_to_their_job(
    settings: Settings,
) -> None:
    """A message stored two minutes ago whose batch job still waits in the queue (a backlog,
    not a loss): recovery queues nothing for it. Once that job is gone (Redis lost it),
    recovery re-drives the message."""
    async with runtime_for(settings, "gateway") as services:
        [accepted] = await services.dispatcher.ingest_all("rest", [rest_message("bl-1", "echo")])
        redis, queue = services.queue.redis, services.queue.queue_name
        [(job_id, _)] = await wait_for(lambda: redis.zrange(queue, 0, -1, withscores=True))
        long_ago = time.time() - 120
        await redis.zadd(queue, {job_id: long_ago * 1000}, xx=True)  # waited two minutes
        async with services.sessions.begin() as session:
            await session.execute(
                update(Message)
                .where(Message.id == accepted.message_id)
                .values(received_at=dt.datetime.fromtimestamp(long_ago - 0.01, dt.UTC))
            )
        assert (await recover(services))["messages"] == 0
        assert [m.decode() for m in await redis.zrange(queue, 0, -1)] == [job_id.decode()]
        await redis.delete(queue)  # the job is lost
        assert (await recover(services))["messages"] == 1
        [redriven] = await redis.zrange(queue, 0, -1)
        assert redriven.decode().endswith(f":msg:{accepted.message_id}")
