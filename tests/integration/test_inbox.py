"""The portal's inbox over the API, and its live socket: who asked for a person comes first,
a takeover assigns and settles it, assignments are checked, and ``/portal/live`` pushes what
changed only to the portal's own page (its CSRF token, not the cookie alone)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from litestar.testing import AsyncTestClient

from gateway.app import create_app
from gateway.settings import Settings
from tests.conftest import ADMIN
from tests.integration.test_portal import PASSWORD
from tests.support.flow import wait_for
from tests.support.runtime import runtime_for


@pytest.fixture
async def client(
    make_settings: Callable[..., Settings], sqlite_url: str
) -> AsyncIterator[AsyncTestClient[Any]]:
    settings = make_settings(database_url=sqlite_url)
    async with runtime_for(settings) as runtime:
        sup = await runtime.users.add("Sofia Ruiz", "supervisor")
        await runtime.users.set_password(str(sup.id), PASSWORD)
        await runtime.users.link(str(sup.id), "rest", "sofia")
        await runtime.users.add("gus", "guest")
    async with AsyncTestClient(create_app(settings)) as test_client:
        yield test_client


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
    assert rows[0]["inbound"] == 1
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
