"""WhatsApp through Twilio: signed webhooks in, Twilio's REST API (a local server) out."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import msgspec
import pytest
from litestar.testing import AsyncTestClient
from sqlalchemy import select, update

from channels.base import RawRequest
from channels.twilio import TwilioChannel
from dispatch.infra.outage import Outage
from dispatch.record.messages import Media, OutboundMessage
from dispatch.record.models import Activity, Conversation, Message, User, UserIdentity
from gateway.app import create_app
from gateway.settings import Settings
from tests.conftest import ADMIN
from tests.support.approvals import REFUND_CATALOG
from tests.support.db import db_session, outbound_rows, stored
from tests.support.flow import record_releases, wait_for
from tests.support.http_server import Answer, ScriptedServer
from tests.support.runtime import runtime_for
from tests.support.twilio_api import TwilioApi
from tests.support.twilio_webhook import (
    ACCOUNT_SID,
    AUTH_TOKEN,
    PUBLIC_URL,
    SERVICE_SID,
    WHATSAPP_FROM,
    inbound_form,
    message_sid,
    signed,
    twilio_env,
)

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
[agents.assistant.actions.echo.payload]
text = {{ type = "string" }}
[agents.assistant.actions.echo.whatsapp_template]
content_sid = "HX0123456789abcdef0123456789abcdef"
variables = {{ "1" = "{{text}}", "2" = "#{{activity_id}}" }}

[agents.assistant.actions.picture]
description = "Send a picture"
handler = "http_call"
public = true
[agents.assistant.actions.picture.http]
url = "{media_url}/picture"
retries = 0

[[rules]]
id = "echo"
agent = "assistant"
action = "echo"
patterns = ['^echo\\s+(?P<text>.+)$']

[[rules]]
id = "picture"
agent = "assistant"
action = "picture"
keywords = ["picture", "foto"]
"""


@pytest.fixture
def api() -> Iterator[TwilioApi]:
    with TwilioApi(ACCOUNT_SID, AUTH_TOKEN) as server:
        yield server
        assert server.unexpected == []


@pytest.fixture
def media_server() -> Iterator[ScriptedServer]:
    with ScriptedServer() as server:
        yield server
        assert server.unexpected == []


@pytest.fixture
def catalog(tmp_path: Path, media_server: ScriptedServer) -> Path:
    path = tmp_path / "catalog.toml"
    path.write_text(CATALOG.format(media_url=media_server.url))
    return path


@pytest.fixture
def settings_for(
    make_settings: Callable[..., Settings], sqlite_url: str, api: TwilioApi, catalog: Path
) -> Callable[..., Settings]:
    def make(**extra: Any) -> Settings:
        return make_settings(
            database_url=sqlite_url, catalog=catalog, **twilio_env(api.url, **extra)
        )

    return make


@pytest.fixture
async def client(settings_for: Callable[..., Settings]) -> AsyncIterator[AsyncTestClient[Any]]:
    async with AsyncTestClient(create_app(settings_for())) as test_client:
        test_client.headers.update(ADMIN)
        yield test_client


async def deliver(client: AsyncTestClient[Any], form: dict[str, str], **sign: Any) -> Any:
    target, body, headers = signed(form, **sign)
    return await client.post(target, content=body, headers=headers)


async def sent_to_twilio(api: TwilioApi, count: int = 1, timeout_s: float = 15) -> list[Any]:
    async def ready() -> list[Any] | None:
        return list(api.sent) if len(api.sent) >= count else None

    result: list[Any] = await wait_for(ready, timeout_s=timeout_s)
    return result


# -- inbound verification ------------------------------------------------------------------


