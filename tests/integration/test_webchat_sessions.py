"""Web chat identity: sessions are the server's (signed, expiring, renewed), travel in the
handshake's subprotocols, are never shown to anyone, and only allowed origins may connect."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from litestar.exceptions import WebSocketDisconnect
from litestar.testing import AsyncTestClient
from sqlalchemy import select

from dispatch.record.models import User
from gateway.app import create_app
from gateway.settings import Settings
from tests.conftest import ADMIN
from tests.support.db import db_session, stored


@pytest.fixture
async def client(
    make_settings: Callable[..., Settings], sqlite_url: str
) -> AsyncIterator[AsyncTestClient[Any]]:
    settings = make_settings(
        database_url=sqlite_url,
        widget_origins="https://shop.example.com, http://localhost:5173",
        webchat_session_ttl_s="3600",
    )
    async with AsyncTestClient(create_app(settings)) as test_client:
        test_client.headers.update(ADMIN)
        yield test_client


async def hello(client: AsyncTestClient[Any], token: str | None = None, **headers: str) -> Any:
    protocols = ["switchboard"] + ([f"session.{token}"] if token else [])
    with await client.websocket_connect(
        "/chat/ws", subprotocols=protocols, headers=headers
    ) as socket:
        frame = socket.receive_json()
        assert frame["type"] == "hello"
        return frame


def session_of(token: str) -> str:
    return token.split(".", maxsplit=1)[0]


async def test_a_session_is_issued_by_the_server_and_resumed_with_its_token(
    client: AsyncTestClient[Any],
) -> None:
    first = (await hello(client))["session"]
    again = (await hello(client, first))["session"]
    assert session_of(again) == session_of(first)
    assert again != first or again.split(".")[1] >= first.split(".")[1]  # renewed expiry


@pytest.mark.parametrize(
    "offered",
    [
        "chosen-by-the-client-123456",  # the old way: any id the client liked
        "{session}.9999999999.forgedsignature000000",
        "{session}.1000000000.{signature}",  # expired long ago (its signature no longer fits)
        "{session}.{expires}.{signature}x",
    ],
    ids=["client-chosen", "forged signature", "expired", "tampered"],
)
async def test_a_token_not_issued_here_starts_a_new_session(
    client: AsyncTestClient[Any], offered: str
) -> None:
    real = (await hello(client))["session"]
    session, expires, signature = real.split(".")
    token = offered.format(session=session, expires=expires, signature=signature)
    got = (await hello(client, token))["session"]
    assert session_of(got) != session


async def test_an_expired_token_starts_a_new_session(
    make_settings: Callable[..., Settings], sqlite_url: str
) -> None:
    settings = make_settings(database_url=sqlite_url, webchat_session_ttl_s="0.001")
    async with AsyncTestClient(create_app(settings)) as short:
        token = (await hello(short))["session"]
        assert session_of((await hello(short, token))["session"]) != session_of(token)


@pytest.mark.parametrize(
    ("origin", "allowed"),
    [
        ("https://evil.example", False),
        ("https://shop.example.com", True),
        ("http://localhost:5173", True),
        ("http://testserver.local", True),  # the gateway's own page
        (None, True),  # not a browser page: no cross-site request to fear
    ],
)
async def test_only_allowed_origins_may_open_a_socket(
    client: AsyncTestClient[Any], origin: str | None, allowed: bool
) -> None:
    headers = {} if origin is None else {"origin": origin}
    if allowed:
        assert (await hello(client, **headers))["type"] == "hello"
        return
    with pytest.raises(WebSocketDisconnect) as closed:
        await hello(client, **headers)
    assert closed.value.code == 4403


async def test_a_visitor_is_never_shown_by_their_session(client: AsyncTestClient[Any]) -> None:
    with await client.websocket_connect("/chat/ws", subprotocols=["switchboard"]) as socket:
        token = socket.receive_json()["session"]
        socket.send_json({"id": "n1", "text": "hola"})
        socket.receive_json()
    with await client.websocket_connect("/chat/ws", subprotocols=["switchboard"]) as socket:
        socket.receive_json()
        socket.send_json({"id": "n2", "text": "hola", "name": "Marta"})
        socket.receive_json()
    users = (await client.get("/api/v1/users")).json()
    names = sorted(u["name"] for u in users)
    assert names[0] == "Marta"
    assert names[1].startswith("web visitor #")
    assert session_of(token) not in str(users)
    async with db_session(client) as session:
        rows = (await session.execute(select(User.name))).scalars().all()
    assert all(session_of(token) not in name for name in rows)


async def test_sessions_that_never_wrote_leave_no_one_behind(client: AsyncTestClient[Any]) -> None:
    for _ in range(3):
        await hello(client)
    assert await stored(client, User) == 0


async def test_one_address_holds_its_share_of_sockets_and_gets_a_slot_back_when_one_closes(
    make_settings: Callable[..., Settings], sqlite_url: str
) -> None:
    settings = make_settings(database_url=sqlite_url, sockets_per_address="2")
    async with AsyncTestClient(create_app(settings)) as client:
        protocols = ["switchboard"]
        with (
            await client.websocket_connect("/chat/ws", subprotocols=protocols) as first,
            await client.websocket_connect("/chat/ws", subprotocols=protocols) as second,
        ):
            assert first.receive_json()["type"] == second.receive_json()["type"] == "hello"
            # The third is refused before the handshake is accepted (HTTP 403 on a real server).
            with pytest.raises(WebSocketDisconnect):
                await hello(client)
        # Both closed: their slots come back once the server has seen them go.
        for _ in range(100):
            with contextlib.suppress(WebSocketDisconnect):
                assert (await hello(client))["type"] == "hello"
                break
            await asyncio.sleep(0.05)
        else:
            raise AssertionError("the closed sockets' slots never came back")
        assert (await hello(client))["type"] == "hello"
        # A refused socket built nothing: no session, no user.
        assert await stored(client, User) == 0
