"""Telegram: secret-token webhooks in, the Bot API (a local server) out."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest
from litestar.testing import AsyncTestClient
from sqlalchemy import select

from channels.telegram import TelegramChannel
from dispatch.record.models import Activity, Message, User, UserIdentity
from gateway.app import create_app
from gateway.settings import Settings
from tests.conftest import ADMIN
from tests.support.approvals import REFUND_CATALOG
from tests.support.db import db_session, outbound_rows, stored
from tests.support.flow import record_releases, wait_for
from tests.support.http_server import Answer, ScriptedServer
from tests.support.telegram_api import BLOCKED, CHAT_NOT_FOUND, TelegramApi, too_many
from tests.support.telegram_updates import (
    SECRET,
    callback_update,
    telegram_env,
    text_update,
    update_with,
)

STALE = "Este botón ya no es válido."
"""A refused button, said in the language of whoever pressed it (the updates' Telegram user has
``language_code`` "es")."""


@pytest.fixture
def api() -> Iterator[TelegramApi]:
    with TelegramApi() as server:
        yield server
        assert server.unexpected == []


@pytest.fixture
def settings_for(
    make_settings: Callable[..., Settings], sqlite_url: str, api: TelegramApi
) -> Callable[..., Settings]:
    def make(**extra: Any) -> Settings:
        values = {"telegram_chat_rate_per_s": "50", **extra}
        return make_settings(database_url=sqlite_url, **telegram_env(api.url, **values))

    return make


@pytest.fixture
async def client(settings_for: Callable[..., Settings]) -> AsyncIterator[AsyncTestClient[Any]]:
    async with AsyncTestClient(create_app(settings_for())) as test_client:
        test_client.headers.update(ADMIN)
        yield test_client


async def post_update(
    client: AsyncTestClient[Any], update: dict[str, Any], secret: str | None = SECRET
) -> Any:
    headers = {} if secret is None else {"X-Telegram-Bot-Api-Secret-Token": secret}
    return await client.post("/webhooks/telegram", json=update, headers=headers)


async def calls(api: TelegramApi, method: str, count: int = 1, timeout_s: float = 15) -> list[Any]:
    async def ready() -> list[Any] | None:
        found = api.calls_to(method)
        return found if len(found) >= count else None

    result: list[Any] = await wait_for(ready, timeout_s=timeout_s)
    return result


# -- the secret token ----------------------------------------------------------------------


async def test_update_with_the_secret_is_answered_on_its_chat(
    client: AsyncTestClient[Any], api: TelegramApi
) -> None:
    response = await post_update(client, text_update(1, "echo hola Telegram", chat_id=777))
    assert response.status_code == 200
    assert response.json() == {"ok": True}
    [sent] = await calls(api, "sendMessage")
    assert sent.params["chat_id"] == "777"
    assert sent.params["text"] == "hola Telegram"
    assert "parse_mode" not in sent.params  # plain text: user content can't break formatting
    [row] = await outbound_rows(client, 1)
    assert row.delivery == "sent"
    assert row.external_id is not None


async def test_replies_in_two_chats_with_the_same_message_id_are_both_recorded_sent(
    client: AsyncTestClient[Any], api: TelegramApi
) -> None:
    """Telegram numbers messages per chat: the first reply in every chat has the same id."""
    for update_id, chat_id in ((11, 801), (12, 802)):
        await post_update(client, text_update(update_id, "echo hola", chat_id=chat_id))
    sent = await calls(api, "sendMessage", 2)
    assert sorted(c.params["chat_id"] for c in sent) == ["801", "802"]
    rows = await outbound_rows(client, 2)
    assert [r.delivery for r in rows] == ["sent", "sent"]
    assert sorted(r.external_id for r in rows) == ["801:1", "802:1"]


@pytest.mark.parametrize(("secret", "detail"), [(None, "missing"), ("wrong-secret", "wrong")])
async def test_missing_or_wrong_secret_is_refused_and_nothing_stored(
    client: AsyncTestClient[Any], api: TelegramApi, secret: str | None, detail: str
) -> None:
    response = await post_update(client, text_update(2, "echo intruso"), secret=secret)
    assert response.status_code == 403
    assert response.json()["detail"].startswith(detail)
    assert await stored(client, Message) == 0
    await asyncio.sleep(0.1)
    assert api.calls_to("sendMessage") == []


# -- update kinds --------------------------------------------------------------------------


async def test_commands_with_and_without_bot_name(
    client: AsyncTestClient[Any], api: TelegramApi
) -> None:
    await post_update(client, text_update(10, "/start", chat_id=1))
    await post_update(client, text_update(11, "/help@switchboard_test_bot", chat_id=2))
    sent = await calls(api, "sendMessage", 2)
    # "/start" shows no language; the sender's Telegram language_code ("es") decides. Telegram
    # shows buttons: help is one sentence, and a button per action.
    for call in sent:
        assert call.params["text"] == (
            "Esto es lo que puedo hacer: toca una opción o escribe lo que necesites."
        )
        assert call.params["reply_markup"]["inline_keyboard"]


async def test_captions_with_photo_and_document_keep_file_ids(
    client: AsyncTestClient[Any], api: TelegramApi
) -> None:
    photo = update_with(
        20,
        caption="echo mira esto",
        photo=[
            {"file_id": "small-id", "file_unique_id": "s", "width": 90, "height": 90},
            {"file_id": "large-id", "file_unique_id": "l", "width": 1280, "height": 960},
        ],
    )
    document = update_with(
        21,
        caption="echo el contrato",
        document={"file_id": "doc-id", "file_unique_id": "d", "mime_type": "application/pdf"},
    )
    await post_update(client, photo)
    await post_update(client, document)
    await calls(api, "sendMessage", 2)
    async with db_session(client) as session:
        rows = (
            await session.execute(
                select(Message).where(Message.direction == "inbound").order_by(Message.id)
            )
        ).scalars()
        media = [(r.text, r.media) for r in rows]
    assert media == [
        ("echo mira esto", [{"url": "telegram-file:large-id", "content_type": "image/jpeg"}]),
        ("echo el contrato", [{"url": "telegram-file:doc-id", "content_type": "application/pdf"}]),
    ]


@pytest.mark.parametrize(
    ("update", "reason"),
    [
        (
            {"update_id": 30, "edited_message": text_update(30, "edited")["message"]},
            "unhandled update kind: edited_message",
        ),
        (
            {
                "update_id": 31,
                "channel_post": {
                    "message_id": 1,
                    "date": 1700000000,
                    "chat": {"id": -100, "type": "channel", "title": "news"},
                    "text": "post",
                },
            },
            "unhandled update kind: channel_post",
        ),
        (
            {
                "update_id": 32,
                "my_chat_member": {
                    "chat": {"id": 5, "type": "private"},
                    "from": {"id": 5, "is_bot": False, "first_name": "A"},
                    "date": 1700000000,
                    "old_chat_member": {
                        "status": "member",
                        "user": {"id": 1, "is_bot": True, "first_name": "B"},
                    },
                    "new_chat_member": {
                        "status": "kicked",
                        "until_date": 0,
                        "user": {"id": 1, "is_bot": True, "first_name": "B"},
                    },
                },
            },
            "unhandled update kind: my_chat_member",
        ),
        (
            update_with(
                33,
                new_chat_members=[{"id": 9, "is_bot": False, "first_name": "Nuevo"}],
            ),
            "unsupported message content",
        ),
    ],
)
async def test_updates_we_do_not_handle_get_200_and_are_recorded_as_ignored(
    client: AsyncTestClient[Any], api: TelegramApi, update: dict[str, Any], reason: str
) -> None:
    response = await post_update(client, update)
    assert response.status_code == 200
    async with db_session(client) as session:
        row = (await session.execute(select(Message))).scalars().one()
    assert row.state == "ignored"
    assert row.raw["update_id"] == update["update_id"]
    await asyncio.sleep(0.2)
    assert await stored(client, Activity) == 0
    assert api.calls_to("sendMessage") == []
    assert reason  # the reason is logged; the row keeps the raw update for audit


@pytest.mark.parametrize(
    "body",
    [
        b'{"message": {}}',
        b"not json at all",
        b'{"update_id": "seven"}',
        b"\xff\xfe bad utf-8",
        b'{"update_id": 1, "message": "a string"}',
        b'{"update_id": 2, "callback_query": {"id": "q", "data": 7}}',
        b'{"update_id": 3, "message": {"message_id": 3, "date": 1, "text": "no chat"}}',
        b'{"update_id": 4, "message": {"message_id": 4, "date": 1, "text": "hi", '
        b'"chat": {"id": 9, "type": "private"}, "from": {"id": "nine", "first_name": "A"}}}',
    ],
    ids=[
        "no update_id",
        "not json",
        "update_id not a number",
        "invalid utf-8",
        "message not an object",
        "callback of the wrong shape",
        "message without its chat",
        "sender of the wrong shape",
    ],
)
async def test_a_verified_update_that_cannot_be_read_is_kept_and_answered_200(
    client: AsyncTestClient[Any], api: TelegramApi, body: bytes
) -> None:
    """Telegram retries anything but a 2xx: what it sends with our secret is stored, once."""
    headers = {"X-Telegram-Bot-Api-Secret-Token": SECRET, "content-type": "application/json"}
    for _ in range(2):
        response = await client.post("/webhooks/telegram", content=body, headers=headers)
        assert response.status_code == 200
        assert response.json() == {"ok": True}
    async with db_session(client) as session:
        [row] = (await session.execute(select(Message))).scalars().all()
    assert row.state == "ignored"
    assert row.external_id is not None
    assert row.external_id.startswith("unreadable:")
    assert row.raw["body"] == body.decode("utf-8", "replace")
    assert await stored(client, User) == 0
    await asyncio.sleep(0.2)
    assert await stored(client, Activity) == 0
    assert api.calls_to("sendMessage") == []


async def test_an_unreadable_update_without_the_secret_is_refused(
    client: AsyncTestClient[Any],
) -> None:
    response = await client.post("/webhooks/telegram", content=b"not json at all")
    assert response.status_code == 403
    assert await stored(client, Message) == 0


async def test_fifty_concurrent_resends_of_one_update(
    client: AsyncTestClient[Any], api: TelegramApi
) -> None:
    update = text_update(40, "echo una sola vez")
    responses = await asyncio.gather(*(post_update(client, update) for _ in range(50)))
    assert {r.status_code for r in responses} == {200}
    await calls(api, "sendMessage")
    await asyncio.sleep(0.5)
    assert len(api.calls_to("sendMessage")) == 1
    assert await stored(client, Message, Message.direction == "inbound") == 1
    assert await stored(client, Activity) == 1


async def test_telegram_users_become_guests(client: AsyncTestClient[Any], api: TelegramApi) -> None:
    await post_update(client, text_update(45, "echo hola", chat_id=555, user_id=555))
    await calls(api, "sendMessage")
    async with db_session(client) as session:
        identity = (await session.execute(select(UserIdentity))).scalars().one()
        user = (await session.execute(select(User))).scalars().one()
    assert (identity.channel, identity.address) == ("telegram", "555")
    assert (user.name, user.role) == ("Ana García", "guest")


# -- buttons -------------------------------------------------------------------------------


async def test_help_offers_buttons_and_a_tap_runs_the_choice(
    client: AsyncTestClient[Any], api: TelegramApi
) -> None:
    await post_update(client, text_update(50, "help", chat_id=808))
    [menu] = await calls(api, "sendMessage")
    keyboard = menu.params["reply_markup"]["inline_keyboard"]
    labels = [row[0]["text"] for row in keyboard]
    assert "echo hello" in labels
    data = keyboard[labels.index("echo hello")][0]["callback_data"]
    assert len(data.encode()) <= 64
    assert "echo" not in data  # opaque

    await post_update(client, callback_update(51, data, chat_id=808, query_id="q-51"))
    sent = await calls(api, "sendMessage", 2)
    assert sent[1].params == {"chat_id": "808", "text": "hello"}
    [answer] = await calls(api, "answerCallbackQuery")
    assert answer.params["callback_query_id"] == "q-51"
    assert "text" not in answer.params


@pytest.mark.parametrize(
    "forge",
    [
        lambda data: data[:-1] + ("A" if data[-1] != "A" else "B"),  # bad signature
        lambda data: "1." + data.split(".", 1)[1],  # another message, same signature
        lambda data: "garbage",
    ],
)
async def test_forged_callbacks_change_nothing_and_are_answered(
    client: AsyncTestClient[Any], api: TelegramApi, forge: Callable[[str], str]
) -> None:
    await post_update(client, text_update(60, "help", chat_id=909))
    [menu] = await calls(api, "sendMessage")
    data = menu.params["reply_markup"]["inline_keyboard"][1][0]["callback_data"]
    await post_update(client, callback_update(61, forge(data), chat_id=909, query_id="q-61"))
    [answer] = await calls(api, "answerCallbackQuery")
    assert answer.params == {"callback_query_id": "q-61", "text": STALE}
    await asyncio.sleep(0.3)
    assert len(api.calls_to("sendMessage")) == 1
    assert await stored(client, Activity) == 1


async def test_a_button_replayed_in_another_chat_is_refused(
    client: AsyncTestClient[Any], api: TelegramApi
) -> None:
    await post_update(client, text_update(70, "help", chat_id=1001))
    [menu] = await calls(api, "sendMessage")
    data = menu.params["reply_markup"]["inline_keyboard"][1][0]["callback_data"]
    await post_update(client, callback_update(71, data, chat_id=2002, query_id="q-71"))
    [answer] = await calls(api, "answerCallbackQuery")
    assert answer.params["text"] == STALE
    await asyncio.sleep(0.3)
    assert await stored(client, Activity) == 1


# -- outbound ------------------------------------------------------------------------------


async def test_a_10000_character_reply_is_split_and_sent_in_order(
    settings_for: Callable[..., Settings], api: TelegramApi
) -> None:
    settings = settings_for(max_text_chars="12000")
    async with AsyncTestClient(create_app(settings)) as client:
        client.headers.update(ADMIN)
        text = "\n".join(f"renglón {n:04d} " + "y" * 60 for n in range(140))
        assert len(text) >= 10000
        await post_update(client, text_update(80, f"echo {text}"))
        sent = await calls(api, "sendMessage", 3)
    assert [len(c.params["text"]) <= 4096 for c in sent] == [True, True, True]
    assert "\n".join(c.params["text"] for c in sent) == text


async def test_429_waits_retry_after_then_succeeds(
    client: AsyncTestClient[Any], api: TelegramApi
) -> None:
    api.errors["sendMessage"] = [too_many(1)]
    await post_update(client, text_update(90, "echo paciencia"))
    first, second = await calls(api, "sendMessage", 2)
    assert second.at - first.at >= 1.0
    assert second.params["text"] == "paciencia"
    [row] = await outbound_rows(client, 1)
    assert row.delivery == "sent"


@pytest.mark.parametrize(
    ("error", "reason"),
    [
        (BLOCKED, "telegram 403: Forbidden: bot was blocked by the user"),
        (CHAT_NOT_FOUND, "telegram 400: Chat not found"),
    ],
)
async def test_blocked_bot_or_missing_chat_fails_without_retry(
    client: AsyncTestClient[Any], api: TelegramApi, error: tuple[int, str], reason: str
) -> None:
    api.errors["sendMessage"] = [error]
    await post_update(client, text_update(100, "echo nadie"))
    [row] = await outbound_rows(client, 1)
    assert row.delivery == "failed"
    assert row.delivery_error == reason
    await asyncio.sleep(0.2)
    assert len(api.calls_to("sendMessage")) == 1
    activity = (await client.get(f"/api/v1/activities/{row.activity_id}")).json()
    assert any(e["kind"] == "reply_failed" for e in activity["events"])


def max_in_window(times: list[float], window_s: float = 1.0) -> int:
    times = sorted(times)
    return max(sum(1 for t in times[i:] if t - start < window_s) for i, start in enumerate(times))


async def test_sends_are_paced_per_chat_and_overall(
    settings_for: Callable[..., Settings], api: TelegramApi
) -> None:
    settings = settings_for(telegram_chat_rate_per_s="1", telegram_global_rate_per_s="10")
    async with AsyncTestClient(create_app(settings)) as client:
        client.headers.update(ADMIN)
        released = record_releases(client.app.state.runtime.channels.of(TelegramChannel)._limiter)
        for n in range(3):
            await post_update(client, text_update(200 + n, f"echo mismo chat {n}", chat_id=42))
        for n in range(15):
            await post_update(client, text_update(300 + n, f"echo chat {n}", chat_id=5000 + n))
        sent = await calls(api, "sendMessage", 18, timeout_s=30)
    assert len(sent) == 18
    assert len(released) == 18
    same_chat = [at for at, paces in released if paces[0][0] == "telegram:chat:42"]
    assert len(same_chat) == 3
    assert max_in_window(same_chat) <= 1
    assert max_in_window([at for at, _ in released]) <= 10


async def test_media_replies_go_out_as_photo_and_document(
    settings_for: Callable[..., Settings], api: TelegramApi, tmp_path: Any
) -> None:
    with ScriptedServer() as service:
        catalog = tmp_path / "catalog.toml"
        catalog.write_text(
            f"""