async def test_signed_message_is_acknowledged_with_empty_twiml_and_answered(
    client: AsyncTestClient[Any], api: TwilioApi
) -> None:
    response = await deliver(client, inbound_form("echo Hola desde WhatsApp", sid="SM1"))
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/xml")
    assert response.text == '<?xml version="1.0" encoding="UTF-8"?><Response/>'
    [message] = await sent_to_twilio(api)
    assert message.to == "whatsapp:+34600111222"
    assert message.from_ == WHATSAPP_FROM
    assert message.body == "Hola desde WhatsApp"
    [row] = await outbound_rows(client, 1)
    assert message.one("StatusCallback") == f"{PUBLIC_URL}/webhooks/twilio/status?m={row.id}"
    assert row.external_id == message.sid
    assert row.delivery == "queued"


def forged(case: str) -> tuple[str, bytes, dict[str, str]]:
    form = inbound_form("echo hi", sid="SMforged")
    if case == "tampered body":
        target, _, headers = signed(form)
        return target, signed(form | {"Body": "echo pwned"})[1], headers
    if case == "tampered url":
        target, body, headers = signed(form, signed_url=PUBLIC_URL + "/webhooks/other")
        return target, body, headers
    if case == "wrong token":
        return signed(form, token="not-the-token")
    # Correctly signed, but for another account: not ours to accept.
    return signed(form | {"AccountSid": "AC" + "f" * 32})


@pytest.mark.parametrize("case", ["tampered body", "tampered url", "wrong token", "other account"])
async def test_forged_requests_are_refused_and_nothing_is_stored(
    client: AsyncTestClient[Any], api: TwilioApi, case: str
) -> None:
    target, body, headers = forged(case)
    response = await client.post(target, content=body, headers=headers)
    assert response.status_code == 403, case
    assert response.json()["error"] == "forbidden"
    assert await stored(client, Message) == 0
    await asyncio.sleep(0.1)
    assert api.attempts == []


async def test_a_captured_request_re_cut_between_fields_is_not_a_new_message(
    client: AsyncTestClient[Any], api: TwilioApi
) -> None:
    """Twilio signs names and values joined with no separator: moving ``NumMedia`` + ``0`` into
    the MessageSid keeps a captured signature valid. It must not run the action again."""
    form = inbound_form("echo una sola vez", sid="SMreplay")
    target, body, headers = signed(form)
    assert (await client.post(target, content=body, headers=headers)).status_code == 200
    await sent_to_twilio(api)
    shifted = {k: v for k, v in form.items() if k != "NumMedia"}
    shifted["MessageSid"] = form["MessageSid"] + "NumMedia0"
    replay = await client.post(target, content=urlencode(shifted).encode(), headers=headers)
    assert replay.status_code == 200  # it verifies, so it is kept; it is not a message
    await asyncio.sleep(0.3)
    assert len(api.attempts) == 1
    assert await stored(client, Activity) == 1
    assert await stored(client, Message, Message.state == "ignored") == 1


async def test_missing_signature_is_refused(client: AsyncTestClient[Any]) -> None:
    target, body, headers = signed(inbound_form("echo hi", sid="SMnosig"))
    del headers["x-twilio-signature"]
    response = await client.post(target, content=body, headers=headers)
    assert response.status_code == 403
    assert response.json()["detail"] == "missing X-Twilio-Signature"
    assert await stored(client, Message) == 0


@pytest.mark.parametrize(
    ("signature", "accepted"),
    [
        ("port", True),  # Twilio signs the URL with its port as well as without
        ("wrong", False),
        ("non-ascii", False),
    ],
)
async def test_a_signature_is_checked_against_the_url_with_and_without_its_port(
    client: AsyncTestClient[Any], signature: str, accepted: bool
) -> None:
    form = inbound_form("echo port", sid=f"SMport{signature}")
    with_port = PUBLIC_URL.replace(".com", ".com:443") + "/webhooks/twilio"
    target, body, headers = signed(form, signed_url=with_port)
    if signature == "wrong":
        headers["x-twilio-signature"] = headers["x-twilio-signature"][::-1]
    elif signature == "non-ascii":
        headers["x-twilio-signature"] = "ñ" + headers["x-twilio-signature"][1:]
    response = await client.post(
        target, content=body, headers={k: v.encode() for k, v in headers.items()}
    )
    assert response.status_code == (200 if accepted else 403), response.text
    assert await stored(client, Message, Message.direction == "inbound") == int(accepted)


