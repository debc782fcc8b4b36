"""WhatsApp through Meta's Cloud API: signed webhooks in, the Graph API (a local server) out."""

from __future__ import annotations

import asyncio
import datetime as dt
import itertools
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from litestar.testing import AsyncTestClient
from sqlalchemy import select

from channels.whatsapp_cloud import WhatsAppCloudChannel, WhatsAppCloudSettings
from dispatch.infra.errors import CatalogError, SettingsError
from dispatch.record.messages import Media, OutboundMessage
from dispatch.record.models import Activity, Message, User, UserIdentity
from gateway.app import create_app
from gateway.settings import Settings
from tests.conftest import ADMIN
from tests.support import whatsapp_cloud_webhook as meta
from tests.support.db import db_session, outbound_rows, stored
from tests.support.flow import record_releases, wait_for
from tests.support.graph_api import PHONE_NUMBER_ID, VERSION, GraphApi, Scripted
from tests.support.runtime import runtime_for
from tests.support.twilio_api import TwilioApi
from tests.support.twilio_webhook import ACCOUNT_SID, AUTH_TOKEN, inbound_form, twilio_env
from tests.support.twilio_webhook import signed as twilio_signed

CATALOG = """
[fallback]
agent = "assistant"
action = "help"

[agents.assistant.actions.help]
description = "List what you can ask"
handler = "help"
public = true

[agents.assistant.actions.echo]
description = "Repeat a text back"
handler = "echo"
public = true
examples = ["echo hola"]
[agents.assistant.actions.echo.payload]
text = { type = "string" }
[agents.assistant.actions.echo.templates.whatsapp_cloud]
name = "switchboard_reply"
language = "es"
components = [
  { type = "body", parameters = [
    { type = "text", text = "{text}" },
    { type = "text", text = "#{activity_id}" },
  ] },
]

[agents.assistant.actions.shout]
description = "Repeat a text back, louder"
handler = "echo"
public = true
[agents.assistant.actions.shout.payload]
text = { type = "string" }

[agents.billing.actions.refund]
description = "Refund an invoice"
handler = "echo"
public = true
[agents.billing.actions.refund.payload]
invoice = { type = "id" }
[agents.billing.actions.refund.approval]
approvers = ["supervisor"]

[[rules]]
id = "echo"
agent = "assistant"
action = "echo"
patterns = ['^echo\\s+(?P<text>.+)$']

[[rules]]
id = "shout"
agent = "assistant"
action = "shout"
patterns = ['^shout\\s+(?P<text>.+)$']

[[rules]]
id = "refund"
agent = "billing"
action = "refund"
patterns = ['^refund\\s+(?P<invoice>\\d+)$']
"""

ANA = "34600111222"
SOFIA = "34600999888"


@pytest.fixture
def api() -> Iterator[GraphApi]:
    with GraphApi() as server:
        yield server
        assert server.unexpected == []


@pytest.fixture
def catalog(tmp_path: Path) -> Path:
    path = tmp_path / "catalog.toml"
    path.write_text(CATALOG)
    return path


@pytest.fixture
def settings_for(
    make_settings: Callable[..., Settings], sqlite_url: str, api: GraphApi, catalog: Path
) -> Callable[..., Settings]:
    def make(**extra: Any) -> Settings:
        values = {"database_url": sqlite_url, "catalog": catalog, **meta.cloud_env(api.url)}
        return make_settings(**{**values, **extra})

    return make


@pytest.fixture
async def client(settings_for: Callable[..., Settings]) -> AsyncIterator[AsyncTestClient[Any]]:
    async with AsyncTestClient(create_app(settings_for())) as test_client:
        test_client.headers.update(ADMIN)
        yield test_client


async def deliver(client: AsyncTestClient[Any], payload: Any, **sign: Any) -> Any:
    body, headers = meta.signed(payload, **sign)
    return await client.post(meta.PATH, content=body, headers=headers)


async def said(client: AsyncTestClient[Any], body: str, sender: str = ANA) -> Any:
    return await deliver(client, meta.notification(meta.messages(meta.text(body, sender=sender))))


