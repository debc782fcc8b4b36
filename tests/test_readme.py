"""The README documents every setting and keeps exactly two set-up commands."""

from __future__ import annotations

import re
from pathlib import Path

from gateway.settings import Settings

README = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")


def test_every_setting_is_in_the_readme() -> None:
    missing = [row.variable for row in Settings().describe() if f"`{row.variable}`" not in README]
    assert missing == []


def test_two_setup_commands_and_ci_runs_the_second() -> None:
    setup = README.split("## Set up", 1)[1].split("\n## ", 1)[0]
    commands = re.findall(r"```sh\n(.+?)\n```", setup, flags=re.S)
    assert len(commands) == 2
    assert commands[0].endswith("switchboard serve")
    # Both install the lock, and the project itself without resolving anything more.
    assert "pip install -r requirements/app.txt && " in commands[0]
    assert "pip install -r requirements/dev.txt && " in commands[1]
    for command in commands:
        assert "pip install --no-deps --no-build-isolation -e . && " in command
        assert "pip install -e" not in command
    assert "`.venv/bin/python scripts/lock.py --upgrade`" in setup
    ci = (Path(__file__).resolve().parent.parent / ".ci" / "run").read_text()
    assert commands[1] in ci
