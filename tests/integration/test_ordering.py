"""A conversation's order, and what may break it: control intents overtake, a request waiting for
a person holds nothing back, claims are fenced and kept alive, a message that cannot be
understood ends. Recovery keeps its default (a pass every 10 s): nothing here waits for it."""

from __future__ import annotations

import asyncio
import datetime as dt
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, text, update

from dispatch.record.activities import ActivityView, Ending
from dispatch.record.messages import InboundMessage
from dispatch.record.models import Activity, ActivityStatus
from dispatch.record.turns import Turns
from gateway.settings import Settings
from tests.support.flow import wait_for
from tests.support.http_server import Answer, ScriptedServer
from tests.support.runtime import runtime_for
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
text = {{ type = "string" }}

[agents.ops.actions.wait]
description = "Something that takes a while"
handler = "http_call"
public = true
timeout_s = 20
[agents.ops.actions.wait.http]
url = "{url}/wait"
retries = 0
timeout_s = 20

[agents.ops.actions.refund]
description = "Refund an invoice"
handler = "echo"
public = true
[agents.ops.actions.refund.payload]
invoice = {{ type = "id" }}
[agents.ops.actions.refund.approval]
approvers = ["supervisor"]

[[rules]]
id = "echo"
agent = "ops"
action = "echo"
patterns = ['^echo\\s+(?P<text>.+)$']

[[rules]]
id = "wait"
agent = "ops"
action = "wait"
patterns = ['^wait$']

