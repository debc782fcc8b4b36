"""Stopping a request while it runs: an operator asks, the worker stops it at its next lease
renewal, it ends ``cancelled`` and its requester is told."""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from litestar.testing import AsyncTestClient

from dispatch.record.models import Activity, ActivityStatus, utcnow
from gateway.app import create_app
from gateway.settings import Settings
from tests.conftest import ADMIN
from tests.support.flow import outbound, post, wait_for
from tests.support.http_server import Answer, ScriptedServer
from tests.support.runtime import runtime_for
from workers.jobs import run_activity

CATALOG = """
[fallback]
agent = "system"
action = "help"

[agents.net.actions.slow]
description = "Call a slow service"
handler = "http_call"
public = true
timeout_s = 60
[agents.net.actions.slow.http]
url = "{url}/slow"
retries = 0
timeout_s = 30

[[rules]]
id = "slow"
agent = "net"
action = "slow"
keywords = ["slow"]
"""

LEASE_S = 1.5
"""Renewed every 0.5 s: a stop is honoured within about that."""


@pytest.fixture
def server() -> Iterator[ScriptedServer]:
    with ScriptedServer() as srv:
        yield srv


@pytest.fixture
async def client(
    make_settings: Callable[..., Settings],
    sqlite_url: str,
    tmp_path: Path,
    server: ScriptedServer,
) -> AsyncIterator[AsyncTestClient[Any]]:
    catalog = tmp_path / "catalog.toml"
    catalog.write_text(CATALOG.format(url=server.url))
    settings = make_settings(database_url=sqlite_url, catalog=catalog, worker_lease_s=LEASE_S)
    async with AsyncTestClient(create_app(settings)) as test_client:
        test_client.headers.update(ADMIN)
        yield test_client


async def test_a_running_request_is_stopped_at_its_next_renewal_and_its_requester_told(
    client: AsyncTestClient[Any], server: ScriptedServer
) -> None:
    server.expect("/slow", Answer(200, {"reply": "too late"}, delay_s=8.0))
    accepted = await post(client, "slow please", id="s-1", conversation="s", sender="sam")
    conversation = accepted.json()["conversation_id"]

    async def running() -> Any:
        found = (await client.get("/api/v1/activities", params={"status": "in_progress"})).json()
        return found["items"][0] if found["items"] and server.seen else None

    activity = await wait_for(running)
    url = f"/api/v1/activities/{activity['id']}"
    asked = await client.post(f"{url}/cancel")
    assert asked.status_code == 202, asked.text
    assert asked.json()["status"] == "in_progress"
    assert asked.json()["cancel_requested_at"] is not None
    again = await client.post(f"{url}/cancel")
    assert again.status_code == 202  # asking twice is asking once

    async def stopped() -> Any:
        found = (await client.get(url)).json()
        return found if found["status"] == "cancelled" else None

    done = await wait_for(stopped, timeout_s=LEASE_S * 2)  # well before the service answers
    assert done["details"]["error"]["reason"] == "cancelled"
    assert "result" not in done["details"]
    kinds = [(e["kind"], e["actor"]) for e in done["events"]]
    assert ("cancel_requested", "token:admin") in kinds
    names = [k for k, _ in kinds]
    assert names.index("started") < names.index("cancel_requested") < names.index("cancelled")
    assert names.count("cancel_requested") == 1
    assert "completed" not in names
    [told] = await outbound(client, conversation)
    assert told["text"].startswith(f"Request #{activity['id']} was cancelled by an operator.")
    ended = await client.post(f"{url}/cancel")
    assert (ended.status_code, ended.json()["extra"]["status"]) == (409, "cancelled")
    assert len(server.seen) == 1  # it had started, and was not run again


async def test_a_run_asked_to_stop_before_a_worker_took_it_over_never_runs_its_handler(
    make_settings: Callable[..., Settings],
    sqlite_url: str,
    tmp_path: Path,
    server: ScriptedServer,
) -> None:
    """Its worker died; an operator asked for it to stop; the worker that takes it over (its
    lease ran out) ends it ``cancelled`` without calling the service."""
    catalog = tmp_path / "catalog.toml"
    catalog.write_text(CATALOG.format(url=server.url))
    settings = make_settings(database_url=sqlite_url, catalog=catalog)
    async with runtime_for(settings) as runtime:
        async with runtime.sessions.begin() as session:
            row = Activity(
                agent_name="net",
                action_type="slow",
                details={"payload": {}},
                status=ActivityStatus.IN_PROGRESS.value,
                attempts=1,
                lease_expires_at=utcnow() - dt.timedelta(seconds=1),
                cancel_requested_at=utcnow(),
            )
            session.add(row)
            await session.flush()
            activity_id = row.id
        await run_activity(runtime, activity_id)
        done = await runtime.activities.get(activity_id, with_events=True)
    assert done is not None
    assert done.status == "cancelled"
    assert done.details["error"]["reason"] == "cancelled"
    assert [e.kind for e in done.events] == ["started", "cancelled"]
    assert server.seen == []  # the service was never called
