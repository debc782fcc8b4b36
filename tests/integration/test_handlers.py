"""Built-in handlers doing real work, and the failures that must be loud."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest

from dispatch.record.activities import ActivityView
from dispatch.record.models import Activity, ActivityStatus
from gateway.settings import Settings
from tests.support import flow
from tests.support.flow import wait_for
from tests.support.http_server import Answer, ScriptedServer
from tests.support.runtime import runtime_for
from workers.runtime import Runtime

CATALOG = """
[fallback]
agent = "ops"
action = "help"

[agents.ops.actions.help]
description = "help"
handler = "help"
public = true

[agents.ops.actions.invoice]
description = "Create an invoice in billing"
handler = "http_call"
public = true
timeout_s = 5
[agents.ops.actions.invoice.payload]
client = {{ type = "string" }}
amount = {{ type = "number" }}
[agents.ops.actions.invoice.http]
url = "{url}/invoices"
retries = 2
backoff_s = 0.01
timeout_s = 0.5
reply_field = "message"
headers = {{ Authorization = "Bearer s3cret" }}

[agents.ops.actions.slow]
description = "Slow thing"
handler = "http_call"
public = true
timeout_s = 0.3
[agents.ops.actions.slow.http]
url = "{url}/slow"
retries = 0
timeout_s = 5

[agents.ops.actions.secret]
description = "Admins only"
handler = "echo"
roles = ["admin"]
[agents.ops.actions.secret.payload]
text = {{ type = "string" }}

[[rules]]
id = "invoice"
agent = "ops"
action = "invoice"
patterns = ['(?:invoice|factura)\\s+(?P<client>\\w+)\\s+(?P<amount>\\d+(?:\\.\\d+)?)']

[[rules]]
id = "slow"
agent = "ops"
action = "slow"
keywords = ["slow"]

