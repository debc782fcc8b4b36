"""Hostile structure: JSON nested deeper than ``MAX_JSON_DEPTH`` on every kind of route is never
a 5xx. A client's body is a 400 naming the limit, with nothing stored; a verified provider's
webhook is stored as unreadable and answered 200 (a refusal would be retried for days); a
socket's frame gets an error and the socket lives on. Checked on the bytes, before anything
that recurses reads them."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import msgspec
import pytest
from litestar.exceptions import WebSocketDisconnect
from litestar.testing import AsyncTestClient
from sqlalchemy import select

from channels.whatsapp_cloud import WhatsAppCloudChannel
from dispatch.infra.clean import MAX_JSON_DEPTH, clean_json
from dispatch.record.models import Message
from gateway.app import create_app
from gateway.settings import Settings
from tests.conftest import ADMIN
from tests.support import whatsapp_cloud_webhook as meta
from tests.support.db import db_session, rows_held
from tests.support.telegram_updates import SECRET, telegram_env, text_update
from tests.support.twilio_webhook import twilio_env

pytestmark = pytest.mark.services


def nested(depth: int, leaf: bytes = b"1") -> bytes:
    """``depth`` arrays inside each other around ``leaf``."""
    return b"[" * depth + leaf + b"]" * depth


def deep_object(depth: int) -> bytes:
    return b'{"a": ' * depth + b"1" + b"}" * depth


@pytest.fixture
async def client(
    make_settings: Callable[..., Settings], pg_migrated: str
) -> AsyncIterator[AsyncTestClient[Any]]:
    providers = {
        **telegram_env("http://127.0.0.1:9"),
        **twilio_env("http://127.0.0.1:9"),
        **meta.cloud_env("http://127.0.0.1:9"),
    }
    settings = make_settings(database_url=pg_migrated, **providers)
    async with AsyncTestClient(create_app(settings)) as test_client:
        test_client.headers.update(ADMIN)
        yield test_client


DEPTHS = [MAX_JSON_DEPTH + 1, 600, 5000]
CLOUD = WhatsAppCloudChannel.name


@pytest.mark.parametrize("depth", DEPTHS)
@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/api/v1/messages", b'{"id": "n1", "conversation": "c", "sender": "s", "text": %s}'),
        (
            "/api/v1/activities",
            b'{"agent": "a", "action_type": "b", "status": "completed", "payload": {"x": %s}}',
        ),
        (
            "/api/v1/activities",
            b'{"agent": "a", "action_type": "b", "status": "completed", "result": {"x": %s}}',
        ),
        (
            "/api/v1/actions/execute",
            b'{"agent": "assistant", "action_type": "echo", "payload": {"text": %s}}',
        ),
        ("/api/v1/workflows/onboard/run", b'{"payload": %s}'),
        ("/api/v1/users", b'{"name": %s}'),
        ("/api/v1/tokens", b"%s"),
        ("/portal/login", b"%s"),
    ],
    ids=["message", "note payload", "note result", "execute", "workflow", "user", "token", "login"],
)
async def test_a_client_body_nested_too_deep_is_a_400_naming_the_limit(
    client: AsyncTestClient[Any], path: str, body: bytes, depth: int
) -> None:
    before = await rows_held(client)
    response = await client.post(
        path,
        content=body.replace(b"%s", nested(depth)),
        headers={"content-type": "application/json"},
    )
    assert response.status_code == 400, response.text
    assert response.json()["error"] == "invalid_input"
    assert f"deeper than {MAX_JSON_DEPTH} levels" in response.json()["detail"]
    assert response.json()["extra"] == {"limit": MAX_JSON_DEPTH}
    assert await rows_held(client) == before


async def test_portal_login_is_refused_before_anyone_is_known(
    client: AsyncTestClient[Any],
) -> None:
    """Unauthenticated, a 20 KB ``[[[…]]]``: a 400, not litestar's RecursionError."""
    client.headers.pop("Authorization")
    response = await client.post(
        "/portal/login", content=nested(10_000), headers={"content-type": "application/json"}
    )
    assert response.status_code == 400
    assert response.json()["extra"] == {"limit": MAX_JSON_DEPTH}