async def test_signature_holds_behind_a_proxy_with_a_query_string(
    client: AsyncTestClient[Any], api: TwilioApi
) -> None:
    """Twilio called https://bot.example.com/...; the app sees http://testserver/...."""
    response = await deliver(client, inbound_form("echo proxied", sid="SMproxy"), query="t=a%20b")
    assert response.status_code == 200
    assert (await sent_to_twilio(api))[0].body == "proxied"


async def test_messaging_service_traffic_is_accepted_and_answered_through_it(
    settings_for: Callable[..., Settings], api: TwilioApi
) -> None:
    settings = settings_for(twilio_messaging_service_sid=SERVICE_SID)
    async with AsyncTestClient(create_app(settings)) as client:
        client.headers.update(ADMIN)
        form = inbound_form(
            "echo via service",
            sid="SMsvc",
            MessagingServiceSid=SERVICE_SID,
            To="whatsapp:+15550001111",
        )
        response = await deliver(client, form)
        assert response.status_code == 200
        [message] = await sent_to_twilio(api)
    assert message.one("MessagingServiceSid") == SERVICE_SID
    assert message.from_ is None
    assert message.to == "whatsapp:+34600111222"


async def test_fifty_concurrent_retries_of_one_message_sid(
    client: AsyncTestClient[Any], api: TwilioApi
) -> None:
    form = inbound_form("echo solo una vez", sid="SMretry")
    responses = await asyncio.gather(*(deliver(client, form) for _ in range(50)))
    assert {r.status_code for r in responses} == {200}
    await sent_to_twilio(api)
    await asyncio.sleep(0.5)
    assert len(api.sent) == 1
    assert await stored(client, Message, Message.direction == "inbound") == 1
    assert await stored(client, Activity) == 1


async def test_sender_becomes_a_guest_with_a_normalized_number(
    client: AsyncTestClient[Any], api: TwilioApi
) -> None:
    await deliver(client, inbound_form("echo uno", sid="SMid1", sender="whatsapp:+34 600-111 222"))
    await deliver(client, inbound_form("echo dos", sid="SMid2", sender="whatsapp:+34600111222"))
    sent = await sent_to_twilio(api, 2)
    assert {m.to for m in sent} == {"whatsapp:+34600111222"}
    async with db_session(client) as session:
        identities = (await session.execute(select(UserIdentity))).scalars().all()
        users = (await session.execute(select(User))).scalars().all()
    assert [(i.channel, i.address) for i in identities] == [("whatsapp", "+34600111222")]
    assert [(u.name, u.role) for u in users] == [("Ana", "guest")]


async def test_sms_on_the_whatsapp_webhook_is_kept_but_not_answered(
    client: AsyncTestClient[Any], api: TwilioApi
) -> None:
    response = await deliver(client, inbound_form("echo sms", sid="SMsms", sender="+34600111222"))
    assert response.status_code == 200
    await asyncio.sleep(0.3)
    assert await stored(client, Message, Message.state == "ignored") == 1
    assert await stored(client, Activity) == 0
    assert api.attempts == []


@pytest.mark.parametrize(
    ("extra", "reason"),
    [
        (
            {
                "Body": "",
                "Latitude": "40.4168",
                "Longitude": "-3.7038",
                "Address": "Puerta del Sol",
                "MessageType": "location",
            },
            "location",
        ),
        ({"Body": ""}, "empty"),
        ({"NumMedia": "lots"}, "unreadable"),
        ({"NumMedia": "1"}, "unreadable"),
    ],
    ids=["shared location", "empty body", "bad NumMedia", "missing MediaUrl0"],
)
async def test_whatever_a_signed_webhook_carries_is_kept_and_answered_200(
    client: AsyncTestClient[Any], api: TwilioApi, extra: dict[str, str], reason: str
) -> None:
    """Twilio retries a 4xx; a shared location or a contact card is not an error."""
    form = inbound_form("", sid="SMloc", **extra)
    for _ in range(2):
        response = await deliver(client, form)
        assert response.status_code == 200
        assert response.text == '<?xml version="1.0" encoding="UTF-8"?><Response/>'
    async with db_session(client) as session:
        [row] = (await session.execute(select(Message))).scalars().all()
    assert row.state == "ignored"
    if reason == "unreadable":
        assert row.external_id is not None
        assert row.external_id.startswith("unreadable:")
    else:
        assert row.external_id == message_sid("SMloc")
        assert row.raw.get("Latitude") == extra.get("Latitude")
    await asyncio.sleep(0.2)
    assert await stored(client, Activity) == 0
    assert api.attempts == []


