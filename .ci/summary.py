"""Count every stage of `.ci/run` and print one closing line: ``N passed, N failed``.

Each stage left ``<results>/<stage>.status`` (its exit status and its kind) and, if it is a
test runner, JUnit XML files ``<results>/<stage>*.xml``. A test runner's stage counts its test
cases; a stage that is a single check (a script printing figures) counts as one test. A runner
that ran no test, or that exited non-zero while reporting no failure, counts as a failure: a
green line means the tests it counts ran and passed. Exits non-zero unless everything passed.

    python .ci/summary.py .ci/results
"""

from __future__ import annotations

import sys
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path


@dataclass
class Count:
    passed: int = 0
    failed: int = 0
    skipped: int = 0
    note: str = ""


def _junit(paths: list[Path]) -> Count:
    count = Count()
    for path in paths:
        root = ET.parse(path).getroot()  # noqa: S314 - our own stages' reports
        suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
        for suite in suites:
            tests = int(suite.get("tests", 0))
            failed = int(suite.get("failures", 0)) + int(suite.get("errors", 0))
            skipped = int(suite.get("skipped", 0))
            count.failed += failed
            count.skipped += skipped
            count.passed += tests - failed - skipped
    return count


def _stage(results: Path, status_file: Path) -> tuple[str, Count]:
    name = status_file.stem
    exit_status, kind = status_file.read_text().split()
    reports = sorted(results.glob(f"{name}*.xml"))
    if kind == "check":
        passed = exit_status == "0"
        return name, Count(passed=int(passed), failed=int(not passed))
    count = _junit(reports)
    if count.passed + count.failed == 0:
        count.failed += 1
        count.note = "ran no test"
    elif exit_status != "0" and count.failed == 0:
        count.failed += 1
        count.note = f"exited {exit_status} with no failing test reported"
    return name, count


def main() -> int:
    results = Path(sys.argv[1])
    total = Count()
    for status_file in sorted(results.glob("*.status"), key=lambda p: p.stat().st_mtime_ns):
        name, count = _stage(results, status_file)
        skipped = f", {count.skipped} skipped" if count.skipped else ""
        note = f" ({count.note})" if count.note else ""
        print(f"  {name}: {count.passed} passed, {count.failed} failed{skipped}{note}")
        total.passed += count.passed
        total.failed += count.failed
        total.skipped += count.skipped
    if total.skipped:
        print(f"  skipped in all: {total.skipped}")
    print(f"{total.passed} passed, {total.failed} failed")
    return 0 if total.failed == 0 and total.passed > 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
