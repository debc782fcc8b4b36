"""A council's proposal reviewed in the portal, in a real browser on the embedded default: the
chosen proposal, each member's rank (checks, judges' score) and what the run cost; approved,
the requester gets it."""

from __future__ import annotations

from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import Any

import httpx

from tests.browser.conftest import screenshots
from tests.browser.test_portal import PASSWORD, cli
from tests.conftest import ADMIN
from tests.integration.test_councils import COUNCIL, member
from tests.support.flow import wait_for
from tests.support.llm_api import LlmApi
from tests.support.processes import free_port, process, wait_healthy


async def test_a_supervisor_reviews_a_councils_proposal_and_releases_it(
    make_env: Callable[..., dict[str, str]], sqlite_url: str, tmp_path: Path, chromium: Any
) -> None:
    with LlmApi(scenario=member) as llm:
        bundled = resources.files("dispatch.policy").joinpath("default_catalog.toml").read_text()
        catalog = tmp_path / "catalog.toml"
        catalog.write_text(bundled + COUNCIL.format(url=llm.base_url), encoding="utf-8")
        port = free_port()
        gateway = f"http://127.0.0.1:{port}"
        env = make_env(database_url=sqlite_url, port=port, catalog=catalog)
        log = tmp_path / "gateway.log"
        cli(["users", "add", "Sofía", "--role", "supervisor"], env, tmp_path)
        cli(["users", "set-password", "Sofía"], env, tmp_path, PASSWORD + "\n")
        with process(["serve"], env, tmp_path, log) as served:
            wait_healthy(gateway, served, log)
            async with httpx.AsyncClient(base_url=gateway, timeout=10, headers=ADMIN) as client:
                body = {
                    "id": "d1",
                    "conversation": "dee",
                    "sender": "dee",
                    "text": "sketch a signup",
                }
                conversation = (await client.post("/api/v1/messages", json=body)).json()[
                    "conversation_id"
                ]
                context = await chromium.new_context(viewport={"width": 1280, "height": 900})
                page = await context.new_page()
                await page.goto(f"{gateway}/portal/reviews")
                await page.fill("#name", "Sofía")
                await page.fill("#password", PASSWORD)
                await page.click("#login button")
                row = page.locator("#list tbody tr", has_text="sketch a signup")
                await row.wait_for(timeout=30_000)
                await row.click()
                chosen = page.locator(".council tr[data-member=good] td").first
                await chosen.wait_for(timeout=10_000)
                assert await chosen.inner_text() == "good ✓"
                sly = page.locator(".council tr[data-member=sly] td").nth(2)
                assert await sly.inner_text() == "2.33"
                assert "Revised plan by good" in await page.locator(".artifact-text").inner_text()
                assert "null" not in await page.locator("#detail").inner_text()
                await page.screenshot(path=str(screenshots(tmp_path) / "portal-council.png"))
                await page.click("#review-approve")

                async def delivered() -> bool:
                    found = (
                        await client.get(f"/api/v1/conversations/{conversation}/messages")
                    ).json()
                    return any(m["text"].startswith("Revised plan by good") for m in found)

                await wait_for(delivered, timeout_s=15)
                await context.close()
