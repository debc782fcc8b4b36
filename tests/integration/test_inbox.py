"""The portal's inbox over the API, and its live socket: who asked for a person comes first,
a takeover assigns and settles it, assignments are checked, and ``/portal/live`` pushes what
changed only to the portal's own page (its CSRF token, not the cookie alone)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any, NamedTuple

import pytest
from litestar.testing import AsyncTestClient
from sqlalchemy import event

from dispatch.record.inbox import HUB_QUEUE, ChangeHub, Changes, ChangeWatch
from gateway.app import create_app
from gateway.auth import TokenStore
from gateway.settings import Settings
from tests.conftest import ADMIN
from tests.integration.test_portal import PASSWORD
from tests.support.flow import wait_for
from tests.support.runtime import runtime_for
from tests.support.services import own_database
from workers.runtime import Runtime


class Desk(NamedTuple):
    client: AsyncTestClient[Any]
    tom: dict[str, str]
    """Headers of a second supervisor's own token."""


@pytest.fixture
async def desk(
    make_settings: Callable[..., Settings], sqlite_url: str, backend: str
) -> AsyncIterator[Desk]:
    """The portal's API on each database the product runs on."""
    async with contextlib.AsyncExitStack() as stack:
        url = sqlite_url
        if backend == "postgresql":
            url = await stack.enter_async_context(own_database("switchboard_test"))
        yield await stack.enter_async_context(_desk(make_settings(database_url=url)))


@contextlib.asynccontextmanager
async def _desk(settings: Settings) -> AsyncIterator[Desk]:
    async with runtime_for(settings) as runtime:
        sup = await runtime.users.add("Sofia Ruiz", "supervisor")
        await runtime.users.set_password(str(sup.id), PASSWORD)
        await runtime.users.link(str(sup.id), "rest", "sofia")
        await runtime.users.add("gus", "guest")
        tom = await runtime.users.add("Tom Lee", "supervisor")
        await runtime.users.link(str(tom.id), "rest", "tom")
        token, _ = await TokenStore(runtime.sessions, None).create(
            name="tom", role="operator", user_id=tom.id
        )
    async with AsyncTestClient(create_app(settings)) as test_client:
        yield Desk(test_client, {"Authorization": f"Bearer {token}"})


@pytest.fixture
def client(desk: Desk) -> AsyncTestClient[Any]:
    return desk.client


async def login(client: AsyncTestClient[Any]) -> str:
    logged = await client.post("/portal/login", json={"name": "Sofia Ruiz", "password": PASSWORD})
    assert logged.status_code == 200, logged.text
    return str(logged.json()["csrf"])


async def write(client: AsyncTestClient[Any], sender: str, text: str, n: int) -> int:
    body = {"id": f"{sender}-{n}", "conversation": sender, "sender": sender, "text": text}
    sent = await client.post("/api/v1/messages", json=body, headers=ADMIN)
    assert sent.status_code == 202, sent.text
    return int(sent.json()["conversation_id"])


async def inbox(client: AsyncTestClient[Any], **params: str) -> list[dict[str, Any]]:
    listed = await client.get("/api/v1/inbox", params=params, headers=ADMIN)
    assert listed.status_code == 200, listed.text
    rows: list[dict[str, Any]] = listed.json()
    return rows


async def test_who_asks_for_a_person_comes_first_until_someone_takes_it_over(
    client: AsyncTestClient[Any],
) -> None:
    ana = await write(client, "ana", "echo hola", 1)
    bob = await write(client, "bob", "I want to talk to a human", 1)
    await write(client, "cy", "echo later", 1)

    async def settled() -> list[dict[str, Any]] | None:
        rows = await inbox(client)
        return rows if rows and rows[0]["wants_person"] else None

    rows = await wait_for(settled)
    assert rows[0]["id"] == bob
    assert rows[0]["name"] == "bob"
    assert rows[0]["unread"] == 1  # a token of no one: everything the person wrote
    assert {r["id"] for r in rows} >= {ana, bob}
    assert not any(r["wants_person"] for r in rows[1:])

    csrf = await login(client)
    taken = await client.post(
        f"/api/v1/conversations/{bob}/takeover", headers={"X-CSRF-Token": csrf}
    )
    assert taken.status_code == 200, taken.text
    [row] = [r for r in await inbox(client) if r["id"] == bob]
    assert (row["wants_person"], row["taken_over"], row["assignee_name"]) == (
        False,
        True,
        "Sofia Ruiz",
    )
    mine = await client.get("/api/v1/inbox", params={"view": "mine"})  # as the portal's user
    assert [r["id"] for r in mine.json()] == [bob]
    unassigned = {r["id"] for r in await inbox(client, view="unassigned")}
    assert bob not in unassigned
    assert ana in unassigned

    person = (await client.get(f"/api/v1/conversations/{bob}/person", headers=ADMIN)).json()
    assert person["name"] == "bob"
    assert person["language"] == "en"
    assert person["recent"][0]["action"] == "Ask for a person to answer instead of the bot"


