"""`.ci/summary.py`, CI's closing line: it counts every stage, and a green line means tests ran."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

SUMMARY = Path(__file__).resolve().parents[2] / ".ci" / "summary.py"


def _junit(tests: int, failures: int = 0, errors: int = 0, skipped: int = 0) -> str:
    return (
        f'<?xml version="1.0"?><testsuites><testsuite name="s" tests="{tests}" '
        f'failures="{failures}" errors="{errors}" skipped="{skipped}"/></testsuites>'
    )


def _run(results: Path, stages: list[tuple[str, str, dict[str, str]]]) -> tuple[int, list[str]]:
    """Each stage: name, its status line (``<exit> <kind>``), and its XML files by suffix."""
    for name, status, reports in stages:
        for suffix, xml in reports.items():
            (results / f"{name}{suffix}.xml").write_text(xml)
        (results / f"{name}.status").write_text(status)
    done = subprocess.run(
        [sys.executable, str(SUMMARY), str(results)],
        capture_output=True,
        text=True,
        check=False,
        timeout=30,
    )
    return done.returncode, done.stdout.splitlines()


def test_every_stage_is_summed_into_the_last_line(tmp_path: Path) -> None:
    code, lines = _run(
        tmp_path,
        [
            ("pytest", "0 tests", {"": _junit(10, skipped=1)}),
            ("fuzz", "0 tests", {"-admin": _junit(3), "-actions": _junit(2)}),
            ("figures", "0 check", {}),
        ],
    )
    assert code == 0
    assert lines[-1] == "15 passed, 0 failed"
    assert "  pytest: 9 passed, 0 failed, 1 skipped" in lines


def test_a_failure_anywhere_is_counted_and_fails_the_run(tmp_path: Path) -> None:
    code, lines = _run(
        tmp_path,
        [
            ("pytest", "1 tests", {"": _junit(10, failures=1, errors=1)}),
            ("figures", "2 check", {}),
        ],
    )
    assert code == 1
    assert lines[-1] == "8 passed, 3 failed"


def test_a_runner_that_ran_nothing_or_hid_its_failure_fails(tmp_path: Path) -> None:
    code, lines = _run(
        tmp_path,
        [
            ("pytest", "0 tests", {"": _junit(4)}),
            ("empty", "0 tests", {"": _junit(0)}),
            ("missing", "0 tests", {}),
            ("crashed", "3 tests", {"": _junit(2)}),
        ],
    )
    assert code == 1
    assert lines[-1] == "6 passed, 3 failed"
    assert "  empty: 0 passed, 1 failed (ran no test)" in lines
    assert "  missing: 0 passed, 1 failed (ran no test)" in lines
    assert "  crashed: 2 passed, 1 failed (exited 3 with no failing test reported)" in lines


def test_no_stage_at_all_is_not_green(tmp_path: Path) -> None:
    code, lines = _run(tmp_path, [])
    assert (code, lines[-1]) == (1, "0 passed, 0 failed")
