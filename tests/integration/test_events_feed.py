"""Live activity events over a WebSocket, resumable with no gap and nothing twice."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from litestar.exceptions import WebSocketDisconnect
from litestar.testing import TestClient
from litestar.testing.websocket_test_session import WebSocketTestSession
from sqlalchemy import select

from dispatch.record.feed import EventFeed, EventFilter
from dispatch.record.models import Activity, ActivityEvent
from gateway.app import create_app
from gateway.settings import Settings
from tests.conftest import ADMIN, ADMIN_TOKEN, open_db
from tests.support.flow import wait_for

EVENTS = "/api/v1/events"


@pytest.fixture
def client(make_settings: Callable[..., Settings], sqlite_url: str) -> Iterator[TestClient[Any]]:
    with TestClient(create_app(make_settings(database_url=sqlite_url))) as test_client:
        test_client.headers.update(ADMIN)
        yield test_client


def hello(socket: WebSocketTestSession, **frame: Any) -> dict[str, Any]:
    socket.send_text(json.dumps(frame))
    ready: dict[str, Any] = json.loads(socket.receive_text())
    assert ready["type"] == "ready", ready
    return ready


def events_until(socket: WebSocketTestSession, kind: str, count: int = 1) -> list[dict[str, Any]]:
    """Frames up to the ``count``-th event of ``kind``."""
    got: list[dict[str, Any]] = []
    while sum(e["kind"] == kind for e in got) < count:
        frame = json.loads(socket.receive_text())
        assert frame["type"] == "event", frame
        got.append(frame)
    return got


def say(client: TestClient[Any], text: str, n: int) -> None:
    response = client.post(
        "/api/v1/messages",
        json={"id": f"ev-{n}", "conversation": f"ev-{n}", "sender": f"ev{n}", "text": text},
    )
    assert response.status_code == 202, response.text


def test_events_stream_live_and_a_reconnect_resumes_after_the_last_one_seen(
    client: TestClient[Any],
) -> None:
    with client.websocket_connect(EVENTS) as socket:
        start = hello(socket, token=ADMIN_TOKEN)["last_event_id"]
        say(client, "echo uno", 1)
        first = events_until(socket, "reply_sent")
    assert [e["kind"] for e in first] == ["created", "started", "completed", "reply_sent"]
    assert first[0]["agent"] == "assistant"
    assert first[0]["action_type"] == "echo"
    assert [e["id"] for e in first] == list(range(start + 1, start + 5))
    seen = first[-1]["id"]

    say(client, "echo dos", 2)  # while no one listens
    say(client, "echo tres", 3)
    with client.websocket_connect(EVENTS, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}) as s:
        assert hello(s, last_event_id=seen)["last_event_id"] == seen
        missed = events_until(s, "reply_sent", count=2)
    ids = [e["id"] for e in missed]
    assert ids == list(range(seen + 1, seen + 1 + len(ids)))  # no gap, nothing twice
    assert len({e["activity_id"] for e in missed}) == 2


def test_a_filter_keeps_what_the_reader_asked_for(client: TestClient[Any]) -> None:
    with client.websocket_connect(EVENTS) as socket:
        hello(socket, token=ADMIN_TOKEN, filter={"kinds": ["completed"]})
        say(client, "echo a", 10)
        say(client, "help", 11)
        frames = [json.loads(socket.receive_text()) for _ in range(2)]
    assert [f["kind"] for f in frames] == ["completed", "completed"]


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        ({"token": "nope"}, 4401),
        ({}, 4401),
        ({"token": ADMIN_TOKEN, "last_event_id": -1}, 4400),
        ({"token": ADMIN_TOKEN, "surprise": 1}, 4400),
    ],
)
def test_a_bad_first_frame_is_refused_with_a_reason(
    client: TestClient[Any], frame: dict[str, Any], code: int
) -> None:
    with client.websocket_connect(EVENTS, headers={"Authorization": ""}) as socket:
        socket.send_text(json.dumps(frame))
        error = json.loads(socket.receive_text())
        assert error["type"] == "error"
        assert error["detail"]
        with pytest.raises(WebSocketDisconnect) as closed:
            socket.receive_text()
    assert closed.value.code == code


def test_an_actions_token_may_not_read_the_feed(client: TestClient[Any]) -> None:
    created = client.post("/api/v1/tokens", json={"name": "gpt", "role": "actions"})
    token = created.json()["token"]
    with client.websocket_connect(EVENTS, headers={"Authorization": ""}) as socket:
        socket.send_text(json.dumps({"token": token}))
        assert json.loads(socket.receive_text())["type"] == "error"
        with pytest.raises(WebSocketDisconnect) as closed:
            socket.receive_text()
    assert closed.value.code == 4403


@pytest.mark.services
async def test_an_event_committed_late_is_not_skipped_and_its_successor_waits_for_it(
    own_pg: str,
) -> None:
    """Ids are taken at insert, rows seen at commit: event N+1 may be visible before N. The
    feed holds N+1 back until N commits (or, rolled back, for GAP_WAIT_S)."""
    async with open_db(own_pg) as sessions:
        async with sessions.begin() as session:
            activity = Activity(agent_name="a", action_type="b", details={}, status="queued")
            session.add(activity)
            await session.flush()
            activity_id = activity.id
        feed = EventFeed(sessions, poll_s=0.02)
        start = await feed.last_id()
        seen: list[int] = []

        async def read() -> None:
            async for event in feed.follow(start, EventFilter()):
                seen.append(event.id)

        reader = asyncio.create_task(read())
        late = sessions()
        await late.begin()
        late.add(ActivityEvent(activity_id=activity_id, kind="late", actor="t", data={}))
        await late.flush()  # takes id N, not committed
        async with sessions.begin() as session:
            session.add(ActivityEvent(activity_id=activity_id, kind="early", actor="t", data={}))
        await asyncio.sleep(0.5)
        assert seen == []  # N+1 is visible, but N may still come: held back
        await late.commit()
        await late.close()

        async def both() -> bool:
            return len(seen) == 2

        await wait_for(both, timeout_s=5)
        reader.cancel()
        async with sessions() as session:
            kinds = dict(
                (await session.execute(select(ActivityEvent.id, ActivityEvent.kind))).all()
            )
    assert seen == sorted(seen)
    assert [kinds[i] for i in seen] == ["late", "early"]


@pytest.mark.services
async def test_from_now_starts_below_an_event_still_in_flight(own_pg: str) -> None:
    """A reader starting "now" while an earlier event's transaction is open still gets it."""
    async with open_db(own_pg) as sessions:
        async with sessions.begin() as session:
            activity = Activity(agent_name="a", action_type="b", details={}, status="queued")
            session.add(activity)
            await session.flush()
            activity_id = activity.id
            session.add(ActivityEvent(activity_id=activity_id, kind="before", actor="t", data={}))
        late = sessions()
        await late.begin()
        late.add(ActivityEvent(activity_id=activity_id, kind="late", actor="t", data={}))
        await late.flush()
        async with sessions.begin() as session:
            session.add(ActivityEvent(activity_id=activity_id, kind="after", actor="t", data={}))
        feed = EventFeed(sessions, poll_s=0.02)
        start = await feed.last_id()
        seen: list[str] = []

        async def read() -> None:
            async for event in feed.follow(start, EventFilter()):
                seen.append(event.kind)

        reader = asyncio.create_task(read())
        await late.commit()
        await late.close()

        async def two() -> bool:
            return len(seen) == 2

        await wait_for(two, timeout_s=5)
        reader.cancel()
    assert seen == ["late", "after"]