async def test_webhook_paths_nobody_takes_are_404_and_a_get_is_405(
    client: AsyncTestClient[Any],
) -> None:
    unknown = await client.post("/webhooks/nowhere", content=b"{}")
    assert unknown.status_code == 404
    assert unknown.json()["error"] == "not_found"
    unconfigured = await client.post("/webhooks/telegram", content=b"{}")
    assert unconfigured.status_code == 404
    get = await client.get("/webhooks/twilio")
    assert get.status_code == 405
    assert get.json()["error"] == "method_not_allowed"
    assert await stored(client, Message) == 0


async def _asgi_post(
    client: AsyncTestClient[Any], path: str, headers: dict[str, str], body: bytes, chunk: int
) -> tuple[int, bytes]:
    """POST ``body`` to the app in chunks with no content-length (as a chunked upload arrives;
    the test client only sends whole bodies); its status and body."""
    events: list[Any] = [
        {"type": "http.request", "body": body[i : i + chunk], "more_body": i + chunk < len(body)}
        for i in range(0, len(body), chunk)
    ]
    sent: list[Any] = []

    async def receive() -> Any:
        return events.pop(0) if events else {"type": "http.disconnect"}

    async def send(message: Any) -> None:
        sent.append(message)

    names = [(k.lower().encode(), v.encode()) for k, v in headers.items()]
    names = [(b"host", b"testserver.local"), *(h for h in names if h[0] != b"content-length")]
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": names,
        "client": ("127.0.0.1", 50000),
        "server": ("testserver.local", 80),
    }
    await client.app(scope, receive, send)  # type: ignore[arg-type]
    status = next(m["status"] for m in sent if m["type"] == "http.response.start")
    return status, b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")


async def test_the_webhook_route_answers_as_http_asks(client: AsyncTestClient[Any]) -> None:
    """The webhook route is a plain ASGI handler (the hot path): it still answers every method,
    limit and content type the way the gateway's other routes do."""
    inbound = Message.direction == "inbound"  # (the reply to the one accepted is stored too)
    stored_before = await stored(client, Message, inbound)
    path, body, headers = signed(inbound_form("hello", sid="SMhttp"))
    accepted = await client.post(path, content=body, headers=headers)
    assert accepted.status_code == 200
    assert accepted.headers["content-type"] == "application/xml"
    assert int(accepted.headers["content-length"]) == len(accepted.content)
    options = await client.options(path)
    assert options.status_code == 204
    assert options.headers["allow"] == "GET, OPTIONS, POST"
    put = await client.put(path, content=body, headers=headers)
    assert put.status_code == 405
    assert put.json()["error"] == "method_not_allowed"
    assert put.headers["allow"] == "GET, OPTIONS, POST"
    # Past SWITCHBOARD_MAX_BODY_BYTES: 413 whether the length is announced or only streamed,
    # and nothing of it is stored.
    huge = body + b"&Padding=" + b"x" * 70_000
    announced = await client.post(path, content=huge, headers=headers)
    assert announced.status_code == 413
    assert announced.json()["error"] == "payload_too_large"

    streamed = await _asgi_post(client, path, headers, huge, chunk=4096)
    assert streamed[0] == 413
    assert msgspec.json.decode(streamed[1])["error"] == "payload_too_large"
    assert await stored(client, Message, inbound) == stored_before + 1


