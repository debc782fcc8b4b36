"""The portal on a tablet, worked with the keyboard alone, in a real browser on the embedded
default: nothing overflows a 768 px screen; the navigation keeps its names as icons; a
supervisor logs in, opens the conversation asking for a person, takes it over, replies, reads
who the person is and opens an activity, never touching a mouse, the focus always visible. A
list that cannot be read says so and offers to try again."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from tests.browser.conftest import screenshots
from tests.browser.test_portal import PASSWORD, cli
from tests.conftest import ADMIN
from tests.support.processes import free_port, process, wait_healthy

TABLET = {"width": 768, "height": 1024}
SUPERVISOR = "Ada Park"
MOST_TABS = 40
"""A keyboard user reaches anything on the page within this many Tab presses."""


async def tab_to(page: Any, selector: str, *, text: str | None = None) -> list[str]:
    """Press Tab until the focus is on ``selector`` (holding ``text``); every stop on the way
    shows where the focus is (past the last one, the browser's own controls come, then the
    page's first again). The stops, described."""
    stops: list[str] = []
    for _ in range(MOST_TABS):
        await page.keyboard.press("Tab")
        stop = await page.evaluate(
            """([selector, text]) => {
                const node = document.activeElement;
                const style = getComputedStyle(node);
                return {
                  end: node === document.body,  // past the page's last stop: the browser's own
                  here: node.matches(selector) && (!text || node.textContent.includes(text)),
                  shown: style.outlineStyle !== "none" && parseFloat(style.outlineWidth) > 0,
                  what: `${node.tagName.toLowerCase()}#${node.id} ${node.textContent.slice(0, 30)}`,
                };
            }""",
            [selector, text],
        )
        assert stop["shown"] or stop["end"], f"the focus is not visible on {stop['what']}"
        stops.append(stop["what"])
        if stop["here"]:
            return stops
    raise AssertionError(f"{selector} ({text}) not reached in {MOST_TABS} tabs: {stops}")


async def inside(page: Any, selector: str, within: str | None = None) -> None:
    """``selector`` is shown whole, on the screen (and inside ``within``, not clipped by it)."""
    box = await page.locator(selector).bounding_box()
    assert box is not None, f"{selector} is not shown"
    bounds = {"x": 0, "y": 0, **TABLET}
    if within is not None:
        bounds = await page.locator(within).bounding_box()
    assert box["x"] >= bounds["x"] - 0.5, f"{selector} overflows {within}: {box}"
    assert box["y"] >= bounds["y"] - 0.5, f"{selector} overflows {within}: {box}"
    right, bottom = bounds["x"] + bounds["width"], bounds["y"] + bounds["height"]
    assert box["x"] + box["width"] <= right + 0.5, f"{selector} overflows {within}: {box}"
    assert box["y"] + box["height"] <= bottom + 0.5, f"{selector} overflows {within}: {box}"


async def test_a_supervisor_works_the_portal_on_a_tablet_with_the_keyboard_alone(
    make_env: Callable[..., dict[str, str]], sqlite_url: str, tmp_path: Path, chromium: Any
) -> None:
    port = free_port()
    gateway = f"http://127.0.0.1:{port}"
    env = make_env(database_url=sqlite_url, port=port)
    log = tmp_path / "gateway.log"
    shots = screenshots(tmp_path)
    with process(["serve"], env, tmp_path, log) as served:
        wait_healthy(gateway, served, log)
        cli(["users", "add", SUPERVISOR, "--role", "supervisor"], env, tmp_path)
        cli(["users", "set-password", SUPERVISOR], env, tmp_path, PASSWORD + "\n")
        async with httpx.AsyncClient(base_url=gateway, headers=ADMIN, timeout=10) as client:
            for n, (who, text) in enumerate(
                [("bruno", "echo buenos días"), ("mia", "I want to talk to a human")]
            ):
                body = {"id": f"t-{n}", "conversation": who, "sender": who, "text": text}
                assert (await client.post("/api/v1/messages", json=body)).status_code == 202

        context = await chromium.new_context(viewport=TABLET, has_touch=True)
        page = await context.new_page()
        # The first read of the inbox fails: the list says so and offers to try again.
        unavailable = '{"error": "unavailable", "detail": "the database is unavailable"}'
        await page.route(
            "**/api/v1/inbox?*",
            lambda route: route.fulfill(
                status=503, body=unavailable, content_type="application/json"
            ),
        )
        await page.goto(f"{gateway}/portal")
        # The login form has the focus: type, Tab, type, Enter.
        await page.locator("#name").wait_for()
        assert await page.evaluate("document.activeElement.id") == "name"
        await page.keyboard.type(SUPERVISOR)
        await page.keyboard.press("Tab")
        await page.keyboard.type(PASSWORD)
        await page.keyboard.press("Enter")
        failed = page.locator("#inbox [role=alert]", has_text="Could not load the conversations")
        await failed.wait_for(timeout=10_000)
        await tab_to(page, "#inbox [role=alert] button", text="Try again")
        await page.unroute("**/api/v1/inbox?*")  # the server answers again
        await page.keyboard.press("Enter")
        await page.locator("#inbox .conv").first.wait_for(timeout=10_000)
        await page.locator("#inbox [data-badge=person]").wait_for(timeout=10_000)

        # Nothing wider than the screen; the navigation's icons keep their names.
        assert await page.evaluate("document.documentElement.scrollWidth") <= TABLET["width"]
        for name in ["Conversations", "Approvals", "Reviews", "Activity", "Workers & queue"]:
            assert await page.get_by_role("link", name=name).is_visible()
        await inside(page, "#inbox")
        await inside(page, "#conversation")

        # To the conversation asking for a person, then take it over and answer.
        await tab_to(page, "#inbox .conv", text="mia")
        await page.keyboard.press("Enter")
        await page.locator("#transcript .msg.in", has_text="talk to a human").wait_for(
            timeout=10_000
        )
        assert "/portal/conversations/" in page.url
        await tab_to(page, "#take-over")
        await page.keyboard.press("Enter")
        # The hands go to the reply box once the take-over is done (a live update may draw
        # the box a moment before: its focus follows the action's end).
        await page.wait_for_function(
            "document.activeElement && document.activeElement.id === 'reply-text'",
            timeout=10_000,
        )
        await page.keyboard.type("Hi Mia, Ada here. How can I help?")
        await page.keyboard.press("Enter")
        await page.locator("#transcript .msg.out.human", has_text="Ada here").wait_for(
            timeout=10_000
        )
        assert await page.locator("#inbox [data-badge=person]").count() == 0
        await page.screenshot(path=str(shots / "portal-tablet-conversation.png"))

        # Who the person is: a panel over the conversation, opened and closed by keyboard.
        await tab_to(page, "#about-toggle")
        await page.keyboard.press("Enter")
        await page.locator("#person dd", has_text="mia").wait_for(timeout=10_000)
        await inside(page, "#person")
        assert await page.evaluate("document.activeElement.id") == "about-close"
        assert await page.evaluate("document.documentElement.scrollWidth") <= TABLET["width"]
        await page.screenshot(path=str(shots / "portal-tablet.png"))
        await page.keyboard.press("Escape")
        await page.locator("#person").wait_for(state="hidden", timeout=5_000)
        assert await page.evaluate("document.activeElement.id") == "about-toggle"

        # An activity: from the navigation to its row, opened beside the list, in view.
        await tab_to(page, "nav a[data-view=activity]")
        await page.keyboard.press("Enter")
        await page.locator("#list tbody tr").first.wait_for(timeout=10_000)
        await tab_to(page, "#list tbody tr", text="talk to a human")
        await page.keyboard.press("Enter")
        await page.locator("#detail-title").wait_for(timeout=10_000)
        await inside(page, "#detail-title")
        for column in ["Request", "Asked by", "Status"]:  # what a row is, on a narrow screen too
            await inside(page, f"#list th:text-is('{column}')", within="#list")
        assert await page.locator("#detail li", has_text="· mia").count() >= 1  # people by name
        assert await page.locator("#detail li", has_text="user:").count() == 0
        assert "/portal/activity/" in page.url
        assert await page.evaluate("document.documentElement.scrollWidth") <= TABLET["width"]
        await page.screenshot(path=str(shots / "portal-tablet-activity.png"))
        await context.close()
