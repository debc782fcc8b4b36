"""Workflows: a run's steps are activities created once their dependencies completed, a failed
step stops its dependents, permission and approval apply per step; over the API and from chat,
on the embedded default and on PostgreSQL with the arq worker."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from litestar.testing import AsyncTestClient
from sqlalchemy import select

from dispatch.record.models import Activity, WorkflowRun
from dispatch.work.execution import Caller, ExecuteRequest
from dispatch.work.runs import RunView
from gateway.app import create_app
from gateway.auth import TokenStore
from gateway.settings import Settings
from tests.conftest import ADMIN
from tests.integration.test_approvals import inbox, person
from tests.support.flow import outbound, post, wait_for
from tests.support.runtime import running_worker, runtime_for
from workers.inprocess import InProcessQueue
from workers.recovery import recover
from workers.runtime import Runtime

CATALOG = """
[fallback]
agent = "system"
action = "help"

[agents.assistant.actions.echo]
description = "Repeat a text"
handler = "echo"
public = true
[agents.assistant.actions.echo.payload]
text = { type = "string" }

[agents.billing.actions.refund]
description = "Refund an invoice"
handler = "echo"
public = true
[agents.billing.actions.refund.payload]
invoice = { type = "id" }
[agents.billing.actions.refund.approval]
approvers = ["supervisor"]

[agents.ops.actions.purge]
description = "Purge a cache"
handler = "echo"
roles = ["supervisor"]
[agents.ops.actions.purge.payload]
text = { type = "string" }

[agents.net.actions.call]
description = "Call a service that is down"
handler = "http_call"
public = true
timeout_s = 5
[agents.net.actions.call.http]
url = "http://127.0.0.1:9/down"
retries = 0
timeout_s = 1
[agents.net.actions.call.payload]
text = { type = "string" }

[[rules]]
id = "diamond"
agent = "workflows"
action = "diamond"
patterns = ['^diamond (?P<name>\\w+)$']

[workflows.diamond]
description = "A diamond"
public = true
[workflows.diamond.input]
name = { type = "string" }
n = { type = "integer", required = false }
[[workflows.diamond.steps]]
id = "a"
agent = "assistant"
action = "echo"
payload = { text = "a for {{ input.name }}" }
[[workflows.diamond.steps]]
id = "b"
agent = "assistant"
action = "echo"
depends_on = ["a"]
payload = { text = "b after {{ steps.a.result.text }}" }
[[workflows.diamond.steps]]
id = "c"
agent = "assistant"
action = "echo"
depends_on = ["a"]
priority = "high"
payload = { text = "c" }
[[workflows.diamond.steps]]
id = "d"
agent = "assistant"
action = "echo"
depends_on = ["b", "c"]
payload = { text = "{{ steps.b.result.text }} + {{ steps.c.result.text }} (#{{ run.id }})" }

[workflows.breaks]
description = "A step that fails"
public = true
[[workflows.breaks.steps]]
id = "a"
agent = "assistant"
action = "echo"
payload = { text = "a" }
[[workflows.breaks.steps]]
id = "call"
agent = "net"
action = "call"
depends_on = ["a"]
payload = { text = "x" }
[[workflows.breaks.steps]]
id = "after"
agent = "assistant"
action = "echo"
depends_on = ["call"]
payload = { text = "{{ steps.call.result.text }}" }
[[workflows.breaks.steps]]
id = "last"
agent = "assistant"
action = "echo"
depends_on = ["after"]
payload = { text = "never" }
[[workflows.breaks.steps]]
id = "side"
agent = "assistant"
action = "echo"
depends_on = ["a"]
payload = { text = "side" }

[workflows.tolerant]
description = "A step whose failure does not matter"
public = true
[[workflows.tolerant.steps]]
id = "call"
agent = "net"
action = "call"
on_failure = "continue"
payload = { text = "x" }
[[workflows.tolerant.steps]]
id = "after"
agent = "assistant"
action = "echo"
depends_on = ["call"]
payload = { text = "went on" }
[[workflows.tolerant.steps]]
id = "reads"
agent = "assistant"
action = "echo"
depends_on = ["call"]
on_failure = "continue"
payload = { text = "{{ steps.call.result.text }}" }

