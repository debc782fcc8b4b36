"""Bad input never gets a 5xx: a client gets a 4xx naming the problem and nothing is stored; a
verified provider gets its 2xx and what it sent is stored, cleaned. On PostgreSQL, which is what
refuses NUL characters and integers beyond 64 bits."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable
from importlib.metadata import version
from typing import Any

import pytest
from litestar.testing import AsyncTestClient
from sqlalchemy import select

from dispatch.record.models import Message, User
from gateway.app import create_app
from gateway.settings import Settings
from tests.conftest import ADMIN
from tests.support.db import db_session, rows_held
from tests.support.telegram_updates import SECRET, telegram_env, text_update
from tests.support.twilio_webhook import inbound_form, message_sid, signed, twilio_env

pytestmark = pytest.mark.services

BIG = 2**64


@pytest.fixture
async def client(
    make_settings: Callable[..., Settings], pg_migrated: str
) -> AsyncIterator[AsyncTestClient[Any]]:
    # Provider APIs on a closed port: these tests are about what comes in.
    providers = {**telegram_env("http://127.0.0.1:9"), **twilio_env("http://127.0.0.1:9")}
    settings = make_settings(database_url=pg_migrated, **providers)
    async with AsyncTestClient(create_app(settings)) as test_client:
        test_client.headers.update(ADMIN)
        yield test_client


def _rest(**fields: Any) -> dict[str, Any]:
    return {"id": "bad-1", "conversation": "bad", "sender": "bad-sender", "text": "hola", **fields}


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        (_rest(sender="a\u0000b"), "sender contains a NUL character"),
        (_rest(conversation="a\u0000b"), "conversation contains a NUL character"),
        (_rest(sender_name="a\u0000b"), "sender_name contains a NUL character"),
        (_rest(id="bad\u0000id"), "id contains a NUL character"),
        (_rest(media=[{"url": "https://x/\u0000"}]), "media[0].url contains a NUL character"),
        (_rest(text="a\u0000b"), "text contains a NUL character"),
    ],
    ids=["sender", "conversation", "sender_name", "id", "media url", "text"],
)
async def test_a_nul_in_a_rest_message_is_a_400_naming_the_field(
    client: AsyncTestClient[Any], body: dict[str, Any], problem: str
) -> None:
    response = await client.post("/api/v1/messages", json=body)
    assert response.status_code == 400
    assert response.json()["detail"] == problem
    ids = {body["id"].replace("\x00", "")}  # PostgreSQL cannot even be asked about a NUL
    async with db_session(client) as session:
        stored = await session.execute(select(Message).where(Message.external_id.in_(ids)))
        assert stored.all() == []


NOT_UTF8 = b"caf\xe9"  # Latin-1, as a misconfigured client sends it
"""Invalid UTF-8 inside a JSON string: how a decoder reports it changed between msgspec 0.22
(``UnicodeDecodeError``) and 0.23 (a ``DecodeError`` worded its own way). `.ci/run` runs this
module under both."""


def test_the_msgspec_under_test_is_the_one_asked_for() -> None:
    """`.ci/run` runs this module a second time with another msgspec release put first on the
    path; this proves it really ran with it."""
    import msgspec

    wanted = os.environ.get("SWITCHBOARD_EXPECT_MSGSPEC")
    assert msgspec.__version__ == (wanted or version("msgspec"))


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/api/v1/messages", b'{"id": "\xff", "conversation": "c", "sender": "s", "text": "x"}'),
        ("/api/v1/messages", b'{"id": "u1", "conversation": "c", "sender": "s", "text": "%s"}'),
        ("/api/v1/actions/execute", b'{"intent": "%s"}'),
        (
            "/api/v1/actions/execute",
            b'{"agent": "assistant", "action_type": "echo", "payload": {"text": "%s"}}',
        ),
        ("/api/v1/users", b'{"name": "%s"}'),
        ("/api/v1/tokens", b'{"name": "%s", "role": "actions"}'),
        ("/api/v1/workflows/onboard/run", b'{"payload": {"client": "%s"}}'),
        ("/portal/login", b'{"name": "%s", "password": "x"}'),
    ],
    ids=["rest id", "rest text", "intent", "payload", "user", "token", "workflow", "login"],
)
async def test_invalid_utf_8_is_a_400_in_our_words_and_nothing_is_stored(
    client: AsyncTestClient[Any], path: str, body: bytes
) -> None:
    body = body.replace(b"%s", NOT_UTF8)
    before = await rows_held(client)
    response = await client.post(path, content=body, headers={"content-type": "application/json"})
    assert (response.status_code, response.json()) == (
        400,
        {"error": "invalid_input", "detail": "the body is not valid UTF-8"},
    )
    assert await rows_held(client) == before


async def test_invalid_utf_8_in_a_twilio_form_is_a_400(client: AsyncTestClient[Any]) -> None:
    # Twilio's body is read before its signature can be checked.
    target, _, headers = signed(inbound_form("x", sid="SMutf8"))
    twilio = await client.post(target, content=b"Body=\xff\xfe", headers=headers)
    assert (twilio.status_code, twilio.json()["detail"]) == (400, "the body is not valid UTF-8")


async def test_a_verified_webhook_with_invalid_utf_8_is_kept_unreadable_and_answered_200(
    client: AsyncTestClient[Any],
) -> None:
    update = (
        b'{"update_id": 7101, "message": {"message_id": 1, "date": 1, "text": "%s", ' % NOT_UTF8
    )
    update += b'"chat": {"id": 5, "type": "private"}, "from": {"id": 5, "is_bot": false, '
    update += b'"first_name": "A"}}}'
    telegram = {"X-Telegram-Bot-Api-Secret-Token": SECRET}
    response = await client.post("/webhooks/telegram", content=update, headers=telegram)
    assert response.status_code == 200
    async with db_session(client) as session:
        kept = (
            (await session.execute(select(Message).where(Message.channel == "telegram")))
            .scalars()
            .all()
        )
    ours = [m for m in kept if m.raw.get("body", "").startswith('{"update_id": 7101,')]
    assert [(m.state, m.external_id.startswith("unreadable:")) for m in ours] == [("ignored", True)]


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("GET", "/api/v1/activities/99999999999999999999999", None),
        ("GET", f"/api/v1/conversations/{BIG}/messages", None),
        ("GET", f"/api/v1/conversations/1/messages?after={2**63}", None),
        ("POST", f"/api/v1/activities/{BIG}/approve", None),
        ("POST", f"/api/v1/users/{BIG}/role", {"role": "admin"}),
        ("POST", f"/api/v1/users/{BIG}/identities", {"channel": "rest", "address": "x"}),
        ("DELETE", f"/api/v1/tokens/{BIG}", None),
    ],
)
async def test_integers_beyond_64_bits_are_a_400(
    client: AsyncTestClient[Any], method: str, path: str, body: Any
) -> None:
    response = await client.request(method, path, json=body)
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_input"


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/api/v1/users", {"name": "a\u0000b"}),
        ("/api/v1/users/1/identities", {"channel": "rest", "address": "a\u0000b"}),
        ("/api/v1/tokens", {"name": "a\u0000b", "role": "actions"}),
    ],
)
async def test_a_nul_in_an_admin_request_is_a_400(
    client: AsyncTestClient[Any], path: str, body: dict[str, Any]
) -> None:
    if path.startswith("/api/v1/users/1/"):
        assert (await client.post("/api/v1/users", json={"name": "Ana"})).status_code == 201
    response = await client.post(path, json=body)
    assert response.status_code == 400
    # Refused as the document says (a pattern without NUL), naming the field at fault.
    field = "address" if "identities" in path else "name"
    assert [problem["key"] for problem in response.json()["extra"]] == [field]


async def test_verified_providers_get_200_and_what_they_sent_is_stored_cleaned(
    client: AsyncTestClient[Any],
) -> None:
    update = text_update(7001, "hola")
    update["message"]["from"]["first_name"] = "An\u0000a"
    telegram = {"X-Telegram-Bot-Api-Secret-Token": SECRET}
    assert (
        await client.post("/webhooks/telegram", json=update, headers=telegram)
    ).status_code == 200
    deep = b'{"update_id": 7002, "message": ' + b'{"a": ' * 5000 + b"1" + b"}" * 5000 + b"}"
    assert (
        await client.post("/webhooks/telegram", content=deep, headers=telegram)
    ).status_code == 200
    bad_utf8 = await client.post("/webhooks/telegram", content=b"\xff\xfe{", headers=telegram)
    assert bad_utf8.status_code == 200
    form = inbound_form(
        "hola", sid="SMnulname", sender="whatsapp:+34611999000", ProfileName="Ma\u0000ría"
    )
    target, body, headers = signed(form)
    assert (await client.post(target, content=body, headers=headers)).status_code == 200
    async with db_session(client) as session:
        names = set((await session.execute(select(User.name))).scalars())
        kept = {
            m.external_id: m
            for m in (await session.execute(select(Message))).scalars()
            if m.direction == "inbound"
        }
    assert {"Ana", "María"} <= names
    assert kept["7001"].raw["message"]["from"]["first_name"] == "Ana"
    assert kept[message_sid("SMnulname")].raw["ProfileName"] == "María"
    bodies = {
        m.raw["body"][:20]: m.state
        for key, m in kept.items()
        if key and key.startswith("unreadable:") and m.channel == "telegram"
    }
    # The deep one and the one that is not UTF-8: kept, not acted on.
    assert bodies['{"update_id": 7002, '] == "ignored"
    assert bodies["\ufffd\ufffd{"] == "ignored"


async def test_a_web_chat_frame_with_a_nul_gets_an_error_frame_and_the_socket_lives(
    client: AsyncTestClient[Any],
) -> None:
    with await client.websocket_connect("/chat/ws") as socket:
        assert socket.receive_json()["type"] == "hello"
        socket.send_json({"id": "w\u00001", "text": "hola"})
        error = socket.receive_json()
        assert (error["type"], error["error"], error["detail"]) == (
            "error",
            "invalid_input",
            "id contains a NUL character",
        )
        socket.send_json({"id": "w2", "text": "echo sigo"})
        frames = [socket.receive_json(), socket.receive_json()]
        assert {f["type"] for f in frames} == {"ack", "reply"}
