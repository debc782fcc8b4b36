"""The supervisor portal in a real browser: a wrong password and a guest are refused, a
supervisor logs in, approves a visitor's pending request, and the visitor's widget shows the
result; on the embedded default, as the README's first command runs it."""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from tests.browser.conftest import screenshots
from tests.support.flow import wait_for
from tests.support.processes import SWITCHBOARD, child_env, free_port, process, wait_healthy
from tests.support.twilio_api import TwilioApi
from tests.support.twilio_webhook import (
    ACCOUNT_SID,
    AUTH_TOKEN,
    inbound_form,
    signed,
    twilio_env,
)

CATALOG = """
[fallback]
agent = "system"
action = "help"

[agents.billing.actions.refund]
description = "Refund an invoice"
handler = "echo"
public = true
examples = ["refund 12"]
[agents.billing.actions.refund.payload]
invoice = { type = "id" }
[agents.billing.actions.refund.approval]
approvers = ["supervisor"]

[[rules]]
id = "refund"
agent = "billing"
action = "refund"
patterns = ['^refund\\s+#?(?P<invoice>\\d+)$']
"""
PASSWORD = "correct horse battery"


def cli(args: list[str], env: dict[str, str], cwd: Path, stdin: str = "") -> str:
    done = subprocess.run(
        SWITCHBOARD + args,
        env=child_env(env),
        cwd=cwd,
        input=stdin.encode(),
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr.decode()
    return done.stdout.decode()


async def test_a_supervisor_approves_in_the_portal_and_the_visitor_sees_the_result(
    make_env: Callable[..., dict[str, str]], sqlite_url: str, tmp_path: Path, chromium: Any
) -> None:
    catalog = tmp_path / "catalog.toml"
    catalog.write_text(CATALOG)
    port = free_port()
    gateway = f"http://127.0.0.1:{port}"
    env = make_env(database_url=sqlite_url, port=port, catalog=catalog)
    log = tmp_path / "gateway.log"
    with process(["serve"], env, tmp_path, log) as served:
        wait_healthy(gateway, served, log)
        cli(["users", "add", "sup", "--role", "supervisor", "--rest", "sup"], env, tmp_path)
        cli(["users", "set-password", "sup"], env, tmp_path, PASSWORD + "\n")
        cli(["users", "add", "gus", "--role", "guest"], env, tmp_path)
        cli(["users", "set-password", "gus"], env, tmp_path, PASSWORD + "\n")

        visitor = await chromium.new_page(viewport={"width": 1000, "height": 720})
        await visitor.goto(gateway)
        widget = visitor.locator("switchboard-widget[data-switchboard-widget]")
        await widget.locator("textarea").fill("refund 12")
        await widget.locator("textarea").press("Enter")
        # The bot's answer (waiting for a supervisor), not the greeting drawn on opening.
        await widget.locator(".row.bot:not([data-greeting]) .bubble").first.wait_for(timeout=15_000)
        # The visitor closes the chat (Escape) while the request waits for a supervisor.
        await widget.locator("textarea").press("Escape")
        assert await widget.locator(".panel").is_hidden()
        # Replies drawn while it was open: those drawn so far less those counted unread, read
        # in one turn of the page's loop (a reply drawn between two reads would be both).
        seen = await widget.evaluate(
            """host => host.shadowRoot.querySelectorAll(".row.bot .bubble").length
                - Number(host.shadowRoot.querySelector(".launcher .badge").textContent || 0)"""
        )

        context = await chromium.new_context(viewport={"width": 1200, "height": 800})
        portal = await context.new_page()
        await portal.goto(f"{gateway}/portal")
        for name, password, said in [
            ("sup", "wrong password", "wrong name or password"),
            ("gus", PASSWORD, "only supervisors, operators and admins"),
        ]:
            await portal.fill("#name", name)
            await portal.fill("#password", password)
            await portal.click("#login button")
            await portal.locator("#login-error", has_text=said).wait_for(timeout=10_000)
            assert await portal.locator("#app").is_hidden()
        await portal.fill("#name", "sup")
        await portal.fill("#password", PASSWORD)
        await portal.click("#login button")
        await portal.locator("nav a[data-view=approvals]").click()
        assert portal.url.endswith("/portal/approvals")
        row = portal.locator("#list tbody tr", has_text="Refund an invoice")
        await row.wait_for(timeout=10_000)
        assert "refund 12" in await row.inner_text()  # what the visitor asked
        await row.click()
        payload = portal.locator("#detail dl", has_text="invoice")
        await payload.wait_for(timeout=10_000)
        assert "12" in await payload.inner_text()
        cookie = next(c for c in await context.cookies() if c["name"] == "sb_portal")
        assert cookie["httpOnly"] is True
        assert cookie["sameSite"] == "Strict"
        await portal.screenshot(path=str(screenshots(tmp_path) / "portal.png"))
        await portal.locator("#detail button", has_text="Approve").click()
        # The list follows live: the request leaves it without a reload.
        await portal.locator("#list .empty", has_text="Nothing waits").wait_for(timeout=10_000)

        # What came while the chat was closed shows as unread on the launcher, and opening
        # the chat shows it and clears the count.
        result = widget.locator(".row.bot .bubble", has_text="refund: invoice=12")
        await result.wait_for(state="attached", timeout=15_000)
        badge = widget.locator(".launcher .badge")

        async def counted() -> tuple[int, str] | None:
            """Replies drawn since it closed, and the badge, read together (another reply may
            be arriving: they agree once it has)."""
            drawn = await widget.locator(".row.bot .bubble").count() - seen
            shown = await badge.inner_text()
            return (drawn, shown) if shown == str(drawn) else None

        unread, _ = await wait_for(counted, timeout_s=10)
        label = await widget.locator(".launcher").get_attribute("aria-label")
        assert label is not None
        assert f"({unread} unread)" in label
        await visitor.screenshot(path=str(screenshots(tmp_path) / "widget-unread.png"))
        await widget.locator(".launcher").click()
        await result.wait_for(timeout=5_000)
        assert await badge.is_hidden()
        await portal.locator("nav a[data-view=activity]").click()
        await portal.locator("#list tbody tr", has_text="Refund an invoice").first.click()
        await portal.locator("#detail ol.timeline li", has_text="approved").first.wait_for(
            timeout=10_000
        )
        await context.close()


def test_a_password_is_set_from_stdin_and_a_short_one_is_refused(
    make_env: Callable[..., dict[str, str]], sqlite_url: str, tmp_path: Path
) -> None:
    env = make_env(database_url=sqlite_url)
    cli(["users", "add", "ana", "--role", "supervisor"], env, tmp_path)
    short = subprocess.run(
        [*SWITCHBOARD, "users", "set-password", "ana"],
        env=child_env(env),
        cwd=tmp_path,
        input=b"short\n",
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert short.returncode != 0
    assert b"at least 8 characters" in short.stderr + short.stdout


async def test_a_supervisor_takes_over_a_whatsapp_conversation_and_the_user_gets_the_reply(
    make_env: Callable[..., dict[str, str]], sqlite_url: str, tmp_path: Path, chromium: Any
) -> None:
    port = free_port()
    gateway = f"http://127.0.0.1:{port}"
    with TwilioApi(ACCOUNT_SID, AUTH_TOKEN) as twilio:
        env = make_env(database_url=sqlite_url, port=port, **twilio_env(twilio.url))
        log = tmp_path / "gateway.log"
        with process(["serve"], env, tmp_path, log) as served:
            wait_healthy(gateway, served, log)
            cli(["users", "add", "sofia", "--role", "supervisor"], env, tmp_path)
            cli(["users", "set-password", "sofia"], env, tmp_path, PASSWORD + "\n")
            async with httpx.AsyncClient(base_url=gateway, timeout=10) as client:
                target, body, headers = signed(inbound_form("echo hola", sid="SMtake1"))
                assert (await client.post(target, content=body, headers=headers)).is_success
                await wait_for(lambda: asyncio.sleep(0, result=len(twilio.sent) == 1))

                context = await chromium.new_context(viewport={"width": 1200, "height": 900})
                portal = await context.new_page()
                await portal.goto(f"{gateway}/portal")
                await portal.fill("#name", "sofia")
                await portal.fill("#password", PASSWORD)
                await portal.click("#login button")
                row = portal.locator("#inbox .conv", has_text="whatsapp")
                await row.first.click()
                await portal.locator("#take-over").click()
                await portal.locator("#reply-form").wait_for(state="visible", timeout=10_000)
                await wait_for(lambda: asyncio.sleep(0, result=len(twilio.sent) == 2))
                # The user writes: the bot keeps quiet and the supervisor sees it.
                target, body, headers = signed(inbound_form("echo ¿hay alguien?", sid="SMtake2"))
                assert (await client.post(target, content=body, headers=headers)).is_success
                await portal.locator("#transcript .msg.in", has_text="¿hay alguien?").wait_for(
                    timeout=10_000
                )
                await portal.fill("#reply-text", "Hola, soy Sofía. ¿En qué te ayudo?")
                await portal.locator("#reply-form button").click()
                await wait_for(lambda: asyncio.sleep(0, result=len(twilio.sent) == 3))
                await portal.locator("#transcript .msg.out.human", has_text="soy Sofía").wait_for(
                    timeout=10_000
                )
                await portal.screenshot(path=str(screenshots(tmp_path) / "portal-takeover.png"))
                await portal.locator("#hand-back").click()
                await wait_for(lambda: asyncio.sleep(0, result=len(twilio.sent) == 4))
                await context.close()
        bodies = [m.body for m in twilio.sent]
        assert bodies[0] == "hola"
        assert bodies[1].startswith("A person is taking over")
        assert bodies[2] == "Hola, soy Sofía. ¿En qué te ayudo?"
        assert bodies[3].startswith("You are talking to the assistant again")
        assert all(m.to == "whatsapp:+34600111222" for m in twilio.sent)
        assert "¿hay alguien?" not in bodies  # the bot never answered it


def test_one_command_makes_a_demo_supervisor_and_prints_its_password_once(
    make_env: Callable[..., dict[str, str]], sqlite_url: str, tmp_path: Path
) -> None:
    env = make_env(database_url=sqlite_url)
    first = cli(["demo"], env, tmp_path)
    assert "name: demo-supervisor" in first
    assert first.startswith("portal: http://127.0.0.1:8000/portal ")  # an address to open
    password = first.split("password: ")[1].split()[0]
    again = cli(["demo"], env, tmp_path)  # a new password; still one user
    assert again.split("password: ")[1].split()[0] != password
    listed = cli(["users", "list"], env, tmp_path)
    assert listed.count("\tdemo-supervisor\tsupervisor\t") == 1