# -- media ---------------------------------------------------------------------------------


async def test_media_in_lands_in_the_normalized_message(client: AsyncTestClient[Any]) -> None:
    form = inbound_form(
        "",
        sid="SMmedia",
        NumMedia="2",
        MediaUrl0="https://api.twilio.com/2010-04-01/Accounts/AC/Messages/MM/Media/ME1",
        MediaContentType0="image/jpeg",
        MediaUrl1="https://api.twilio.com/2010-04-01/Accounts/AC/Messages/MM/Media/ME2",
        MediaContentType1="application/pdf",
    )
    assert (await deliver(client, form)).status_code == 200
    async with db_session(client) as session:
        row = (
            (await session.execute(select(Message).where(Message.direction == "inbound")))
            .scalars()
            .one()
        )
    assert row.media == [
        {"url": form["MediaUrl0"], "content_type": "image/jpeg"},
        {"url": form["MediaUrl1"], "content_type": "application/pdf"},
    ]
    assert row.raw["NumMedia"] == "2"


async def test_a_handler_can_reply_with_media(
    client: AsyncTestClient[Any], api: TwilioApi, media_server: ScriptedServer
) -> None:
    media_server.expect(
        "/picture",
        Answer(
            200,
            {
                "reply": "Here you go",
                "media": [
                    {"url": "https://cdn.example.com/a.png", "content_type": "image/png"},
                    {"url": "https://cdn.example.com/b.png", "content_type": "image/png"},
                ],
            },
        ),
    )
    await deliver(client, inbound_form("send me a picture", sid="SMpic"))
    first, second = await sent_to_twilio(api, 2)
    assert (first.body, first.media) == ("Here you go", ["https://cdn.example.com/a.png"])
    assert (second.body, second.media) == (None, ["https://cdn.example.com/b.png"])


# -- outbound ------------------------------------------------------------------------------


async def test_a_long_reply_is_split_on_word_boundaries_and_sent_in_order(
    client: AsyncTestClient[Any], api: TwilioApi
) -> None:
    words = [f"palabra{n:04d}" for n in range(500)]
    text = " ".join(words)
    assert len(text) > 5000
    await deliver(client, inbound_form(f"echo {text}"[:4096], sid="SMlong"))
    expected = f"echo {text}"[:4096].removeprefix("echo ")
    rows = await outbound_rows(client, 3)
    sent = await sent_to_twilio(api, len(rows))
    assert [m.body for m in sent] == [r.text for r in rows]
    assert all(len(m.body) <= 1600 for m in sent)
    assert " ".join(m.body for m in sent) == expected
    assert [r.part for r in rows] == list(range(len(rows)))


async def test_a_5000_character_reply_in_four_ordered_parts(
    settings_for: Callable[..., Settings], api: TwilioApi
) -> None:
    settings = settings_for(max_text_chars=6000, max_body_bytes=65536)
    async with AsyncTestClient(create_app(settings)) as client:
        client.headers.update(ADMIN)
        text = "\n".join(f"línea {n:03d} " + "x" * 40 for n in range(100))  # 5,090 characters
        assert len(text) >= 5000
        await deliver(client, inbound_form(f"echo {text}", sid="SM5000"))
        sent = await sent_to_twilio(api, 4)
    assert len(sent) == 4
    assert all(len(m.body) <= 1600 for m in sent)
    assert "\n".join(m.body for m in sent) == text
    assert [m.body.split()[1] for m in sent] == sorted(m.body.split()[1] for m in sent)


async def test_429_is_retried_then_succeeds(client: AsyncTestClient[Any], api: TwilioApi) -> None:
    api.errors.extend([20429, 20429])
    await deliver(client, inbound_form("echo despacio", sid="SM429"))
    [message] = await sent_to_twilio(api)
    assert message.body == "despacio"
    assert len(api.attempts) == 3
    [row] = await outbound_rows(client, 1)
    assert row.delivery == "queued"