async def test_nesting_up_to_the_limit_is_read(client: AsyncTestClient[Any]) -> None:
    inner = nested(MAX_JSON_DEPTH - 2, b'"deep"')
    body = b'{"agent": "a", "action_type": "b", "status": "completed", "payload": {"x": %s}}'
    response = await client.post(
        "/api/v1/activities",
        content=body.replace(b"%s", inner),
        headers={"content-type": "application/json"},
    )
    assert response.status_code == 201, response.text
    value = response.json()["details"]["payload"]["x"]
    for _ in range(MAX_JSON_DEPTH - 2):
        (value,) = value
    assert value == "deep"


@pytest.mark.parametrize("depth", DEPTHS)
async def test_a_signed_telegram_update_nested_too_deep_is_kept_unreadable(
    client: AsyncTestClient[Any], depth: int
) -> None:
    update_id = 8000 + depth
    body = text_update(update_id, "hola")
    raw = b'{"update_id": %d, "message": %s, "unknown": %s}' % (
        update_id,
        msgspec.json.encode(body["message"]),
        deep_object(depth),
    )
    telegram = {"X-Telegram-Bot-Api-Secret-Token": SECRET, "content-type": "application/json"}
    response = await client.post("/webhooks/telegram", content=raw, headers=telegram)
    assert response.status_code == 200, response.text
    again = await client.post("/webhooks/telegram", content=raw, headers=telegram)
    assert again.status_code == 200  # a provider's retry: stored once
    kept = await _kept(client, "telegram", f'{{"update_id": {update_id},')
    assert [(m.state, m.external_id.startswith("unreadable:")) for m in kept] == [("ignored", True)]


@pytest.mark.parametrize("depth", DEPTHS)
async def test_a_signed_whatsapp_cloud_call_nested_too_deep_is_kept_unreadable(
    client: AsyncTestClient[Any], depth: int
) -> None:
    marker = f"deep-{depth}"
    payload = meta.notification(meta.messages(meta.text("hola", id=f"wamid.{marker}")))
    encoded = msgspec.json.encode(payload)
    raw = encoded[:-1] + b', "unknown": ' + deep_object(depth) + b"}"
    body, headers = meta.signed(raw)
    response = await client.post(meta.PATH, content=body, headers=headers)
    assert response.status_code == 200, response.text
    kept = await _kept(client, CLOUD, '{"object":')
    assert any(marker in m.raw["body"] for m in kept)
    assert all(m.state == "ignored" for m in kept if marker in m.raw["body"])


async def test_a_web_chat_frame_nested_too_deep_gets_an_error_frame_and_the_socket_lives(
    client: AsyncTestClient[Any],
) -> None:
    with await client.websocket_connect("/chat/ws") as socket:
        assert socket.receive_json()["type"] == "hello"
        socket.send_text('{"id": "n1", "text": "x", "extra": ' + nested(600).decode() + "}")
        error = socket.receive_json()
        assert (error["type"], error["error"]) == ("error", "invalid_input")
        assert f"deeper than {MAX_JSON_DEPTH} levels" in error["detail"]
        socket.send_json({"id": "n2", "text": "echo sigo"})
        assert {socket.receive_json()["type"], socket.receive_json()["type"]} == {"ack", "reply"}


async def test_the_events_socket_refuses_a_first_frame_nested_too_deep(
    client: AsyncTestClient[Any],
) -> None:
    with await client.websocket_connect("/api/v1/events") as socket:
        socket.send_text('{"token": "x", "filter": ' + nested(5000).decode() + "}")
        error = socket.receive_json()
        assert error["type"] == "error"
        assert f"deeper than {MAX_JSON_DEPTH} levels" in error["detail"]
        with pytest.raises(WebSocketDisconnect) as closed:
            socket.receive_text()
    assert closed.value.code == 4400


def test_walking_stored_json_is_bounded() -> None:
    """What the edge let through cannot go deeper; clean_json stops at the limit anyway."""
    value: Any = "leaf"
    for _ in range(50_000):
        value = [value]
    cleaned = clean_json(value)
    for _ in range(MAX_JSON_DEPTH):
        (cleaned,) = cleaned
    assert isinstance(cleaned, str)
    assert "nested deeper" in cleaned


async def _kept(client: AsyncTestClient[Any], channel: str, head: str) -> list[Message]:
    async with db_session(client) as session:
        rows = (await session.execute(select(Message).where(Message.channel == channel))).scalars()
        return [m for m in rows if str(m.raw.get("body", "")).startswith(head)]