async def sent(api: GraphApi, count: int = 1) -> list[dict[str, Any]]:
    async def ready() -> list[dict[str, Any]] | None:
        return list(api.sent) if len(api.sent) >= count else None

    result: list[dict[str, Any]] = await wait_for(ready)
    return result


# -- the subscription check and signatures ------------------------------------------------


async def test_the_subscription_check_echoes_the_challenge(client: AsyncTestClient[Any]) -> None:
    query = {
        "hub.mode": "subscribe",
        "hub.verify_token": meta.VERIFY_TOKEN,
        "hub.challenge": "1158201444",
    }
    response = await client.get(meta.PATH, params=query)
    assert response.status_code == 200
    assert response.text == "1158201444"
    assert response.headers["content-type"].startswith("text/plain")
    for wrong in ({"hub.verify_token": "guess"}, {"hub.mode": "unsubscribe"}):
        refused = await client.get(meta.PATH, params={**query, **wrong})
        assert refused.status_code == 403
        assert refused.json()["error"] == "forbidden"


@pytest.mark.parametrize("case", ["missing", "tampered body", "other secret", "no prefix"])
async def test_unsigned_or_tampered_posts_are_refused_and_nothing_is_stored(
    client: AsyncTestClient[Any], api: GraphApi, case: str
) -> None:
    payload = meta.notification(meta.messages(meta.text("echo hola")))
    body, headers = meta.signed(
        payload, secret="not-the-app-secret" if case == "other secret" else meta.APP_SECRET
    )
    if case == "missing":
        del headers["x-hub-signature-256"]
    elif case == "tampered body":
        body = body.replace(b"hola", b"adios")
    elif case == "no prefix":
        headers["x-hub-signature-256"] = headers["x-hub-signature-256"].removeprefix("sha256=")
    response = await client.post(meta.PATH, content=body, headers=headers)
    assert response.status_code == 403
    assert response.json()["error"] == "forbidden"
    assert await stored(client, Message) == 0
    await asyncio.sleep(0.1)
    assert api.attempts == []


# -- messages in ---------------------------------------------------------------------------


async def test_a_text_is_answered_through_the_graph_api(
    client: AsyncTestClient[Any], api: GraphApi
) -> None:
    response = await said(client, "echo Hola desde Meta")
    assert response.status_code == 200
    [reply] = await sent(api)
    assert reply == {
        "messaging_product": "whatsapp",
        "recipient_type": "individual",
        "to": "+34600111222",
        "type": "text",
        "text": {"preview_url": False, "body": "Hola desde Meta"},
        "biz_opaque_callback_data": reply["biz_opaque_callback_data"],
    }
    [row] = await outbound_rows(client, 1)
    assert reply["biz_opaque_callback_data"] == f"sb:{row.id}"
    assert row.channel == "whatsapp_cloud"
    assert row.delivery == "queued"
    assert row.external_id is not None
    assert row.external_id.startswith("wamid.")
    async with db_session(client) as session:
        inbound = (
            await session.execute(select(Message).where(Message.direction == "inbound"))
        ).scalar_one()
        identity = (await session.execute(select(UserIdentity))).scalar_one()
        user = (await session.execute(select(User))).scalar_one()
    assert inbound.external_id is not None
    assert inbound.external_id.startswith("wamid.")
    assert inbound.raw["messages"][0]["text"]["body"] == "echo Hola desde Meta"
    assert (identity.channel, identity.address) == ("whatsapp", "+34600111222")
    assert (user.name, user.role) == ("Ana", "guest")


async def test_retries_of_one_wamid_are_stored_and_answered_once(
    client: AsyncTestClient[Any], api: GraphApi
) -> None:
    payload = meta.notification(meta.messages(meta.text("echo una vez", id="wamid.retry")))
    responses = await asyncio.gather(*(deliver(client, payload) for _ in range(20)))
    assert {r.status_code for r in responses} == {200}
    await sent(api)
    await asyncio.sleep(0.5)
    assert len(api.sent) == 1
    assert await stored(client, Message, Message.direction == "inbound") == 1
    assert await stored(client, Activity) == 1