async def test_5xx_is_retried_up_to_the_limit_then_failed_with_twilios_code(
    client: AsyncTestClient[Any], api: TwilioApi
) -> None:
    api.errors.extend([20503] * 10)
    await deliver(client, inbound_form("echo nunca", sid="SM503"))
    [row] = await outbound_rows(client, 1)
    assert row.delivery == "failed"
    assert row.delivery_error is not None
    assert row.delivery_error.startswith("twilio 20503 (HTTP 503)")
    assert len(api.attempts) == 5  # the first try and 4 retries
    api.errors.clear()


async def test_4xx_is_not_retried(client: AsyncTestClient[Any], api: TwilioApi) -> None:
    api.errors.append(21211)
    await deliver(client, inbound_form("echo invalid", sid="SM21211"))
    [row] = await outbound_rows(client, 1)
    assert row.delivery == "failed"
    assert row.delivery_error is not None
    assert "21211" in row.delivery_error
    assert len(api.attempts) == 1


async def test_63016_falls_back_to_the_template(
    client: AsyncTestClient[Any], api: TwilioApi
) -> None:
    api.errors.append(63016)
    await deliver(client, inbound_form("echo fuera de ventana", sid="SM63016"))
    [message] = await sent_to_twilio(api)
    assert message.one("ContentSid") == "HX0123456789abcdef0123456789abcdef"
    variables = json.loads(message.one("ContentVariables") or "{}")
    assert variables["1"] == "fuera de ventana"
    assert variables["2"].startswith("#")
    assert message.body is None


async def test_63016_sends_the_template_alone_not_the_rest_of_the_reply(
    settings_for: Callable[..., Settings], api: TwilioApi
) -> None:
    api.errors.append(63016)
    async with runtime_for(settings_for(), "cli") as services:
        done = await services.channels.of(TwilioChannel).send(
            OutboundMessage(
                channel="whatsapp",
                conversation_key="+34600111222",
                conversation_id=1,
                text="dos adjuntos",
                activity_id=4,
                media=(Media(url="https://x/1.png"), Media(url="https://x/2.png")),
                template={"content_sid": "HXabc", "variables": {"1": "{text}"}},
            )
        )
    assert done.status == "queued"
    assert len(api.attempts) == 2  # the text with the first image (63016), then the template
    [template] = api.sent
    assert template.one("ContentSid") == "HXabc"
    assert template.media == []


async def test_63016_without_a_template_fails_with_the_reason_on_the_activity(
    client: AsyncTestClient[Any], api: TwilioApi
) -> None:
    api.errors.append(63016)
    await deliver(client, inbound_form("blah blah", sid="SM63016b"))  # help has no template
    [row] = await outbound_rows(client, 1)
    assert row.delivery == "failed"
    assert row.delivery_error is not None
    assert row.delivery_error.startswith("twilio 63016 (HTTP 400): Failed to send freeform")
    activity = (await client.get(f"/api/v1/activities/{row.activity_id}")).json()
    [event] = [e for e in activity["events"] if e["kind"] == "reply_failed"]
    assert "63016" in event["data"]["error"]


async def test_outside_the_24_hour_window_no_free_form_reply_is_attempted(
    settings_for: Callable[..., Settings], api: TwilioApi
) -> None:
    from tests.support.runtime import runtime_for

    async with runtime_for(settings_for(), "cli") as services:
        channel = services.channels.of(TwilioChannel)
        old = dt.datetime.now(dt.UTC) - dt.timedelta(hours=25)
        base = OutboundMessage(
            channel="whatsapp",
            conversation_key="+34600111222",
            conversation_id=1,
            text="late answer",
            activity_id=7,
            last_inbound_at=old,
        )
        refused = await channel.send(base)
        assert refused.status == "failed"
        assert refused.error == (
            "outside WhatsApp's 24-hour window and no template is configured for this reply"
        )
        assert api.attempts == []
        template = {"content_sid": "HXabc", "variables": {"1": "{text}"}}
        sent = await channel.send(msgspec.structs.replace(base, template=template))
        assert sent.status == "queued"
        [message] = api.sent
        assert message.one("ContentSid") == "HXabc"
        assert json.loads(message.one("ContentVariables") or "{}") == {"1": "late answer"}
        assert message.body is None
        media = await channel.send(
            msgspec.structs.replace(
                base, last_inbound_at=dt.datetime.now(dt.UTC), media=(Media(url="https://x/y.png"),)
            )
        )
        assert media.status == "queued"
        assert api.sent[-1].media == ["https://x/y.png"]