[[rules]]
id = "secret"
agent = "ops"
action = "secret"
patterns = ['^secret (?P<text>.+)$']
"""


@pytest.fixture
def server() -> Iterator[ScriptedServer]:
    with ScriptedServer() as srv:
        yield srv
        assert srv.unexpected == [], "calls nobody expected"


@pytest.fixture
async def services(
    make_settings: Callable[..., Settings], sqlite_url: str, tmp_path: Path, server: ScriptedServer
) -> AsyncIterator[Runtime]:
    catalog = tmp_path / "catalog.toml"
    catalog.write_text(CATALOG.format(url=server.url))
    settings = make_settings(database_url=sqlite_url, catalog=catalog)
    async with runtime_for(settings, "gateway") as built:
        yield built


async def ask(services: Runtime, text: str, sender: str = "erin") -> tuple[ActivityView, str]:
    return await flow.ask(services, text, sender=sender)


async def test_http_call_posts_the_payload_and_replies_with_the_answer(
    services: Runtime, server: ScriptedServer
) -> None:
    server.expect("/invoices", Answer(201, {"message": "Invoice INV-9 for ACME: 120.5"}))
    activity, text = await ask(services, "Factura ACME 120.50")
    assert text == "Invoice INV-9 for ACME: 120.5"
    assert activity.status == ActivityStatus.COMPLETED
    [call] = server.seen
    assert call.json() == {
        "activity_id": activity.id,
        "agent": "ops",
        "action_type": "invoice",
        "payload": {"client": "ACME", "amount": 120.5},
    }
    assert call.headers["Authorization"] == "Bearer s3cret"
    assert call.headers["Idempotency-Key"] == f"switchboard-activity-{activity.id}"
    assert activity.details["result"]["data"]["attempts"] == 1


async def test_http_call_retries_5xx_429_and_timeouts(
    services: Runtime, server: ScriptedServer
) -> None:
    server.expect(
        "/invoices",
        Answer(503, {"error": "down"}),
        Answer(429, {"error": "slow down"}),
        Answer(200, {"message": "third time lucky"}),
    )
    activity, text = await ask(services, "invoice acme 10")
    assert text == "third time lucky"
    assert activity.details["result"]["data"]["attempts"] == 3
    server.expect(
        "/invoices",
        Answer(200, {"message": "too late"}, delay_s=1.0),
        Answer(500, "boom"),
        Answer(502, "bad gateway"),
    )
    activity, text = await ask(services, "invoice acme 11")
    assert activity.status == ActivityStatus.FAILED
    assert activity.details["error"]["reason"] == "handler_error"
    assert "gave up after 3 attempts: HTTP 502" in activity.details["error"]["message"]
    # What went wrong inside stays on the activity; the person gets the request number.
    assert text == f"Sorry, request #{activity.id} could not be completed."


async def test_http_call_keeps_a_bounded_answer_and_refuses_a_huge_one(
    services: Runtime, server: ScriptedServer
) -> None:
    server.expect(
        "/invoices",
        Answer(200, '{"message": "done", "total": NaN}'),  # Python's parser takes NaN
        Answer(200, {"message": "big", "blob": "x" * 50_000}),
        Answer(200, {"message": "huge", "blob": "x" * 2_000_000}),
    )
    nan, text = await ask(services, "invoice acme 1")
    assert (text, nan.details["result"]["data"]["response"]) == (
        "done",
        {"message": "done", "total": None},
    )
    big, text = await ask(services, "invoice acme 2")
    assert text == "big"
    assert big.details["result"]["data"]["response"] == {"omitted_bytes": 50_030}
    huge, text = await ask(services, "invoice acme 3")
    assert huge.status == ActivityStatus.FAILED
    assert "too large" in huge.details["error"]["message"]
    assert text == f"Sorry, request #{huge.id} could not be completed."


async def test_http_call_does_not_retry_4xx(services: Runtime, server: ScriptedServer) -> None:
    server.expect("/invoices", Answer(422, {"error": "unknown client"}))
    activity, text = await ask(services, "invoice nobody 5")
    assert activity.status == ActivityStatus.FAILED
    assert activity.details["error"]["message"] == 'HTTP 422: {"error": "unknown client"}'
    assert text == f"Sorry, request #{activity.id} could not be completed."
    assert "unknown client" not in text
    assert len(server.seen) == 1


async def test_action_timeout_fails_the_activity(services: Runtime, server: ScriptedServer) -> None:
    server.expect("/slow", Answer(200, {"reply": "never seen"}, delay_s=1.0))
    activity, text = await ask(services, "something slow please")
    assert activity.status == ActivityStatus.FAILED
    assert activity.details["error"] == {"reason": "timeout", "message": "no answer within 0.3 s"}
    assert text == f"Sorry, request #{activity.id} took too long and was stopped."
    await asyncio.sleep(0.8)  # let the server finish answering before it shuts down


async def test_unknown_action_fails_loudly_never_completed(services: Runtime) -> None:
    async with services.sessions.begin() as session:
        ghost = Activity(
            agent_name="ghost",
            action_type="haunt",
            details={"payload": {}},
            status=ActivityStatus.QUEUED.value,
        )
        session.add(ghost)
    await services.queue.enqueue_run(ghost.id)

    async def finished() -> ActivityView | None:
        found = await services.activities.get(ghost.id, with_events=True)
        running = {ActivityStatus.QUEUED, ActivityStatus.IN_PROGRESS}
        return found if found and found.status not in running else None

    activity = await wait_for(finished)
    assert activity.status == ActivityStatus.FAILED
    assert activity.details["error"] == {
        "reason": "unknown_action",
        "message": "no action ghost.haunt in the catalog",
    }
    assert "completed" not in [e.kind for e in activity.events]


async def test_non_public_action_is_refused_at_dispatch(services: Runtime) -> None:
    activity, text = await ask(services, "secret launch codes")
    assert activity.status == ActivityStatus.FAILED
    assert activity.details["error"]["reason"] == "forbidden"
    assert text.startswith("Sorry, you are not allowed to do that")
    assert [e.kind for e in activity.events][:2] == ["created", "denied"]
    assert "started" not in [e.kind for e in activity.events]


async def test_help_lists_only_what_this_sender_may_ask(services: Runtime) -> None:
    _, text = await ask(services, "gibberish")
    assert "Create an invoice in billing" in text
    assert "Admins only" not in text