async def test_assignments_are_checked_and_bad_input_is_a_clear_4xx(
    client: AsyncTestClient[Any],
) -> None:
    conversation = await write(client, "dee", "echo hi", 1)
    users = {u["name"]: u["id"] for u in (await client.get("/api/v1/users", headers=ADMIN)).json()}
    given = await client.post(
        f"/api/v1/conversations/{conversation}/assign",
        json={"user_id": users["Sofia Ruiz"]},
        headers=ADMIN,
    )
    assert given.json() == {
        "conversation_id": conversation,
        "assignee_user_id": users["Sofia Ruiz"],
    }
    to_guest = await client.post(
        f"/api/v1/conversations/{conversation}/assign",
        json={"user_id": users["gus"]},
        headers=ADMIN,
    )
    assert to_guest.status_code == 422
    assert to_guest.json()["extra"]["field"] == "user_id"
    unknown = await client.post(
        "/api/v1/conversations/999999/assign", json={"user_id": None}, headers=ADMIN
    )
    assert unknown.status_code == 404
    bad = await client.post(
        f"/api/v1/conversations/{conversation}/assign", json={"user_id": "x"}, headers=ADMIN
    )
    assert bad.status_code == 400
    bad_view = await client.get("/api/v1/inbox", params={"view": "everyone"}, headers=ADMIN)
    assert bad_view.status_code == 400
    bad_people = await client.get("/api/v1/inbox", params={"people": "bots"}, headers=ADMIN)
    assert bad_people.status_code == 400
    assert "people" in bad_people.text
    cleared = await client.post(
        f"/api/v1/conversations/{conversation}/assign", json={"user_id": None}, headers=ADMIN
    )
    assert cleared.json()["assignee_user_id"] is None


async def test_the_live_socket_needs_the_portals_csrf_token_and_pushes_what_changed(
    client: AsyncTestClient[Any],
) -> None:
    csrf = await login(client)
    for first in [{}, {"csrf": "forged"}]:
        with await client.websocket_connect("/portal/live") as socket:
            socket.send_json(first)
            refused = await asyncio.to_thread(socket.receive_json, timeout=5)
            assert refused["type"] == "error"
    with await client.websocket_connect("/portal/live") as socket:
        socket.send_json({"csrf": csrf})
        ready = await asyncio.to_thread(socket.receive_json, timeout=5)
        assert ready["type"] == "ready"
        conversation = await write(client, "eve", "echo live", 1)
        changed = await asyncio.to_thread(socket.receive_json, timeout=10)
        assert changed["type"] == "changed"
        assert conversation in changed["conversations"]
        assert changed["last_message_id"] > ready["last_message_id"]


async def unread(client: AsyncTestClient[Any], headers: dict[str, str], conversation: int) -> int:
    listed = await client.get("/api/v1/inbox", headers=headers)
    assert listed.status_code == 200, listed.text
    [row] = [r for r in listed.json() if r["id"] == conversation]
    return int(row["unread"])