async def test_several_messages_in_one_post_are_each_stored_and_answered(
    client: AsyncTestClient[Any], api: GraphApi
) -> None:
    payload = meta.notification(
        meta.messages(meta.text("echo uno"), meta.text("echo dos")),
        meta.messages(meta.text("echo tres", sender=SOFIA), name="Sofía"),
    )
    assert (await deliver(client, payload)).status_code == 200
    replies = await sent(api, 3)
    to_ana = [r["text"]["body"] for r in replies if r["to"] == "+34600111222"]
    assert to_ana == ["uno", "dos"]
    assert [r["text"]["body"] for r in replies if r["to"] == "+34600999888"] == ["tres"]
    assert await stored(client, Message, Message.direction == "inbound") == 3
    async with db_session(client) as session:
        names = sorted((await session.execute(select(User.name))).scalars())
    assert names == ["Ana", "Sofía"]


@pytest.mark.parametrize(
    ("kind", "content", "media"),
    [
        (
            "image",
            {"image": {"id": "1479537139650973", "mime_type": "image/jpeg", "caption": "mira"}},
            ("whatsapp-media:1479537139650973", "image/jpeg"),
        ),
        (
            "document",
            {"document": {"id": "88", "mime_type": "application/pdf", "filename": "f.pdf"}},
            ("whatsapp-media:88", "application/pdf"),
        ),
        ("audio", {"audio": {"id": "77", "mime_type": "audio/ogg; codecs=opus"}}, None),
    ],
)
async def test_media_are_kept_by_id(
    client: AsyncTestClient[Any],
    api: GraphApi,
    kind: str,
    content: dict[str, Any],
    media: tuple[str, str] | None,
) -> None:
    payload = meta.notification(meta.messages(meta.message(kind, content)))
    assert (await deliver(client, payload)).status_code == 200
    await sent(api)
    async with db_session(client) as session:
        row = (
            await session.execute(select(Message).where(Message.direction == "inbound"))
        ).scalar_one()
    assert row.state == "dispatched"
    expected = media or ("whatsapp-media:77", "audio/ogg; codecs=opus")
    assert row.media == [{"url": expected[0], "content_type": expected[1]}]
    assert row.text == content[kind].get("caption", "")


@pytest.mark.parametrize(
    "payload",
    [
        meta.notification(
            meta.messages(
                meta.message("location", {"location": {"latitude": 40.4, "longitude": -3.7}})
            )
        ),
        meta.notification(
            meta.messages(
                meta.message("reaction", {"reaction": {"message_id": "x", "emoji": "👍"}})
            )
        ),
        meta.notification(
            meta.messages(
                meta.message(
                    "unsupported",
                    {"errors": [{"code": 131051, "title": "Message type unknown"}]},
                )
            )
        ),
        meta.notification(
            {"phone_number": "15550001111", "event": "VERIFIED_ACCOUNT"}, field="account_update"
        ),
        meta.notification(meta.messages(meta.text("echo hola")), phone_number_id="999"),
    ],
    ids=["location", "reaction", "unsupported", "another field", "another phone number"],
)
async def test_anything_else_is_kept_as_ignored_and_answered_200(
    client: AsyncTestClient[Any], api: GraphApi, payload: dict[str, Any]
) -> None:
    for _ in range(2):  # Meta's retry stores nothing more
        assert (await deliver(client, payload)).status_code == 200
    async with db_session(client) as session:
        [row] = (await session.execute(select(Message))).scalars().all()
    assert row.state == "ignored"
    await asyncio.sleep(0.2)
    assert await stored(client, Activity) == 0
    assert await stored(client, User) == 0
    assert api.attempts == []


