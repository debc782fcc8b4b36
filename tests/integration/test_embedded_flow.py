"""The whole loop on the embedded default: SQLite file, in-process jobs, through the HTTP API."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Callable
from typing import Any

import msgspec
import pytest
from litestar.testing import AsyncTestClient
from prometheus_client.parser import text_string_to_metric_families

from dispatch.record.models import Activity, ActivityEvent, Message
from gateway.app import create_app
from gateway.settings import Settings
from tests.conftest import ADMIN, count_rows, open_db
from tests.support.flow import ask, outbound, post, wait_for
from workers.runtime import Runtime


@pytest.fixture
async def client(
    make_settings: Callable[..., Settings], sqlite_url: str
) -> AsyncIterator[AsyncTestClient[Any]]:
    app = create_app(make_settings(database_url=sqlite_url, max_body_bytes=2048))
    async with AsyncTestClient(app) as test_client:
        test_client.headers.update(ADMIN)
        yield test_client


async def count(client: AsyncTestClient[Any], model: Any) -> int:
    async with open_db(client.app.state.runtime.settings.database.url) as sessions:
        return await count_rows(sessions, model)


async def test_message_to_reply_with_audit_trail(client: AsyncTestClient[Any]) -> None:
    response = await post(client, "echo Hola Ñandú", id="m1")
    assert response.status_code == 202
    body = response.json()
    assert body["duplicate"] is False
    [reply] = await outbound(client, body["conversation_id"])
    assert reply["text"] == "Hola Ñandú"
    assert reply["delivery"] == "delivered"
    activity = (await client.get(f"/api/v1/activities/{reply['activity_id']}")).json()
    assert activity["status"] == "completed"
    assert activity["agent_name"] == "assistant"  # echo is the demo agent's
    assert activity["action_type"] == "echo"
    assert activity["details"]["payload"] == {"text": "Hola Ñandú"}
    assert activity["details"]["provenance"]["rule_id"] == "echo"
    assert activity["details"]["result"]["text"] == "Hola Ñandú"
    assert activity["source_channel"] == "rest"
    assert activity["started_at"]
    assert activity["completed_at"]
    assert activity["metrics"]["duration_ms"] >= 0
    kinds = [(e["kind"], e["status"]) for e in activity["events"]]
    assert kinds == [
        ("created", "queued"),
        ("started", "in_progress"),
        ("completed", "completed"),
        ("reply_sent", None),
    ]
    messages = (
        await client.get(f"/api/v1/conversations/{body['conversation_id']}/messages")
    ).json()
    assert [m["direction"] for m in messages] == ["inbound", "outbound"]
    assert messages[0]["state"] == "dispatched"


async def test_status_is_for_the_owner_only(client: AsyncTestClient[Any]) -> None:
    first = (await post(client, "echo one", id="a1", sender="alice", conversation="ca")).json()
    [reply] = await outbound(client, first["conversation_id"])
    own = reply["activity_id"]
    mine = (await post(client, f"status {own}", id="a2", sender="alice", conversation="ca")).json()
    replies = await outbound(client, mine["conversation_id"], count=2)
    assert replies[1]["text"] == f"Request #{own} (Repeat a text back): completed"
    theirs = (await post(client, f"estado #{own}", id="b1", sender="bob", conversation="cb")).json()
    [other] = await outbound(client, theirs["conversation_id"])
    assert other["text"] == f"No encuentro ninguna solicitud #{own} tuya."  # asked in Spanish


async def test_cancel_withdraws_a_waiting_request_of_ones_own(
    client: AsyncTestClient[Any],
) -> None:
    done = (await post(client, "echo listo", id="c1", sender="carmen", conversation="cc")).json()
    [reply] = await outbound(client, done["conversation_id"])
    finished = reply["activity_id"]
    answer = (
        await post(client, f"cancel {finished}", id="c2", sender="carmen", conversation="cc")
    ).json()
    replies = await outbound(client, answer["conversation_id"], count=2)
    assert replies[1]["text"] == (
        f"Request #{finished} is completed; only a request that has not started can be cancelled."
    )
    theirs = (
        await post(client, f"cancelar #{finished}", id="d1", sender="dario", conversation="dd")
    ).json()
    [other] = await outbound(client, theirs["conversation_id"])
    assert other["text"] == f"No encuentro ninguna solicitud #{finished} tuya."


async def test_unrecognized_text_gets_help_from_the_catalog(client: AsyncTestClient[Any]) -> None:
    body = (await post(client, "asdf qwerty", id="u1")).json()
    [reply] = await outbound(client, body["conversation_id"])
    assert reply["text"].startswith("I didn't understand that. You can ask:")
    assert "Repeat a text back" in reply["text"]


async def test_twenty_concurrent_duplicates_make_one_activity_and_one_reply(
    client: AsyncTestClient[Any],
) -> None:
    responses = await asyncio.gather(*(post(client, "echo once", id="dup-1") for _ in range(20)))
    assert {r.status_code for r in responses} == {202}
    bodies = [r.json() for r in responses]
    assert len({b["message_id"] for b in bodies}) == 1
    assert sum(not b["duplicate"] for b in bodies) == 1
    [reply] = await outbound(client, bodies[0]["conversation_id"])
    await asyncio.sleep(0.3)  # let any stray duplicate work show itself
    assert await count(client, Activity) == 1
    assert len(await outbound(client, bodies[0]["conversation_id"])) == 1
    assert reply["text"] == "once"


async def test_replies_come_in_arrival_order(client: AsyncTestClient[Any]) -> None:
    for n in range(8):
        assert (
            await post(client, f"echo {n}", id=f"o{n}", conversation="ordered")
        ).status_code == 202
    conversation_id = (await post(client, "echo 8", id="o8", conversation="ordered")).json()[
        "conversation_id"
    ]
    replies = await outbound(client, conversation_id, count=9)
    assert [r["text"] for r in replies] == [str(n) for n in range(9)]


@pytest.mark.parametrize(
    ("body", "status", "error", "detail"),
    [
        (b"{not json", 400, "invalid_input", ("malformed JSON",)),
        (b"", 400, "invalid_input", ("empty",)),
        (b"[]", 400, "invalid_input", ("invalid field",)),
        (
            msgspec.json.encode({"id": "x", "conversation": "c", "sender": "s", "text": 5}),
            400,
            "invalid_input",
            ("invalid field", "text"),
        ),
        (
            msgspec.json.encode({"id": "x", "conversation": "c", "sender": "s", "text": "   "}),
            400,
            "invalid_input",
            ("text is empty",),
        ),
        (
            msgspec.json.encode({"id": "x", "conversation": "c", "sender": "s"}),
            400,
            "invalid_input",
            ("invalid field", "text"),
        ),
        (
            msgspec.json.encode(
                {"id": "x", "conversation": "c", "sender": "s", "text": "hi", "admin": True}
            ),
            400,
            "invalid_input",
            ("invalid field", "admin"),
        ),
        (
            msgspec.json.encode(
                {"id": "x", "conversation": "c", "sender": "s", "text": "a" * 4000}
            ),
            413,
            "payload_too_large",
            (),
        ),
    ],
)
async def test_bad_input_is_refused_and_nothing_is_stored(
    client: AsyncTestClient[Any],
    body: bytes,
    status: int,
    error: str,
    detail: tuple[str, ...],
) -> None:
    response = await client.post(
        "/api/v1/messages", content=body, headers={"content-type": "application/json"}
    )
    assert response.status_code == status, response.text
    assert response.json()["error"] == error
    # Our own words and the field named; never a decoder's wording, which changes by release.
    assert all(part in response.json()["detail"] for part in detail)
    assert await count(client, Message) == 0
    assert await count(client, Activity) == 0


async def test_unknown_routes_and_ids_are_json_404(client: AsyncTestClient[Any]) -> None:
    for path in ("/api/v1/activities/999", "/api/v1/conversations/999/messages", "/nope"):
        response = await client.get(path)
        assert response.status_code == 404
        assert response.json()["error"] == "not_found"


async def test_websocket_chat(client: AsyncTestClient[Any]) -> None:
    with await client.websocket_connect("/chat/ws") as socket:
        hello = socket.receive_json()
        assert hello["type"] == "hello"
        socket.send_json({"id": "w1", "text": "echo por el socket"})
        frames = [socket.receive_json(), socket.receive_json()]
        by_type = {f["type"]: f for f in frames}
        assert by_type["ack"]["id"] == "w1"
        assert by_type["reply"]["text"] == "por el socket"
        assert by_type["reply"]["in_reply_to"] == "w1"
        socket.send_text("{broken")
        error = socket.receive_json()
        assert (error["type"], error["error"]) == ("error", "invalid_input")
        socket.send_json({"id": "w2", "text": ""})
        assert socket.receive_json()["detail"] == "text is empty"
        socket.send_text('{"id": "w3", "text": "' + "x" * 3000 + '"}')
        too_big = socket.receive_json()
        assert (too_big["error"], too_big["id"]) == ("payload_too_large", "w3")
        # The socket survives bad frames.
        socket.send_json({"id": "w4", "text": "echo still here"})
        frames = [socket.receive_json(), socket.receive_json()]
        assert {f.get("text") for f in frames if f["type"] == "reply"} == {"still here"}
    assert await count(client, Message) == 4  # two in, two out: bad frames stored nothing


async def test_websocket_session_resumes_the_conversation(client: AsyncTestClient[Any]) -> None:
    with await client.websocket_connect("/chat/ws") as socket:
        session = socket.receive_json()["session"]
        socket.send_json({"id": "r1", "text": "echo first"})
        first = [socket.receive_json(), socket.receive_json()]
    conversation_id = next(f for f in first if f["type"] == "ack")["conversation_id"]
    await outbound(client, conversation_id)  # the reply's delivery is recorded
    with await client.websocket_connect(
        "/chat/ws", subprotocols=["switchboard", f"session.{session}"]
    ) as socket:
        hello = socket.receive_json()
        # The same session, its token renewed: the conversation goes on.
        assert hello["session"].split(".")[0] == session.split(".")[0]
        # What the page shows again after a reload: the conversation so far.
        assert [(m["direction"], m["text"]) for m in hello["history"]] == [
            ("inbound", "echo first"),
            ("outbound", "first"),
        ]
        socket.send_json({"id": "r1", "text": "echo first"})  # a client resend after reconnect
        ack = socket.receive_json()
        assert ack["duplicate"] is True
        assert (
            ack["conversation_id"]
            == next(f for f in first if f["type"] == "ack")["conversation_id"]
        )


async def test_web_chat_replies_offer_buttons_and_a_choice_is_sent_as_text(
    client: AsyncTestClient[Any],
) -> None:
    with await client.websocket_connect("/chat/ws") as socket:
        socket.receive_json()
        socket.send_json({"id": "b1", "text": "help"})
        frames = [socket.receive_json(), socket.receive_json()]
        reply = next(f for f in frames if f["type"] == "reply")
        offered = {c["label"]: c["text"] for c in reply["choices"]}
        assert offered["echo hello"] == "echo hello"
        socket.send_json({"id": "b2", "text": offered["echo hello"]})  # what a click sends
        frames = [socket.receive_json(), socket.receive_json()]
        assert next(f for f in frames if f["type"] == "reply")["text"] == "hello"


async def test_events_are_append_only_per_state_change(client: AsyncTestClient[Any]) -> None:
    body = (await post(client, "help", id="h1")).json()
    await outbound(client, body["conversation_id"])

    async def four() -> bool:
        return await count(client, ActivityEvent) == 4

    assert await wait_for(four)


async def test_embedded_the_gateway_is_the_worker_operators_see(
    client: AsyncTestClient[Any],
) -> None:
    body = (await post(client, "echo visto", id="ops-1")).json()
    await outbound(client, body["conversation_id"])
    [worker] = (await client.get("/api/v1/workers")).json()
    assert worker["pid"] == os.getpid()  # the in-process jobs run in the gateway
    assert worker["jobs_done"] >= 1
    queue = (await client.get("/api/v1/queue")).json()
    assert queue["database"] == {"messages_awaiting_dispatch": 0, "activities_queued": 0}
    assert queue["queue"]["scheduled"] == 0
    executed = await client.post(
        "/api/v1/actions/execute",
        json={"agent": "assistant", "action_type": "echo", "payload": {"text": "x"}},
    )
    assert executed.status_code == 202

    async def ran() -> bool:
        found = (await client.get(executed.json()["activity_url"])).json()
        return bool(found["status"] == "completed")

    await wait_for(ran)


async def test_embedded_metrics_read_the_sqlite_record(client: AsyncTestClient[Any]) -> None:
    body = (await post(client, "echo medido", id="metrics-1")).json()
    await outbound(client, body["conversation_id"])
    text = (await client.get("/metrics")).text
    samples = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }
    labels = (("action_type", "echo"), ("agent", "assistant"), ("status", "completed"))
    assert samples["switchboard_activities", labels] == 1
    assert samples["switchboard_handler_duration_seconds_count", ()] == 1
    assert samples["switchboard_handler_duration_seconds_bucket", (("le", "+Inf"),)] == 1


async def test_help_buttons_send_what_works_and_a_missing_number_is_asked_for(
    embedded: Runtime,
) -> None:
    """The help menu's buttons never send a literal example id ("status 12"): "status" and
    "cancel" alone ask which request, and the answer is acted on."""
    _, done = await ask(embedded, "echo one", sender="buttons")
    assert done == "one"
    menu, _ = await ask(embedded, "help", sender="buttons")
    buttons = [c["text"] for c in menu.details["result"]["choices"]]
    assert {"status", "cancel"} <= set(buttons)
    assert not any(any(ch.isdigit() for ch in b) for b in buttons)
    _, asked = await ask(embedded, "status", sender="buttons")
    assert asked.startswith("Which request? Its number")
    answered, told = await ask(embedded, "1", sender="buttons")
    assert told == "Request #1 (Repeat a text back): completed"
    assert answered.action_type == "status"


async def test_a_spanish_speaker_is_answered_in_spanish_and_an_english_one_in_english(
    embedded: Runtime,
) -> None:
    _, help_es = await ask(embedded, "ayuda", sender="ana")
    assert help_es.startswith("Puedes pedir:")
    assert '• Repite un texto (p. ej. "repite hola")' in help_es
    _, unknown = await ask(embedded, "necesito algo rarísimo", sender="ana")
    assert unknown.startswith("No lo he entendido. Puedes pedir:")
    _, asked = await ask(embedded, "estado", sender="ana")
    assert "¿Qué solicitud?" in asked
    _, status = await ask(embedded, "1", sender="ana")  # no clue in "1": the question's language
    assert status == "Solicitud #1 (Lista lo que puedes pedir): completada"
    _, late = await ask(embedded, "cancelar 1", sender="ana")
    assert (
        late == "La solicitud #1 está completada; solo se puede cancelar una que no haya empezado."
    )
    started, said = await ask(embedded, "dar de alta a ACME", sender="ana")
    assert said.startswith(f"Empezada onboard_customer como ejecución #{started.id}: 4 pasos")

    async def told() -> str | None:
        replies = await embedded.store.replies_to(started.source_message_id or 0)
        done = [r.text for r in replies if r.delivery not in {"pending", "sending"}]
        return done[1] if len(done) > 1 else None

    ended = await wait_for(told)
    assert ended.startswith(f"Ejecución #{started.id} de onboard_customer: completada.")
    assert "• welcome: completada — ¡Bienvenido, ACME!" in ended  # the step in her language too
    _, help_en = await ask(embedded, "help", sender="bob")
    assert help_en.startswith("You can ask:")
    assert '• Repeat a text back (e.g. "echo hello")' in help_en


async def test_the_bundled_demo_does_what_the_readme_says(embedded: Runtime) -> None:
    """The README's headline example and the demo's flows, on the bundled catalog."""
    _, invoice = await ask(embedded, "create an invoice for ACME, 120 €", sender="demo")
    assert invoice == "Invoice INV-0001 for ACME: 120 EUR"
    _, asked = await ask(embedded, "create an invoice", sender="demo")
    assert asked.startswith("Which client is the invoice for?")
    _, filled = await ask(embedded, "Globex", sender="demo")
    assert filled == "Invoice INV-0002 for Globex"
    _, spanish = await ask(embedded, "factura a Initech por 99,50 €", sender="demo")
    assert spanish == "Factura INV-0003 para Initech: 99.5 EUR"
    _, ticket = await ask(embedded, "open a ticket: the printer is broken", sender="demo")
    assert ticket == "Ticket T-0001 opened: the printer is broken"
    sup = await embedded.users.add("demo-supervisor", "supervisor")
    await embedded.users.link(str(sup.id), "rest", "demo-supervisor")
    refund, asked_sup = await ask(embedded, "refund invoice 1", sender="demo")
    assert refund.status == "awaiting_approval"
    assert asked_sup.startswith(f"Approval needed for request #{refund.id}: Refund an invoice")


async def test_a_user_given_a_language_is_answered_in_it_whatever_they_write(
    embedded: Runtime,
) -> None:
    _, first = await ask(embedded, "ayuda", sender="lena")
    assert first.startswith("Puedes pedir:")
    await embedded.users.set_language("lena", "en")
    _, chosen = await ask(embedded, "ayuda", sender="lena")
    assert chosen.startswith("You can ask:")
    await embedded.users.set_language("lena", None)
    _, auto = await ask(embedded, "ayuda", sender="lena")
    assert auto.startswith("Puedes pedir:")
