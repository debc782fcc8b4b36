"""An external agent killed while it holds a claim (SIGKILL to a real ``examples/agent.py``
working over MCP against a real ``switchboard serve``): its task is claimable again within its
lease plus the recovery period, another agent finishes it, and it is done once."""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.browser.test_agent_loop import ended, example
from tests.browser.test_portal import cli
from tests.conftest import ADMIN
from tests.support.flow import wait_for
from tests.support.processes import free_port, process, wait_healthy

pytestmark = pytest.mark.services

LEASE_S = 10


async def test_a_killed_agents_task_is_claimed_again_after_its_lease_and_done_once(
    make_env: Callable[..., dict[str, str]], sqlite_url: str, tmp_path: Path
) -> None:
    catalog = tmp_path / "catalog.toml"
    bundled = resources.files("dispatch.policy").joinpath("default_catalog.toml").read_text()
    catalog.write_text(bundled.replace("lease_s = 600", f"lease_s = {LEASE_S}"), encoding="utf-8")
    port = free_port()
    gateway = f"http://127.0.0.1:{port}"
    env = make_env(database_url=sqlite_url, port=port, catalog=catalog, worker_recover_every_s=1)
    cli(["users", "add", "Sofía", "--role", "supervisor"], env, tmp_path)
    ada = cli(["agents", "add", "ada", "--serves", "developer.fix_bug"], env, tmp_path).strip()
    bob = cli(["agents", "add", "bob", "--serves", "developer.fix_bug"], env, tmp_path).strip()
    users = cli(["users", "list"], env, tmp_path)
    sofia_id = next(
        line.split("\t")[0].lstrip("#") for line in users.splitlines() if "Sofía" in line
    )
    sofia = cli(
        ["tokens", "create", "--role", "operator", "--user", sofia_id], env, tmp_path
    ).strip()
    mcp = ["--url", f"{gateway}/mcp"]
    log = tmp_path / "gateway.log"

    with process(["serve"], env, tmp_path, log) as served:
        wait_healthy(gateway, served, log)
        async with httpx.AsyncClient(base_url=gateway, timeout=10, headers=ADMIN) as client:
            body = {"id": "q1", "conversation": "quin", "sender": "quin", "text": "fix the search"}
            sent = await client.post("/api/v1/messages", json=body)
            conversation = sent.json()["conversation_id"]
            staff = {"Authorization": f"Bearer {sofia}"}

            async def task() -> dict[str, Any] | None:
                listed = (await client.get("/api/v1/tasks", headers=staff)).json()
                return listed[0] if listed else None

            # Ada claims it and asks a question, then dies before anyone answers.
            first = example(
                [*mcp, "--token", ada, "--ask", "Which page?", "--text", "x"], env, tmp_path
            )

            async def claimed() -> dict[str, Any] | None:
                found = await task()
                return found if found and found["status"] == "claimed" else None

            held = await wait_for(claimed, timeout_s=20)
            first.send_signal(signal.SIGKILL)
            await asyncio.to_thread(first.wait, 10)
            killed_at = time.monotonic()

            # Back in the queue within its lease plus a recovery pass (never before its lease).
            async def waiting() -> dict[str, Any] | None:
                found = await task()
                return found if found and found["status"] == "waiting_for_agent" else None

            await wait_for(waiting, timeout_s=LEASE_S + 10)
            assert time.monotonic() - killed_at <= LEASE_S + 5

            # Bob takes it and hands in; a reviewer approves; done once.
            second = example(
                [*mcp, "--token", bob, "--task", str(held["id"]), "--text", "Fixed the search."],
                env,
                tmp_path,
            )

            async def in_review() -> bool:
                found = await task()
                return bool(found and found["status"] == "in_review")

            await wait_for(in_review, timeout_s=30)
            approved = await client.post(
                f"/api/v1/tasks/{held['id']}/review", json={"decision": "approve"}, headers=staff
            )
            assert approved.json()["status"] == "completed"
            out = await ended(second)
            assert "review ended: completed" in out

            view = (await client.get(f"/api/v1/tasks/{held['id']}", headers=staff)).json()
            assert view["attempts"] == 2
            assert len(view["artifacts"]) == 1
            story = (await client.get(f"/api/v1/activities/{held['id']}")).json()
            kinds = [e["kind"] for e in story["events"]]
            assert kinds.count("lease_lapsed") == 1
            assert kinds.count("completed") == 1
            messages = (await client.get(f"/api/v1/conversations/{conversation}/messages")).json()
            done = [m for m in messages if m["text"] == "Fixed the search."]
            assert len(done) == 1  # the result, once