async def test_an_unreadable_signed_post_is_kept_and_answered_200(
    client: AsyncTestClient[Any],
) -> None:
    response = await deliver(client, b'{"entry": "not a list"}')
    assert response.status_code == 200
    async with db_session(client) as session:
        [row] = (await session.execute(select(Message))).scalars().all()
    assert (row.state, row.raw) == ("ignored", {"body": '{"entry": "not a list"}'})


@pytest.mark.services
async def test_what_postgresql_cannot_hold_is_still_stored_and_answered_200(
    settings_for: Callable[..., Settings], pg_migrated: str, api: GraphApi
) -> None:
    """NUL in a text or a profile name, a wamid or a name longer than its column: Meta would
    retry a 500 for a day, so each is stored as nearly as PostgreSQL allows."""
    long_id = "wamid." + "x" * 400
    # Numbers of this test's own: the PostgreSQL database is shared by the run.
    hola = meta.text("echo hola", sender="34611000111")
    payload = meta.notification(
        meta.messages(hola, name="Ana\u0000"),
        meta.messages(meta.text("echo nul\u0000dentro", id="wamid.nul", sender="34611000111")),
        meta.messages(meta.text("echo largo", id=long_id, sender="34611222333"), name="S" * 500),
    )
    async with AsyncTestClient(create_app(settings_for(database_url=pg_migrated))) as client:
        for _ in range(2):  # and a retry still stores nothing more
            assert (await deliver(client, payload)).status_code == 200
        replies = await sent(api, 2)
        await asyncio.sleep(0.3)
        async with db_session(client) as session:
            rows = {
                m.external_id: m
                for m in (
                    await session.execute(
                        select(Message).where(
                            Message.direction == "inbound",
                            Message.channel == "whatsapp_cloud",
                            Message.external_id.in_([hola["id"], "wamid.nul"])
                            | Message.external_id.startswith("wamid.xxx"),
                        )
                    )
                ).scalars()
            }
            user_ids = {m.user_id for m in rows.values() if m.user_id is not None}
            names = sorted(
                u.name
                for u in (
                    await session.execute(select(User).where(User.id.in_(user_ids)))
                ).scalars()
            )
    assert sorted(r["text"]["body"] for r in replies) == ["hola", "largo"]
    assert len(api.sent) == 2
    assert len(rows) == 3
    # A NUL in the text: kept (cleaned), not acted on, like a NUL anywhere a person types.
    assert (rows["wamid.nul"].state, rows["wamid.nul"].text) == ("ignored", "")
    assert rows["wamid.nul"].raw["messages"][0]["text"]["body"] == "echo nuldentro"
    [long_key] = [key for key in rows if key and key.startswith("wamid.xxx")]
    assert len(long_key) == 255
    assert names == ["Ana", "S" * 159 + "~" + names[1][-40:]]


async def test_a_malformed_item_does_not_take_the_rest_of_the_call_with_it(
    client: AsyncTestClient[Any], api: GraphApi
) -> None:
    good = meta.text("echo sigo aquí")
    broken = {"id": "wamid.broken", "type": "text", "text": {"body": "no sender"}}
    odd_status = meta.status("wamid.other", "deleted")
    payload = meta.notification({**meta.messages(good), "statuses": [odd_status]})
    payload["entry"][0]["changes"][0]["value"]["messages"].append(broken)
    assert (await deliver(client, payload)).status_code == 200
    [reply] = await sent(api)
    assert reply["text"]["body"] == "sigo aquí"
    async with db_session(client) as session:
        rows = {
            m.external_id: m
            for m in (
                await session.execute(select(Message).where(Message.direction == "inbound"))
            ).scalars()
        }
    assert rows[good["id"]].state == "dispatched"
    ignored = [m for key, m in rows.items() if key != good["id"]]
    assert len(ignored) == 2  # the unreadable message, and the status nobody tracks
    assert {m.state for m in ignored} == {"ignored"}
    kept = [m.raw for m in ignored]
    assert any(r.get("messages") == [broken] for r in kept)
    assert any(r.get("statuses") == [odd_status] for r in kept)


# -- status reports --------------------------------------------------------------------------