[[rules]]
id = "refund"
agent = "ops"
action = "refund"
patterns = ['^refund\\s+(?P<invoice>\\d+)$']
"""


@pytest.fixture
def server() -> Iterator[ScriptedServer]:
    with ScriptedServer() as local:
        yield local
        assert local.unexpected == []


@pytest.fixture
def make_runtime(
    make_settings: Callable[..., Settings], sqlite_url: str, tmp_path: Path, server: ScriptedServer
) -> Callable[..., Any]:
    catalog = tmp_path / "catalog.toml"
    catalog.write_text(CATALOG.format(url=server.url))

    def make(**extra: Any) -> Any:
        return runtime_for(make_settings(database_url=sqlite_url, catalog=catalog, **extra))

    return make


@pytest.fixture
async def runtime(make_runtime: Callable[..., Any]) -> AsyncIterator[Runtime]:
    async with make_runtime() as built:
        yield built


async def say(runtime: Runtime, text: str, sender: str = "ana") -> int:
    accepted = await runtime.dispatcher.ingest(
        InboundMessage(
            channel="rest",
            external_id=f"m-{uuid.uuid4()}",
            conversation_key=sender,
            sender=sender,
            text=text,
        )
    )
    return accepted.message_id


async def activity_of(runtime: Runtime, message_id: int) -> ActivityView:
    async def found() -> ActivityView | None:
        async with runtime.sessions() as session:
            activity_id = await session.scalar(
                select(Activity.id).where(Activity.source_message_id == message_id)
            )
        if activity_id is None:
            return None
        return await runtime.activities.get(activity_id, with_events=True)

    result: ActivityView = await wait_for(found)
    return result


async def settled(runtime: Runtime, activity_id: int, *statuses: str) -> ActivityView:
    async def ready() -> ActivityView | None:
        found = await runtime.activities.get(activity_id, with_events=True)
        return found if found is not None and found.status in statuses else None

    result: ActivityView = await wait_for(ready)
    return result


async def told(runtime: Runtime, sender: str = "ana") -> list[tuple[float, str]]:
    """What ``sender`` has been sent so far, with when (for order), settled ones only."""
    conversation = await runtime.store.conversation_by_key("rest", sender)
    if conversation is None:
        return []
    messages = await runtime.store.list_messages(conversation.id)
    return [
        (m.id, m.text)
        for m in messages
        if m.direction == "outbound" and m.delivery not in {"pending", "sending"}
    ]


async def test_a_cancel_overtakes_the_running_request_and_ends_the_queued_one(
    runtime: Runtime, server: ScriptedServer
) -> None:
    server.expect("/wait", Answer(200, {"reply": "waited"}, delay_s=2.0))
    running = await activity_of(runtime, await say(runtime, "wait"))
    queued = await activity_of(runtime, await say(runtime, "echo never"))
    await settled(runtime, running.id, "in_progress")
    started = time.monotonic()
    cancel = await activity_of(runtime, await say(runtime, f"cancel {queued.id}"))
    await settled(runtime, cancel.id, "completed")
    overtook_s = time.monotonic() - started
    cancelled = await settled(runtime, queued.id, "cancelled")
    assert overtook_s < 1.5  # it did not wait the 2 s the running request takes
    assert (await runtime.activities.get(running.id)).status == "in_progress"  # type: ignore[union-attr]
    await settled(runtime, running.id, "completed")
    assert [e.kind for e in cancelled.events] == ["created", "cancelled"]  # never started
    texts = [text for _, text in await wait_for(lambda: _two(runtime))]
    assert texts == [f"Request #{queued.id} cancelled.", "waited"]


async def _two(runtime: Runtime) -> list[tuple[float, str]] | None:
    got = await told(runtime)
    return got if len(got) >= 2 else None


async def test_status_overtakes_but_ordinary_requests_keep_their_order(
    runtime: Runtime, server: ScriptedServer
) -> None:
    server.expect("/wait", Answer(200, {"reply": "waited"}, delay_s=1.0))
    running = await activity_of(runtime, await say(runtime, "wait"))
    await say(runtime, "echo after")
    status = await activity_of(runtime, await say(runtime, f"status {running.id}"))
    done = await settled(runtime, status.id, "completed")
    assert done.details["result"]["text"].endswith(": in_progress")

    async def three() -> list[tuple[float, str]] | None:
        got = await told(runtime)
        return got if len(got) >= 3 else None

    texts = [text for _, text in await wait_for(three)]
    assert texts[1:] == ["waited", "after"]  # ordinary ones in arrival order


async def test_a_request_waiting_for_approval_does_not_hold_the_next_one(
    runtime: Runtime,
) -> None:
    supervisor = await runtime.users.add("sup", "supervisor")
    await runtime.users.link(str(supervisor.id), "rest", "sup")
    refund = await activity_of(runtime, await say(runtime, "refund 7"))
    started = time.monotonic()
    echo = await activity_of(runtime, await say(runtime, "echo meanwhile"))
    await settled(runtime, echo.id, "completed")
    assert time.monotonic() - started < 3  # not after a recovery pass (every 10 s)
    assert (await runtime.activities.get(refund.id)).status == "awaiting_approval"  # type: ignore[union-attr]


async def test_a_lease_is_kept_alive_while_a_long_handler_runs(
    make_runtime: Callable[..., Any], server: ScriptedServer
) -> None:
    """A run longer than its lease renews it: recovery (here every second) never takes over."""
    server.expect("/wait", Answer(200, {"reply": "long one"}, delay_s=4.0))
    async with make_runtime(
        worker_lease_s="1.5", worker_recover_every_s="1", worker_recover_after_s="0.5"
    ) as runtime:
        running = await activity_of(runtime, await say(runtime, "wait"))
        done = await settled(runtime, running.id, "completed", "failed")
    assert done.status == "completed"
    assert done.attempts == 1
    assert [e.kind for e in done.events].count("started") == 1


async def test_a_stale_attempt_cannot_finish(runtime: Runtime, server: ScriptedServer) -> None:
    """The fencing token: attempt 1 lost its claim (its lease ran out and attempt 2 took over);
    its result is refused and recorded as such, attempt 2's is kept."""
    await runtime.queue.close(grace_s=0)  # this test plays the workers by hand
    message_id = await say(runtime, "echo fenced")
    dispatched = await runtime.dispatcher.dispatch_message(message_id, lease_s=30)
    assert dispatched is not None
    assert dispatched.activity_id is not None
    activity_id = dispatched.activity_id
    first = await runtime.activities.claim(activity_id, lease_s=30)
    assert first == 1
    assert await runtime.activities.claim(activity_id, lease_s=30) is None  # held
    async with runtime.sessions.begin() as session:
        await session.execute(
            update(Activity)
            .where(Activity.id == activity_id)
            .values(lease_expires_at=dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1))
        )
    second = await runtime.activities.claim(activity_id, lease_s=30)
    assert second == 2
    activity = await runtime.activities.get(activity_id)
    assert activity is not None
    assert await runtime.activities.renew(activity_id, attempt=1, lease_s=30) == "lost"
    common: dict[str, Any] = {"kind": "completed", "details": {}, "metrics": {}, "reply": []}
    completed = ActivityStatus.COMPLETED
    stale = await runtime.activities.finish(activity, Ending(to=completed, attempt=1, **common))
    fresh = await runtime.activities.finish(activity, Ending(to=completed, attempt=2, **common))
    assert stale is None
    assert fresh is not None
    done = await runtime.activities.get(activity_id, with_events=True)
    assert done is not None
    kinds = [(e.kind, e.data.get("attempt")) for e in done.events]
    assert ("stale_result", 1) in kinds
    assert kinds.count(("completed", None)) == 1


