"""The set-based worker: the ordinary messages of many conversations are dispatched, run, ended
and answered in batches (a few statements for many messages), on both databases, and every
guarantee of one message's path holds: each conversation answered in its order, once each,
every activity with its whole story of events."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import re
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event, func, select

from dispatch.record.activities import ActivityLog, ActivityView, Ending, Opening
from dispatch.record.delivery import DeliveryUpdate
from dispatch.record.inbound import Arrival, store_inbound
from dispatch.record.messages import InboundMessage
from dispatch.record.models import (
    Activity,
    ActivityEvent,
    ActivityStatus,
    Conversation,
    Delivery,
    Message,
)
from dispatch.record.outbox import add_reply
from gateway.settings import Settings
from tests.support.flow import wait_for
from tests.support.runtime import runtime_for
from tests.support.services import own_database
from workers import jobs
from workers.runtime import Runtime

CATALOG = """
[fallback]
agent = "system"
action = "help"

[agents.ops.actions.echo]
description = "Repeat a text"
handler = "echo"
public = true
[agents.ops.actions.echo.payload]
text = { type = "string" }

[[rules]]
id = "echo"
agent = "ops"
action = "echo"
patterns = ['^echo\\s+(?P<text>.+)$']
"""

CONVERSATIONS = 30
PER_CONVERSATION = 3


@contextlib.asynccontextmanager
async def runtime_on(
    backend: str, make_settings: Callable[..., Settings], tmp_path: Path, **values: Any
) -> AsyncIterator[Runtime]:
    catalog = tmp_path / "catalog.toml"
    catalog.write_text(CATALOG)
    async with contextlib.AsyncExitStack() as stack:
        if backend == "postgresql":
            url = await stack.enter_async_context(own_database("switchboard_test"))
        else:
            url = f"sqlite+aiosqlite:///{tmp_path / 'batches.db'}"
        runtime = await stack.enter_async_context(
            runtime_for(make_settings(database_url=url, catalog=catalog, **values))
        )
        yield runtime


@contextlib.contextmanager
def statements(runtime: Runtime) -> Iterator[collections.Counter[str]]:
    """Statements the runtime's engine runs meanwhile, by their first words."""
    counted: collections.Counter[str] = collections.Counter()

    def count(*args: Any) -> None:
        counted[" ".join(re.sub(r"\s+", " ", args[2]).split()[:4])] += 1

    engine = runtime.engine.sync_engine
    event.listen(engine, "before_cursor_execute", count)
    try:
        yield counted
    finally:
        event.remove(engine, "before_cursor_execute", count)


def burst() -> list[InboundMessage]:
    """Three messages in each of many conversations, as one webhook flush stores them."""
    return [
        InboundMessage(
            channel="rest",
            external_id=f"b-{c}-{n}",
            conversation_key=f"visitor-{c}",
            sender=f"visitor-{c}",
            text=f"echo c{c} n{n}",
        )
        for n in range(PER_CONVERSATION)
        for c in range(CONVERSATIONS)
    ]


async def answered(runtime: Runtime) -> dict[str, list[str]] | None:
    """Each conversation's replies sent, in order, once all are."""
    async with runtime.sessions() as session:
        rows = (
            await session.execute(
                select(Message.conversation_id, Message.text, Message.delivery)
                .where(Message.direction == "outbound")
                .order_by(Message.id)
            )
        ).all()
    if len(rows) < CONVERSATIONS * PER_CONVERSATION or any(
        d in {"pending", "sending"} for _, _, d in rows
    ):
        return None
    replies: dict[str, list[str]] = collections.defaultdict(list)
    for _, text, _ in rows:
        replies[text.split()[0]].append(text.split()[1])
    return replies


