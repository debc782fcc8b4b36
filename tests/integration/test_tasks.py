"""External agents over the tasks API, on each database: a request served by agents waits for
one; exactly one claimant wins; the agent asks the requester and gets the answer attached;
what it hands in is checked (a diff must be one, sizes bounded) and stored once per key; a
reviewer sends it back once and approves it; the requester gets the change and its link. A
lapsed claim returns the task to the queue and fences its agent off; attempts run out to a
failure the requester is told of. An agent's token reaches nothing else."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
from collections.abc import AsyncIterator, Callable
from importlib import resources
from pathlib import Path
from typing import Any, NamedTuple

import pytest
from litestar.testing import AsyncTestClient
from sqlalchemy import func, select, update

from dispatch.record.models import Activity, ActivityStatus, Artifact, Conversation, utcnow
from gateway.app import create_app
from gateway.auth import TokenStore
from gateway.settings import Settings
from tests.conftest import ADMIN, count_rows, open_db
from tests.support.flow import wait_for
from tests.support.runtime import runtime_for
from tests.support.services import own_database

DIFF = """--- a/web/login.py
+++ b/web/login.py
@@ -1,3 +1,3 @@
 def login(user, password):
-    return check(user, password)
+    return check(user.strip(), password)
 # end
"""
MORE_ACTIONS = """
[agents.writer]
description = "Docs"
[agents.writer.actions.write_docs]
description = "Write docs"
executor = "agent"
public = true
review = false
max_attempts = 2
lease_s = 30
on_approve = { agent = "writer", action = "publish", auto_run = true }
[agents.writer.actions.write_docs.payload]
what = { type = "string" }

[agents.writer.actions.translate]
description = "Translate a page"
executor = "agent"
public = true
artifacts = ["text"]
review = { reviewers = ["supervisor"], quorum = 2, ttl_s = 3600 }
[agents.writer.actions.translate.payload]
what = { type = "string" }

[[rules]]
id = "translate"
agent = "writer"
action = "translate"
patterns = ['^translate\\s+(?P<what>.+)$']

[agents.writer.actions.publish]
description = "Publish docs"
handler = "ledger"
public = true
reply = "Published {what} as P-{number:04d}"
[agents.writer.actions.publish.payload]
what = { type = "string" }

[[rules]]
id = "docs"
agent = "writer"
action = "write_docs"
patterns = ['^document\\s+(?P<what>.+)$']

[agents.writer.actions.outline]
description = "Outline the docs to write"
executor = "agent"
produces = "plan"
public = true
artifacts = ["text", "diff"]
review = { reviewers = ["supervisor"] }
[agents.writer.actions.outline.payload]
what = { type = "string" }
[agents.writer.actions.outline.plan.roles.publisher]
agent = "writer"
action = "publish"
payload = { what = "{{ task.description }}" }

[[rules]]
id = "outline"
agent = "writer"
action = "outline"
patterns = ['^outline\\s+(?P<what>.+)$']
"""


class Desk(NamedTuple):
    client: AsyncTestClient[Any]
    settings: Settings
    ada: dict[str, str]
    """An agent serving developer.fix_bug."""
    bob: dict[str, str]
    """Another agent serving developer.fix_bug."""
    doc: dict[str, str]
    """An agent serving writer.write_docs only."""
    sofia: dict[str, str]
    """A supervisor's token (acting for her)."""
    tom: dict[str, str]
    """Another supervisor's."""


