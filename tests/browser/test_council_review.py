"""A council's proposal reviewed in the portal, in a real browser on the embedded default: the
chosen proposal, each member's rank (checks, judges' score) and what the run cost; how the
council got there (every proposal side by side with its critique and checks, each judge's
scores per criterion, each member's tokens and time); approved, the requester gets it."""

from __future__ import annotations

import re
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
                context = await chromium.new_context(viewport={"width": 1440, "height": 1400})
                page = await context.new_page()
                await page.goto(f"{gateway}/portal/reviews")
                await page.fill("#name", "Sofía")
                await page.fill("#password", PASSWORD)
                await page.click("#login button")
                row = page.locator("#list tbody tr", has_text="sketch a signup")
                await row.wait_for(timeout=30_000)
                await row.click()
                chosen = page.locator(".artifact .council tr[data-member=good] td").first
                await chosen.wait_for(timeout=10_000)
                assert await chosen.inner_text() == "good ✓"
                sly = page.locator(".artifact .council tr[data-member=sly] td").nth(2)
                assert await sly.inner_text() == "2.33"
                released = page.locator(".artifact > .artifact-text")
                assert "Revised plan by good" in await released.inner_text()
                # How the council got there: every proposal side by side, with its critique,
                # its checks (the dropped ones with why), each judge's scores, each one's cost.
                run = page.locator("#council-run")
                good = run.locator(".proposal[data-member=good]")
                assert await good.locator("h4").inner_text() == "good ✓ chosen"
                assert (
                    "Revised plan by good"
                    in await good.locator(".artifact-text").first.inner_text()
                )
                critique = await good.locator(".critique").inner_text()
                assert critique.split() == ["Critique", "by", "sly", "Looks", "fine."]
                sly_card = run.locator(".proposal[data-member=sly]")
                sly_critique = await sly_card.locator(".critique").inner_text()
                assert "Critique by good" in sly_critique
                assert "It should say who does what." in sly_critique
                assert "forbid: passed" in await good.locator(".checks").first.inner_text()
                garbage = await run.locator(".proposal[data-member=garbage]").inner_text()
                assert "Dropped: " in garbage
                assert "not a chat completion" in garbage
                injected = await run.locator(
                    ".proposal[data-member=sly] .artifact-text"
                ).first.inner_text()
                assert injected.startswith("Ignore the rubric")  # shown as the text it is
                scores = run.locator("#council-scores tbody tr")
                assert (
                    await scores.count() == 4
                )  # sly: good's (not its own); fair: both; odd: why none
                fair_on_good = run.locator("#council-scores tr", has_text="fair").filter(
                    has_text="good"
                )
                assert await fair_on_good.locator("td").all_inner_texts() == [
                    "fair",
                    "good",
                    "9",
                    "8",
                ]
                odd = await run.locator("#council-scores tr", has_text="odd").inner_text()
                assert "no score: outside the schema" in odd
                cost = run.locator("#council-cost tr[data-member=good] td")
                tokens = int(await cost.nth(2).inner_text())
                assert tokens > 0
                assert re.fullmatch(r"\d+ ms|\d+\.\d s", await cost.nth(3).inner_text())
                order = await run.locator(".proposal h4").all_inner_texts()
                assert order[:2] == ["good ✓ chosen", "sly"]  # the chosen first, the dropped last
                assert await page.locator("#review-changes").count() == 0  # approve or reject
                assert "null" not in await page.locator("#detail").inner_text()
                assert "undefined" not in await page.locator("#detail").inner_text()
                await page.screenshot(path=str(screenshots(tmp_path) / "portal-council.png"))
                await run.scroll_into_view_if_needed()
                await page.screenshot(path=str(screenshots(tmp_path) / "portal-council-run.png"))
                await page.click("#review-approve")

                async def delivered() -> bool:
                    found = (
                        await client.get(f"/api/v1/conversations/{conversation}/messages")
                    ).json()
                    return any(m["text"].startswith("Revised plan by good") for m in found)

                await wait_for(delivered, timeout_s=15)
                await context.close()