async def test_a_stale_conversation_gets_the_failure_recorded_on_its_activity(
    settings_for: Callable[..., Settings], api: TwilioApi
) -> None:
    from tests.support.runtime import runtime_for
    from workers import jobs

    async with runtime_for(settings_for(), "cli") as services:
        await services.queue.close(grace_s=0)
        received = await services.channels.of(TwilioChannel).parse(
            RawRequest(
                path="/webhooks/twilio",
                query="",
                headers={},
                body=signed(inbound_form("hola", sid="SMold"))[1],
            )
        )
        [inbound] = received.messages
        accepted = await services.dispatcher.ingest(inbound)
        async with services.sessions.begin() as session:
            await session.execute(
                update(Conversation).values(
                    last_inbound_at=dt.datetime.now(dt.UTC) - dt.timedelta(days=2)
                )
            )
        dispatched = await services.dispatcher.dispatch_message(accepted.message_id, lease_s=30)
        assert dispatched is not None
        assert dispatched.activity_id is not None
        await jobs.run_activity(services, dispatched.activity_id)
        activity = await services.activities.get(dispatched.activity_id, with_events=True)
    assert activity is not None
    [event] = [e for e in activity.events if e.kind == "reply_failed"]
    assert "24-hour window" in (event.data["error"] or "")
    assert api.attempts == []


# -- status callbacks ----------------------------------------------------------------------


async def test_status_callbacks_move_forward_only_and_are_idempotent(
    client: AsyncTestClient[Any], api: TwilioApi
) -> None:
    await deliver(client, inbound_form("echo estado", sid="SMst"))
    [row] = await outbound_rows(client, 1)

    async def report(status: str, **extra: str) -> None:
        form = {
            "MessageSid": row.external_id or "",
            "MessageStatus": status,
            "AccountSid": ACCOUNT_SID,
            "To": "whatsapp:+34600111222",
            "From": WHATSAPP_FROM,
            **extra,
        }
        response = await deliver(client, form, path="/webhooks/twilio/status", query=f"m={row.id}")
        assert response.status_code == 200

    async def delivery() -> tuple[str | None, str | None]:
        async with db_session(client) as session:
            found = await session.get(Message, row.id)
            assert found is not None
            return found.delivery, found.delivery_error

    await report("delivered")
    await report("sent")  # late, older: ignored
    await report("delivered")  # replayed: no change
    assert await delivery() == ("delivered", None)
    await report("read")
    await report("delivered")
    assert await delivery() == ("read", None)


async def test_status_callback_reports_failure_with_error_code(
    client: AsyncTestClient[Any], api: TwilioApi
) -> None:
    await deliver(client, inbound_form("echo fallo", sid="SMfail"))
    [row] = await outbound_rows(client, 1)
    form = {
        "MessageSid": row.external_id or "",
        "MessageStatus": "undelivered",
        "ErrorCode": "63024",
        "AccountSid": ACCOUNT_SID,
    }
    # Without our ?m= marker the message is found by its Twilio SID.
    response = await deliver(client, form, path="/webhooks/twilio/status")
    assert response.status_code == 200
    async with db_session(client) as session:
        found = await session.get(Message, row.id)
    assert found is not None
    assert (found.delivery, found.delivery_error) == ("undelivered", "twilio 63024")