async def test_status_reports_move_delivery_forward_only(
    client: AsyncTestClient[Any], api: GraphApi
) -> None:
    await said(client, "echo estado")
    await said(client, "echo fallo")
    [first, second] = await outbound_rows(client, 2)
    assert first.external_id is not None
    assert second.external_id is not None
    reports = [
        meta.status(first.external_id, "sent"),
        meta.status(first.external_id, "read"),
        meta.status(first.external_id, "delivered"),  # late: changes nothing
        meta.status(
            second.external_id,
            "failed",
            ours=second.id,
            errors=[
                {
                    "code": 131026,
                    "title": "Message undeliverable",
                    "error_data": {"details": "Receiver is incapable of receiving this message"},
                }
            ],
        ),
    ]
    for report in reports:
        assert (await deliver(client, meta.notification({"statuses": [report]}))).status_code == 200
    async with db_session(client) as session:
        rows = {m.id: m for m in (await session.execute(select(Message))).scalars()}
    assert rows[first.id].delivery == "read"
    assert rows[second.id].delivery == "failed"
    assert rows[second.id].delivery_error == (
        "whatsapp_cloud 131026: Message undeliverable — Receiver is incapable of receiving "
        "this message"
    )


async def test_a_status_names_our_message_before_its_wamid_is_recorded(
    client: AsyncTestClient[Any], api: GraphApi
) -> None:
    await said(client, "echo rápido")
    [row] = await outbound_rows(client, 1)
    report = meta.status("wamid.not-yet-known", "delivered", ours=row.id)
    assert (await deliver(client, meta.notification({"statuses": [report]}))).status_code == 200
    async with db_session(client) as session:
        again = await session.get(Message, row.id)
    assert again is not None
    assert again.delivery == "delivered"


# -- choices ---------------------------------------------------------------------------------


async def test_more_than_three_choices_become_a_list_and_a_row_runs_its_choice(
    client: AsyncTestClient[Any], api: GraphApi
) -> None:
    await said(client, "ayuda")
    [menu] = await sent(api)
    interactive = menu["interactive"]
    assert (menu["type"], interactive["type"]) == ("interactive", "list")
    # "ayuda": Spanish; buttons (a list): one sentence, the actions as rows.
    assert interactive["body"]["text"].startswith("Esto es lo que puedo hacer:")
    rows = interactive["action"]["sections"][0]["rows"]
    assert [r["title"] for r in rows] == ["ayuda", "estado", "cancelar", "humano", "echo hola"]
    assert all(len(r["id"]) <= 200 for r in rows)
    tap = meta.message(
        "interactive",
        {
            "context": {"from": "15550001111", "id": "wamid.menu"},
            "interactive": {
                "type": "list_reply",
                "list_reply": {"id": rows[4]["id"], "title": rows[4]["title"]},
            },
        },
    )
    assert (await deliver(client, meta.notification(meta.messages(tap)))).status_code == 200
    replies = await sent(api, 2)
    assert replies[1]["text"]["body"] == "hola"


async def test_forged_or_misplaced_buttons_change_nothing(
    client: AsyncTestClient[Any], api: GraphApi
) -> None:
    await said(client, "ayuda")
    [menu] = await sent(api)
    row_id = menu["interactive"]["action"]["sections"][0]["rows"][3]["id"]
    taps = [
        (ANA, "1.3.0.forgedsignature0"),
        (SOFIA, row_id),  # a real button, replayed from someone else's chat
    ]
    for sender, button in taps:
        tap = meta.message(
            "interactive",
            {"interactive": {"type": "button_reply", "button_reply": {"id": button, "title": "x"}}},
            sender=sender,
        )
        assert (await deliver(client, meta.notification(meta.messages(tap)))).status_code == 200
    await asyncio.sleep(0.3)
    assert len(api.sent) == 1
    assert await stored(client, Message, Message.state == "ignored") == 2


