"""The external-agent loop end to end, with real processes: `switchboard serve` and `switchboard
worker` (arq on Redis, PostgreSQL as the record) take a WhatsApp request through the local
Twilio server; the runnable `examples/agent.py` — the MCP SDK's own client over Streamable
HTTP — claims it, asks the requester a question on WhatsApp, gets the answer and hands in a
diff; a supervisor, told on WhatsApp, requests changes once in the portal (Chromium), the agent
hands in a second diff, the supervisor approves; the requester gets the change on WhatsApp,
with a link that shows it."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.browser.conftest import screenshots
from tests.browser.test_portal import PASSWORD, cli
from tests.conftest import ADMIN
from tests.e2e.test_approval_scenario import arrives, to, webhook
from tests.e2e.test_processes import gateway_and_worker
from tests.integration.test_tasks import DIFF
from tests.support.processes import child_env, free_port
from tests.support.twilio_api import TwilioApi
from tests.support.twilio_webhook import ACCOUNT_SID, AUTH_TOKEN, PUBLIC_URL, twilio_env

pytestmark = pytest.mark.services

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "agent.py"
REQUESTER = "whatsapp:+34600111333"
SUPERVISOR = "whatsapp:+34600999777"
SECOND_DIFF = DIFF.replace("user.strip(), password", "user.strip(), password.strip()")
HOSTILE = '<img src=x onerror="window.pwned=1"><script>window.pwned=1</script>'
FIRST_DIFF = DIFF.replace("@@ -1,3 +1,3 @@", "@@ -1,3 +1,4 @@").replace(
    "+    return check(user.strip(), password)\n",
    f"+    return check(user.strip(), password)\n+    # {HOSTILE}\n",
)
"""The first round also adds a line an agent might write to attack a reviewer's page: it is
shown as the text it is."""


def example(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.Popen[str]:
    """``examples/agent.py`` as a user runs it (its output read when it ends)."""
    return subprocess.Popen(
        [sys.executable, str(EXAMPLE), *args],
        env=child_env(env),
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


async def ended(agent: subprocess.Popen[str], timeout_s: float = 60) -> str:
    out, _ = await asyncio.to_thread(agent.communicate, timeout=timeout_s)
    assert agent.returncode == 0, out
    return out


async def test_a_coding_agent_works_a_whatsapp_request_a_supervisor_reviews_it(
    make_env: Callable[..., dict[str, str]],
    pg_migrated: str,
    redis_url: str,
    tmp_path: Path,
    chromium: Any,
) -> None:
    shots = screenshots(tmp_path)
    first, second = tmp_path / "fix.patch", tmp_path / "fix-2.patch"
    first.write_text(FIRST_DIFF)
    second.write_text(SECOND_DIFF)
    with TwilioApi(ACCOUNT_SID, AUTH_TOKEN) as api:
        port = free_port()
        env = make_env(
            database_url=pg_migrated, redis_url=redis_url, port=port, **twilio_env(api.url)
        )
        cli(
            ["users", "add", "Sofía", "--role", "supervisor", "--whatsapp", SUPERVISOR[9:]],
            env,
            tmp_path,
        )
        cli(["users", "set-password", "Sofía"], env, tmp_path, PASSWORD + "\n")
        token = cli(["agents", "add", "ada", "--serves", "developer.fix_bug"], env, tmp_path)
        mcp = ["--url", f"http://127.0.0.1:{port}/mcp", "--token", token.strip()]

        async with (
            gateway_and_worker(env, tmp_path) as base,
            httpx.AsyncClient(base_url=base, timeout=10, headers=ADMIN) as client,
        ):
            # The agent waits for work; the request comes on WhatsApp.
            agent = example(
                [*mcp, "--ask", "Which browser do you use?", "--diff", str(first)], env, tmp_path
            )
            await webhook(client, "fix the login bug on the website", sid="SMr1", sender=REQUESTER)
            await arrives(api, REQUESTER, r"is with a coding agent now")
            await arrives(api, REQUESTER, r"^Which browser do you use\?$")
            await webhook(client, "Firefox, on Windows", sid="SMr2", sender=REQUESTER)
            told = await arrives(
                api, SUPERVISOR, r"Request #(\d+) .* handed in its work for review"
            )
            task_id = int(told.group(1))

            # The supervisor reviews in the portal: the diff per file, then asks for changes.
            context = await chromium.new_context(viewport={"width": 1280, "height": 900})
            page = await context.new_page()
            await page.goto(f"{base}/portal/reviews/{task_id}")
            await page.fill("#name", "Sofía")
            await page.fill("#password", PASSWORD)
            await page.click("#login button")
            await page.locator("#detail-title").wait_for(timeout=10_000)
            added = page.locator(".diff .dl.add", has_text="user.strip(), password)")
            await added.wait_for(timeout=10_000)
            assert (
                await page.locator(".diff .dl.del", has_text="check(user, password)").count() == 1
            )
            assert await page.locator(".diff-file .path").inner_text() == "web/login.py"
            assert await page.locator("nav #nav-reviews").inner_text() == "1"
            shown = page.locator(".diff .dl.add", has_text="<script>")
            assert await shown.inner_text() == f"+    # {HOSTILE}"
            assert await page.evaluate("window.pwned") is None  # data, never HTML
            assert await page.locator(".diff img, .diff script").count() == 0
            await page.screenshot(path=str(shots / "portal-review.png"))
            await page.fill("#review-comment", "Trim the password too, please.")
            await page.click("#review-changes")
            out = await ended(agent)
            assert "the requester answered: Firefox, on Windows" in out
            assert "changes requested: Trim the password too, please." in out

            # The agent's second round; the supervisor approves it, live (no reload).
            again = example([*mcp, "--task", str(task_id), "--diff", str(second)], env, tmp_path)
            await page.locator(".diff .dl.add", has_text="password.strip()").wait_for(
                timeout=30_000
            )
            await page.click("#review-approve")
            out = await ended(again)
            assert "reviewer asked: Trim the password too, please." in out
            assert "review ended: completed" in out
            await context.close()

            # The requester gets the change on WhatsApp, and its link shows it.
            done = await arrives(api, REQUESTER, r"is done: 1 file\(s\) changed.*(http\S+)")
            link = done.group(1)
            assert link.startswith(f"{PUBLIC_URL}/artifacts/")  # the public address's
            shown = await client.get(link.removeprefix(PUBLIC_URL))
            assert shown.status_code == 200
            assert "password.strip()" in shown.text
            task = (await client.get(f"/api/v1/tasks/{task_id}")).json()
            assert task["status"] == "completed"
            kinds = [n["kind"] for n in task["notes"]]
            assert kinds == ["agent_message", "requester_answered", "changes_requested"]
            # The requester's answer was the agent's, not a new request: no reply to it.
            assert not [m for m in to(api, REQUESTER) if "Firefox" in (m.body or "")]
        assert api.unexpected == []
