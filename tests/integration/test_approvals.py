"""Who may do what: permissions per action and the human approval gate, every allow and deny
path, on the embedded default (SQLite) and, for the races, on PostgreSQL too."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from litestar.testing import AsyncTestClient
from sqlalchemy import func, select

from dispatch.record.activities import ActivityView
from dispatch.record.messages import InboundMessage
from dispatch.record.models import Activity, ActivityStatus, Conversation, Message
from dispatch.work.approvals import Decision
from gateway.app import create_app
from gateway.auth import TokenStore
from gateway.settings import Settings
from tests.conftest import ADMIN
from tests.support.flow import wait_for
from tests.support.runtime import runtime_for
from workers.runtime import Runtime

CATALOG = """
[fallback]
agent = "system"
action = "help"

[agents.billing]
description = "Billing"

[agents.billing.actions.refund]
description = "Refund an invoice"
handler = "echo"
public = true
[agents.billing.actions.refund.payload]
invoice = { type = "id" }
[agents.billing.actions.refund.approval]
approvers = ["supervisor"]
ttl_s = 600

[agents.billing.actions.payout]
description = "Pay a supplier"
handler = "echo"
public = true
[agents.billing.actions.payout.payload]
invoice = { type = "id" }
[agents.billing.actions.payout.approval]
approvers = ["supervisor", "admin"]
quorum = 2

[agents.billing.actions.wire]
description = "Wire money"
handler = "echo"
roles = ["operator"]
[agents.billing.actions.wire.payload]
invoice = { type = "id" }
[agents.billing.actions.wire.approval]
approvers = ["supervisor"]
auto_run = false

[agents.billing.actions.quick]
description = "Short-lived request"
handler = "echo"
public = true
[agents.billing.actions.quick.payload]
invoice = { type = "id" }
[agents.billing.actions.quick.approval]
approvers = ["supervisor"]
ttl_s = 0.5

[agents.billing.actions.petty]
description = "Petty cash"
handler = "echo"
public = true
[agents.billing.actions.petty.payload]
invoice = { type = "id" }
[agents.billing.actions.petty.approval]
approvers = ["supervisor"]
self_approval = true

[[rules]]
id = "billing"
agent = "billing"
action = "refund"
patterns = ['^refund\\s+#?(?P<invoice>\\d+)$']

[[rules]]
id = "payout"
agent = "billing"
action = "payout"
patterns = ['^payout\\s+#?(?P<invoice>\\d+)$']

[[rules]]
id = "wire"
agent = "billing"
action = "wire"
patterns = ['^wire\\s+#?(?P<invoice>\\d+)$']

[[rules]]
id = "quick"
agent = "billing"
action = "quick"
patterns = ['^quick\\s+#?(?P<invoice>\\d+)$']