async def test_an_approver_on_whatsapp_cloud_decides_with_a_reply_button(
    client: AsyncTestClient[Any], api: GraphApi
) -> None:
    """``users add --whatsapp`` makes a supervisor reachable through whichever WhatsApp channel
    is configured; here the Cloud API, with two reply buttons."""
    user = (await client.post("/api/v1/users", json={"name": "Sofía", "role": "supervisor"})).json()
    linked = await client.post(
        f"/api/v1/users/{user['id']}/identities",
        json={"channel": "whatsapp", "address": "+34 600 999 888"},
    )
    assert linked.status_code == 200, linked.text
    await said(client, "refund 12")
    messages = await sent(api, 2)
    [ask] = [m for m in messages if m["to"] == "+34600999888"]
    assert ask["interactive"]["type"] == "button"
    buttons = ask["interactive"]["action"]["buttons"]
    assert [b["reply"]["title"] for b in buttons] == ["Approve #1", "Reject #1"]
    assert "Approval needed for request #1" in ask["interactive"]["body"]["text"]
    tap = meta.message(
        "interactive",
        {"interactive": {"type": "button_reply", "button_reply": buttons[0]["reply"]}},
        sender=SOFIA,
    )
    assert (
        await deliver(client, meta.notification(meta.messages(tap, name="Sofía")))
    ).status_code == 200
    replies = await sent(api, 5)
    to_ana = [r["text"]["body"] for r in replies if r["to"] == "+34600111222"]
    assert "Request #1 was approved by Sofía; running it now." in to_ana
    assert to_ana[-1] == "refund: invoice=12"


# -- sending -------------------------------------------------------------------------------


async def test_a_long_reply_is_split_at_4096_and_sent_in_order(
    settings_for: Callable[..., Settings], api: GraphApi
) -> None:
    text = " ".join(f"palabra{n:05d}" for n in range(1100))
    assert len(text) == 14_299  # four parts of at most 4,096
    async with AsyncTestClient(create_app(settings_for(max_text_chars=20000))) as client:
        await said(client, f"echo {text}")
        parts = [r["text"]["body"] for r in await sent(api, 4)]
    assert all(len(p) <= 4096 for p in parts)
    assert " ".join(parts) == text


async def test_rate_limits_and_5xx_are_retried_and_other_errors_are_final(
    client: AsyncTestClient[Any], api: GraphApi
) -> None:
    api.errors.extend([Scripted(130429), Scripted(131000), Scripted(2, retry_after_s=0.05)])
    await said(client, "echo al fin")
    await sent(api)
    assert len(api.attempts) == 4
    api.errors.append(Scripted(131026))
    await said(client, "shout sin suerte")
    rows = await outbound_rows(client, 2)
    assert len(api.attempts) == 5  # a final error is not retried
    assert rows[1].delivery == "failed"
    assert rows[1].delivery_error is not None
    assert rows[1].delivery_error.startswith("whatsapp_cloud 131026 (HTTP 400): (#131026)")
    activity = (await client.get(f"/api/v1/activities/{rows[1].activity_id}")).json()
    [event] = [e for e in activity["events"] if e["kind"] == "reply_failed"]
    assert "131026" in event["data"]["error"]


async def test_131047_sends_the_actions_template_or_fails_with_the_reason(
    client: AsyncTestClient[Any], api: GraphApi
) -> None:
    api.errors.append(Scripted(131047))
    await said(client, "echo tarde")
    [template] = await sent(api)
    assert template["type"] == "template"
    [row] = await outbound_rows(client, 1)
    assert template["template"] == {
        "name": "switchboard_reply",
        "language": {"code": "es"},
        "components": [
            {
                "type": "body",
                "parameters": [
                    {"type": "text", "text": "tarde"},
                    {"type": "text", "text": f"#{row.activity_id}"},
                ],
            }
        ],
    }
    api.errors.append(Scripted(131047))
    await said(client, "shout tarde")  # no template for this action
    rows = await outbound_rows(client, 2)
    assert rows[1].delivery == "failed"
    assert rows[1].delivery_error is not None
    assert "131047" in rows[1].delivery_error
    assert "more than 24 hours" in rows[1].delivery_error
    assert len(api.sent) == 1


