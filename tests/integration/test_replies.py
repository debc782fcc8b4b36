"""A reply goes out at most once per activity, however often the job runs."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any, ClassVar

import pytest

from channels.base import ChannelAdapter
from channels.messages import Delivered, InboundMessage, OutboundMessage
from channels.registry import ChannelRegistry
from dispatch.models import Activity, ActivityStatus, Message
from gateway.services import Services, build_services
from gateway.settings import Settings
from tests.conftest import count_rows
from workers import jobs
from workers.recovery import recover
from workers.replies import ReplySender


class CountingChannel(ChannelAdapter):
    """Records every send; optionally slow, to widen any race."""

    name: ClassVar[str] = "rest"

    def __init__(self) -> None:
        self.sent: list[OutboundMessage] = []

    async def parse(self, request: Any) -> InboundMessage:
        raise NotImplementedError

    async def send(self, message: OutboundMessage) -> Delivered:
        await asyncio.sleep(0.05)
        self.sent.append(message)
        return Delivered(status="delivered")


@pytest.fixture
async def services(
    make_settings: Callable[..., Settings], sqlite_url: str
) -> AsyncIterator[Services]:
    async with build_services(make_settings(database_url=sqlite_url), role="cli") as built:
        await built.queue.close(grace_s=0)  # jobs run by hand below
        yield built


async def finished_activity(services: Services) -> int:
    accepted = await services.store.accept(
        InboundMessage(
            channel="rest", external_id="once", conversation_key="k", sender="s", text="echo once"
        )
    )
    dispatched = await services.dispatcher.dispatch_message(accepted.message_id)
    assert dispatched is not None
    return dispatched.activity_id


async def test_concurrent_and_repeated_runs_send_one_reply(services: Services) -> None:
    channel = CountingChannel()
    replies = ReplySender(
        store=services.store,
        channels=ChannelRegistry([channel]),
        activities=services.activities,
        catalog=services.catalog,
    )
    patched = type(services)(**{**services.__dict__, "replies": replies})
    activity_id = await finished_activity(services)
    results = await asyncio.gather(*(jobs.run_activity(patched, activity_id) for _ in range(5)))
    await jobs.run_activity(patched, activity_id)
    assert sum(r.get("replied", 0) for r in results) == 1
    assert [m.text for m in channel.sent] == ["once"]
    activity = await services.activities.get(activity_id)
    assert activity is not None
    assert activity.status == ActivityStatus.COMPLETED


async def test_a_reply_cut_off_while_sending_is_never_sent_again(services: Services) -> None:
    channel = CountingChannel()
    activity_id = await finished_activity(services)
    # Run the handler but "die" before the reply is handed over: claim it, then stop.
    replies = ReplySender(
        store=services.store,
        channels=ChannelRegistry([channel]),
        activities=services.activities,
        catalog=services.catalog,
    )
    patched = type(services)(**{**services.__dict__, "replies": replies})
    assert await services.activities.claim(activity_id, lease_s=30)
    await services.activities.finish(
        (await services.activities.get(activity_id)),  # type: ignore[arg-type]
        ActivityStatus.COMPLETED,
        kind="completed",
        details={"result": {"text": "cut off"}},
        metrics={},
        reply=["cut off"],
    )
    [pending] = await services.store.pending_replies(activity_id)
    assert await services.store.claim_reply(pending.id)
    # Recovery and re-runs find nothing to send: at most once.
    await recover(patched, older_than_s=0)
    await jobs.run_activity(patched, activity_id)
    assert channel.sent == []
    async with services.sessions() as session:
        assert await count_rows(services.sessions, Message, Message.direction == "outbound") == 1
        row = await session.get(Activity, activity_id)
        assert row is not None
        assert row.status == ActivityStatus.COMPLETED


async def test_cancelling_a_queued_request_means_it_never_runs(services: Services) -> None:
    first = await services.store.accept(
        InboundMessage(
            channel="rest", external_id="q1", conversation_key="q", sender="s", text="echo nunca"
        )
    )
    queued = await services.dispatcher.dispatch_message(first.message_id)
    assert queued is not None
    second = await services.store.accept(
        InboundMessage(
            channel="rest",
            external_id="q2",
            conversation_key="q",
            sender="s",
            text=f"cancela mi solicitud #{queued.activity_id}",
        )
    )
    cancel = await services.dispatcher.dispatch_message(second.message_id)
    assert cancel is not None
    # The cancel request waits behind the one it cancels; run that one's job first, then it.
    waiting = await jobs.run_activity(services, cancel.activity_id)
    assert waiting["outcome"] == "waiting"
    assert await services.activities.cancel(queued.activity_id, actor="user:test")
    assert not await services.activities.cancel(queued.activity_id, actor="user:test")
    skipped = await jobs.run_activity(services, queued.activity_id)
    assert skipped["outcome"] == "already_finished"
    cancelled = await services.activities.get(queued.activity_id, with_events=True)
    assert cancelled is not None
    assert cancelled.status == ActivityStatus.CANCELLED
    assert [e.kind for e in cancelled.events] == ["created", "cancelled"]
    done = await jobs.run_activity(services, cancel.activity_id)
    assert done["outcome"] == "completed"
    answered = await services.activities.get(cancel.activity_id)
    assert answered is not None
    assert answered.details["result"]["text"].startswith(
        f"Request #{queued.activity_id} is cancelled"
    )
