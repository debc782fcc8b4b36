"""A supervisor works the portal's inbox all day, in a real browser, on the embedded default:
a visitor asking for a person surfaces on top with a badge within 2 s, with no reload; new
messages never move a reader who scrolled up; an activity opens inside the viewport; the
visitor sees the supervisor's name on their reply; an idle portal asks the server nothing."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from tests.browser.conftest import screenshots
from tests.browser.test_portal import PASSWORD, cli
from tests.conftest import ADMIN
from tests.support.flow import wait_for
from tests.support.processes import free_port, process, wait_healthy

SUPERVISOR = "Sofia Ruiz"
NOTIFICATIONS = """
window.shown = [];
window.Notification = class {
  constructor(title, options) { window.shown.push([title, (options || {}).body || ""]); }
  static get permission() { return "granted"; }
  static requestPermission() { return Promise.resolve("granted"); }
};
"""
VIEWPORT = {"width": 1280, "height": 800}


async def say(client: httpx.AsyncClient, text: str, n: int) -> None:
    """A REST user ("lena") writes in her conversation."""
    body = {"id": f"long-{n}", "conversation": "lena", "sender": "lena", "text": text}
    assert (await client.post("/api/v1/messages", json=body)).status_code == 202


async def test_a_supervisor_works_the_inbox_live(
    make_env: Callable[..., dict[str, str]], sqlite_url: str, tmp_path: Path, chromium: Any
) -> None:
    port = free_port()
    gateway = f"http://127.0.0.1:{port}"
    # "lena" writes 23 messages in a row: her rate is not what is tried here.
    env = make_env(database_url=sqlite_url, port=port, sender_rate_per_s=100, sender_burst=100)
    log = tmp_path / "gateway.log"
    shots = screenshots(tmp_path)
    with process(["serve"], env, tmp_path, log) as served:
        wait_healthy(gateway, served, log)
        cli(["users", "add", SUPERVISOR, "--role", "supervisor", "--rest", "sofia"], env, tmp_path)
        cli(["users", "set-password", SUPERVISOR], env, tmp_path, PASSWORD + "\n")

        portal_context = await chromium.new_context(viewport=VIEWPORT)
        # The supervisor allowed notifications; what the page shows is recorded.
        await portal_context.add_init_script(NOTIFICATIONS)
        portal = await portal_context.new_page()
        asked: list[str] = []
        portal.on("request", lambda request: asked.append(request.url))
        await portal.goto(f"{gateway}/portal")
        await portal.fill("#name", SUPERVISOR)
        await portal.fill("#password", PASSWORD)
        await portal.click("#login button")
        await portal.locator("#inbox").wait_for(timeout=10_000)
        assert portal.url.endswith("/portal/conversations")

        # A Spanish visitor on the demo page (the widget opens by itself, with a greeting).
        visitor_context = await chromium.new_context(
            locale="es-ES", viewport={"width": 1000, "height": 760}
        )
        visitor = await visitor_context.new_page()
        await visitor.goto(gateway)
        widget = visitor.locator("switchboard-widget[data-switchboard-widget]")
        await widget.locator("[data-greeting]", has_text="¡Hola!").wait_for(timeout=10_000)
        box = widget.locator("textarea")
        await box.fill("factura a ACME por 120 €")
        await box.press("Enter")
        await widget.locator(".row.bot .bubble", has_text="Factura INV-0001 para ACME").wait_for(
            timeout=15_000
        )

        # "humano": on top of the supervisor's list, with a badge, within 2 s, no reload.
        await box.fill("quiero hablar con un humano")
        started = time.monotonic()
        await box.press("Enter")
        top = portal.locator("#inbox .conv").first
        await top.locator("[data-badge=person]").wait_for(timeout=2_000)
        assert time.monotonic() - started <= 2.0
        assert await portal.locator("nav #nav-person").inner_text() == "1"
        notified = await portal.evaluate("window.shown")
        assert len(notified) == 1
        assert notified[0][0] == "A person is asked for"
        assert "web visitor" in notified[0][1]
        await portal.screenshot(path=str(shots / "portal-inbox.png"))

        # A long conversation, read from its top while three new messages arrive.
        async with httpx.AsyncClient(base_url=gateway, headers=ADMIN, timeout=10) as client:
            for n in range(20):
                await say(client, f"echo line {n}", n)
            lena = portal.locator("#inbox .conv", has_text="lena")
            await lena.wait_for(timeout=10_000)
            await lena.click()
            transcript = portal.locator("#transcript")
            await transcript.locator(".msg.out", has_text="line 19").wait_for(timeout=15_000)
            await portal.evaluate("document.getElementById('transcript').scrollTop = 0")
            for n in range(20, 23):
                await say(client, f"echo line {n}", n)
            newer = portal.locator("#newer")
            await newer.wait_for(state="visible", timeout=10_000)
            await transcript.locator(".msg.out", has_text="line 22").wait_for(
                state="attached", timeout=15_000
            )
            assert await portal.evaluate("document.getElementById('transcript').scrollTop") == 0
            assert "new message" in await newer.inner_text()
            await newer.click()
            await newer.wait_for(state="hidden", timeout=5_000)

        # The visitor's conversation: taken over; the visitor sees who answers.
        await portal.locator("#inbox .conv", has_text="web visitor").first.click()
        await portal.locator("#take-over").click()
        await portal.locator("#reply-text").wait_for(timeout=10_000)
        await portal.fill("#reply-text", "Hola, soy Sofía. ¿En qué te ayudo?")
        await portal.locator("#reply-text").press("Enter")
        human = widget.locator(".row.human", has_text="soy Sofía")
        await human.wait_for(timeout=15_000)
        assert await human.locator(".who").inner_text() == SUPERVISOR
        assert await human.locator(".avatar").inner_text() == "SR"
        assert await widget.locator(".row.bot .bubble", has_text="Una persona atiende").count() == 1
        await portal.locator("#transcript .msg.out.human", has_text="soy Sofía").wait_for(
            timeout=10_000
        )
        assert await portal.locator("#inbox .conv [data-badge=person]").count() == 0  # handled
        # What was on its way when first drawn shows where it got to, without a reload.
        notice = portal.locator("#transcript .msg.out.bot", has_text="Una persona atiende")
        await notice.locator(".meta", has_text="delivered").wait_for(timeout=10_000)
        await portal.screenshot(path=str(shots / "portal-conversation.png"))
        await visitor.screenshot(path=str(shots / "widget-human.png"))

        # An activity opens beside the list, inside the viewport, at its own address.
        await portal.locator("nav a[data-view=activity]").click()
        row = portal.locator("#list tbody tr", has_text="factura a ACME")
        await row.click()
        title = portal.locator("#detail-title")
        await title.wait_for(timeout=10_000)

        async def placed() -> Any:  # once drawn (a live update may draw it again meanwhile)
            return await title.bounding_box()

        place = await wait_for(placed, timeout_s=5)
        assert place["y"] >= 0
        assert place["y"] + place["height"] <= VIEWPORT["height"]
        assert place["x"] + place["width"] <= VIEWPORT["width"]
        assert "/portal/activity/" in portal.url
        assert "Create an invoice for a client" in await title.inner_text()
        # Payload as labelled fields: an amount reads as one, not as JSON.
        amount = portal.locator("#detail dt:text-is('amount') + dd").first
        assert await amount.inner_text() == "120 EUR"
        await portal.screenshot(path=str(shots / "portal-activity.png"))
        await portal.reload()  # its address opens it again
        await portal.locator("#detail-title").wait_for(timeout=10_000)

        # Idle: the page asks the server nothing (changes would come over its socket).
        await portal.wait_for_timeout(1_000)
        asked.clear()
        await portal.wait_for_timeout(10_000)
        assert asked == []
        await portal_context.close()
        await visitor_context.close()