@pytest.fixture
async def desk(
    make_settings: Callable[..., Settings], tmp_path: Path, backend: str
) -> AsyncIterator[Desk]:
    catalog = tmp_path / "catalog.toml"
    bundled = resources.files("dispatch.policy").joinpath("default_catalog.toml").read_text()
    catalog.write_text(bundled + MORE_ACTIONS, encoding="utf-8")
    async with contextlib.AsyncExitStack() as stack:
        url = f"sqlite+aiosqlite:///{tmp_path / 'tasks.db'}"
        if backend == "postgresql":
            url = await stack.enter_async_context(own_database("switchboard_test"))
        # Recovery (lapsed claims) every half second: what a test waits for comes soon.
        settings = make_settings(database_url=url, catalog=catalog, worker_recover_every_s=0.5)
        headers = {}
        async with runtime_for(settings) as runtime:  # the people and tokens, set up first
            tokens = TokenStore(runtime.sessions, None)
            sofia = await runtime.users.add("Sofia Ruiz", "supervisor")
            await runtime.users.link(str(sofia.id), "rest", "sofia")
            tom = await runtime.users.add("Tom Lee", "supervisor")
            token, _ = await tokens.create(name="tom", role="operator", user_id=tom.id)
            headers["tom"] = {"Authorization": f"Bearer {token}"}
            for name, serves in [
                ("ada", ("developer.fix_bug",)),
                ("bob", ("developer.fix_bug",)),
                ("doc", ("writer.write_docs", "writer.translate", "writer.outline")),
            ]:
                token, _ = await tokens.create(name=name, role="agent", serves=serves)
                headers[name] = {"Authorization": f"Bearer {token}"}
            token, _ = await tokens.create(name="sofia", role="operator", user_id=sofia.id)
            headers["sofia"] = {"Authorization": f"Bearer {token}"}
        client = await stack.enter_async_context(AsyncTestClient(create_app(settings)))
        yield Desk(client, settings, **headers)


async def say(client: AsyncTestClient[Any], sender: str, text: str, n: int) -> int:
    body = {"id": f"{sender}-{n}", "conversation": sender, "sender": sender, "text": text}
    sent = await client.post("/api/v1/messages", json=body, headers=ADMIN)
    assert sent.status_code == 202, sent.text
    return int(sent.json()["conversation_id"])


async def replies(client: AsyncTestClient[Any], conversation: int) -> list[dict[str, Any]]:
    listed = await client.get(f"/api/v1/conversations/{conversation}/messages", headers=ADMIN)
    return [m for m in listed.json() if m["direction"] == "outbound"]


async def reply_with(client: AsyncTestClient[Any], conversation: int, text: str) -> dict[str, Any]:
    async def found() -> dict[str, Any] | None:
        return next((m for m in await replies(client, conversation) if text in m["text"]), None)

    got: dict[str, Any] = await wait_for(found)
    return got


async def waiting(desk: Desk, agent: dict[str, str]) -> list[dict[str, Any]]:
    listed = await desk.client.get("/api/v1/tasks", headers=agent)
    assert listed.status_code == 200, listed.text
    found: list[dict[str, Any]] = listed.json()
    return found


