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

import pytest
from sqlalchemy import func, select

from dispatch.record.models import Message
from tests.browser.conftest import screenshots
from tests.conftest import open_db
from tests.support.processes import free_port, process, wait_healthy

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
