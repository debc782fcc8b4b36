"""A reply goes out at most once per activity, however often the job runs."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import AsyncIterator, Callable
from typing import Any, ClassVar

import pytest
from sqlalchemy import update

from channels.base import Channel, ChannelContext
from channels.registry import ChannelRegistry
from channels.rest import REST
from dispatch.record.activities import SENDING_STALE, Ending
from dispatch.record.delivery import UNCERTAIN
from dispatch.record.messages import Delivered, InboundMessage, OutboundMessage
from dispatch.record.models import Activity, ActivityStatus, Message, utcnow
from gateway.settings import Settings
from tests.conftest import count_rows
from tests.support.runtime import runtime_for
from workers import jobs
from workers.recovery import recover
from workers.replies import ReplySender
from workers.runtime import Runtime


class CountingChannel(Channel):
    """Records every send; optionally slow, to widen any race."""

    name: ClassVar[str] = "rest"
    identity = REST

    def __init__(self) -> None:
        self.sent: list[OutboundMessage] = []

    @classmethod
    def create(cls, settings: Any, context: ChannelContext) -> CountingChannel:
        return cls()

    async def send(self, message: OutboundMessage) -> Delivered:
        await asyncio.sleep(0.05)
        self.sent.append(message)
        return Delivered(status="delivered")


@pytest.fixture
async def services(
    make_settings: Callable[..., Settings], sqlite_url: str
) -> AsyncIterator[Runtime]:
    async with runtime_for(make_settings(database_url=sqlite_url), role="cli") as built:
        await built.queue.close(grace_s=0)  # jobs run by hand below
        yield built


async def finished_activity(services: Runtime) -> int:
    accepted = await services.store.accept(
        InboundMessage(
            channel="rest", external_id="once", conversation_key="k", sender="s", text="echo once"
        )
    )
    dispatched = await services.dispatcher.dispatch_message(accepted.message_id, lease_s=30)
    assert dispatched is not None
    assert dispatched.activity_id is not None
    return dispatched.activity_id


async def test_concurrent_and_repeated_runs_send_one_reply(services: Runtime) -> None:
    channel = CountingChannel()
    replies = ReplySender(
        deliveries=services.deliveries,
        channels=ChannelRegistry([channel]),
        activities=services.activities,
        catalog=services.catalog,
    )
    patched = type(services)(**{**services.__dict__, "replies": replies})
    activity_id = await finished_activity(services)
    results = await asyncio.gather(*(jobs.run_activity(patched, activity_id) for _ in range(5)))
    await jobs.run_activity(patched, activity_id)
    assert sum(r.ran for r in results) == 1  # five deliveries of the job at once: one run
    assert [m.text for m in channel.sent] == ["once"]
    activity = await services.activities.get(activity_id)
    assert activity is not None
    assert activity.status == ActivityStatus.COMPLETED


async def test_a_reply_cut_off_while_sending_is_never_sent_again(services: Runtime) -> None:
    channel = CountingChannel()
    activity_id = await finished_activity(services)
    # Run the handler but "die" before the reply is handed over: claim it, then stop.
    replies = ReplySender(
        deliveries=services.deliveries,
        channels=ChannelRegistry([channel]),
        activities=services.activities,
        catalog=services.catalog,
    )
    patched = type(services)(**{**services.__dict__, "replies": replies})
    attempt = await services.activities.claim(activity_id, lease_s=30)
    assert attempt == 1
    await services.activities.finish(
        (await services.activities.get(activity_id)),  # type: ignore[arg-type]
        Ending(
            to=ActivityStatus.COMPLETED,
            attempt=attempt,
            kind="completed",
            details={"result": {"text": "cut off"}},
            metrics={},
            reply=["cut off"],
        ),
    )
    [pending] = await services.deliveries.pending_replies(activity_id)
    assert await services.deliveries.claim_reply(pending.id)
    # Recovery and re-runs find nothing to send: at most once.
    await recover(patched, older_than_s=0)
    await jobs.run_activity(patched, activity_id)
    assert channel.sent == []
    async with services.sessions() as session:
        assert await count_rows(services.sessions, Message, Message.direction == "outbound") == 1
        row = await session.get(Activity, activity_id)
        assert row is not None
        assert row.status == ActivityStatus.COMPLETED


async def test_a_reply_left_sending_by_a_dead_sender_is_resolved_and_the_conversation_goes_on(
    services: Runtime,
) -> None:
    """The process handing a reply over died (Redis gone, SIGKILL): the reply does not stay
    ``sending``. Once its heartbeat is stale it is marked failed (outcome unknown, never sent
    again), with an event, the requester is told, and the conversation's next request runs."""
    channel = CountingChannel()
    replies = ReplySender(
        deliveries=services.deliveries,
        channels=ChannelRegistry([channel]),
        activities=services.activities,
        catalog=services.catalog,
    )
    patched = type(services)(**{**services.__dict__, "replies": replies})
    activity_id = await finished_activity(services)
    attempt = await services.activities.claim(activity_id, lease_s=30)
    view = await services.activities.get(activity_id)
    assert view is not None
    await services.activities.finish(
        view,
        Ending(
            to=ActivityStatus.COMPLETED,
            attempt=attempt,
            kind="completed",
            details={"result": {"text": "lost"}},
            metrics={},
            reply=["lost"],
        ),
    )
    [stuck] = await services.deliveries.pending_replies(activity_id)
    assert await services.deliveries.claim_reply(stuck.id)  # ... and its sender dies here
    later = await services.store.accept(
        InboundMessage(
            channel="rest", external_id="next", conversation_key="k", sender="s", text="echo next"
        )
    )
    queued = await services.dispatcher.dispatch_message(later.message_id, lease_s=30)
    assert queued is not None
    assert queued.activity_id is not None
    waiting = await jobs.run_activity(patched, queued.activity_id)
    assert waiting.ran == 0  # it waits its turn behind the reply being handed over
    assert channel.sent == []

    async with services.sessions.begin() as session:  # the sender's heartbeat went quiet
        await session.execute(
            update(Message)
            .where(Message.id == stuck.id)
            .values(updated_at=utcnow() - SENDING_STALE - dt.timedelta(seconds=1))
        )
    counts = await recover(patched, older_than_s=0)
    assert counts["uncertain"] == 1
    for again in (activity_id, queued.activity_id):  # what recovery enqueued, run by hand
        await jobs.run_activity(patched, again)

    async with services.sessions() as session:
        row = await session.get(Message, stuck.id)
    assert row is not None
    assert (row.delivery, row.delivery_error) == ("failed", UNCERTAIN)
    resolved = await services.activities.get(activity_id, with_events=True)
    assert resolved is not None
    assert resolved.status == ActivityStatus.COMPLETED
    assert "reply_uncertain" in [e.kind for e in resolved.events]
    texts = [m.text for m in channel.sent]
    assert "lost" not in texts  # at most once: never sent again
    assert texts == [
        f"I may not have been able to send you part of my answer to request #{activity_id}. "
        f'Send "status {activity_id}" to see where it stands.',
        "next",
    ]