[workflows.gated]
description = "A step that needs approval"
public = true
[workflows.gated.input]
invoice = { type = "id" }
[[workflows.gated.steps]]
id = "refund"
agent = "billing"
action = "refund"
payload = { invoice = "{{ input.invoice }}" }
[[workflows.gated.steps]]
id = "done"
agent = "assistant"
action = "echo"
depends_on = ["refund"]
payload = { text = "refunded: {{ steps.refund.result.text }}" }

[workflows.guarded]
description = "A step only a supervisor may run"
public = true
[[workflows.guarded.steps]]
id = "purge"
agent = "ops"
action = "purge"
payload = { text = "all" }
[[workflows.guarded.steps]]
id = "after"
agent = "assistant"
action = "echo"
depends_on = ["purge"]
payload = { text = "x" }
"""


@pytest.fixture
def catalog_path(tmp_path: Path) -> Path:
    path = tmp_path / "catalog.toml"
    path.write_text(CATALOG)
    return path


@pytest.fixture
async def services(
    make_settings: Callable[..., Settings], sqlite_url: str, catalog_path: Path
) -> AsyncIterator[Runtime]:
    settings = make_settings(database_url=sqlite_url, catalog=catalog_path)
    async with runtime_for(settings, "gateway") as built:
        yield built


@pytest.fixture
async def client(services: Runtime) -> AsyncIterator[AsyncTestClient[Any]]:
    async with AsyncTestClient(create_app(services.settings)) as test_client:
        test_client.headers.update(ADMIN)
        yield test_client


async def _ended(client: AsyncTestClient[Any], run_id: int, timeout_s: float = 15.0) -> Any:
    async def done() -> Any:
        run = (await client.get(f"/api/v1/workflow-runs/{run_id}")).json()
        return run if run["status"] in {"completed", "failed"} else None

    return await wait_for(done, timeout_s=timeout_s)


async def _token_of(services: Runtime, user_id: int) -> dict[str, str]:
    """An operator token acting for ``user_id`` (decisions are a person's)."""
    token, _ = await TokenStore(services.sessions, None).create(
        name=f"user-{user_id}", role="operator", user_id=user_id
    )
    return {"Authorization": f"Bearer {token}"}


async def _steps(services: Runtime, run_id: int) -> dict[str, Activity]:
    async with services.sessions() as session:
        rows = await session.scalars(select(Activity).where(Activity.workflow_run_id == run_id))
        return {row.workflow_step: row for row in rows if row.workflow_step}


async def test_a_diamond_runs_each_step_once_after_all_it_depends_on(
    client: AsyncTestClient[Any], services: Runtime
) -> None:
    started = await client.post(
        "/api/v1/workflows/diamond/run", json={"input": {"name": "acme"}, "sync": True}
    )
    assert started.status_code == 200, started.text
    body = started.json()
    run_id = body["activity_id"]
    assert body["workflow_run_url"] == f"/api/v1/workflow-runs/{run_id}"
    run = body["run"]
    assert run["status"] == "completed", run
    steps = {s["id"]: s for s in run["steps"]}
    assert [s["id"] for s in run["steps"]] == ["a", "b", "c", "d"]
    assert steps["d"]["depends_on"] == ["b", "c"]
    assert steps["b"]["result"]["text"] == "b after a for acme"
    assert steps["d"]["result"]["text"] == f"b after a for acme + c (#{run_id})"
    rows = await _steps(services, run_id)
    assert {s: r.status for s, r in rows.items()} == dict.fromkeys("abcd", "completed")
    assert rows["c"].priority == "high"  # the step's own
    # Each step's activity was created only once all it depends on had completed.
    for step_id, deps in {"b": ["a"], "c": ["a"], "d": ["b", "c"]}.items():
        for dep in deps:
            assert rows[dep].completed_at is not None
            assert rows[step_id].created_at >= rows[dep].completed_at
    listed = (await client.get("/api/v1/activities", params={"agent": "assistant"})).json()
    assert len(listed["items"]) == 4  # one activity per step, no more
    start = (await client.get(f"/api/v1/activities/{run_id}")).json()
    assert start["agent_name"] == "workflows"
    assert "workflow_completed" in [e["kind"] for e in start["events"]]


async def test_a_failed_step_stops_its_dependents_and_the_run_fails_naming_it(
    client: AsyncTestClient[Any], services: Runtime
) -> None:
    started = await client.post("/api/v1/workflows/breaks/run", json={})
    assert started.status_code == 202, started.text
    run = await _ended(client, started.json()["activity_id"])
    assert run["status"] == "failed"
    steps = {s["id"]: s["status"] for s in run["steps"]}
    assert steps == {
        "a": "completed",
        "call": "failed",
        "after": "skipped",
        "last": "skipped",
        "side": "completed",  # not behind the failure: it ran
    }
    assert run["error"]["reason"] == "step_failed"
    assert run["error"]["step"] == "call"
    assert run["error"]["skipped"] == ["after", "last"]
    assert run["error"]["message"]
    rows = await _steps(services, run["id"])
    assert set(rows) == {"a", "call", "side"}  # skipped steps never get an activity


async def test_a_step_marked_continue_lets_its_dependents_run(
    client: AsyncTestClient[Any],
) -> None:
    started = await client.post("/api/v1/workflows/tolerant/run", json={})
    run = await _ended(client, started.json()["activity_id"])
    steps = {s["id"]: s for s in run["steps"]}
    assert steps["call"]["status"] == "failed"
    assert steps["after"]["status"] == "completed"
    # A reference to the failed step's result fails the step that reads it, with the reason.
    assert steps["reads"]["status"] == "failed"
    assert steps["reads"]["error"]["reason"] == "template"
    assert "steps.call.result.text" in steps["reads"]["error"]["message"]
    assert run["status"] == "completed"  # both failures were allowed to happen


async def test_a_step_needing_approval_waits_for_it_and_the_run_goes_on(
    client: AsyncTestClient[Any], services: Runtime
) -> None:
    sup = await person(services, "sup", "supervisor")
    started = await client.post("/api/v1/workflows/gated/run", json={"input": {"invoice": 12}})
    run_id = started.json()["activity_id"]

    async def waiting() -> Any:
        run = (await client.get(f"/api/v1/workflow-runs/{run_id}")).json()
        return run if run["steps"][0]["status"] == "awaiting_approval" else None

    run = await wait_for(waiting)
    assert run["status"] == "running"
    assert run["steps"][1]["status"] == "waiting"
    refund = run["steps"][0]["activity_id"]
    [asked] = await wait_for(lambda: inbox(services, "sup"))
    assert asked.startswith(f"Approval needed for request #{refund}: Refund an invoice")
    approved = await client.post(
        f"/api/v1/activities/{refund}/approve", headers=await _token_of(services, sup)
    )
    assert approved.status_code == 200, approved.text
    run = await _ended(client, run_id)
    assert run["status"] == "completed"
    assert run["steps"][1]["result"]["text"] == "refunded: refund: invoice=12"


async def test_a_rejected_step_fails_the_run(
    client: AsyncTestClient[Any], services: Runtime
) -> None:
    sup = await person(services, "sup", "supervisor")
    started = await client.post("/api/v1/workflows/gated/run", json={"input": {"invoice": 5}})
    run_id = started.json()["activity_id"]

    async def asked() -> Any:
        run = (await client.get(f"/api/v1/workflow-runs/{run_id}")).json()
        return run["steps"][0]["activity_id"] if run["steps"][0]["activity_id"] else None

    refund = await wait_for(asked)
    rejected = await client.post(
        f"/api/v1/activities/{refund}/reject", headers=await _token_of(services, sup)
    )
    assert rejected.status_code == 200, rejected.text
    run = await _ended(client, run_id)
    assert run["status"] == "failed"
    assert (run["error"]["step"], run["error"]["status"]) == ("refund", "rejected")
    assert run["steps"][1]["status"] == "skipped"


async def test_permission_applies_per_step(client: AsyncTestClient[Any], services: Runtime) -> None:
    guest = await person(services, "guest", "guest")
    tokens = TokenStore(services.sessions, None)
    token, _ = await tokens.create(name="guest", role="actions", user_id=guest)
    started = await client.post(
        "/api/v1/workflows/guarded/run",
        json={},
        headers={"Authorization": f"Bearer {token}"},
    )
    assert started.status_code == 202, started.text  # anyone may start it
    run = await _ended(client, started.json()["activity_id"])
    assert run["status"] == "failed"
    purge = run["steps"][0]
    assert (purge["status"], purge["error"]["reason"]) == ("failed", "forbidden")
    assert run["steps"][1]["status"] == "skipped"
    # The admin token acting for no one runs it all (its role recorded with the request).
    again = await client.post("/api/v1/workflows/guarded/run", json={"sync": True})
    assert again.json()["run"]["status"] == "completed", again.text


@pytest.mark.parametrize(
    ("call", "status", "field"),
    [
        (("/api/v1/workflows/nope/run", {}), 404, "nope"),
        (("/api/v1/workflows/diamond/run", {}), 422, "input.name"),
        (("/api/v1/workflows/diamond/run", {"input": {"name": "x", "zz": 1}}), 422, "input.zz"),
        (("/api/v1/workflows/diamond/run", {"input": {"name": "x", "n": "many"}}), 422, "input.n"),
        (("/api/v1/workflows/diamond/run", {"inputs": {}}), 400, "inputs"),
        (("/api/v1/actions/execute", {"workflow": "diamond", "agent": "a"}), 422, "workflow"),
        (("/api/v1/actions/execute", {"agent": "a", "input": {"x": 1}}), 422, "input"),
    ],
)
async def test_a_bad_start_is_refused_naming_the_problem_and_nothing_is_stored(
    client: AsyncTestClient[Any],
    services: Runtime,
    call: tuple[str, dict[str, Any]],
    status: int,
    field: str,
) -> None:
    path, body = call
    response = await client.post(path, json=body)
    assert response.status_code == status, response.text
    assert field in response.text
    async with services.sessions() as session:
        assert (await session.scalars(select(Activity))).all() == []


async def test_workflows_are_listed_and_an_unknown_run_is_not_found(
    client: AsyncTestClient[Any],
) -> None:
    listed = {w["name"]: w for w in (await client.get("/api/v1/workflows")).json()}
    assert set(listed) == {"diamond", "breaks", "tolerant", "gated", "guarded"}
    diamond = listed["diamond"]
    assert [s["id"] for s in diamond["steps"]] == ["a", "b", "c", "d"]
    assert diamond["steps"][3]["depends_on"] == ["b", "c"]
    assert set(diamond["input"]) == {"name", "n"}
    missing = await client.get("/api/v1/workflow-runs/999")
    assert (missing.status_code, missing.json()["error"]) == (404, "not_found")
    assert (
        await client.get("/api/v1/workflows", headers={"Authorization": "x"})
    ).status_code == 401


async def test_execute_starts_a_workflow_and_a_key_makes_it_once(
    client: AsyncTestClient[Any],
) -> None:
    body = {"workflow": "diamond", "input": {"name": "z"}, "idempotency_key": "k1"}
    first = await client.post("/api/v1/actions/execute", json=body)
    again = await client.post("/api/v1/actions/execute", json=body)
    assert first.status_code == 202, first.text
    assert again.json()["activity_id"] == first.json()["activity_id"]
    assert again.json()["created"] is False
    run = await _ended(client, first.json()["activity_id"])
    assert run["status"] == "completed"


async def test_chat_starts_a_run_and_is_told_when_it_ends(
    client: AsyncTestClient[Any],
) -> None:
    accepted = await post(client, "diamond acme", id="w-1", conversation="w", sender="wendy")
    conversation = accepted.json()["conversation_id"]
    started, ended = await outbound(client, conversation, count=2)
    run_id = started["activity_id"]
    assert started["text"].startswith(f"Started diamond as run #{run_id}: 4 steps (a, b, c, d)")
    assert ended["activity_id"] == run_id
    assert ended["text"].startswith(f"Run #{run_id} of diamond completed.")
    assert f"• d: completed — b after a for acme + c (#{run_id})" in ended["text"]
    # "status N" on the run's request shows the run.
    await post(client, f"status {run_id}", id="w-2", conversation="w", sender="wendy")
    *_, status = await outbound(client, conversation, count=3)
    assert status["text"] == (
        f"Run #{run_id} of diamond: completed (a completed, b completed, c completed, d completed)"
    )


@pytest.fixture
async def unswept(
    make_settings: Callable[..., Settings], sqlite_url: str, catalog_path: Path
) -> AsyncIterator[Runtime]:
    """A runtime whose own recovery pass never comes by itself: the test calls it."""
    settings = make_settings(
        database_url=sqlite_url, catalog=catalog_path, worker_recover_every_s=3600
    )
    async with runtime_for(settings, "gateway") as built:
        yield built


async def test_a_run_whose_advance_was_lost_is_carried_on_by_recovery(unswept: Runtime) -> None:
    """A worker that dies between a step's end and advancing its run: recovery advances it.
    (All on one runtime: its jobs run in this test's event loop. Nothing may advance the
    rewound run before the test looks: the run's jobs have all ended, and the runtime's
    periodic recovery is held off.)"""
    services = unswept
    started = await services.executor.execute(
        ExecuteRequest(workflow="diamond", input={"name": "r"}),
        Caller(user_id=None, role="admin", actor="test"),
    )
    run_id = started.activity_id

    async def ended() -> RunView | None:
        run = await services.workflows.get(run_id)
        return run if run is not None and run.ended else None

    await wait_for(ended)
    # Jobs of the run may still be finishing (the run's summary going out, whose job calls
    # advance once more, a no-op for a run that is up to date): let them end first.
    assert isinstance(services.queue, InProcessQueue)
    await services.queue.drain()
    # Rewind the run to "a just ended, nothing after it created", as a died worker leaves it.
    async with services.sessions.begin() as session:
        rows = await session.scalars(
            select(Activity).where(
                Activity.workflow_run_id == run_id, Activity.workflow_step != "a"
            )
        )
        for row in rows.all():
            await session.delete(row)
        run = await session.get(WorkflowRun, run_id)
        assert run is not None
        run.status, run.completed_at, run.error = "running", None, None
    rewound = await services.workflows.get(run_id)
    assert rewound is not None
    assert [s.status for s in rewound.steps] == ["completed", "waiting", "waiting", "waiting"]
    await recover(services, older_than_s=0)
    done = await wait_for(ended)
    assert done.status == "completed"
    assert len(await _steps(services, run_id)) == 4


@pytest.fixture
def pg_settings(
    make_settings: Callable[..., Settings], own_pg: str, redis_url: str, catalog_path: Path
) -> Settings:
    return make_settings(
        database_url=own_pg, redis_url=redis_url, catalog=catalog_path, worker_max_jobs=4
    )


@pytest.mark.services
async def test_on_postgres_with_the_arq_worker_runs_advance_once_each(
    pg_settings: Settings,
) -> None:
    """Several runs at once on the arq worker (steps of one run finishing side by side on
    several job slots): every step once, every run completed, in dependency order."""
    async with AsyncTestClient(create_app(pg_settings)) as client:
        client.headers.update(ADMIN)
        runs = []
        for n in range(6):
            started = await client.post(
                "/api/v1/workflows/diamond/run", json={"input": {"name": f"n{n}"}}
            )
            assert started.status_code == 202, started.text
            runs.append(started.json()["activity_id"])
        async with running_worker(pg_settings):
            ended = [await _ended(client, run_id, timeout_s=30) for run_id in runs]
        assert {run["status"] for run in ended} == {"completed"}
        for run in ended:
            texts = {s["id"]: s["result"]["text"] for s in run["steps"]}
            assert texts["d"] == f"{texts['b']} + c (#{run['id']})"
        listed = (
            await client.get("/api/v1/activities", params={"agent": "assistant", "limit": 100})
        ).json()
        assert len(listed["items"]) == 4 * len(runs)


async def test_a_run_whose_request_ended_short_of_completing_fails_and_is_not_left_running(
    services: Runtime,
) -> None:
    """Opened by its request's handler, then that request ended otherwise (its worker died and
    an operator cancelled it): the run fails naming why, and nothing of it ever runs."""
    async with services.sessions.begin() as session:
        start = Activity(
            agent_name="workflows",
            action_type="diamond",
            details={"payload": {"name": "x"}},
            status="in_progress",
        )
        session.add(start)
        await session.flush()
        run_id = start.id
    await services.workflows.open(run_id, "diamond", {"name": "x"})
    async with services.sessions.begin() as session:
        found = await session.get(Activity, run_id)
        assert found is not None
        found.status = "cancelled"
    await services.workflows.advance(run_id)
    run = await services.workflows.get(run_id)
    assert run is not None
    assert run.status == "failed"
    assert run.error == {
        "reason": "not_started",
        "status": "cancelled",
        "message": "its request ended cancelled",
    }
    assert await _steps(services, run_id) == {}
    assert await services.workflows.unfinished() == []  # recovery leaves it be
