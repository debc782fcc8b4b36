"""The chat widget in a real browser (Playwright driving Debian's Chromium): a visitor on a page
of another origin chats with a real gateway and worker, and nothing typed is lost or doubled
when the gateway goes away and comes back mid-conversation."""

from __future__ import annotations

import contextlib
import http.server
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from dispatch.policy.catalog import load_catalog
from dispatch.record.models import Message
from tests.browser.conftest import screenshots
from tests.browser.test_portal import PASSWORD, cli
from tests.conftest import open_db
from tests.support.flow import wait_for
from tests.support.languages import foreign
from tests.support.processes import free_port, process, wait_healthy
from workers.handlers import BUILTIN_HANDLER_NAMES

pytestmark = pytest.mark.services


HOST_PAGE = """<!doctype html><html><head><meta charset="utf-8"><title>ACME shop</title>
<style>* {{ font-family: serif !important; color: red !important; font-size: 40px; }}
button {{ display: none; }} section {{ display: none !important; }}</style></head>
<body><h1>ACME shop</h1><p>Our products.</p>
<script src="{gateway}/widget.js" data-switchboard-url="{gateway}" data-title="ACME help" async>
</script></body></html>"""


@contextlib.contextmanager
def host_site(gateway: str) -> Iterator[str]:
    """A page of another origin that embeds the widget with one tag, and CSS meant to break it."""
    page = HOST_PAGE.format(gateway=gateway).encode()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(page)))
            self.end_headers()
            self.wfile.write(page)

        def log_message(self, format: str, *args: Any) -> None:
            return

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()


async def test_a_visitor_on_another_site_chats_and_nothing_is_lost_when_the_gateway_drops(
    make_env: Callable[..., dict[str, str]],
    pg_migrated: str,
    redis_url: str,
    tmp_path: Path,
    chromium: Any,
) -> None:
    port = free_port()
    gateway = f"http://127.0.0.1:{port}"
    with host_site(gateway) as site:
        env = make_env(
            database_url=pg_migrated, redis_url=redis_url, port=port, widget_origins=site
        )
        gateway_log, worker_log = tmp_path / "gateway.log", tmp_path / "worker.log"
        with process(["worker"], env, tmp_path, worker_log):
            with process(["serve"], env, tmp_path, gateway_log) as served:
                wait_healthy(gateway, served, gateway_log)
                page = await chromium.new_page(viewport={"width": 1100, "height": 760})
                await page.goto(site)
                widget = page.locator("switchboard-widget[data-switchboard-widget]")
                launcher = widget.locator("button.launcher")
                await launcher.click()
                box = widget.locator("textarea")
                await box.fill("echo hello <b>from</b> the widget https://example.com/x")
                await box.press("Enter")
                reply = widget.locator(".row.bot .bubble").filter(has_text="hello <b>from</b>")
                await reply.wait_for(timeout=15_000)
                # Text, never HTML; links clickable; the host page's CSS did not reach in.
                assert await reply.locator("b").count() == 0
                link = reply.locator("a")
                assert await link.get_attribute("href") == "https://example.com/x"
                assert await link.get_attribute("rel") == "noopener noreferrer"
                color = await reply.evaluate("e => getComputedStyle(e).color")
                assert color != "rgb(255, 0, 0)"
                assert await widget.locator(".panel").is_visible()
                mine = widget.locator(".row.me").last
                await mine.locator(".mark", has_text="✓✓").wait_for(timeout=5_000)
                assert await mine.locator("time").inner_text()
                await page.screenshot(path=str(screenshots(tmp_path) / "widget.png"))
            # The gateway is gone: what the visitor writes now waits in the page.
            await box.fill("echo written while offline")
            await box.press("Enter")
            await widget.locator(".state", has_text="reconnecting").wait_for(timeout=10_000)
            with process(["serve"], env, tmp_path, gateway_log) as served:
                wait_healthy(gateway, served, gateway_log)
                offline = widget.locator(".row.bot .bubble", has_text="written while offline")
                await offline.wait_for(timeout=30_000)
                await page.wait_for_timeout(1_000)  # a doubled reply would have come by now
                assert await offline.count() == 1
                assert (
                    await widget.locator(".row.me", has_text="written while offline").count() == 1
                )
                # A reload shows the same conversation (the session kept in localStorage).
                await page.reload()
                widget = page.locator("switchboard-widget[data-switchboard-widget]")
                await widget.locator("button.launcher").click()
                await widget.locator(".row.bot .bubble", has_text="written while offline").wait_for(
                    timeout=10_000
                )
    async with open_db(pg_migrated) as sessions, sessions() as session:
        stored = await session.scalar(
            select(func.count())
            .select_from(Message)
            .where(Message.channel == "webchat", Message.text == "echo written while offline")
        )
    assert stored == 1  # re-sent after the reconnect, stored once


