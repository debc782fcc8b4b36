"""Councils on real processes: `switchboard serve` and `switchboard worker` (arq on Redis,
PostgreSQL as the record) against a local OpenAI-compatible server scripted per member.

- A council's worker is killed (SIGKILL) while one member's critique is in flight: another
  worker resumes the run once the lease lapses and asks no member again for a step it had
  answered (only the critique lost in flight is asked again); the requester is told once that
  a council is at work, then that a person reviews the answer, then gets it once approved.
- A council answers with a plan: a proposal with a dependency cycle fails the plan check; the
  chosen plan, a diamond of four tasks, is approved by a supervisor and runs as a workflow run
  across a council (the design), an external agent over MCP (``examples/agent.py``, the MCP
  SDK's own client) and handlers, in dependency order; the requester is told how it ended.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import signal
from collections import Counter
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from dispatch.record.models import CouncilStep
from tests.browser.test_agent_loop import ended, example
from tests.browser.test_portal import cli
from tests.conftest import ADMIN, open_db
from tests.support.flow import wait_for
from tests.support.llm_api import LlmApi, completion
from tests.support.processes import free_port, process, wait_healthy

pytestmark = pytest.mark.services

CATALOG = """
[providers.local]
base_url = "{url}"
model = "unused"
timeout_s = 20

[agents.studio]
description = "Test councils"

[agents.studio.actions.debate]
description = "Debate a design"
executor = "council"
public = true
timeout_s = 120
[agents.studio.actions.debate.payload]
what = {{ type = "string" }}
[agents.studio.actions.debate.council]
call_timeout_s = 15
members = [
  {{ name = "alpha", provider = "local", model = "alpha" }},
  {{ name = "beta", provider = "local", model = "beta" }},
]
judges = [
  {{ name = "alpha", provider = "local", model = "judge" }},
  {{ name = "beta", provider = "local", model = "judge" }},
]
[agents.studio.actions.debate.council.rubric]
quality = {{ description = "it is good" }}

[agents.studio.actions.design]
description = "Design one part"
executor = "council"
review = false
public = true
timeout_s = 60
[agents.studio.actions.design.payload]
what = {{ type = "string" }}
[agents.studio.actions.design.council]
call_timeout_s = 10
members = [{{ name = "designer", provider = "local", model = "designer" }}]

[agents.studio.actions.plan]
description = "Plan a feature"
executor = "council"
produces = "plan"
public = true
timeout_s = 120
[agents.studio.actions.plan.payload]
what = {{ type = "string" }}
[agents.studio.actions.plan.plan.roles.architect]
agent = "studio"
action = "design"
payload = {{ what = "{{{{ task.description }}}}" }}
[agents.studio.actions.plan.plan.roles.developer]
agent = "developer"
action = "fix_bug"
payload = {{ what = "{{{{ task.description }}}}" }}
[agents.studio.actions.plan.plan.roles.writer]
agent = "assistant"
action = "echo"
payload = {{ text = "{{{{ task.id }}}}: {{{{ task.description }}}}" }}
[agents.studio.actions.plan.council]
call_timeout_s = 10
members = [
  {{ name = "cyclic", provider = "local", model = "cyclic" }},
  {{ name = "planner", provider = "local", model = "planner" }},
]

[[rules]]
id = "studio-debate"
agent = "studio"
action = "debate"
patterns = ['^debate\\s+(?P<what>.+)$']