async def test_each_supervisor_has_their_own_unread_counts_kept_on_the_server(
    desk: Desk, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Unread is what the person wrote after each reader's own mark, kept by the server (the
    same on every device), counted up to a bound; a mark never moves back nor past what
    exists; a token of no one has no marks."""
    client, tom = desk
    csrf = await login(client)  # Sofia, in the portal
    sofia = {"X-CSRF-Token": csrf}
    ivy = await write(client, "ivy", "echo one", 1)
    await write(client, "ivy", "echo two", 2)

    async def answered() -> int | None:
        listed = await client.get(f"/api/v1/conversations/{ivy}/messages", headers=ADMIN)
        outbound = [m for m in listed.json() if m["direction"] == "outbound"]
        return max(m["id"] for m in outbound) if len(outbound) == 2 else None

    newest = await wait_for(answered)
    assert await unread(client, sofia, ivy) == 2
    assert await unread(client, tom, ivy) == 2

    read = await client.post(f"/api/v1/conversations/{ivy}/read", json={}, headers=sofia)
    assert read.status_code == 200, read.text
    assert read.json() == {"conversation_id": ivy, "last_read_message_id": newest}
    assert await unread(client, sofia, ivy) == 0
    assert await unread(client, tom, ivy) == 2  # his own count

    await write(client, "ivy", "echo three", 3)
    assert await unread(client, sofia, ivy) == 1
    back = await client.post(
        f"/api/v1/conversations/{ivy}/read", json={"message_id": 1}, headers=sofia
    )
    assert back.json()["last_read_message_id"] == newest  # never moves back
    ahead = await client.post(
        f"/api/v1/conversations/{ivy}/read", json={"message_id": 10**9}, headers=tom
    )
    assert ahead.status_code == 200
    assert await unread(client, tom, ivy) == 0
    await write(client, "ivy", "echo four", 4)
    assert await unread(client, tom, ivy) == 1  # written after his mark: unread

    # Counted up to a bound, however long the conversation.
    monkeypatch.setattr("dispatch.record.inbox.UNREAD_COUNTED", 2)
    assert await unread(client, sofia, ivy) == 2

    nobody = await client.post(f"/api/v1/conversations/{ivy}/read", json={}, headers=ADMIN)
    assert nobody.status_code == 403
    assert "read marks" in nobody.json()["detail"]
    missing = await client.post("/api/v1/conversations/999999/read", json={}, headers=tom)
    assert missing.status_code == 404
    bad = await client.post(
        f"/api/v1/conversations/{ivy}/read", json={"message_id": 0}, headers=tom
    )
    assert bad.status_code == 400


async def test_staff_conversations_are_not_listed_with_visitors(desk: Desk) -> None:
    """A supervisor's own conversation with the bot is not a visitor's: listed apart."""
    client = desk.client
    body = {"id": "tom-1", "conversation": "tom", "sender": "tom", "text": "echo mine"}
    sent = await client.post("/api/v1/messages", json=body, headers=desk.tom)
    assert sent.status_code == 202, sent.text
    staff = int(sent.json()["conversation_id"])
    visitor = await write(client, "una", "echo hello", 1)
    listed = {r["id"] for r in await inbox(client)}
    assert visitor in listed
    assert staff not in listed
    assert [r["id"] for r in await inbox(client, people="staff")] == [staff]
    assert {r["id"] for r in await inbox(client, people="everyone")} >= {staff, visitor}


async def test_one_watch_serves_every_open_portal_and_a_returning_one_catches_up(
    client: AsyncTestClient[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """However many portals are open, the record is read once per look (not once per socket):
    every look comes from one watch; with none open it is not read at all; a portal back after
    a drop first gets what changed while it was away."""
    csrf = await login(client)
    engine = client.app.state.runtime.engine
    hub = client.app.state.change_hub
    looks: list[str] = []
    watches: list[int] = []
    poll = ChangeWatch.poll

    async def watched(watch: ChangeWatch) -> Changes | None:
        watches.append(id(watch))
        return await poll(watch)

    monkeypatch.setattr(ChangeWatch, "poll", watched)

    def counted(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        # A watch's look (the worker's recovery sweep also reads messages in id order: not this)
        if statement.startswith("SELECT messages.id, messages.conversation_id \nFROM messages"):
            looks.append(statement)

    event.listen(engine.sync_engine, "before_cursor_execute", counted)
    try:
        with contextlib.ExitStack() as stack:
            sockets = [
                stack.enter_context(await client.websocket_connect("/portal/live"))
                for _ in range(3)
            ]
            for socket in sockets:
                socket.send_json({"csrf": csrf})
            readies = [await asyncio.to_thread(s.receive_json, timeout=5) for s in sockets]
            assert [r["type"] for r in readies] == ["ready"] * 3
            assert hub.readers == 3
            looks.clear()
            watches.clear()
            await asyncio.sleep(2.0)
            # One watch for the three, a look every 0.25 s: at most 8 in 2 s (three watches
            # would be 24). How many it gets to depends on the test client, whose websocket
            # sessions poll their queues in the app's loop.
            assert 1 <= len(looks) <= 12, len(looks)
            assert len(set(watches)) == 1, watches  # (a look under way may straddle clear())
            conversation = await write(client, "fay", "echo to all", 1)
            for socket in sockets:
                changed = await asyncio.to_thread(socket.receive_json, timeout=10)
                assert conversation in changed["conversations"]
            marks = changed
        await wait_for(lambda: asyncio.sleep(0, hub.readers == 0))
        await asyncio.sleep(0.6)  # the watch notices no one reads, and stops
        looks.clear()
        watches.clear()
        await asyncio.sleep(1.0)
        assert looks == []  # no portal open: nothing read
        assert watches == []

        # Back after a drop, with its marks: what changed meanwhile comes first.
        away = await write(client, "gil", "echo while away", 1)
        with await client.websocket_connect("/portal/live") as socket:
            socket.send_json(
                {
                    "csrf": csrf,
                    "last_message_id": marks["last_message_id"],
                    "last_event_id": marks["last_event_id"],
                }
            )
            first = await asyncio.to_thread(socket.receive_json, timeout=5)
            assert first["type"] == "changed"
            assert away in first["conversations"]
            ready = await asyncio.to_thread(socket.receive_json, timeout=5)
            assert ready["type"] == "ready"
            assert ready["last_message_id"] >= first["last_message_id"]
    finally:
        event.remove(engine.sync_engine, "before_cursor_execute", counted)


async def test_a_reader_that_falls_too_far_behind_is_let_go(embedded: Runtime) -> None:
    hub = ChangeHub(embedded.sessions, every_s=3600)  # no look of its own: changes fed below
    news = Changes(conversations=[1], activities=[], last_message_id=1, last_event_id=0)
    async with hub.subscribe() as (_, slow), hub.subscribe() as (_, quick):
        for _ in range(HUB_QUEUE + 1):
            hub._publish(news)
            if not quick.empty():
                await quick.get()
        assert hub.readers == 1  # the slow one is gone; the quick one reads on
        got = [slow.get_nowait() for _ in range(slow.qsize())]
        assert got[-1] is None  # told to go (it reconnects with its marks)
        assert len(got) == HUB_QUEUE
    await hub.stop()
