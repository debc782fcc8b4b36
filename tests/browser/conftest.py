"""Browser tests: Playwright for Python driving Debian's Chromium (never a downloaded one)."""

from __future__ import annotations

import importlib.util
import os
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = "/usr/bin/chromium"


@pytest.fixture
def browser_ready() -> None:
    missing = None
    if shutil.which(CHROMIUM) is None:
        missing = "no Chromium at /usr/bin/chromium (apt-get install chromium)"
    elif importlib.util.find_spec("playwright") is None:
        missing = "no playwright (install requirements/dev.txt: the README's test command)"
    if missing is not None:
        if os.environ.get("SWITCHBOARD_REQUIRE_SERVICES") == "1":
            pytest.fail(missing)
        pytest.skip(missing)


def screenshots(tmp_path: Path) -> Path:
    """Where screenshots go: ``SWITCHBOARD_SCREENSHOT_DIR`` (CI keeps them), or the test's
    own directory."""
    where = Path(os.environ.get("SWITCHBOARD_SCREENSHOT_DIR") or tmp_path / "screenshots")
    where.mkdir(parents=True, exist_ok=True)
    return where


@pytest.fixture
async def chromium(browser_ready: None) -> AsyncIterator[Any]:
    from playwright.async_api import async_playwright

    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"]
        )
        try:
            yield browser
        finally:
            await browser.close()
