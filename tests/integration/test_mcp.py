"""``/mcp`` over real Streamable HTTP, with the MCP SDK's own client against a real
``switchboard serve``: an agent made with ``switchboard agents add`` reads its queue, claims a
task, asks the requester, hands in a diff (a bad one refused with the service's words); the
door refuses a missing or non-agent token (401 with ``WWW-Authenticate``), a foreign ``Host``
(421) and an oversized body (413); after the gateway restarts, the agent's next call works."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import httpx2
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from tests.browser.test_portal import cli
from tests.conftest import ADMIN
from tests.integration.test_tasks import DIFF
from tests.support.flow import wait_for
from tests.support.processes import free_port, process, wait_healthy

pytestmark = pytest.mark.services

INIT = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {
        "protocolVersion": "2025-11-25",
        "capabilities": {},
        "clientInfo": {"name": "raw", "version": "0"},
    },
}
ACCEPT = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}


def agent_client(url: str, token: str) -> tuple[httpx2.AsyncClient, Any]:
    http = httpx2.AsyncClient(headers={"Authorization": f"Bearer {token}"}, timeout=30)
    return http, Client(streamable_http_client(url, http_client=http))


async def test_an_agent_works_a_task_over_mcp_and_the_door_refuses_strangers(
    make_env: Callable[..., dict[str, str]], sqlite_url: str, tmp_path: Path
) -> None:
    port = free_port()
    gateway = f"http://127.0.0.1:{port}"
    env = make_env(database_url=sqlite_url, port=port)
    log = tmp_path / "gateway.log"
    token = cli(["agents", "add", "ada", "--serves", "developer.fix_bug"], env, tmp_path).strip()
    assert token.startswith("sb_")
    listed = cli(["agents", "list"], env, tmp_path)
    assert "ada" in listed
    assert token not in listed
    operator = cli(["tokens", "create", "--role", "operator"], env, tmp_path).strip()

    async with contextlib.AsyncExitStack() as stack:
        first = process(["serve"], env, tmp_path, log)
        served = first.__enter__()
        stack.callback(first.__exit__, None, None, None)  # (a second exit does nothing)
        wait_healthy(gateway, served, log)
        async with httpx.AsyncClient(base_url=gateway, timeout=10) as rest:
            body = {
                "id": "r1",
                "conversation": "rita",
                "sender": "rita",
                "text": "fix the login bug",
            }
            sent = await rest.post("/api/v1/messages", json=body, headers=ADMIN)
            assert sent.status_code == 202

            # The door: no token, another role's token, a foreign Host, too big a body.
            bare = await rest.post("/mcp", json=INIT, headers=ACCEPT)
            assert bare.status_code == 401
            assert bare.headers["www-authenticate"].startswith("Bearer")
            as_operator = await rest.post(
                "/mcp", json=INIT, headers={**ACCEPT, "Authorization": f"Bearer {operator}"}
            )
            assert as_operator.status_code == 401
            agent = {"Authorization": f"Bearer {token}"}
            foreign = await rest.post(
                "/mcp", json=INIT, headers={**ACCEPT, **agent, "Host": "evil.example"}
            )
            assert foreign.status_code == 421
            huge = json.dumps({**INIT, "pad": "x" * 6_000_000})
            too_big = await rest.post("/mcp", content=huge, headers={**ACCEPT, **agent})
            assert too_big.status_code == 413
            metadata = await rest.get("/.well-known/oauth-protected-resource/mcp")
            assert metadata.json()["resource"].endswith("/mcp")

        http, client = agent_client(f"{gateway}/mcp", token)
        await stack.enter_async_context(http)
        await stack.enter_async_context(client)
        tools = {t.name for t in (await client.list_tools()).tools}
        assert tools >= {
            "list_tasks",
            "claim_ticket",
            "submit_artifact",
            "send_message",
            "release_ticket",
        }

        async def queued() -> list[dict[str, Any]]:
            read = await client.read_resource("orchestrator://queue")
            found: list[dict[str, Any]] = json.loads(read.contents[0].text)
            return found

        [task] = await wait_for(queued)
        assert task["request_text"] == "fix the login bug"
        claimed = await client.call_tool("claim_ticket", {"task_id": task["id"]})
        assert not claimed.is_error, claimed.content
        assert claimed.structured_content["status"] == "claimed"
        asked = await client.call_tool(
            "send_message", {"task_id": task["id"], "text": "Which page?"}
        )
        assert not asked.is_error
        bad = await client.call_tool(
            "submit_artifact",
            {"task_id": task["id"], "type": "diff", "content": "<script>alert(1)</script>"},
        )
        assert bad.is_error
        assert "not a unified diff" in bad.content[0].text
        whole = await client.read_resource(f"orchestrator://tasks/{task['id']}")
        view = json.loads(whole.contents[0].text)
        assert view["artifacts"] == []
        assert [line["text"] for line in view["conversation"]][-1] == "Which page?"

        # The gateway restarts under the agent; its next call, on the same client, works
        # (a stateless door keeps no session to lose).
        first.__exit__(None, None, None)
        with process(["serve"], env, tmp_path, log) as served:
            wait_healthy(gateway, served, log)
            handed = await client.call_tool(
                "submit_artifact",
                {"task_id": task["id"], "type": "diff", "content": DIFF, "idempotency_key": "a"},
            )
            assert not handed.is_error, handed.content
            assert handed.structured_content["summary"]["added"] == 1
            again = await client.call_tool("get_task", {"task_id": task["id"]})
            assert again.structured_content["status"] == "in_review"


class Alternating(httpx2.AsyncBaseTransport):
    """A load balancer in miniature: each request to the next gateway process."""

    def __init__(self, ports: list[int]) -> None:
        self._ports = ports
        self._inner = httpx2.AsyncHTTPTransport()
        self.served: list[int] = []

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        port = self._ports[len(self.served) % len(self._ports)]
        request.url = request.url.copy_with(port=port)
        request.headers["host"] = f"127.0.0.1:{port}"
        self.served.append(port)
        return await self._inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self._inner.aclose()


@pytest.mark.parametrize("mode", ["legacy", "auto"])
async def test_an_agent_works_through_two_gateway_processes_one_call_each(
    make_env: Callable[..., dict[str, str]],
    pg_migrated: str,
    redis_url: str,
    tmp_path: Path,
    mode: str,
) -> None:
    """Behind a balancer, every call may reach another gateway: with the initialize handshake
    (``legacy``) or without (the newer protocol), nothing lives in one process's memory."""
    ports = [free_port(), free_port()]
    envs = [make_env(database_url=pg_migrated, redis_url=redis_url, port=port) for port in ports]
    token = cli(
        ["agents", "add", f"ada-{mode}", "--serves", "developer.fix_bug"], envs[0], tmp_path
    )
    with contextlib.ExitStack() as stack:
        for n, (port, env) in enumerate(zip(ports, envs, strict=True)):
            log = tmp_path / f"gateway-{n}.log"
            served = stack.enter_context(process(["serve"], env, tmp_path, log))
            wait_healthy(f"http://127.0.0.1:{port}", served, log)
        stack.enter_context(process(["worker"], envs[0], tmp_path, tmp_path / "worker.log"))
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{ports[0]}", timeout=10) as rest:
            body = {"id": f"m-{mode}", "conversation": f"m-{mode}", "sender": f"m-{mode}",
                    "text": f"fix the {mode} page"}  # fmt: skip
            assert (
                await rest.post("/api/v1/messages", json=body, headers=ADMIN)
            ).status_code == 202
        balancer = Alternating(ports)
        headers = {"Authorization": f"Bearer {token.strip()}"}
        async with (
            httpx2.AsyncClient(headers=headers, transport=balancer, timeout=30) as http,
            Client(
                streamable_http_client(f"http://127.0.0.1:{ports[0]}/mcp", http_client=http),
                mode=mode,
            ) as client,  # fmt: skip
        ):

            async def mine() -> list[dict[str, Any]]:
                listed = await client.call_tool("list_tasks", {})
                items: list[dict[str, Any]] = listed.structured_content["items"]
                return [t for t in items if t["request_text"] == f"fix the {mode} page"]

            [task] = await wait_for(mine, timeout_s=20)
            claimed = await client.call_tool("claim_ticket", {"task_id": task["id"]})
            assert not claimed.is_error, claimed.content
            text = {"task_id": task["id"], "type": "text", "content": "done"}
            assert not (await client.call_tool("submit_artifact", text)).is_error
            view = await client.call_tool("get_task", {"task_id": task["id"]})
            assert view.structured_content["status"] == "in_review"
        assert set(balancer.served) == set(ports)  # both processes answered
