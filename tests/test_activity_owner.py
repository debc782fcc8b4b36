"""An activity's life has one owner, :class:`dispatch.record.activities.ActivityLog`: it is
opened by :meth:`~ActivityLog.open` and moved by its named moves and conditional updates.

The AST of every product module is walked: an ``Activity(...)`` row built anywhere else (chat,
the API, a workflow step, a takeover, the system agent each did it by hand), or a ``.status``
assigned anywhere else (approvals did, five times), fails this test. A workflow run's own status
(``WorkflowStatus``) is not an activity's.
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


def _status_written(tree: ast.AST) -> list[int]:
    lines = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign | ast.AugAssign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            of_a_run = node.value is not None and "WorkflowStatus" in ast.unparse(node.value)
            if not of_a_run and any(
                isinstance(t, ast.Attribute) and t.attr == "status" for t in targets
            ):
                lines.append(node.lineno)
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id == "setattr"
            and len(node.args) > 1
            and isinstance(node.args[1], ast.Constant)
            and node.args[1].value == "status"
        ):
            lines.append(node.lineno)
    return lines


def test_an_activitys_status_is_written_only_by_its_owner() -> None:
    found = {
        path.relative_to(ROOT): _status_written(ast.parse(path.read_text(encoding="utf-8")))
        for package in PACKAGES
        for path in sorted((ROOT / package).rglob("*.py"))
    }
    elsewhere = [
        f"{path}:{line}" for path, lines in found.items() if path != OWNER for line in lines
    ]
    assert elsewhere == []


def test_the_walk_finds_a_row_built_by_hand_and_a_status_written() -> None:
    assert _built(ast.parse("row = Activity(agent_name='a')\nx = models.Activity()")) == [1, 2]
    source = (
        "activity.status = 'failed'\n"
        "setattr(row, 'status', 'queued')\n"
        "run.status = WorkflowStatus.FAILED.value\n"
    )
    assert _status_written(ast.parse(source)) == [1, 2]