[[rules]]
id = "studio-plan"
agent = "studio"
action = "plan"
patterns = ['^roadmap\\s+(?P<what>.+)$']
"""

DIAMOND = {
    "tasks": [
        {"id": "design", "role": "architect", "description": "Design the reset flow"},
        {
            "id": "build",
            "role": "developer",
            "description": "Build the reset endpoint",
            "depends_on": ["design"],
            "priority": "high",
        },
        {
            "id": "docs",
            "role": "writer",
            "description": "Document the reset mail ({{ user.name }} is a placeholder)",
            "depends_on": ["design"],
            "priority": "low",
        },
        {
            "id": "release",
            "role": "writer",
            "description": "Announce the release",
            "depends_on": ["build", "docs"],
        },
    ]
}
CYCLE = {
    "tasks": [
        {"id": "a", "role": "developer", "description": "A", "depends_on": ["b"]},
        {"id": "b", "role": "developer", "description": "B", "depends_on": ["a"]},
    ]
}
SLOW_CRITIQUE_S = 4.0
DONE = {"queued", "sent", "delivered", "read"}


def step_of(body: dict[str, Any]) -> str:
    asked = body["messages"][-1]["content"]
    if body.get("response_format"):
        return "score"
    if asked.startswith("Critique this proposal"):
        return "critique"
    if "Your proposal:" in asked:
        return "revise"
    return "draft"


def say(content: str, delay_s: float = 0.0) -> tuple[int, Any, float]:
    return 200, completion({"role": "assistant", "content": content}), delay_s


def scripted(body: dict[str, Any]) -> tuple[int, Any, float]:  # noqa: PLR0911 - one per model
    model, step = body["model"], step_of(body)
    if model == "judge":
        asked = body["messages"][-1]["content"]
        labels = re.findall(r"<<<(P\d+)>>>\n(.*?)\n<<<END P\d+>>>", asked, re.DOTALL)
        return say(
            json.dumps({lb: {"quality": 9 if "alpha" in text else 4} for lb, text in labels})
        )
    if model in {"alpha", "beta"}:
        if step == "critique":
            # beta's critique (of alpha) is slow: the worker is killed while it is in flight.
            return say(f"{model} says: be specific.", SLOW_CRITIQUE_S if model == "beta" else 0)
        return say(f"{step} by {model}")
    if model == "designer":
        return say("Design: a signed, single-use token mailed to the user, valid 30 minutes.")
    if model == "cyclic":
        return say(json.dumps(CYCLE) if step != "critique" else "Fine.")
    if model == "planner":
        return say("```json\n" + json.dumps(DIAMOND) + "\n```" if step != "critique" else "Fine.")
    return 400, {"error": {"message": f"unknown model {model}", "type": "invalid_request"}}, 0


def asked(llm: LlmApi) -> Counter[tuple[str, str]]:
    return Counter((r["model"], step_of(r)) for r in llm.requests)


@pytest.fixture
def live_env(
    make_env: Callable[..., dict[str, str]], own_pg: str, redis_url: str, tmp_path: Path
) -> Callable[[LlmApi], dict[str, str]]:
    def make(llm: LlmApi) -> dict[str, str]:
        bundled = resources.files("dispatch.policy").joinpath("default_catalog.toml").read_text()
        catalog = tmp_path / "catalog.toml"
        catalog.write_text(bundled + CATALOG.format(url=llm.base_url), encoding="utf-8")
        return make_env(
            database_url=own_pg,
            redis_url=redis_url,
            port=free_port(),
            catalog=catalog,
            worker_lease_s=4,
        )

    return make


def supervisor_token(env: dict[str, str], cwd: Path) -> dict[str, str]:
    name = f"Sofia {cwd.name}"  # (the database may be another test's too)
    cli(["users", "add", name, "--role", "supervisor"], env, cwd)
    token = cli(["tokens", "create", "--role", "operator", "--user", name], env, cwd)
    return {"Authorization": f"Bearer {token.strip()}"}


async def texts(client: httpx.AsyncClient, conversation: int) -> list[str]:
    found = (await client.get(f"/api/v1/conversations/{conversation}/messages")).json()
    return [m["text"] for m in found if m["direction"] == "outbound" and m["delivery"] in DONE]


async def said(client: httpx.AsyncClient, conversation: int, pattern: str) -> str:
    async def found() -> str | None:
        return next(
            (t for t in await texts(client, conversation) if re.search(pattern, t, re.DOTALL)),
            None,
        )

    text: str = await wait_for(found, timeout_s=60)
    return text


async def in_review(client: httpx.AsyncClient, sofia: dict[str, str], action: str) -> Any:
    async def listed() -> Any:
        rows = (await client.get("/api/v1/tasks?status=in_review", headers=sofia)).json()
        return next((r for r in rows if r["action"] == action), None)

    return await wait_for(listed, timeout_s=90)


async def test_a_council_killed_mid_critique_resumes_asking_no_one_twice(
    live_env: Callable[[LlmApi], dict[str, str]], own_pg: str, tmp_path: Path
) -> None:
    with LlmApi(scenario=scripted) as llm:
        env = live_env(llm)
        sofia = supervisor_token(env, tmp_path)
        base = f"http://127.0.0.1:{env['SWITCHBOARD_PORT']}"
        glog, wlog = tmp_path / "gateway.log", tmp_path / "worker.log"
        async with (
            open_db(own_pg) as sessions,
            httpx.AsyncClient(base_url=base, timeout=10, headers=ADMIN) as client,
        ):
            with process(["serve"], env, tmp_path, glog) as gateway:
                await asyncio.to_thread(wait_healthy, base, gateway, glog)
                with process(["worker"], env, tmp_path, wlog) as doomed:
                    body = {"id": "d1", "conversation": "dora", "sender": "dora"}
                    sent = await client.post(
                        "/api/v1/messages", json={**body, "text": "debate a signup"}
                    )
                    conversation = sent.json()["conversation_id"]

                    async def mid_critique() -> bool:
                        async with sessions() as session:
                            done = set(
                                await session.scalars(
                                    select(CouncilStep.member).where(CouncilStep.step == "critique")
                                )
                            )
                        return done == {"alpha"} and asked(llm)[("beta", "critique")] == 1

                    await wait_for(mid_critique, timeout_s=60)
                    doomed.send_signal(signal.SIGKILL)
                    await asyncio.to_thread(doomed.wait, 10)
                assert asked(llm)[("beta", "revise")] == 0  # it died before any revision
                with process(["worker"], env, tmp_path, wlog):
                    task = await in_review(client, sofia, "studio.debate")
                    proposal = (
                        await client.get(f"/api/v1/tasks/{task['id']}", headers=sofia)
                    ).json()["artifacts"][0]["content"]
                    assert proposal == "revise by alpha"  # the judges' favourite
                    approved = await client.post(
                        f"/api/v1/tasks/{task['id']}/review",
                        json={"decision": "approve"},
                        headers=sofia,
                    )
                    assert approved.json()["status"] == "completed"
                    await said(client, conversation, "^revise by alpha$")
                told = await texts(client, conversation)
    # Each step asked once, but the critique lost in flight with its worker.
    assert asked(llm) == Counter(
        {
            ("alpha", "draft"): 1,
            ("beta", "draft"): 1,
            ("alpha", "critique"): 1,
            ("beta", "critique"): 2,
            ("alpha", "revise"): 1,
            ("beta", "revise"): 1,
            ("judge", "score"): 2,
        }
    ), asked(llm)
    # Told once that a council works on it (the second run said nothing again), once that a
    # person reviews it, then the answer.
    assert [t for t in told if "council of 2 agents is working" in t] == told[:1], told
    assert sum("a person reviews it" in t for t in told) == 1, told
    assert told[-1] == "revise by alpha"


async def test_an_approved_plan_runs_across_a_council_an_agent_and_handlers(
    live_env: Callable[[LlmApi], dict[str, str]], tmp_path: Path
) -> None:
    with LlmApi(scenario=scripted) as llm:
        env = live_env(llm)
        sofia = supervisor_token(env, tmp_path)
        token = cli(["agents", "add", "cody", "--serves", "developer.fix_bug"], env, tmp_path)
        mcp = ["--url", f"http://127.0.0.1:{env['SWITCHBOARD_PORT']}/mcp", "--token"]
        base = f"http://127.0.0.1:{env['SWITCHBOARD_PORT']}"
        glog, wlog = tmp_path / "gateway.log", tmp_path / "worker.log"
        async with httpx.AsyncClient(base_url=base, timeout=10, headers=ADMIN) as client:
            with (
                process(["serve"], env, tmp_path, glog) as gateway,
                process(["worker"], env, tmp_path, wlog),
            ):
                await asyncio.to_thread(wait_healthy, base, gateway, glog)
                body = {"id": "p1", "conversation": "pia", "sender": "pia"}
                sent = await client.post(
                    "/api/v1/messages", json={**body, "text": "roadmap a password reset"}
                )
                conversation = sent.json()["conversation_id"]
                task = await in_review(client, sofia, "studio.plan")
                view = (await client.get(f"/api/v1/tasks/{task['id']}", headers=sofia)).json()
                [proposal] = view["artifacts"]
                ranking = {r["member"]: r for r in proposal["summary"]["council"]["ranking"]}
                # The first member's plan has a cycle: it fails the plan check, with why.
                assert not ranking["cyclic"]["passed"]
                assert "dependency cycle: a → b → a" in ranking["cyclic"]["failures"][0]
                assert proposal["summary"]["council"]["chosen"] == "planner"
                # Each member was told the plan's shape and its roles.
                drafted = next(r for r in llm.requests if r["model"] == "planner")
                assert "Roles: architect, developer, writer" in drafted["messages"][-1]["content"]

                approved = await client.post(
                    f"/api/v1/tasks/{task['id']}/review",
                    json={"decision": "approve"},
                    headers=sofia,
                )
                assert approved.json()["status"] == "completed"

                # The design step runs first (a council); then the coding agent's task waits for
                # it over MCP, beside the docs (a handler).
                agent = example(
                    [*mcp, token.strip(), "--text", "Reset endpoint built, with tests."],
                    env,
                    tmp_path,
                )
                try:
                    built = await in_review(client, sofia, "developer.fix_bug")
                    assert built["payload"] == {"what": "Build the reset endpoint"}
                    approved = await client.post(
                        f"/api/v1/tasks/{built['id']}/review",
                        json={"decision": "approve"},
                        headers=sofia,
                    )
                    assert approved.json()["status"] == "completed"
                    out = await ended(agent, timeout_s=60)
                finally:
                    with contextlib.suppress(ProcessLookupError):
                        agent.kill()
                assert "handed in" in out, out

                async def finished() -> Any:
                    run = (await client.get(f"/api/v1/workflow-runs/{task['id']}")).json()
                    return run if run["status"] != "running" else None

                run = await wait_for(finished, timeout_s=60)
                started = await said(client, conversation, r"^Started studio\.plan as run")
                summary = await said(client, conversation, r"^Run #\d+ of studio\.plan")
                steps = {s["id"]: s for s in run["steps"]}
                story = {
                    step_id: (await client.get(f"/api/v1/activities/{step['activity_id']}")).json()
                    for step_id, step in steps.items()
                }
    assert run["status"] == "completed", run
    assert run["workflow"] == "studio.plan"
    assert run["plan"] == {
        "tasks": [
            {"depends_on": [], "priority": "normal", **DIAMOND["tasks"][0]},
            *DIAMOND["tasks"][1:3],
            {"priority": "normal", **DIAMOND["tasks"][3]},
        ]
    }
    assert [s["id"] for s in run["steps"]] == ["design", "build", "docs", "release"]
    assert {s["id"]: (s["agent"], s["action"], s["status"]) for s in run["steps"]} == {
        "design": ("studio", "design", "completed"),
        "build": ("developer", "fix_bug", "completed"),
        "docs": ("assistant", "echo", "completed"),
        "release": ("assistant", "echo", "completed"),
    }
    assert steps["design"]["result"]["text"].startswith("Design: a signed, single-use token")
    assert steps["release"]["result"]["text"] == "release: Announce the release"
    # A task's text is data: its braces reach the step as written, never read as a template.
    assert steps["docs"]["result"]["text"] == (
        "docs: Document the reset mail ({{ user.name }} is a placeholder)"
    )
    # In dependency order: nothing was created before what it needs had completed.
    for step_id, needs in (
        ("build", "design"),
        ("docs", "design"),
        ("release", "build"),
        ("release", "docs"),
    ):
        assert story[step_id]["created_at"] >= story[needs]["completed_at"], (step_id, needs)
    assert story["build"]["priority"] == "high"
    assert f"run #{task['id']}: 4 steps (design, build, docs, release)" in started
    assert summary.startswith(f"Run #{task['id']} of studio.plan completed."), summary
    assert "• release: completed — release: Announce the release" in summary