async def test_many_conversations_are_worked_in_batches_in_order_and_once_each(
    backend: str, make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    async with runtime_on(backend, make_settings, tmp_path) as runtime:
        with statements(runtime) as counted:
            await runtime.dispatcher.ingest_all("rest", burst())
            replies = await wait_for(lambda: answered(runtime), timeout_s=60)
        async with runtime.sessions() as session:
            activities = (await session.execute(select(Activity))).scalars().all()
            kinds = collections.defaultdict(list)
            for e in (
                await session.execute(select(ActivityEvent).order_by(ActivityEvent.id))
            ).scalars():
                kinds[e.activity_id].append(e.kind)
            outbound = await session.scalar(
                select(func.count()).select_from(Message).where(Message.direction == "outbound")
            )
    messages = CONVERSATIONS * PER_CONVERSATION
    # Each conversation answered in the order it wrote, once each.
    assert replies == {f"c{c}": [f"n{n}" for n in range(PER_CONVERSATION)] for c in range(30)}
    assert outbound == messages
    assert len(activities) == messages
    assert {a.status for a in activities} == {"completed"}
    assert all(
        kinds[a.id] == ["created", "started", "completed", "reply_sent"] for a in activities
    ), kinds
    # In batches: far fewer claims, activity inserts and run ends than messages.
    claims = (
        counted["UPDATE messages SET state=?,"] + counted["UPDATE messages SET state=$1::VARCHAR,"]
    )
    opened = sum(n for k, n in counted.items() if k.startswith("INSERT INTO agent_activities"))
    ended = sum(n for k, n in counted.items() if k.startswith("UPDATE agent_activities SET status"))
    assert 0 < claims <= messages // 3, counted
    assert 0 < opened <= messages // 3, counted
    assert 0 < ended <= messages // 3, counted


async def _running_echo(runtime: Runtime) -> tuple[Conversation, ActivityView]:
    """A visitor's conversation, and an activity of it running (attempt 1) as a worker holds it."""
    await runtime.dispatcher.ingest_all("rest", burst()[:1])
    conversation = await wait_for(
        lambda: runtime.store.conversation_by_key("rest", "visitor-0"), timeout_s=10
    )
    async with runtime.sessions.begin() as session:
        opened = await ActivityLog.open(
            session,
            Opening(
                agent="ops",
                action_type="echo",
                description="Repeat a text",
                details={"payload": {"text": "x"}},
                status=ActivityStatus.QUEUED,
                conversation_id=conversation.id,
                source_channel="rest",
                lease_s=60,
            ),
        )
        return conversation, ActivityView.of(opened)


async def test_a_run_ended_as_its_caller_stops_gives_its_reserved_reply_back(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    """The end commits with the batch it joined; the reply it reserved for a caller that was
    stopped meanwhile (the worker stopping) goes back to pending, to be sent later — not left
    'sending', which recovery would settle as never to be sent."""
    async with runtime_on("sqlite", make_settings, tmp_path) as runtime:
        _, view = await _running_echo(runtime)
        ending = Ending(
            to=ActivityStatus.COMPLETED,
            attempt=1,
            kind="completed",
            details={"result": {"text": "late"}},
            metrics={},
            reply=["late"],
        )
        caller = asyncio.ensure_future(runtime.activities.finish(view, ending, reserve=True))
        await asyncio.sleep(0)  # it has joined the batch, not yet written
        caller.cancel()
        with pytest.raises(asyncio.CancelledError):
            await caller
        await runtime.activities.close()
        async with runtime.sessions() as session:
            status = await session.scalar(select(Activity.status).where(Activity.id == view.id))
            delivery = await session.scalar(
                select(Message.delivery).where(Message.activity_id == view.id)
            )
    assert (status, delivery) == ("completed", "pending")


@pytest.mark.parametrize("earlier", [False, True], ids=["first", "after-an-earlier-one"])
async def test_a_run_ends_with_the_first_reply_it_owes_claimed_for_its_caller(
    backend: str, earlier: bool, make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    """A run's end writes its reply's parts and hands its caller the outbox with the first
    part it owes claimed ('sending', the at-most-once gate) and the rest pending, in order.
    Where an earlier reply of the activity still waits to be sent, that one is the first: it
    is claimed, and the new parts wait behind it."""
    async with runtime_on(backend, make_settings, tmp_path) as runtime:
        conversation, view = await _running_echo(runtime)
        if earlier:
            async with runtime.sessions.begin() as session:
                await add_reply(
                    session,
                    activity_id=view.id,
                    conversation_id=conversation.id,
                    channel="rest",
                    parts=["earlier"],
                )
        ending = Ending(
            to=ActivityStatus.COMPLETED,
            attempt=1,
            kind="completed",
            details={"result": {"text": "one two"}},
            metrics={},
            reply=["one", "two"],
        )
        outbox = await runtime.activities.finish(view, ending, reserve=True)
        assert outbox is not None
        async with runtime.sessions() as session:
            rows = (
                await session.execute(
                    select(Message.id, Message.text, Message.part, Message.delivery)
                    .where(Message.activity_id == view.id)
                    .order_by(Message.part)
                )
            ).all()
    texts = ["earlier", "one", "two"] if earlier else ["one", "two"]
    assert [(text, part) for _, text, part, _ in rows] == [(t, n) for n, t in enumerate(texts)]
    assert [delivery for *_, delivery in rows] == ["sending"] + ["pending"] * (len(texts) - 1)
    assert [r.text for r in outbox.replies] == texts
    assert outbox.reserved == rows[0].id


async def test_a_message_asked_for_twice_at_once_is_claimed_and_run_once(
    backend: str, make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    """Its own job and its conversation's look-ahead may ask for one message in the same
    batch: one of them gets it claimed to run, the other finds it taken. (Both got the claim
    once: the handler ran twice at once, and both ends, in one batch, sent the reply twice.)"""
    async with runtime_on(backend, make_settings, tmp_path) as runtime:
        async with runtime.store.connection() as conn:  # stored, not queued
            (stored,) = await store_inbound(conn, [Arrival(message=burst()[0])], backlog=None)
        outcomes = await asyncio.gather(
            *(
                runtime.dispatcher.dispatch_message(
                    stored.message_id, lease_s=60, look_ahead=True, claim=True
                )
                for _ in range(3)
            )
        )
        running = [o.running for o in outcomes if o is not None and o.running is not None]
        assert len(running) == 1, outcomes
        assert {o.outcome for o in outcomes if o is not None and o.running is None} <= {
            "existing",
            "busy",
        }
        # Two ends of that one run, in one batch: one counts, the other is stale.
        claimed = running[0]
        ending = Ending(
            to=ActivityStatus.COMPLETED,
            attempt=claimed.attempt,
            kind="completed",
            details={"result": {"text": "once"}},
            metrics={},
            reply=["once"],
        )
        ends = await asyncio.gather(
            *(runtime.activities.finish(claimed.activity, ending, reserve=True) for _ in range(2))
        )
        async with runtime.sessions() as session:
            replies = await session.scalar(
                select(func.count())
                .select_from(Message)
                .where(Message.activity_id == claimed.activity.id)
            )
            stale = await session.scalar(
                select(func.count())
                .select_from(ActivityEvent)
                .where(
                    ActivityEvent.activity_id == claimed.activity.id,
                    ActivityEvent.kind == "stale_result",
                )
            )
    assert sorted(e is None for e in ends) == [False, True]
    assert (replies, stale) == (1, 1)


async def test_a_batch_job_stopped_mid_run_gives_every_run_back_before_it_ends(
    backend: str,
    make_settings: Callable[..., Settings],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A stopping worker cancels a batch job once, while its conversations' runs are under way:
    the job ends only when every run has given its activity back (``released``). The worker
    closes the database right after its jobs end; a job that ended at the first give-back (as
    ``gather`` does) left the others' unwritten, to wait out their leases."""
    runs = 6
    started = asyncio.Event()
    running: list[int] = []

    async def stuck(runtime: Runtime, ctx: Any, handler: Any) -> Any:
        running.append(ctx.activity.id)
        if len(running) == runs:
            started.set()
        await asyncio.Event().wait()

    monkeypatch.setattr(jobs, "_ran", stuck)
    async with runtime_on(backend, make_settings, tmp_path) as runtime:
        arrivals = [Arrival(message=m) for m in burst()[:runs]]  # one each of six conversations
        async with runtime.store.connection() as conn:  # stored, not queued
            stored = await store_inbound(conn, arrivals, backlog=None)
        batch = [(s.conversation_id, s.message_id) for s in stored]
        job = asyncio.create_task(jobs.dispatch_batch(runtime, batch))
        await asyncio.wait_for(started.wait(), 30)
        job.cancel()
        with pytest.raises(asyncio.CancelledError):
            await job
        async with runtime.sessions() as session:
            released = (
                await session.scalars(
                    select(ActivityEvent.activity_id).where(ActivityEvent.kind == "released")
                )
            ).all()
            queued = await session.scalar(
                select(func.count()).select_from(Activity).where(Activity.status == "queued")
            )
    assert sorted(released) == sorted(running)
    assert queued == runs


async def test_reply_outcomes_ended_together_move_each_message_once_upwards(
    backend: str, make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    """Outcomes recorded together, in one transaction: each message ends at the highest status
    it was told, whatever the order; a lower one told with it is ignored; a provider id another
    message has already is not taken, and the status moves all the same; a message keeps the
    provider id it has, and takes one told with a status lower than its own."""
    async with runtime_on(backend, make_settings, tmp_path) as runtime:
        async with runtime.sessions.begin() as session:
            conversation = Conversation(channel="rest", key="outcomes")
            session.add(conversation)
            await session.flush()

            def reply(delivery: Delivery, external_id: str | None = None) -> Message:
                return Message(
                    direction="outbound",
                    channel="rest",
                    conversation_id=conversation.id,
                    text="a reply",
                    delivery=delivery.value,
                    external_id=external_id,
                )

            sent = [reply(Delivery.SENDING) for _ in range(3)]
            known = reply(Delivery.SENT, "p-0")
            ahead = reply(Delivery.DELIVERED)
            session.add_all([*sent, known, ahead])
        first, second, third = (m.id for m in sent)
        changes = [
            (DeliveryUpdate(message_id=first, status=Delivery.DELIVERED, external_id="p-1"), 1),
            (DeliveryUpdate(message_id=first, status=Delivery.SENT, external_id="p-1"), 2),
            (DeliveryUpdate(message_id=second, status=Delivery.SENT, external_id="p-2"), 3),
            (DeliveryUpdate(message_id=third, status=Delivery.SENT, external_id="p-2"), 4),
            (DeliveryUpdate(message_id=known.id, status=Delivery.READ, external_id="p-3"), 5),
            (DeliveryUpdate(message_id=ahead.id, status=Delivery.SENT, external_id="p-4"), 6),
        ]
        await asyncio.gather(
            *(
                runtime.deliveries.end_delivery(change, turn=(conversation.id, key))
                for change, key in changes
            )
        )
        async with runtime.sessions() as session:
            rows = {
                m.id: (m.delivery, m.external_id)
                for m in (await session.scalars(select(Message).order_by(Message.id))).all()
            }
        assert rows == {
            first: ("delivered", "p-1"),
            second: ("sent", "p-2"),
            third: ("sent", None),
            known.id: ("read", "p-0"),
            ahead.id: ("delivered", "p-4"),
        }