async def test_a_message_that_cannot_be_understood_ends_failed_and_the_next_goes_on(
    runtime: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its dispatch fails three times (each an interpretation): then it ends ``failed``, the
    sender is told, and the conversation's next message is answered."""
    understand = runtime.dispatcher._understand
    attempts: list[str] = []

    async def flaky(message: Any, user: Any, state: Any) -> Any:
        if message.text == "poison":
            attempts.append(message.text)
            raise RuntimeError("the interpreter choked")
        return await understand(message, user, state)

    monkeypatch.setattr(runtime.dispatcher, "_understand", flaky)
    poison = await say(runtime, "poison")
    after = await say(runtime, "echo still here")
    failed = await activity_of(runtime, poison)
    assert failed.status == "failed"
    assert failed.details["error"]["reason"] == "dispatch_failed"
    assert failed.details["error"]["attempts"] == 3
    answered = await activity_of(runtime, after)
    await settled(runtime, answered.id, "completed")

    async def both() -> list[tuple[float, str]] | None:
        got = await told(runtime)
        return got if len(got) >= 2 else None

    texts = [text for _, text in await wait_for(both)]
    assert texts == [
        f"Sorry, I could not make sense of your message (request #{failed.id}).",
        "still here",
    ]
    assert attempts == ["poison"] * 3  # interpreted three times, not once per recovery pass
    await asyncio.sleep(0.5)
    assert attempts == ["poison"] * 3


@pytest.mark.services
async def test_a_message_recorded_while_the_reply_before_it_is_being_recorded_is_not_stranded(
    make_settings: Callable[..., Settings],
    own_pg: str,
    tmp_path: Path,
    server: ScriptedServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The reply's outcome and the look-up of what waits behind it are one transaction. Held
    open after that look-up found nothing, a new message of the conversation is recorded: it
    must either wait for that transaction and see the reply sent (and run), or be found by it;
    never be recorded as held behind a reply whose sender has already looked. Recovery is held
    off: only the conversation's own hand-over can carry the second message on."""
    catalog = tmp_path / "catalog.toml"
    catalog.write_text(CATALOG.format(url=server.url))
    settings = make_settings(database_url=own_pg, catalog=catalog, worker_recover_every_s=3600)
    looked, release = asyncio.Event(), asyncio.Event()
    original = Turns.waiting_after_many

    async def held_open(session: Any, turns: dict[int, int]) -> dict[int, int]:
        found = await original(session, turns)
        if not looked.is_set():
            looked.set()
            await release.wait()  # the transaction stays open, the reply's row locked
        return found

    monkeypatch.setattr(Turns, "waiting_after_many", staticmethod(held_open))
    async with runtime_for(settings) as runtime:
        first = await activity_of(runtime, await say(runtime, "echo one"))
        await asyncio.wait_for(looked.wait(), timeout=10)
        second_message = await say(runtime, "echo two")

        async def recorded_or_waiting() -> bool | None:
            async with runtime.sessions() as session:
                recorded = await session.scalar(
                    select(Activity.id).where(Activity.source_message_id == second_message)
                )
                waiting = await session.scalar(
                    text(
                        "SELECT count(*) FROM pg_stat_activity "
                        "WHERE datname = current_database() AND wait_event_type = 'Lock'"
                    )
                )
            return True if recorded is not None or waiting else None

        await wait_for(recorded_or_waiting, timeout_s=10)
        await asyncio.sleep(1.0)  # whatever the second message's job does next, it has done
        release.set()
        second = await activity_of(runtime, second_message)
        done = await settled(runtime, second.id, "completed")
        assert done.id != first.id

        async def both() -> list[tuple[float, str]] | None:
            got = await told(runtime)
            return got if len(got) >= 2 else None

        assert [t for _, t in await wait_for(both, timeout_s=10)] == ["one", "two"]
