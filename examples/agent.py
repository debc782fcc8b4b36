"""A coding agent's side of Switchboard's task loop, with the official MCP Python SDK's client.

It does what a coding agent in an IDE or a terminal would do over MCP: read the queue, claim a
task, ask the requester a question (and wait for the answer, which Switchboard attaches to the
task), hand in a diff (or a text), and wait for a person's review: approved, changes requested
(with the reviewer's comment: run it again with ``--task`` and a new diff), or rejected.

    switchboard agents add my-agent --serves developer.fix_bug     # prints the token once
    python examples/agent.py --url http://127.0.0.1:8000/mcp --token sb_... \\
        --ask "Which browser do you use?" --diff fix.patch

Everything it says goes to standard output, one line per step.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import sys
import time
from pathlib import Path
from typing import Any

import httpx2
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

POLL_S = 0.5


def say(*parts: object) -> None:
    print(*parts, flush=True)


class Agent:
    def __init__(self, client: Client, wait_s: float) -> None:
        self.client = client
        self.deadline = time.monotonic() + wait_s

    async def call(self, tool: str, **arguments: Any) -> dict[str, Any]:
        result = await self.client.call_tool(tool, arguments)
        if result.is_error:
            said = " ".join(getattr(part, "text", "") for part in result.content)
            raise SystemExit(f"{tool} refused: {said}")
        found: dict[str, Any] = result.structured_content or {}
        return found

    async def until(self, what: str, found: Any) -> Any:
        """Poll ``found()`` until it returns something, or give up at the deadline."""
        while time.monotonic() < self.deadline:
            value = await found()
            if value:
                return value
            await asyncio.sleep(POLL_S)
        raise SystemExit(f"gave up waiting for {what}")

    async def queue(self) -> list[dict[str, Any]]:
        read = await self.client.read_resource("orchestrator://queue")
        tasks: list[dict[str, Any]] = json.loads(getattr(read.contents[0], "text", "[]"))
        return tasks

    async def task(self, task_id: int) -> dict[str, Any]:
        return await self.call("get_task", task_id=task_id)


async def work(args: argparse.Namespace) -> int:
    headers = {"Authorization": f"Bearer {args.token}"}
    async with (
        httpx2.AsyncClient(headers=headers, timeout=30) as http,
        Client(streamable_http_client(args.url, http_client=http)) as client,
    ):
        agent = Agent(client, args.wait_s)
        task_id = args.task
        if task_id is None:
            say("waiting for a task…")
            task_id = (await agent.until("a task", agent.queue))[0]["id"]
        task = await agent.call("claim_ticket", task_id=task_id)
        say(f"claimed task #{task_id}: {task['request_text'] or task['title']}")
        say(f"payload: {json.dumps(task['payload'], ensure_ascii=False)}")
        for note in task["notes"]:
            if note["kind"] == "changes_requested":
                say(f"reviewer asked: {note['text']}")

        if args.ask:
            asked_at = len(task["notes"])
            await agent.call("send_message", task_id=task_id, text=args.ask)
            say(f"asked the requester: {args.ask}")

            async def answer() -> str | None:
                notes = (await agent.task(task_id))["notes"][asked_at:]
                answers = [n["text"] for n in notes if n["kind"] == "requester_answered"]
                return answers[-1] if answers else None

            say(f"the requester answered: {await agent.until('an answer', answer)}")

        content, kind = args.content, args.kind
        key = hashlib.sha256(f"{task_id}:{content}".encode()).hexdigest()[:32]
        handed = await agent.call(
            "submit_artifact",
            task_id=task_id,
            content=content,
            type=kind,
            title=args.title,
            idempotency_key=key,
        )
        say(f"handed in artifact #{handed['id']} ({kind}, round {handed['round']})")

        async def decided() -> dict[str, Any] | None:
            now = await agent.task(task_id)
            return None if now["status"] == "in_review" else now

        ended = await agent.until("the review", decided)
        status = ended["status"]
        if status in {"changes_requested", "waiting_for_agent"}:
            comment = [n["text"] for n in ended["notes"] if n["kind"] == "changes_requested"][-1]
            say(f"changes requested: {comment}")
        elif status == "rejected":
            reason = [n["text"] for n in ended["notes"] if n["kind"] == "review_rejected"][-1]
            say(f"rejected: {reason}")
        else:
            say(f"review ended: {status}")
        return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", required=True, help="the gateway's MCP address (…/mcp)")
    parser.add_argument("--token", required=True, help="the agent's token")
    parser.add_argument("--task", type=int, help="work this task (default: the queue's first)")
    parser.add_argument("--ask", help="a question for the requester before handing in")
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--diff", help="a unified diff to hand in")
    what.add_argument("--text", help="a text to hand in")
    parser.add_argument("--title", default="", help="the artifact's title")
    parser.add_argument("--wait-s", type=float, default=600, help="give up after this long")
    args = parser.parse_args(argv)
    if args.diff:
        args.content, args.kind = Path(args.diff).read_text(encoding="utf-8"), "diff"
    else:
        args.content, args.kind = args.text, "text"
    return asyncio.run(work(args))


if __name__ == "__main__":
    sys.exit(main())