async def test_cancelling_a_queued_request_means_it_never_runs(services: Runtime) -> None:
    first = await services.store.accept(
        InboundMessage(
            channel="rest", external_id="q1", conversation_key="q", sender="s", text="echo nunca"
        )
    )
    queued = await services.dispatcher.dispatch_message(first.message_id, lease_s=30)
    assert queued is not None
    assert queued.activity_id is not None
    second = await services.store.accept(
        InboundMessage(
            channel="rest",
            external_id="q2",
            conversation_key="q",
            sender="s",
            text=f"cancela mi solicitud #{queued.activity_id}",
        )
    )
    # The cancel is a control intent: its job runs it at once, ahead of the request it cancels.
    cancel = await jobs.dispatch_message(services, second.message_id)
    assert (cancel.outcome, cancel.ran) == ("recorded", 1)
    assert not await services.activities.cancel(queued.activity_id, actor="user:test")
    skipped = await jobs.run_activity(services, queued.activity_id)
    assert skipped.ran == 0
    cancelled = await services.activities.get(queued.activity_id, with_events=True)
    assert cancelled is not None
    assert cancelled.status == ActivityStatus.CANCELLED
    assert [e.kind for e in cancelled.events] == ["created", "cancelled"]
    assert cancel.activity_id is not None
    answered = await services.activities.get(cancel.activity_id)
    assert answered is not None
    # Asked in Spanish ("cancela mi solicitud"): answered in Spanish.
    assert answered.details["result"]["text"] == f"Solicitud #{queued.activity_id} cancelada."