async def test_an_agent_claims_asks_hands_in_and_a_reviewer_releases_the_work(desk: Desk) -> None:
    client = desk.client
    rita = await say(client, "rita", "fix the login bug on the website", 1)
    await reply_with(client, rita, "is with a coding agent now")
    [task] = await wait_for(lambda: waiting(desk, desk.ada))
    assert task["action"] == "developer.fix_bug"
    assert task["request_text"] == "fix the login bug on the website"
    assert task["payload"] == {"what": "the login bug on the website"}
    assert (task["status"], task["language"], task["channel"]) == (
        "waiting_for_agent",
        "en",
        "rest",
    )
    assert await waiting(desk, desk.doc) == []  # not an action it serves
    here = f"/api/v1/tasks/{task['id']}"
    hidden = await client.get(here, headers=desk.doc)
    assert hidden.status_code == 404

    # Two claimants: one wins; the other is told the task's state, not who has it.
    first, second = await asyncio.gather(
        client.post(f"{here}/claim", headers=desk.ada),
        client.post(f"{here}/claim", headers=desk.bob),
    )
    codes = sorted([first.status_code, second.status_code])
    assert codes == [200, 409]
    winner, loser = (desk.ada, desk.bob) if first.status_code == 200 else (desk.bob, desk.ada)
    refused = second if first.status_code == 200 else first
    assert "claimed by another agent" in refused.json()["detail"]
    assert "ada" not in refused.json()["detail"]
    assert "bob" not in refused.json()["detail"]
    assert await waiting(desk, loser) == []

    # A question to the requester, on her channel; her answer is attached, not a new request.
    asked = await client.post(f"{here}/messages", json={"text": "Which browser?"}, headers=winner)
    assert asked.status_code == 202, asked.text
    question = await reply_with(client, rita, "Which browser?")
    assert question["author"] in {"ada", "bob"}
    await say(client, "rita", "Firefox, on Windows", 2)

    async def answered() -> dict[str, Any] | None:
        view = (await client.get(here, headers=winner)).json()
        return view if any(n["kind"] == "requester_answered" for n in view["notes"]) else None

    view = await wait_for(answered)
    assert [n["text"] for n in view["notes"] if n["kind"] == "requester_answered"] == [
        "Firefox, on Windows"
    ]
    assert not any("Firefox" in m["text"] for m in await replies(client, rita))  # no bot answer

    # Hand-ins are checked before anything is stored.
    for body, status in [
        ({"type": "diff", "content": "<script>alert(1)</script>"}, 422),
        ({"type": "diff", "content": "just some words"}, 422),
        ({"type": "text", "content": "x" * 1_000_001}, 413),
        ({"type": "screenshot", "content": "bm90IGFuIGltYWdl"}, 422),
        ({"type": "video", "content": "x"}, 422),
    ]:
        bad = await client.post(f"{here}/submit", json=body, headers=winner)
        assert bad.status_code == status, bad.text
        assert bad.json()["detail"]
    not_held = await client.post(
        f"{here}/submit", json={"type": "diff", "content": DIFF}, headers=loser
    )
    assert not_held.status_code == 409
    async with open_db(desk.settings.database.url) as sessions:
        assert await count_rows(sessions, Artifact) == 0

    # The diff, submitted twice with one key: one artifact; the task goes to review.
    body = {"type": "diff", "content": DIFF, "title": "Trim the user name", "idempotency_key": "k1"}
    one = await client.post(f"{here}/submit", json=body, headers=winner)
    again = await client.post(f"{here}/submit", json=body, headers=winner)
    assert one.status_code == 201, one.text
    assert again.json()["id"] == one.json()["id"]
    assert one.json()["summary"]["files"] == [
        {"path": "web/login.py", "added": 1, "removed": 1, "status": "modified"}
    ]
    assert (await client.get(here, headers=desk.sofia)).json()["status"] == "in_review"
    async with open_db(desk.settings.database.url) as sessions, sessions() as session:
        sofia = await session.scalar(
            select(Conversation.id).where(
                Conversation.channel == "rest", Conversation.key == "sofia"
            )
        )
    assert sofia is not None
    told = await reply_with(client, sofia, "handed in its work for review")
    assert f"/portal/reviews/{task['id']}" in told["text"]

    # Reviews: an agent cannot; a comment is needed to send it back; back to its agent.
    by_agent = await client.post(f"{here}/review", json={"decision": "approve"}, headers=winner)
    assert by_agent.status_code == 403
    bare = await client.post(
        f"{here}/review", json={"decision": "request_changes"}, headers=desk.sofia
    )
    assert bare.status_code == 422
    back = await client.post(
        f"{here}/review",
        json={"decision": "request_changes", "comment": "Also trim the password"},
        headers=desk.sofia,
    )
    assert back.status_code == 200, back.text
    assert back.json()["status"] == "changes_requested"
    view = (await client.get(here, headers=winner)).json()
    assert view["held_by_you"]
    assert [n["text"] for n in view["notes"] if n["kind"] == "changes_requested"] == [
        "Also trim the password"
    ]
    second_diff = DIFF.replace("user.strip(), password", "user.strip(), password.strip()")
    resubmitted = await client.post(
        f"{here}/submit", json={"type": "diff", "content": second_diff}, headers=winner
    )
    assert resubmitted.json()["round"] == 2
    approved = await client.post(f"{here}/review", json={"decision": "approve"}, headers=desk.sofia)
    assert approved.json()["status"] == "completed"

    # The requester gets the change: files, lines and a link that shows it as text.
    done = await reply_with(client, rita, "is done: 1 file(s) changed, +1 -1 lines")
    link = done["text"].rsplit(" ", 1)[-1]
    assert "/artifacts/" in link
    shown = await client.get(link[link.index("/artifacts/") :])
    assert shown.status_code == 200
    assert shown.headers["content-type"].startswith("text/plain")
    assert shown.headers["x-content-type-options"] == "nosniff"
    assert "password.strip()" in shown.text
    forged = await client.get("/artifacts/" + "x" * 20)
    assert forged.status_code == 404


