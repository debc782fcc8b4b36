"""Human takeover: the bot stops acting on a conversation, a supervisor answers on the user's
own channel (with delivery status), and hands it back; every step is an event."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from litestar.testing import AsyncTestClient

from gateway.app import create_app
from gateway.auth import TokenStore
from gateway.settings import Settings
from tests.conftest import ADMIN
from tests.support.flow import outbound, post, wait_for
from tests.support.runtime import runtime_for


@pytest.fixture
async def setup(
    make_settings: Callable[..., Settings], sqlite_url: str
) -> AsyncIterator[tuple[AsyncTestClient[Any], dict[str, str]]]:
    settings = make_settings(database_url=sqlite_url)
    async with runtime_for(settings) as runtime:
        sup = await runtime.users.add("sup", "supervisor")
        token, _ = await TokenStore(runtime.sessions, None).create(
            name="sup", role="operator", user_id=sup.id
        )
    async with AsyncTestClient(create_app(settings)) as client:
        client.headers.update(ADMIN)
        yield client, {"Authorization": f"Bearer {token}"}


async def test_a_supervisor_takes_over_answers_and_hands_back(
    setup: tuple[AsyncTestClient[Any], dict[str, str]],
) -> None:
    client, sup = setup
    first = (await post(client, "echo hi", id="t1", conversation="t", sender="tina")).json()
    conversation = first["conversation_id"]
    await outbound(client, conversation)  # the bot answered "hi"
    url = f"/api/v1/conversations/{conversation}"
    taken = await client.post(f"{url}/takeover", headers=sup)
    assert taken.status_code == 200, taken.text
    activity_id = taken.json()["activity_id"]
    again = await client.post(f"{url}/takeover", headers=sup)
    assert again.status_code == 409
    told = await outbound(client, conversation, count=2)
    assert told[-1]["text"].startswith("A person is taking over this conversation.")
    # The user writes: the bot keeps the message for the person and does nothing with it.
    await post(client, "echo are you a bot?", id="t2", conversation="t", sender="tina")

    async def held() -> Any:
        messages = (await client.get(f"{url}/messages")).json()
        mine = [m for m in messages if m["text"] == "echo are you a bot?"]
        return mine if mine and mine[0]["state"] == "human" else None

    await wait_for(held)
    replied = await client.post(f"{url}/reply", json={"text": "Hi Tina, Sofía here."}, headers=sup)
    assert replied.status_code == 202, replied.text
    answered = await outbound(client, conversation, count=3)
    assert [m["text"] for m in answered][-1] == "Hi Tina, Sofía here."
    assert answered[-1]["delivery"] == "delivered"
    assert not any(m["text"] == "are you a bot?" for m in answered)  # the bot stayed quiet
    back = await client.post(f"{url}/handback", headers=sup)
    assert back.status_code == 200
    assert (await client.post(f"{url}/reply", json={"text": "x"}, headers=sup)).status_code == 409
    await post(client, "echo back again", id="t3", conversation="t", sender="tina")
    final = await outbound(client, conversation, count=5)
    assert final[-2]["text"].startswith("You are talking to the assistant again.")
    assert final[-1]["text"] == "back again"  # the bot answers again
    record = (await client.get(f"/api/v1/activities/{activity_id}")).json()
    kinds = [(e["kind"], e["actor"]) for e in record["events"]]
    assert ("taken_over", f"user:{taken.json()['by']}") in kinds
    assert [
        k for k, _ in kinds if k in {"taken_over", "user_message", "human_message", "handed_back"}
    ] == [
        "taken_over",
        "user_message",
        "human_message",
        "handed_back",
    ]


async def test_takeover_needs_a_person_and_a_conversation(
    setup: tuple[AsyncTestClient[Any], dict[str, str]],
) -> None:
    client, sup = setup
    body = (await post(client, "echo x", id="u1", conversation="u", sender="uma")).json()
    url = f"/api/v1/conversations/{body['conversation_id']}"
    as_token = await client.post(f"{url}/takeover")  # the admin token acts for no one
    assert (as_token.status_code, as_token.json()["error"]) == (403, "forbidden")
    missing = await client.post("/api/v1/conversations/999/takeover", headers=sup)
    assert missing.status_code == 404
    empty = await client.post(f"{url}/reply", json={"text": "   "}, headers=sup)
    assert empty.status_code in {400, 409}
    assert (await client.post(f"{url}/handback", headers=sup)).status_code == 409


async def test_a_user_asks_for_a_person_and_supervisors_are_told_once(embedded: Any) -> None:
    from tests.integration.test_approvals import inbox
    from tests.support.flow import ask

    await embedded.users.add("sup", "supervisor")
    await embedded.users.link("sup", "rest", "sup")
    await embedded.users.add("adm", "admin")
    await embedded.users.link("adm", "rest", "adm")
    activity, _ = await ask(embedded, "quiero hablar con una persona", sender="pepa")
    assert activity.action_type == "human"
    [said] = await wait_for(lambda: inbox(embedded, "pepa"))
    assert said == "He pedido que te atienda una persona; te contestará aquí."
    for who in ("sup", "adm"):
        [told] = await inbox(embedded, who)
        assert f"conversation #{activity.conversation_id}" in told
        assert "/portal" in told
    # Asked again (a job run twice): nobody is told twice.
    again = await embedded.approvals.call_people(activity.id, roles=("supervisor",), text="x")
    assert again == 2
    assert len(await inbox(embedded, "sup")) == 1
    await ask(embedded, "agent", sender="other")
    [alone] = await wait_for(lambda: inbox(embedded, "other"))
    assert alone.startswith("I've asked a person")


async def test_a_supervisor_who_only_uses_the_portal_counts_as_told(embedded: Any) -> None:
    """No one at all: the visitor is told no one can join. A supervisor with a portal login
    and no channel: they see the call in the portal, so the visitor is told a person comes."""
    from tests.integration.test_approvals import inbox
    from tests.support.flow import ask

    await ask(embedded, "I want to talk to a human", sender="early")
    [alone] = await wait_for(lambda: inbox(embedded, "early"))
    assert alone == "No one can join right now; I'm still here to help."

    sup = await embedded.users.add("Portal Only", "supervisor")
    await embedded.users.set_password(str(sup.id), "correct horse battery")
    activity, _ = await ask(embedded, "I want to talk to a human", sender="later")
    [said] = await wait_for(lambda: inbox(embedded, "later"))
    assert said == "I've asked a person to join; they will answer here."
    story = await embedded.activities.get(activity.id, with_events=True)
    [called] = [e for e in story.events if e.kind == "people_called"]
    assert called.data == {"told": 1, "users": [], "portal": [sup.id]}


async def test_only_the_holder_acts_on_a_takeover_and_staff_conversations_are_not_taken(
    make_settings: Callable[..., Settings], sqlite_url: str
) -> None:
    settings = make_settings(database_url=sqlite_url)
    async with runtime_for(settings) as runtime:
        store = TokenStore(runtime.sessions, None)
        headers = {}
        for name, role in [("sup1", "supervisor"), ("sup2", "supervisor"), ("boss", "admin")]:
            user = await runtime.users.add(name, role)
            await runtime.users.link(str(user.id), "rest", name)
            token, _ = await store.create(name=name, role="operator", user_id=user.id)
            headers[name] = {"Authorization": f"Bearer {token}"}
    async with AsyncTestClient(create_app(settings)) as client:
        client.headers.update(ADMIN)
        body = (await post(client, "echo x", id="o1", conversation="o", sender="otto")).json()
        url = f"/api/v1/conversations/{body['conversation_id']}"
        assert (await client.post(f"{url}/takeover", headers=headers["sup1"])).status_code == 200
        other = await client.post(f"{url}/reply", json={"text": "hi"}, headers=headers["sup2"])
        assert other.status_code == 409  # sup1 has it
        assert (await client.post(f"{url}/handback", headers=headers["sup2"])).status_code == 409
        boss = await client.post(f"{url}/reply", json={"text": "hi"}, headers=headers["boss"])
        assert boss.status_code == 202  # an admin may step in
        staff = (
            await client.post(
                "/api/v1/messages",
                json={"id": "o2", "conversation": "sup2", "sender": "sup2", "text": "echo y"},
                headers=headers["sup2"],
            )
        ).json()
        refused = await client.post(
            f"/api/v1/conversations/{staff['conversation_id']}/takeover", headers=headers["sup1"]
        )
        assert (refused.status_code, refused.json()["extra"]["role"]) == (409, "supervisor")


async def test_asking_for_a_person_again_and_again_pages_the_staff_once(embedded: Any) -> None:
    from tests.integration.test_approvals import inbox
    from tests.support.flow import ask

    await embedded.users.add("sup", "supervisor")
    await embedded.users.link("sup", "rest", "sup")
    for _ in range(3):
        await ask(embedded, "agent", sender="impatient")
    assert len(await inbox(embedded, "sup")) == 1
