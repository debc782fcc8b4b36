"""An activity is created in one place: :meth:`dispatch.record.activities.ActivityLog.open`.

The AST of every product module is walked: an ``Activity(...)`` row built anywhere else (chat,
the API, a workflow step, a takeover, the system agent each did it by hand) fails this test.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("dispatch", "channels", "workers", "gateway", "migrations")
OWNER = Path("dispatch/record/activities.py")


def _built(tree: ast.AST) -> list[int]:
    return [
        node.lineno
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and (
            (isinstance(node.func, ast.Name) and node.func.id == "Activity")
            or (isinstance(node.func, ast.Attribute) and node.func.attr == "Activity")
        )
    ]


def test_an_activity_row_is_built_only_by_its_owner() -> None:
    found = {
        path.relative_to(ROOT): _built(ast.parse(path.read_text(encoding="utf-8")))
        for package in PACKAGES
        for path in sorted((ROOT / package).rglob("*.py"))
    }
    elsewhere = [
        f"{path}:{line}" for path, lines in found.items() if path != OWNER for line in lines
    ]
    assert elsewhere == []
    assert found[OWNER], "the owner builds it"


def test_the_walk_finds_a_row_built_by_hand() -> None:
    assert _built(ast.parse("row = Activity(agent_name='a')\nx = models.Activity()")) == [1, 2]