async def test_an_agents_token_reaches_nothing_but_its_tasks(desk: Desk) -> None:
    client = desk.client
    for method, path in [
        ("GET", "/api/v1/activities"),
        ("GET", "/api/v1/inbox"),
        ("POST", "/api/v1/actions/execute"),
        ("GET", "/api/v1/users"),
        ("GET", "/api/v1/workers"),
    ]:
        answered = await client.request(method, path, headers=desk.ada, json={})
        assert answered.status_code == 403, (path, answered.text)
    as_operator = await client.post("/api/v1/tasks/1/claim", headers=desk.sofia)
    assert as_operator.status_code == 403
    assert "agent" in as_operator.json()["detail"]
    missing = await client.post("/api/v1/tasks/999999/claim", headers=desk.ada)
    assert missing.status_code == 404


async def test_a_lapsed_claim_returns_the_task_and_fences_its_agent(desk: Desk) -> None:
    """A lease that lapses: the task is waiting again within the recovery period (its agent
    refused from then on); after ``max_attempts`` lapses it fails and the requester is told."""
    client = desk.client
    una = await say(client, "una", "document the refund rules", 1)
    [task] = await wait_for(lambda: waiting(desk, desk.doc))
    here = f"/api/v1/tasks/{task['id']}"

    async def lapse(to: str) -> None:
        """The claim's lease runs out (its agent went quiet); recovery moves the task."""
        async with open_db(desk.settings.database.url) as sessions, sessions.begin() as session:
            await session.execute(
                update(Activity)
                .where(Activity.id == task["id"])
                .values(lease_expires_at=utcnow() - dt.timedelta(seconds=1))
            )

        async def moved() -> bool:
            return bool((await client.get(here, headers=desk.sofia)).json()["status"] == to)

        await wait_for(moved, timeout_s=10)

    assert (await client.post(f"{here}/claim", headers=desk.doc)).status_code == 200
    await lapse(ActivityStatus.WAITING_FOR_AGENT.value)
    late = await client.post(
        f"{here}/submit", json={"type": "text", "content": "docs"}, headers=desk.doc
    )
    assert late.status_code == 409  # its claim lapsed: fenced off
    assert (await client.post(f"{here}/claim", headers=desk.doc)).status_code == 200
    assert (await client.get(here, headers=desk.doc)).json()["attempts"] == 2
    await lapse(ActivityStatus.FAILED.value)  # the second lapse of two allowed: failed
    await reply_with(client, una, "No agent finished request")


async def test_work_needing_no_review_reaches_the_requester_and_starts_its_follow_up(
    desk: Desk,
) -> None:
    client = desk.client
    vic = await say(client, "vic", "document the login page", 1)
    [task] = await wait_for(lambda: waiting(desk, desk.doc))
    here = f"/api/v1/tasks/{task['id']}"
    assert (await client.post(f"{here}/claim", headers=desk.doc)).status_code == 200
    text = "The login page takes a user name and a password."
    handed = await client.post(
        f"{here}/submit", json={"type": "text", "content": text}, headers=desk.doc
    )
    assert handed.status_code == 201
    await reply_with(client, vic, text)
    assert (await client.get(here, headers=desk.sofia)).json()["status"] == "completed"
    # Its follow-up (on_approve) ran with the task's payload, as the requester.
    await reply_with(client, vic, "Published the login page as P-0001")


async def test_of_two_agents_claiming_at_once_exactly_one_wins_every_time(
    desk: Desk, backend: str
) -> None:
    """100 rounds of two claims of one task at the same moment, through the service."""
    if backend != "postgresql":
        pytest.skip("the race is PostgreSQL's to prove (SQLite runs one writer at a time)")
    from dispatch.work.tasks import AgentCaller

    ada = AgentCaller(token_id=1, name="ada", serves=("developer.fix_bug",))
    bob = AgentCaller(token_id=2, name="bob", serves=("developer.fix_bug",))
    async with runtime_for(desk.settings) as runtime:
        async with runtime.sessions.begin() as session:
            rows = [
                Activity(
                    agent_name="developer",
                    action_type="fix_bug",
                    action_description="race",
                    details={"payload": {"what": f"round {n}"}},
                    status=ActivityStatus.WAITING_FOR_AGENT.value,
                )
                for n in range(100)
            ]
            session.add_all(rows)
            await session.flush()
            ids = [r.id for r in rows]
        wins = {"ada": 0, "bob": 0}
        for task_id in ids:
            results = await asyncio.gather(
                runtime.tasks.claim(ada, task_id),
                runtime.tasks.claim(bob, task_id),
                return_exceptions=True,
            )
            won = [
                n
                for n, r in zip(("ada", "bob"), results, strict=True)
                if not isinstance(r, BaseException)
            ]
            lost = [r for r in results if isinstance(r, BaseException)]
            assert len(won) == 1, results
            assert "claimed by another agent" in str(lost[0])
            wins[won[0]] += 1
        async with runtime.sessions() as session:
            claimed = await session.scalar(
                select(func.count())
                .select_from(Activity)
                .where(Activity.id.in_(ids), Activity.status == ActivityStatus.CLAIMED.value)
            )
    assert claimed == 100
    assert sum(wins.values()) == 100


