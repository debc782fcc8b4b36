"""Retention: what ended before the retention is removed with everything that hangs on it,
written first to an archive when asked; nothing unfinished, nothing recent; the stored figures
count down with it, the handler durations (what happened) do not. On both databases; the
command runs as a process."""

from __future__ import annotations

import datetime as dt
import gzip
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select, update

from dispatch.record import retention
from dispatch.record.activities import ActivityLog, Opening
from dispatch.record.messages import InboundMessage
from dispatch.record.models import (
    Activity,
    ActivityEvent,
    ActivityStatus,
    Message,
    utcnow,
)
from dispatch.record.retention import ArchiveFile, Retention
from gateway.settings import Settings
from tests.integration.test_batches import runtime_on
from tests.support.flow import wait_for
from tests.support.processes import run_cli
from workers.recovery import recover
from workers.runtime import Runtime

OLD = dt.timedelta(days=40)


async def _count(runtime: Runtime, model: Any, *where: Any) -> int:
    async with runtime.sessions() as session:
        return int(await session.scalar(select(func.count()).select_from(model).where(*where)))


async def _record(runtime: Runtime) -> tuple[int, int]:
    """Six requests answered in three conversations, then everything made 40 days old but
    the last conversation's last exchange; and an old activity still queued, with its message.
    Returns (the queued one's id, its message's id)."""
    said = [
        InboundMessage(
            channel="rest",
            external_id=f"r-{c}-{n}",
            conversation_key=f"person-{c}",
            sender=f"person-{c}",
            text=f"echo c{c} n{n}",
        )
        for n in range(2)
        for c in range(3)
    ]
    await runtime.dispatcher.ingest_all("rest", said)

    async def answered() -> bool:
        sent = Message.delivery.in_(["sent", "delivered", "queued"])
        return await _count(runtime, Message, Message.direction == "outbound", sent) == 6

    await wait_for(answered, timeout_s=30)
    first = await runtime.store.conversation_by_key("rest", "person-0")
    assert first is not None
    async with runtime.sessions.begin() as session:
        stored = Message(
            direction="inbound",
            channel="rest",
            external_id="r-wait",
            conversation_id=first.id,
            text="pay me",
            state="dispatched",
        )
        session.add(stored)
        await session.flush()
        queued = await ActivityLog.open(
            session,
            Opening(
                agent="ops",
                action_type="echo",
                description="Repeat a text",
                details={"payload": {"text": "x"}},
                status=ActivityStatus.AWAITING_APPROVAL,
                conversation_id=stored.conversation_id,
                source_channel="rest",
                source_message_id=stored.id,
            ),
        )
        queued_id, message_id = queued.id, stored.id
    recent = await runtime.store.conversation_by_key("rest", "person-2")
    assert recent is not None
    async with runtime.sessions.begin() as session:
        newest = await session.scalar(
            select(func.max(Message.id)).where(Message.conversation_id == recent.id)
        )
        kept_activity = await session.scalar(
            select(Message.activity_id).where(Message.id == newest)
        )
        await session.execute(
            update(Message)
            .where(Message.id != newest, Message.activity_id.is_distinct_from(kept_activity))
            .values(received_at=utcnow() - OLD)
        )
        await session.execute(
            update(Activity).where(Activity.id != kept_activity).values(created_at=utcnow() - OLD)
        )
    return queued_id, message_id


async def test_what_ended_long_ago_is_removed_archived_and_nothing_else(
    backend: str, make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    async with runtime_on(backend, make_settings, tmp_path) as runtime:
        queued_id, its_message = await _record(runtime)
        before = await runtime.stats.snapshot()
        activities = await _count(runtime, Activity)
        archive = ArchiveFile(tmp_path / "archive.jsonl.gz")
        try:
            removed = await runtime.retention.remove(
                before=utcnow() - dt.timedelta(days=30), archive=archive
            )
        finally:
            archive.close()
        after = await runtime.stats.snapshot()
        left = {
            "activities": await _count(runtime, Activity),
            "events of removed": await _count(
                runtime, ActivityEvent, ActivityEvent.activity_id.not_in(select(Activity.id))
            ),
            "queued one": await _count(runtime, Activity, Activity.id == queued_id),
            "its message": await _count(runtime, Message, Message.id == its_message),
            "messages": await _count(runtime, Message),
        }
        again = await runtime.retention.remove(before=utcnow() - dt.timedelta(days=30))
    # Five of the six answered requests were old (the newest exchange is recent): removed with
    # their replies and events; the old one still awaiting approval stays, with its message.
    assert removed.activities == 5, removed
    assert left["activities"] == activities - 5
    assert left["events of removed"] == 0
    assert (left["queued one"], left["its message"]) == (1, 1)
    # Left: the recent request and its reply, and the waiting one's message.
    assert left["messages"] == 3, left
    assert removed.messages == 5, removed  # the five old requests (replies went with theirs)
    assert again.rows == 0
    with gzip.open(tmp_path / "archive.jsonl.gz") as lines:
        rows = [json.loads(line) for line in lines]
    tables: dict[str, int] = {}
    for row in rows:
        tables[row["table"]] = tables.get(row["table"], 0) + 1
    assert tables["agent_activities"] == 5
    assert tables["messages"] == 10  # five replies with their activities, five requests
    assert tables["activity_events"] >= 5 * 3  # created, started, completed at least
    assert all(row["row"]["id"] for row in rows)
    stored_before = sum(n for *_, n in before.activities)
    stored_after = sum(n for *_, n in after.activities)
    assert stored_before - stored_after == 5  # what is stored counts down
    assert after.duration_count == before.duration_count  # what happened does not
    assert after.duration_buckets == before.duration_buckets


async def test_the_worker_removes_once_an_hour_and_the_command_archives_as_a_process(
    make_settings: Callable[..., Settings], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with runtime_on("sqlite", make_settings, tmp_path, retention_days=30) as runtime:
        await _record(runtime)
        url = runtime.settings.database.url
        assert await runtime.retention.pass_if_due() is None  # passed at start: due in an hour
        await recover(runtime)
        assert await _count(runtime, Activity) == 7
        an_hour_on = retention.monotonic() + 3601
        monkeypatch.setattr(retention, "monotonic", lambda: an_hour_on)
        await recover(runtime)  # a recovery pass an hour on: retention's pass is due
        left = await _count(runtime, Activity)
        again = await runtime.retention.pass_if_due()  # within the hour: not due
    assert left == 2  # the recent one, and the old one still waiting
    assert again is None
    assert await Retention(runtime.sessions, days=0).pass_if_due() is None  # off: never
    # The command, as a process: nothing old is left, so it removes nothing and says so.
    done = run_cli(
        ["retain", "--older-than-days", "30", "--archive", str(tmp_path / "a.jsonl")],
        tmp_path,
        SWITCHBOARD_DATABASE_URL=url,
    )
    assert done.returncode == 0, done.stderr
    assert "removed 0 activities and 0 messages, 0 rows written" in done.stderr
    refused = run_cli(["retain", "--older-than-days", "0"], tmp_path, SWITCHBOARD_DATABASE_URL=url)
    assert refused.returncode == 2
    assert "at least 1 day" in refused.stderr