async def test_a_template_standing_in_for_a_reply_is_all_that_is_sent(
    settings_for: Callable[..., Settings], api: GraphApi
) -> None:
    """131047 on the first part: the template replaces text and media alike; nothing else goes
    out free-form, and the reply counts as sent."""
    api.errors.append(Scripted(131047))
    async with runtime_for(settings_for(), "cli") as runtime:
        channel = runtime.channels.of(WhatsAppCloudChannel)
        done = await channel.send(
            OutboundMessage(
                channel="whatsapp_cloud",
                conversation_key="+34600111222",
                conversation_id=1,
                text="aquí tienes",
                activity_id=9,
                message_id=90,
                media=(Media(url="https://files.example/a.png", content_type="image/png"),),
                template={"name": "aviso", "language": "es"},
            )
        )
    assert done.status == "queued"
    assert [body["type"] for body in api.attempts] == ["text", "template"]


async def test_outside_the_window_only_a_template_is_sent(
    settings_for: Callable[..., Settings], api: GraphApi
) -> None:
    async with runtime_for(settings_for(), "cli") as runtime:
        channel = runtime.channels.of(WhatsAppCloudChannel)
        late = OutboundMessage(
            channel="whatsapp_cloud",
            conversation_key="+34600111222",
            conversation_id=1,
            text="respuesta tardía",
            activity_id=7,
            message_id=70,
            last_inbound_at=dt.datetime.now(dt.UTC) - dt.timedelta(hours=25),
        )
        refused = await channel.send(late)
        assert refused.status == "failed"
        assert refused.error == (
            "outside WhatsApp's 24-hour window and no template is configured for this reply"
        )
        assert api.attempts == []
        template = {"name": "aviso", "language": "en_US", "components": []}
        done = await channel.send(OutboundMessage(**{**_fields(late), "template": template}))
        assert done.status == "queued"
        assert api.sent[-1]["template"] == {"name": "aviso", "language": {"code": "en_US"}}
        assert api.sent[-1]["biz_opaque_callback_data"] == "sb:70"


async def test_media_replies_go_by_link_one_per_message(
    settings_for: Callable[..., Settings], api: GraphApi
) -> None:
    async with runtime_for(settings_for(), "cli") as runtime:
        channel = runtime.channels.of(WhatsAppCloudChannel)
        done = await channel.send(
            OutboundMessage(
                channel="whatsapp_cloud",
                conversation_key="+34600111222",
                conversation_id=1,
                text="aquí tienes",
                media=(
                    Media(url="https://files.example/a.png", content_type="image/png"),
                    Media(url="https://files.example/b.pdf", content_type="application/pdf"),
                ),
            )
        )
    assert done.status == "queued"
    assert [(m["type"], m.get(m["type"])) for m in api.sent] == [
        ("text", {"preview_url": False, "body": "aquí tienes"}),
        ("image", {"link": "https://files.example/a.png"}),
        ("document", {"link": "https://files.example/b.pdf"}),
    ]


async def test_sends_are_paced_per_phone_number(
    settings_for: Callable[..., Settings], api: GraphApi
) -> None:
    async with AsyncTestClient(create_app(settings_for(whatsapp_cloud_rate_per_s="5"))) as client:
        released = record_releases(
            client.app.state.runtime.channels.of(WhatsAppCloudChannel)._limiter
        )
        for n in range(4):
            await said(client, f"echo {n}", sender=f"3460011100{n}")
        await sent(api, 4)
    assert {paces for _, paces in released} == {((f"whatsapp_cloud:{PHONE_NUMBER_ID}", 5.0),)}
    times = [at for at, _ in released]
    assert all(later - earlier >= 0.2 for earlier, later in itertools.pairwise(times))


# -- one person, one user ---------------------------------------------------------------------