PNG = (
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQ"
    "AAAABJRU5ErkJggg=="
)
"""A 1x1 PNG."""


async def test_a_screenshot_reaches_the_requester_as_media(desk: Desk) -> None:
    client = desk.client
    wes = await say(client, "wes", "document the home page", 1)
    [task] = await wait_for(lambda: waiting(desk, desk.doc))
    here = f"/api/v1/tasks/{task['id']}"
    assert (await client.post(f"{here}/claim", headers=desk.doc)).status_code == 200
    shot = {"type": "screenshot", "content": f"data:image/png;base64,{PNG}", "title": "Home"}
    handed = await client.post(f"{here}/submit", json=shot, headers=desk.doc)
    assert handed.status_code == 201, handed.text
    assert handed.json()["summary"] == {"media_type": "image/png"}
    done = await reply_with(client, wes, f"Request #{task['id']} is done.")
    [media] = done["media"]
    assert media["content_type"] == "image/png"
    image = await client.get(media["url"][media["url"].index("/artifacts/") :])
    assert image.headers["content-type"] == "image/png"
    assert image.content.startswith(b"\x89PNG")


async def test_a_review_needs_its_quorum_and_expires_unanswered(desk: Desk) -> None:
    """Two approvals of two supervisors complete it (one cannot count twice); a review no one
    makes in time expires, and the requester is told."""
    client = desk.client
    xia = await say(client, "xia", "translate the home page", 1)
    [task] = await wait_for(lambda: waiting(desk, desk.doc))
    here = f"/api/v1/tasks/{task['id']}"
    assert (await client.post(f"{here}/claim", headers=desk.doc)).status_code == 200
    wrong = await client.post(
        f"{here}/submit", json={"type": "diff", "content": "x"}, headers=desk.doc
    )
    assert wrong.status_code == 422  # this action takes text only
    assert "takes ['text']" in wrong.json()["detail"]
    text = {"type": "text", "content": "La página de inicio."}
    assert (await client.post(f"{here}/submit", json=text, headers=desk.doc)).status_code == 201
    one = await client.post(f"{here}/review", json={"decision": "approve"}, headers=desk.sofia)
    assert one.json()["status"] == "in_review"  # one of two
    twice = await client.post(f"{here}/review", json={"decision": "approve"}, headers=desk.sofia)
    assert twice.status_code == 409
    two = await client.post(f"{here}/review", json={"decision": "approve"}, headers=desk.tom)
    assert two.json()["status"] == "completed"
    await reply_with(client, xia, "La página de inicio.")

    # A second request whose review no one makes in time.
    await say(client, "xia", "translate the contact page", 2)
    [late] = await wait_for(lambda: waiting(desk, desk.doc))
    there = f"/api/v1/tasks/{late['id']}"
    assert (await client.post(f"{there}/claim", headers=desk.doc)).status_code == 200
    assert (await client.post(f"{there}/submit", json=text, headers=desk.doc)).status_code == 201
    async with open_db(desk.settings.database.url) as sessions, sessions.begin() as session:
        await session.execute(
            update(Activity)
            .where(Activity.id == late["id"])
            .values(expires_at=utcnow() - dt.timedelta(seconds=1))
        )

    async def expired() -> bool:
        return bool((await client.get(there, headers=desk.sofia)).json()["status"] == "expired")

    await wait_for(expired, timeout_s=10)
    await reply_with(client, xia, "No one reviewed the work on request")


async def test_an_operator_starts_a_task_with_an_intent_over_the_api(desk: Desk) -> None:
    """``{"intent": "fix ..."}`` on the API: the same gate, then the agents' queue."""
    started = await desk.client.post(
        "/api/v1/actions/execute", json={"intent": "fix the footer links"}, headers=desk.sofia
    )
    assert started.status_code in {200, 202}, started.text
    [task] = await wait_for(lambda: waiting(desk, desk.ada))
    assert task["id"] == started.json()["activity_id"]
    assert task["action"] == "developer.fix_bug"
    assert task["payload"] == {"what": "the footer links"}
    assert task["channel"] is None  # no conversation: the result is read over the API