[fallback]
agent = "a"
action = "files"
[agents.a.actions.files]
description = "Files"
handler = "http_call"
public = true
[agents.a.actions.files.http]
url = "{service.url}/files"
retries = 0
"""
        )
        service.expect(
            "/files",
            Answer(
                200,
                {
                    "reply": "Aquí están",
                    "media": [
                        {"url": "https://cdn.example.com/p.png", "content_type": "image/png"},
                        {"url": "telegram-file:BQACdoc", "content_type": "application/pdf"},
                    ],
                },
            ),
        )
        async with AsyncTestClient(create_app(settings_for(catalog=catalog))) as client:
            client.headers.update(ADMIN)
            await post_update(client, text_update(400, "mis archivos", chat_id=64))
            [photo] = await calls(api, "sendPhoto")
            [document] = await calls(api, "sendDocument")
        assert service.unexpected == []
    [text] = api.calls_to("sendMessage")
    assert text.params["text"] == "Aquí están"
    assert (photo.params["chat_id"], photo.params["photo"]) == (
        "64",
        "https://cdn.example.com/p.png",
    )
    assert document.params["document"] == "BQACdoc"
    assert text.at <= photo.at <= document.at


# -- approvals -----------------------------------------------------------------------------


async def test_an_approver_decides_with_buttons_and_a_replayed_button_is_refused(
    settings_for: Callable[..., Settings], api: TelegramApi, tmp_path: Any
) -> None:
    catalog = tmp_path / "catalog.toml"
    catalog.write_text(REFUND_CATALOG)
    async with AsyncTestClient(create_app(settings_for(catalog=catalog))) as client:
        services = client.app.state.runtime
        supervisor = await services.users.add("Sup", "supervisor")
        await services.users.link(str(supervisor.id), "telegram", "7007")
        await post_update(client, text_update(300, "refund 5", chat_id=6006))
        sent = await calls(api, "sendMessage", 2)
        [asked] = [c for c in sent if c.params["chat_id"] == "7007"]
        assert asked.params["text"].startswith("Approval needed for request #1: Refund an invoice")
        keyboard = asked.params["reply_markup"]["inline_keyboard"]
        assert [row[0]["text"] for row in keyboard] == ["Approve #1", "Reject #1"]
        approve = keyboard[0][0]["callback_data"]
        assert "YES" not in approve  # opaque, signed

        # The requester replays the approve button in their own chat: refused, nothing counts.
        await post_update(client, callback_update(301, approve, chat_id=6006, query_id="q-301"))
        [refused] = await calls(api, "answerCallbackQuery")
        assert refused.params["text"] == STALE

        # The supervisor taps it.
        await post_update(client, callback_update(302, approve, chat_id=7007, query_id="q-302"))
        await calls(api, "answerCallbackQuery", 2)

        async def result() -> bool:
            texts = [c.params["text"] for c in api.calls_to("sendMessage")]
            return "refund: invoice=5" in texts

        await wait_for(result)
        activity = await services.activities.get(1, with_events=True)
        assert activity.status == "completed"
        approved = [e for e in activity.events if e.kind == "approved"]
        assert [(e.actor, e.data["channel"]) for e in approved] == [
            (f"user:{supervisor.id}", "telegram")
        ]