async def test_one_person_is_one_user_whichever_whatsapp_provider_carries_them(
    make_settings: Callable[..., Settings], sqlite_url: str, api: GraphApi, catalog: Path
) -> None:
    with TwilioApi(ACCOUNT_SID, AUTH_TOKEN) as twilio:
        settings = make_settings(
            database_url=sqlite_url,
            catalog=catalog,
            **meta.cloud_env(api.url),
            **twilio_env(twilio.url),
        )
        async with AsyncTestClient(create_app(settings)) as client:
            target, body, headers = twilio_signed(inbound_form("echo por Twilio", sid="SMboth"))
            assert (await client.post(target, content=body, headers=headers)).status_code == 200
            assert (await said(client, "echo por Meta")).status_code == 200
            await sent(api)
            await wait_for(lambda: _async(len(twilio.sent) == 1))
            async with db_session(client) as session:
                users = (await session.execute(select(User))).scalars().all()
                senders = {
                    (m.channel, m.user_id)
                    for m in (
                        await session.execute(select(Message).where(Message.direction == "inbound"))
                    ).scalars()
                }
        assert len(users) == 1
        assert senders == {("whatsapp", users[0].id), ("whatsapp_cloud", users[0].id)}
        assert twilio.unexpected == []


# -- settings and catalog --------------------------------------------------------------------


def test_the_channel_needs_its_secrets_once_enabled() -> None:
    base = {"SWITCHBOARD_WHATSAPP_CLOUD_PHONE_NUMBER_ID": PHONE_NUMBER_ID}
    with pytest.raises(SettingsError, match="ACCESS_TOKEN"):
        Settings.from_env(base)
    full = {
        **base,
        "SWITCHBOARD_WHATSAPP_CLOUD_ACCESS_TOKEN": "token-value",
        "SWITCHBOARD_WHATSAPP_CLOUD_APP_SECRET": "app-secret-value",
        "SWITCHBOARD_WHATSAPP_CLOUD_VERIFY_TOKEN": "verify-value",
    }
    settings = Settings.from_env(full).channel(WhatsAppCloudSettings)
    assert settings.enabled
    assert settings.api_url == "https://graph.facebook.com"
    assert settings.api_version == VERSION
    assert "token-value" not in repr(settings)
    assert "app-secret-value" not in repr(settings)
    with pytest.raises(SettingsError, match="API_VERSION"):
        Settings.from_env({**full, "SWITCHBOARD_WHATSAPP_CLOUD_API_VERSION": "21"})


@pytest.mark.parametrize(
    ("template", "problem"),
    [
        ('{ name = "x" }', "missing required field `language`"),
        ('{ name = "x", language = "es", components = [{ text = "{client}" }] }', "placeholders"),
        ('{ name = "x", language = "es", components = [{ text = "{text.x}" }] }', "placeholders"),
        (
            '{ name = "x", language = "es", components = [{ text = "{activity_id[0]}" }] }',
            "placeholders",
        ),
    ],
)
async def test_a_template_it_could_not_send_stops_the_start(
    settings_for: Callable[..., Settings], tmp_path: Path, template: str, problem: str
) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(
        CATALOG + f"\n[agents.assistant.actions.help.templates]\nwhatsapp_cloud = {template}\n"
    )
    with pytest.raises(CatalogError) as caught:
        async with runtime_for(settings_for(catalog=path)):
            pass
    assert "agents.assistant.actions.help.templates.whatsapp_cloud" in str(caught.value)
    assert problem in str(caught.value)


def _fields(message: OutboundMessage) -> dict[str, Any]:
    return {f: getattr(message, f) for f in message.__struct_fields__}


async def _async(value: bool) -> bool:
    return value


def test_button_titles_are_cut_and_kept_distinct() -> None:
    from channels.whatsapp_cloud import _titles
    from dispatch.record.messages import Choice

    choices = tuple(
        Choice(label=label, text=label)
        for label in ("Refund an invoice for ACME", "Refund an invoice for Zeta", "Short")
    )
    titles = _titles(choices, 20)
    assert titles == ["Refund an invoice f…", "Refund an invoice…2", "Short"]
    assert all(len(t) <= 20 for t in titles)