async def test_decisions_and_hand_ins_keep_to_what_the_reviewer_saw(desk: Desk) -> None:
    """A decision names the round it saw (a later one is refused); once a reviewer decided,
    the agent cannot add to the round; a key of an earlier round is not this round's; an agent
    does not write to the requester while its work is in review."""
    client = desk.client
    await say(client, "yan", "translate the about page", 1)
    [task] = await wait_for(lambda: waiting(desk, desk.doc))
    here = f"/api/v1/tasks/{task['id']}"
    assert (await client.post(f"{here}/claim", headers=desk.doc)).status_code == 200
    first = {"type": "text", "content": "Acerca de.", "idempotency_key": "r1"}
    assert (await client.post(f"{here}/submit", json=first, headers=desk.doc)).status_code == 201
    stale = await client.post(
        f"{here}/review", json={"decision": "approve", "round": 2}, headers=desk.sofia
    )
    assert stale.status_code == 409
    assert "round 1" in stale.json()["detail"]
    voted = await client.post(
        f"{here}/review", json={"decision": "approve", "round": 1}, headers=desk.sofia
    )
    assert voted.json()["status"] == "in_review"  # one of two
    late = {"type": "text", "content": "Otra cosa."}
    added = await client.post(f"{here}/submit", json=late, headers=desk.doc)
    assert added.status_code == 409
    assert "review has begun" in added.json()["detail"]
    talk = await client.post(f"{here}/messages", json={"text": "Hola"}, headers=desk.doc)
    assert talk.status_code == 409  # in review: not its turn to write to the requester
    back = await client.post(
        f"{here}/review",
        json={"decision": "request_changes", "comment": "Más corto", "round": 1},
        headers=desk.tom,
    )
    assert back.json()["status"] == "changes_requested"
    reused = await client.post(f"{here}/submit", json=first, headers=desk.doc)
    assert reused.status_code == 409  # round 1's key: not this round's hand-in
    assert "round 1" in reused.json()["detail"]


async def test_no_one_reviews_what_they_asked_for(desk: Desk) -> None:
    client = desk.client
    body = {"id": "s-1", "conversation": "sofia", "sender": "sofia", "text": "fix my report"}
    assert (await client.post("/api/v1/messages", json=body, headers=desk.sofia)).status_code == 202
    [task] = await wait_for(lambda: waiting(desk, desk.ada))
    here = f"/api/v1/tasks/{task['id']}"
    assert (await client.post(f"{here}/claim", headers=desk.ada)).status_code == 200
    diff = {"type": "diff", "content": DIFF}
    assert (await client.post(f"{here}/submit", json=diff, headers=desk.ada)).status_code == 201
    own = await client.post(f"{here}/review", json={"decision": "approve"}, headers=desk.sofia)
    assert own.status_code == 403
    other = await client.post(f"{here}/review", json={"decision": "approve"}, headers=desk.tom)
    assert other.json()["status"] == "completed"


async def test_a_released_task_leaves_the_requesters_next_message_to_the_bot(desk: Desk) -> None:
    """An agent asked, then gave the task back unanswered: the requester's next message is a
    request again, answered by the bot, not attached to a task no one holds."""
    client = desk.client
    zed = await say(client, "zed", "fix the menu", 1)
    [task] = await wait_for(lambda: waiting(desk, desk.ada))
    here = f"/api/v1/tasks/{task['id']}"
    assert (await client.post(f"{here}/claim", headers=desk.ada)).status_code == 200
    asked = await client.post(f"{here}/messages", json={"text": "Which menu?"}, headers=desk.ada)
    assert asked.status_code == 202
    released = await client.post(f"{here}/release", json={"reason": "busy"}, headers=desk.ada)
    assert released.json()["status"] == "waiting_for_agent"
    await say(client, "zed", "echo still there?", 2)
    await reply_with(client, zed, "still there?")
    view = (await client.get(here, headers=desk.sofia)).json()
    assert not [n for n in view["notes"] if n["kind"] == "requester_answered"]