async def test_unsigned_status_callback_is_refused(client: AsyncTestClient[Any]) -> None:
    form = {"MessageSid": message_sid("SMx"), "MessageStatus": "failed", "AccountSid": ACCOUNT_SID}
    target, body, headers = signed(form, path="/webhooks/twilio/status", token="wrong")
    response = await client.post(target, content=body, headers=headers)
    assert response.status_code == 403


# -- pacing --------------------------------------------------------------------------------


def max_in_any_second(times: list[float]) -> int:
    times = sorted(times)
    return max(sum(1 for t in times[i:] if t - start < 1.0) for i, start in enumerate(times))


async def test_outbound_rate_per_sender_is_never_exceeded(
    settings_for: Callable[..., Settings], api: TwilioApi
) -> None:
    settings = settings_for(twilio_rate_per_s="10")
    async with AsyncTestClient(create_app(settings)) as client:
        client.headers.update(ADMIN)
        released = record_releases(client.app.state.runtime.channels.of(TwilioChannel)._limiter)
        await asyncio.gather(
            *(
                deliver(
                    client,
                    inbound_form(f"echo {n}", sid=f"SMrate{n}", sender=f"whatsapp:+3460000{n:04d}"),
                )
                for n in range(25)
            )
        )
        sent = await sent_to_twilio(api, 25, timeout_s=30)
    assert len(released) == 25
    assert max_in_any_second([at for at, _ in released]) <= 10
    assert sent[-1].at - sent[0].at >= 2.3  # 25 sends at 10/s take at least 2.4 s


@pytest.mark.services
async def test_workers_sharing_redis_share_one_sender_budget(redis_url: str, prefix: str) -> None:
    """Two workers (two limiters on one Redis) together stay within the rate."""
    import redis.asyncio as aioredis

    from channels.ratelimit import RedisRateLimiter

    clients = [aioredis.from_url(redis_url), aioredis.from_url(redis_url)]
    try:
        limiters = [RedisRateLimiter(client, prefix, Outage("Redis")) for client in clients]
        loop = asyncio.get_running_loop()
        starts: list[float] = []

        async def send(limiter: RedisRateLimiter) -> None:
            await limiter.acquire(("twilio:whatsapp:+14155238886", 20))
            starts.append(loop.time())

        await asyncio.gather(*(send(limiters[n % 2]) for n in range(50)))
    finally:
        for client in clients:
            await client.aclose()
    assert max_in_any_second(starts) <= 20
    assert max(starts) - min(starts) >= 2.4


TEMPLATED_APPROVAL_CATALOG = (
    REFUND_CATALOG
    + """
[agents.billing.actions.refund.whatsapp_template]
content_sid = "HX0123456789abcdef0123456789abcdef"
variables = { "1" = "#{activity_id}" }
"""
)


async def test_an_approval_request_never_goes_out_as_the_actions_template(
    make_settings: Callable[..., Settings], sqlite_url: str, api: TwilioApi, tmp_path: Path
) -> None:
    """The template stands in for the requester's reply; an approver outside the 24-hour
    window gets no template meant for someone else, and the failure is recorded."""
    catalog = tmp_path / "templated.toml"
    catalog.write_text(TEMPLATED_APPROVAL_CATALOG)
    settings = make_settings(database_url=sqlite_url, catalog=catalog, **twilio_env(api.url))
    async with AsyncTestClient(create_app(settings)) as client:
        services = client.app.state.runtime
        supervisor = await services.users.add("Sup", "supervisor")
        await services.users.link(str(supervisor.id), "whatsapp", "+34600999888")
        api.errors.append(63016)  # the first send is the approver's request
        await deliver(client, inbound_form("refund 3", sid="SMtpl1"))
        [told] = await sent_to_twilio(api)
        assert told.to == "whatsapp:+34600111222"
        assert told.body is not None
        assert told.body.startswith("Request #1 (Refund an invoice) needs approval")
        assert [m for m in api.sent if m.one("ContentSid")] == []
        activity = await services.activities.get(1, with_events=True)
        failed = [e for e in activity.events if e.kind == "reply_failed"]
        assert len(failed) == 1
        assert "63016" in str(failed[0].data)