async def test_a_spanish_visitor_is_answered_in_spanish_and_buttons_send_their_label(
    make_env: Callable[..., dict[str, str]], sqlite_url: str, tmp_path: Path, chromium: Any
) -> None:
    """On the embedded default (the README's first command), a browser set to Spanish: help
    comes in Spanish, a sentence and buttons, which send their label (shown as typed, never a
    number), and a bare "estado" asks which request, in Spanish too."""
    port = free_port()
    gateway = f"http://127.0.0.1:{port}"
    env = make_env(database_url=sqlite_url, port=port)
    log = tmp_path / "gateway.log"
    with process(["serve"], env, tmp_path, log) as served:
        wait_healthy(gateway, served, log)
        context = await chromium.new_context(locale="es-ES", viewport={"width": 360, "height": 740})
        page = await context.new_page()
        await page.goto(gateway)  # the demo page: the widget opens by itself
        widget = page.locator("switchboard-widget[data-switchboard-widget]")
        box = widget.locator("textarea")
        await box.fill("hola, ¿qué puedes hacer?")
        await box.press("Enter")
        # On a chat with buttons, help is a short sentence and a button per action.
        menu = widget.locator(".row.bot .bubble", has_text="Esto es lo que puedo hacer")
        await menu.wait_for(timeout=15_000)
        assert await menu.inner_text() == (
            "Esto es lo que puedo hacer: toca una opción o escribe lo que necesites."
        )
        assert await widget.locator(".choices button", has_text="crear una factura").count() == 1
        await widget.locator(".choices button", has_text="estado").first.click()
        asked = widget.locator(".row.bot .bubble", has_text="¿Qué solicitud?")
        await asked.wait_for(timeout=15_000)
        assert await widget.locator(".row.me .bubble", has_text="estado").count() == 1
        assert await widget.locator(".choices button:enabled").count() == 0  # answered
        await box.fill("1")
        await box.press("Enter")
        status = widget.locator(".row.bot .bubble", has_text="Solicitud #1")
        await status.wait_for(timeout=15_000)
        assert "completada" in await status.inner_text()
        await page.screenshot(path=str(screenshots(tmp_path) / "widget-phone-es.png"))
        await context.close()


async def test_a_reload_shows_the_conversation_as_it_was_marks_and_buttons_included(
    make_env: Callable[..., dict[str, str]], sqlite_url: str, tmp_path: Path, chromium: Any
) -> None:
    """The greeting when the chat opens, a close icon on the launcher while it is open, and after
    a reload: ✓✓ on what was answered, and the last reply's buttons, still to be chosen."""
    port = free_port()
    gateway = f"http://127.0.0.1:{port}"
    env = make_env(database_url=sqlite_url, port=port)
    log = tmp_path / "gateway.log"
    with process(["serve"], env, tmp_path, log) as served:
        wait_healthy(gateway, served, log)
        context = await chromium.new_context(
            locale="en-GB", viewport={"width": 1000, "height": 760}
        )
        page = await context.new_page()
        await page.goto(gateway)  # the demo page: the widget opens by itself
        widget = page.locator("switchboard-widget[data-switchboard-widget]")
        await widget.locator("[data-greeting]", has_text="How can I help?").wait_for(timeout=10_000)
        launcher = widget.locator(".launcher")
        assert await launcher.get_attribute("aria-label") == "Close chat: Switchboard"
        await widget.locator("textarea").fill("help")
        await widget.locator("textarea").press("Enter")
        await widget.locator(".choices button", has_text="create an invoice").wait_for(
            timeout=15_000
        )
        await widget.locator(".row.me .mark", has_text="✓✓").wait_for(timeout=10_000)

        await page.reload()
        await widget.locator(".row.me .bubble", has_text="help").wait_for(timeout=10_000)
        assert await widget.locator(".row.me .mark").inner_text() == "✓✓"
        again = widget.locator(".choices button:enabled", has_text="create an invoice")
        await again.wait_for(timeout=10_000)
        assert await widget.locator("[data-greeting]").count() == 0  # the history instead
        await again.click()  # a restored button works as it did
        await widget.locator(".row.bot .bubble", has_text="Which client").wait_for(timeout=15_000)
        await widget.locator(".panel header button").click()  # closed: the chat icon again
        assert await launcher.get_attribute("aria-label") == "Open chat: Switchboard"
        await context.close()


SPANISH_DEMO = [
    # (what the visitor types, a reply it gets: None when the reply is any Spanish one)
    ("hola, ¿qué puedes hacer?", "Esto es lo que puedo hacer"),
    ("necesito algo rarísimo", None),
    ("repite hola", "hola"),
    ("factura a ACME por 120 €", "Factura INV-0001 para ACME: 120 EUR"),
    ("crea una factura", "¿Para qué cliente es la factura?"),
    ("Globex", "Factura INV-0002 para Globex"),
    ("abre una incidencia: la impresora no funciona", "Incidencia T-0001 abierta"),
    ("estado", "¿Qué solicitud?"),
    ("1", "Solicitud #1"),
    ("cancelar 1", "solo se puede cancelar una que no haya empezado"),
    ("reembolsa la factura 1", "espera a que un supervisor decida en el portal"),
]