async def test_an_agents_plan_is_checked_as_it_is_handed_in_and_runs_once_approved(
    desk: Desk,
) -> None:
    client = desk.client
    una = await say(client, "una", "outline the install guide", 1)
    [task] = await wait_for(lambda: waiting(desk, desk.doc))
    here = f"/api/v1/tasks/{task['id']}"
    assert (await client.post(f"{here}/claim", headers=desk.doc)).status_code == 200

    def plan(*tasks: dict[str, Any]) -> dict[str, str]:
        return {"type": "text", "content": json.dumps({"tasks": list(tasks)})}

    cycle = plan(
        {"id": "a", "role": "publisher", "description": "A", "depends_on": ["b"]},
        {"id": "b", "role": "publisher", "description": "B", "depends_on": ["a"]},
    )
    refused = await client.post(f"{here}/submit", json=cycle, headers=desk.doc)
    assert refused.status_code == 422
    assert refused.json()["extra"]["field"] == "content"
    assert "dependency cycle: a → b → a" in refused.json()["detail"]
    as_diff = await client.post(
        f"{here}/submit", json={"type": "diff", "content": DIFF}, headers=desk.doc
    )
    assert as_diff.status_code == 422
    assert as_diff.json()["extra"]["field"] == "type"
    good = plan(
        {"id": "setup", "role": "publisher", "description": "the setup page"},
        {
            "id": "usage",
            "role": "publisher",
            "description": "the usage page",
            "depends_on": ["setup"],
        },
    )
    handed = await client.post(f"{here}/submit", json=good, headers=desk.doc)
    assert handed.status_code == 201, handed.text
    # Nothing runs before a person approves it.
    missing = await client.get(f"/api/v1/workflow-runs/{task['id']}", headers=ADMIN)
    assert missing.status_code == 404
    approved = await client.post(f"{here}/review", json={"decision": "approve"}, headers=desk.sofia)
    assert approved.json()["status"] == "completed"
    await reply_with(client, una, f"Started writer.outline as run #{task['id']}: 2 steps")

    async def ended() -> dict[str, Any] | None:
        run = (await client.get(f"/api/v1/workflow-runs/{task['id']}", headers=ADMIN)).json()
        return run if run["status"] != "running" else None

    run = await wait_for(ended)
    assert run["status"] == "completed", run
    assert [(s["id"], s["status"]) for s in run["steps"]] == [
        ("setup", "completed"),
        ("usage", "completed"),
    ]
    assert run["steps"][1]["result"]["text"] == "Published the usage page as P-0002"
    await reply_with(client, una, f"Run #{task['id']} of writer.outline completed.")
    await say(client, "una", f"status {task['id']}", 2)  # a plan's request shows its run
    await reply_with(client, una, "setup completed, usage completed")


async def test_a_plan_the_catalog_no_longer_fits_is_not_approved(desk: Desk) -> None:
    """The catalog changed between the hand-in and the decision: approving answers 409 with
    why, nothing runs, and the plan stays in review (for a reviewer to reject)."""
    client = desk.client
    await say(client, "ulf", "outline the admin guide", 1)
    [task] = await wait_for(lambda: waiting(desk, desk.doc))
    here = f"/api/v1/tasks/{task['id']}"
    assert (await client.post(f"{here}/claim", headers=desk.doc)).status_code == 200
    plan = {"tasks": [{"id": "one", "role": "publisher", "description": "the admin page"}]}
    handed = await client.post(
        f"{here}/submit", json={"type": "text", "content": json.dumps(plan)}, headers=desk.doc
    )
    assert handed.status_code == 201, handed.text
    assert desk.settings.core.catalog_path is not None
    changed = desk.settings.core.catalog_path.read_text().replace(
        "plan.roles.publisher]", "plan.roles.printer]"
    )
    desk.settings.core.catalog_path.write_text(changed)
    async with AsyncTestClient(create_app(desk.settings)) as restarted:
        decided = await restarted.post(
            f"{here}/review", json={"decision": "approve"}, headers=desk.sofia
        )
        assert decided.status_code == 409
        assert "no role 'publisher'" in decided.json()["detail"]
        assert (await restarted.get(here, headers=desk.sofia)).json()["status"] == "in_review"
        missing = await restarted.get(f"/api/v1/workflow-runs/{task['id']}", headers=ADMIN)
        assert missing.status_code == 404