[[rules]]
id = "petty"
agent = "billing"
action = "petty"
patterns = ['^petty\\s+#?(?P<invoice>\\d+)$']
"""


@pytest.fixture
def catalog_path(tmp_path: Path) -> Path:
    path = tmp_path / "catalog.toml"
    path.write_text(CATALOG)
    return path


@pytest.fixture
def make_services(
    make_settings: Callable[..., Settings], sqlite_url: str, catalog_path: Path
) -> Callable[..., Any]:
    def make(database_url: str = sqlite_url, **extra: Any) -> Any:
        settings = make_settings(database_url=database_url, catalog=catalog_path, **extra)
        return runtime_for(settings, "gateway")

    return make


@pytest.fixture
async def services(make_services: Callable[..., Any]) -> AsyncIterator[Runtime]:
    async with make_services() as built:
        yield built


async def person(services: Runtime, name: str, role: str) -> int:
    """A named user with a REST identity ``name`` (their conversation key too)."""
    user = await services.users.add(name, role)
    await services.users.link(str(user.id), "rest", name)
    return user.id


async def say(services: Runtime, sender: str, text: str) -> ActivityView:
    """``sender`` writes ``text``; returns the activity once it has settled."""
    accepted = await services.dispatcher.ingest(
        InboundMessage(
            channel="rest",
            external_id=f"m-{uuid.uuid4()}",
            conversation_key=sender,
            sender=sender,
            text=text,
        )
    )

    async def settled() -> ActivityView | None:
        async with services.sessions() as session:
            activity_id = await session.scalar(
                select(Activity.id).where(Activity.source_message_id == accepted.message_id)
            )
        if activity_id is None:
            return None
        found = await services.activities.get(activity_id, with_events=True)
        if found is None or found.status in {"queued", "in_progress"}:
            return None
        return None if await unsent(services, activity_id) else found

    activity: ActivityView = await wait_for(settled)
    return activity


async def unsent(services: Runtime, activity_id: int) -> int:
    async with services.sessions() as session:
        rows = await session.scalars(
            select(Message.id).where(
                Message.activity_id == activity_id, Message.delivery.in_(["pending", "sending"])
            )
        )
        return len(list(rows))


async def inbox(services: Runtime, who: str) -> list[str]:
    """Every message sent to ``who`` so far, oldest first (once delivered)."""
    async with services.sessions() as session:
        rows = await session.scalars(
            select(Message)
            .join(Conversation, Conversation.id == Message.conversation_id)
            .where(Conversation.key == who, Message.direction == "outbound")
            .order_by(Message.id)
        )
        return [m.text for m in rows if m.delivery not in {"pending", "sending"}]


async def settled(services: Runtime, activity_id: int, *statuses: str) -> ActivityView:
    async def ready() -> ActivityView | None:
        found = await services.activities.get(activity_id, with_events=True)
        if found is None or found.status not in statuses:
            return None
        return None if await unsent(services, activity_id) else found

    activity: ActivityView = await wait_for(ready)
    return activity


def kinds(activity: ActivityView) -> list[str]:
    return [e.kind for e in activity.events]


async def test_guest_request_waits_for_a_supervisor_then_runs(services: Runtime) -> None:
    sup = await person(services, "sup", "supervisor")
    await person(services, "other-sup", "supervisor")
    request = await say(services, "guest-1", "refund #12")
    assert request.status == ActivityStatus.AWAITING_APPROVAL
    code = request.id
    [asked] = await inbox(services, "sup")
    assert asked.startswith(f"Approval needed for request #{code}: Refund an invoice, asked by")
    assert "Details: invoice=12" in asked
    assert f"Reply YES {code} to approve or NO {code} to reject" in asked
    assert len(await inbox(services, "other-sup")) == 1  # every eligible approver
    assert await inbox(services, "guest-1") == [
        f"Request #{code} (Refund an invoice) needs approval; I've asked. You'll hear back here."
    ]
    requested = next(e for e in request.events if e.kind == "approval_requested")
    assert requested.data["code"] == code
    assert {n["user_id"] for n in requested.data["notified"]} == {sup, sup + 1}

    decision = await say(services, "sup", f"sí {code}")
    assert (decision.action_type, decision.status) == ("approve", "completed")
    # "sí" shows Spanish: the supervisor is answered in it.
    assert decision.details["result"]["text"] == f"Solicitud #{code} aprobada; se ejecuta ahora."
    done = await settled(services, code, "completed")
    assert [k for k in kinds(done) if k != "reply_sent"] == [
        "created",
        "approval_requested",
        "approved",
        "approval_granted",
        "started",
        "completed",
    ]
    approved = next(e for e in done.events if e.kind == "approved")
    assert approved.actor == f"user:{sup}"
    assert approved.data["channel"] == "rest"
    assert approved.data["code"] == code
    assert (await inbox(services, "guest-1"))[1:] == [
        f"Request #{code} was approved by sup; running it now.",
        "refund: invoice=12",
    ]


async def test_rejection_tells_the_requester_and_nothing_runs(services: Runtime) -> None:
    await person(services, "sup", "supervisor")
    request = await say(services, "guest-2", "refund 7")
    decision = await say(services, "sup", f"RECHAZAR {request.id}")
    assert decision.details["result"]["text"].startswith(f"Rejected request #{request.id}")
    done = await settled(services, request.id, "rejected")
    assert "started" not in kinds(done)
    assert (await inbox(services, "guest-2"))[-1] == f"Request #{request.id} was rejected by sup."
    late = await say(services, "sup", f"YES {request.id}")
    assert late.details["result"]["text"] == (
        f"Request #{request.id} is rejected; your decision changes nothing."
    )


async def test_who_may_not_decide_changes_nothing(services: Runtime) -> None:
    """A guest, the requester (no self-approval), an unknown code: same answer, an event each."""
    await person(services, "sup", "supervisor")
    asker = await person(services, "sup-asker", "supervisor")
    request = await say(services, "sup-asker", "refund 3")
    assert request.status == "awaiting_approval"
    nothing = f"Nothing is awaiting your decision under {request.id}."
    own = await say(services, "sup-asker", f"YES {request.id}")
    assert own.details["result"]["text"].startswith(nothing)
    guest = await say(services, "guest-3", f"YES {request.id}")
    assert guest.details["result"]["text"].startswith(nothing)
    unknown = await say(services, "sup", "YES 999")
    assert unknown.details["result"]["text"].startswith(
        "Nothing is awaiting your decision under 999"
    )
    still = await services.activities.get(request.id, with_events=True)
    assert still is not None
    assert still.status == "awaiting_approval"
    refused = [e for e in still.events if e.kind == "decision_refused"]
    assert [(e.actor, e.data["reason"]) for e in refused] == [
        (f"user:{asker}", "own_request"),
        (f"user:{guest.actor_user_id}", "not_an_approver"),
    ]


async def test_self_approval_where_the_policy_allows_it(services: Runtime) -> None:
    await person(services, "boss", "supervisor")
    request = await say(services, "boss", "petty 5")
    await say(services, "boss", f"yes {request.id}")
    assert (await settled(services, request.id, "completed")).status == "completed"


async def test_quorum_of_two_and_a_double_approval(services: Runtime) -> None:
    await person(services, "sup-a", "supervisor")
    await person(services, "adm-b", "admin")
    request = await say(services, "guest-4", "payout 9")
    first = await say(services, "sup-a", f"approve {request.id}")
    assert first.details["result"]["text"] == (
        f"Your approval of request #{request.id} counts: 1 of 2."
    )
    again = await say(services, "sup-a", f"approve {request.id}")
    assert again.details["result"]["text"] == (
        f"You already decided on request #{request.id} (approve)."
    )
    waiting = await services.activities.get(request.id)
    assert waiting is not None
    assert waiting.status == "awaiting_approval"
    await say(services, "adm-b", f"ok {request.id}")
    done = await settled(services, request.id, "completed")
    assert kinds(done).count("approved") == 2
    assert kinds(done).count("started") == 1
    told = await inbox(services, "guest-4")
    assert f"sup-a approved request #{request.id} (1 of 2 approvals)." in told
    assert told[-1] == "payout: invoice=9"


async def test_expiry_moves_to_expired_and_tells_the_requester(
    make_services: Callable[..., Any],
) -> None:
    # The periodic sweep would race the expiry this test makes by hand.
    async with make_services(worker_recover_every_s=3600) as services:
        await expire_and_tell(services)


async def expire_and_tell(services: Runtime) -> None:
    await person(services, "sup", "supervisor")
    request = await say(services, "guest-5", "quick 1")
    await asyncio.sleep(0.6)
    assert await services.approvals.expire_due() == [request.id]
    done = await settled(services, request.id, "expired")
    assert "expired" in kinds(done)
    assert (await inbox(services, "guest-5"))[-1] == (
        f"Request #{request.id} expired: no decision was made in time, so nothing was done."
    )
    late = await say(services, "sup", f"YES {request.id}")
    assert late.details["result"]["text"] == (
        f"Request #{request.id} is expired; your decision changes nothing."
    )


async def test_approve_without_auto_run_then_run_and_a_role_change_before_it(
    services: Runtime,
) -> None:
    await person(services, "sup", "supervisor")
    operator = await person(services, "op", "operator")
    request = await say(services, "op", "wire 4")
    await say(services, "sup", f"YES {request.id}")
    approved = await settled(services, request.id, "pending")
    assert (await inbox(services, "op"))[-1] == (
        f"Request #{request.id} was approved by sup; it runs once someone sends RUN {request.id}."
    )
    # Demoted after approval: the run is checked again and refused.
    await services.users.set_role(str(operator), "guest")
    run = await say(services, "op", f"RUN {request.id}")
    assert run.details["result"]["text"] == f"Request #{request.id} is running."
    failed = await settled(services, request.id, "failed")
    assert failed.details["error"]["reason"] == "forbidden"
    assert "completed" not in kinds(failed)  # claimed, re-checked, refused: the handler never ran
    assert approved.status == "pending"

    # Allowed again, a second request: approve, RUN, done.
    await services.users.set_role(str(operator), "operator")
    second = await say(services, "op", "wire 5")
    await say(services, "sup", f"YES {second.id}")
    await settled(services, second.id, "pending")
    await say(services, "op", f"run {second.id}")
    assert (await settled(services, second.id, "completed")).status == "completed"


async def test_a_guest_may_not_ask_for_a_role_restricted_action(services: Runtime) -> None:
    await person(services, "sup", "supervisor")
    denied = await say(services, "guest-6", "wire 1")
    assert (denied.status, denied.details["error"]["reason"]) == ("failed", "forbidden")
    assert "approval_requested" not in kinds(denied)
    assert await inbox(services, "sup") == []


async def test_with_no_approver_to_ask_a_request_waits_and_one_added_later_decides(
    services: Runtime,
) -> None:
    """No one to ask yet (the demo before ``switchboard demo``): the request waits for a
    supervisor, the requester is told so; a supervisor added later approves it and it runs."""
    waiting = await say(services, "guest-7", "refund 2")
    assert waiting.status == "awaiting_approval"
    assert "error" not in waiting.details
    [told] = await inbox(services, "guest-7")
    assert told.startswith(f"Request #{waiting.id} (")
    assert "it waits for a supervisor to decide in the portal" in told
    await person(services, "late-sup", "supervisor")
    await say(services, "late-sup", f"YES {waiting.id}")
    assert (await settled(services, waiting.id, "completed")).status == "completed"


async def test_a_deactivated_approver_cannot_decide(services: Runtime) -> None:
    sup = await person(services, "sup", "supervisor")
    await person(services, "sup2", "supervisor")
    request = await say(services, "guest-8", "refund 8")
    await services.users.set_active(str(sup), False)
    decision = await say(services, "sup", f"YES {request.id}")
    assert decision.status == "failed"  # an inactive user may ask for nothing at all
    still = await services.activities.get(request.id)
    assert still is not None
    assert still.status == "awaiting_approval"


async def test_bare_yes_decides_only_when_exactly_one_request_waits(services: Runtime) -> None:
    await person(services, "sup", "supervisor")
    first = await say(services, "guest-9", "refund 1")
    only = await say(services, "sup", "Yes")
    assert only.details["result"]["text"] == f"Approved request #{first.id}; it runs now."
    a = await say(services, "guest-9", "refund 2")
    b = await say(services, "guest-10", "refund 3")
    listed = await say(services, "sup", "NO")
    assert listed.details["result"]["text"] == (
        f"Several requests await your decision (#{a.id}, #{b.id}): reply NO and the number, "
        f"e.g. NO {a.id}."
    )
    assert [c["text"] for c in listed.details["result"]["choices"]] == [
        f"NO {a.id}",
        f"NO {b.id}",
    ]


async def test_concurrent_yes_from_two_approvers_runs_once(
    make_services: Callable[..., Any],
) -> None:
    async with make_services() as services:
        await concurrent_approvals(services)


@pytest.mark.services
async def test_concurrent_yes_from_two_approvers_runs_once_on_postgres(
    make_services: Callable[..., Any], pg_migrated: str
) -> None:
    async with make_services(pg_migrated) as services:
        await concurrent_approvals(services)


async def concurrent_approvals(services: Runtime) -> None:
    """Four decisions at once from two approvers (each twice): one counts, one run."""
    one = await person(services, "sup-1", "supervisor")
    two = await person(services, "sup-2", "supervisor")
    asked = await say(services, "guest-c", "refund 77")
    outcomes = await asyncio.gather(
        *(
            services.approvals.decide(
                user_id=user, code=asked.id, decision=Decision.APPROVE, channel="rest"
            )
            for user in (one, two, one, two)
        )
    )
    assert sum(o.applied for o in outcomes) == 1
    done = await settled(services, asked.id, "completed")
    assert kinds(done).count("approval_granted") == 1
    assert kinds(done).count("started") == 1
    assert done.attempts == 1


async def test_the_api_decides_as_the_tokens_user(services: Runtime, catalog_path: Path) -> None:
    sup = await person(services, "sup", "supervisor")
    tokens = TokenStore(services.sessions, None)
    operator_token, _ = await tokens.create(name="sup", role="operator", user_id=sup)
    unbound, _ = await tokens.create(name="bot", role="operator")
    read_only, _ = await tokens.create(name="gpt", role="actions")
    request = await say(services, "guest-api", "refund 4")
    # The second app's start (on the same SQLite file) blocks this loop: nothing may be
    # mid-transaction in it then.
    await services.queue.drain()  # type: ignore[attr-defined]
    app = create_app(services.settings)
    async with AsyncTestClient(app) as client:
        url = f"/api/v1/activities/{request.id}/approve"
        assert (await client.post(url)).status_code == 401
        bearer = {"Authorization": "Bearer nope"}
        assert (await client.post(url, headers=bearer)).json()["error"] == "unauthorized"
        as_reader = await client.post(url, headers={"Authorization": f"Bearer {read_only}"})
        assert (as_reader.status_code, as_reader.json()["error"]) == (403, "forbidden")
        reading = await client.get(
            f"/api/v1/activities/{request.id}", headers={"Authorization": f"Bearer {read_only}"}
        )
        assert reading.status_code == 200
        as_bot = await client.post(url, headers={"Authorization": f"Bearer {unbound}"})
        assert as_bot.status_code == 403
        assert "acts for no user" in as_bot.json()["detail"]
        auth = {"Authorization": f"Bearer {operator_token}"}
        ok = await client.post(url, headers=auth)
        assert (ok.status_code, ok.json()["applied"]) == (200, True)
        replay = await client.post(url, headers=auth)
        assert (replay.status_code, replay.json()["error"]) == (409, "conflict")
        listed = await client.get("/api/v1/users", headers=auth)
        assert listed.status_code == 403  # managing users is for admins
        assert (await client.get("/api/v1/users", headers=ADMIN)).status_code == 200
    done = await settled(services, request.id, "completed")
    approved = next(e for e in done.events if e.kind == "approved")
    assert (approved.actor, approved.data["channel"]) == (f"user:{sup}", "api")


async def test_a_token_cannot_speak_for_someone_elses_rest_address(
    services: Runtime, catalog_path: Path
) -> None:
    """The attack: an operator token acting for no user posts ``YES <code>`` as the REST
    address linked to a supervisor. Refused; a token acting for a user speaks as that user."""
    await person(services, "sup-rest", "supervisor")
    await person(services, "boss-rest", "admin")
    deputy = await person(services, "deputy", "supervisor")
    tokens = TokenStore(services.sessions, None)
    unbound, _ = await tokens.create(name="bot", role="operator")
    own, _ = await tokens.create(name="deputy", role="operator", user_id=deputy)
    request = await say(services, "guest-rest", "refund 5")
    # The second app's start (on the same SQLite file) blocks this loop: nothing may be
    # mid-transaction in it then.
    await services.queue.drain()  # type: ignore[attr-defined]
    app = create_app(services.settings)
    async with AsyncTestClient(app) as client:
        bot = {"Authorization": f"Bearer {unbound}"}
        for n, sender in enumerate(["sup-rest", "boss-rest"]):
            posted = await client.post(
                "/api/v1/messages",
                json={
                    "id": f"imp-{n}",
                    "conversation": sender,
                    "sender": sender,
                    "text": f"YES {request.id}",
                },
                headers=bot,
            )
            assert posted.status_code == 403
            assert "speaks only for guests" in posted.json()["detail"]
        guest = await client.post(
            "/api/v1/messages",
            json={"id": "imp-g", "conversation": "g", "sender": "new-guest", "text": "help"},
            headers=bot,
        )
        assert guest.status_code == 202
        assert (await services.activities.get(request.id)).status == "awaiting_approval"  # type: ignore[union-attr]
        # Whatever ``sender`` says, a token acting for a user speaks as that user.
        mine = await client.post(
            "/api/v1/messages",
            json={
                "id": "imp-own",
                "conversation": "boss-console",
                "sender": "sup-rest",
                "text": f"SI {request.id}",
            },
            headers={"Authorization": f"Bearer {own}"},
        )
        assert mine.status_code == 202
    done = await settled(services, request.id, "completed")
    approved = next(e for e in done.events if e.kind == "approved")
    assert approved.actor == f"user:{deputy}"
    async with services.sessions() as session:
        imp = await session.scalar(select(Message).where(Message.external_id == "imp-own"))
        refused = await session.scalar(select(Message).where(Message.external_id == "imp-0"))
    assert imp is not None
    assert imp.user_id == deputy
    assert refused is None  # a refused message leaves nothing stored


async def test_a_decision_after_the_deadline_expires_the_request_instead(
    services: Runtime,
) -> None:
    """Before the sweeper gets there, a late YES finds the deadline passed: expired, not run."""
    await person(services, "sup", "supervisor")
    request = await say(services, "guest-11", "quick 2")
    await asyncio.sleep(0.6)
    late = await say(services, "sup", f"YES {request.id}")
    assert late.details["result"]["text"] == (
        f"Request #{request.id} expired before your decision; nothing was done."
    )
    done = await settled(services, request.id, "expired")
    assert "approved" not in kinds(done)
    refused = next(e for e in done.events if e.kind == "decision_refused")
    assert refused.data["reason"] == "expired"
    assert (await inbox(services, "guest-11"))[-1].startswith(f"Request #{request.id} expired")


async def test_the_api_cancels_a_request_awaiting_approval_and_the_requester_is_told(
    services: Runtime, catalog_path: Path
) -> None:
    sup = await person(services, "sup", "supervisor")
    tokens = TokenStore(services.sessions, None)
    operator_token, _ = await tokens.create(name="ops", role="operator", user_id=sup)
    read_only, _ = await tokens.create(name="gpt", role="actions")
    request = await say(services, "guest-cancel", "refund 9")
    assert request.status == ActivityStatus.AWAITING_APPROVAL
    await services.queue.drain()  # type: ignore[attr-defined]
    app = create_app(services.settings)
    async with AsyncTestClient(app) as client:
        url = f"/api/v1/activities/{request.id}/cancel"
        as_reader = await client.post(url, headers={"Authorization": f"Bearer {read_only}"})
        assert (as_reader.status_code, as_reader.json()["error"]) == (403, "forbidden")
        auth = {"Authorization": f"Bearer {operator_token}"}
        cancelled = await client.post(url, headers=auth)
        assert (cancelled.status_code, cancelled.json()["status"]) == (200, "cancelled")
        late = await client.post(f"/api/v1/activities/{request.id}/approve", headers=auth)
        assert late.status_code == 409  # nothing awaits a decision any more
    done = await settled(services, request.id, "cancelled")
    assert "started" not in kinds(done)
    event = next(e for e in done.events if e.kind == "cancelled")
    assert event.actor == f"user:{sup}"
    assert (await inbox(services, "guest-cancel"))[-1] == (
        f"Request #{request.id} was cancelled by an operator."  # "refund 9" reads as English
    )


async def test_execute_goes_through_permission_and_the_approval_gate(
    services: Runtime, catalog_path: Path
) -> None:
    """An API execution is gated as a chat request is: a guest's token may not ask for a
    role-restricted action (403, nothing stored); one that needs approval waits for it (202
    ``awaiting_approval``), the approver is asked on their channel, and a YES runs it."""
    await person(services, "sup", "supervisor")
    tokens = TokenStore(services.sessions, None)
    guest_token, _ = await tokens.create(name="gpt", role="actions")
    ops = await person(services, "ops", "operator")
    ops_token, _ = await tokens.create(name="ops", role="operator", user_id=ops)
    await services.queue.drain()  # type: ignore[attr-defined]
    app = create_app(services.settings)
    wire = {"agent": "billing", "action_type": "wire", "payload": {"invoice": 8}}
    async with AsyncTestClient(app) as client:
        as_guest = await client.post(
            "/api/v1/actions/execute", json=wire, headers={"Authorization": f"Bearer {guest_token}"}
        )
        assert (as_guest.status_code, as_guest.json()["error"]) == (403, "forbidden")
        async with services.sessions() as session:
            assert await session.scalar(select(func.count()).select_from(Activity)) == 0
        refund = await client.post(
            "/api/v1/actions/execute",
            json={
                "agent": "billing",
                "action_type": "refund",
                "payload": {"invoice": 3},
                "sync": True,
            },
            headers={"Authorization": f"Bearer {ops_token}"},
        )
        assert refund.status_code == 202, refund.text
        assert refund.json()["status"] == "awaiting_approval"
    code = refund.json()["activity_id"]
    [asked] = await wait_for(lambda: inbox(services, "sup"))
    assert asked.startswith(f"Approval needed for request #{code}: Refund an invoice, asked by ops")
    assert "on the API" in asked
    await say(services, "sup", f"YES {code}")
    done = await settled(services, code, "completed")
    assert done.details["result"]["text"] == "refund: invoice=3"
    assert done.actor_user_id == ops