async def test_a_spanish_visitors_whole_demo_is_in_spanish(
    make_env: Callable[..., dict[str, str]], sqlite_url: str, tmp_path: Path, chromium: Any
) -> None:
    """The README's first command, a browser set to Spanish, every flow of the demo — help,
    not understood, echo, invoices (in one message, and asked for), a ticket, status, cancel, a
    refund that waits for a supervisor's approval in the portal, a person asked for who takes
    over and hands back, a workflow — and not one reply in English."""
    port = free_port()
    gateway = f"http://127.0.0.1:{port}"
    env = make_env(database_url=sqlite_url, port=port, sender_rate_per_s=100, sender_burst=100)
    log = tmp_path / "gateway.log"
    with process(["serve"], env, tmp_path, log) as served:
        wait_healthy(gateway, served, log)
        cli(["users", "add", "Sofía Ruiz", "--role", "supervisor"], env, tmp_path)
        cli(["users", "set-password", "Sofía Ruiz"], env, tmp_path, PASSWORD + "\n")
        context = await chromium.new_context(locale="es-ES", viewport={"width": 420, "height": 900})
        page = await context.new_page()
        await page.goto(gateway)
        widget = page.locator("switchboard-widget[data-switchboard-widget]")
        await widget.locator("[data-greeting]", has_text="¡Hola!").wait_for(timeout=10_000)
        box = widget.locator("textarea")
        replies = widget.locator(".row.bot .bubble, .row.human .bubble")

        async def say(text: str, expect: str | None) -> None:
            """Send ``text``; wait for a new reply (one holding ``expect``)."""
            before = await replies.count()
            await box.fill(text)
            await box.press("Enter")
            await replies.nth(before).wait_for(timeout=15_000)

            async def answered() -> bool | None:
                texts = await replies.all_inner_texts()
                return True if expect is None or any(expect in t for t in texts[before:]) else None

            try:
                await wait_for(answered, timeout_s=15)
            except AssertionError:
                got = (await replies.all_inner_texts())[before:]
                raise AssertionError(f"{text!r}: no reply with {expect!r}, only {got}") from None

        for text, expect in SPANISH_DEMO:
            await say(text, expect)

        # The supervisor, in the portal (its API, with the session a login gives): approves the
        # refund, then takes the conversation over when the visitor asks for a person.
        async with httpx.AsyncClient(base_url=gateway, timeout=10) as portal:
            login = {"name": "Sofía Ruiz", "password": PASSWORD}
            csrf = {"X-CSRF-Token": (await portal.post("/portal/login", json=login)).json()["csrf"]}
            waiting = (await portal.get("/api/v1/activities?status=awaiting_approval")).json()
            [refund] = waiting["items"]
            approved = await portal.post(f"/api/v1/activities/{refund['id']}/approve", headers=csrf)
            assert approved.status_code == 200, approved.text
            await widget.locator(".row.bot .bubble", has_text="aprobó la solicitud").wait_for(
                timeout=15_000
            )
            await say("quiero hablar con un humano", "He pedido que te atienda una persona")
            [row] = [r for r in (await portal.get("/api/v1/inbox")).json() if r["wants_person"]]
            here = f"/api/v1/conversations/{row['id']}"
            assert (await portal.post(f"{here}/takeover", headers=csrf)).status_code == 200
            await widget.locator(".row.bot .bubble", has_text="Una persona atiende").wait_for(
                timeout=15_000
            )
            said = {"text": "Hola, soy Sofía: ya está reembolsada."}
            assert (await portal.post(f"{here}/reply", json=said, headers=csrf)).status_code == 202
            await widget.locator(".row.human .bubble", has_text="soy Sofía").wait_for(
                timeout=15_000
            )
            assert (await portal.post(f"{here}/handback", headers=csrf)).status_code == 200
            await widget.locator(".row.bot .bubble", has_text="Vuelves a hablar").wait_for(
                timeout=15_000
            )
        await say("dar de alta a ACME", "Empezada")
        await widget.locator(".row.bot .bubble", has_text="completada").last.wait_for(
            timeout=30_000
        )

        texts = [await bubble.inner_text() for bubble in await replies.all()]
        catalog = load_catalog(None, BUILTIN_HANDLER_NAMES)
        wrong = {text: found for text in texts if (found := foreign(text, "es", catalog))}
        assert wrong == {}
        assert len(texts) >= 18
        await page.screenshot(
            path=str(screenshots(tmp_path) / "widget-demo-es.png"), full_page=True
        )
        await context.close()
