"""Functions short enough to read at once (none in the product over 80 lines), and classes
with one job (none with more than 15 public methods).

Migrations are left out: a schema's first migration is one long list of tables, written once
and never changed (Alembic's own shape).
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("dispatch", "channels", "workers", "gateway")
MAX_FUNCTION_LINES = 80
MAX_PUBLIC_METHODS = 15


def _nodes() -> list[tuple[Path, ast.AST]]:
    return [
        (path, node)
        for package in PACKAGES
        for path in sorted((ROOT / package).rglob("*.py"))
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
    ]


NODES = _nodes()


def test_no_function_is_over_80_lines() -> None:
    long = [
        f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({lines} lines)"
        for path, node in NODES
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        and (lines := (node.end_lineno or node.lineno) - node.lineno + 1) > MAX_FUNCTION_LINES
    ]
    assert long == []


def test_no_class_has_more_than_15_public_methods() -> None:
    big = [
        f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({count} public methods)"
        for path, node in NODES
        if isinstance(node, ast.ClassDef)
        and (
            count := sum(
                isinstance(item, ast.FunctionDef | ast.AsyncFunctionDef)
                and not item.name.startswith("_")
                for item in node.body
            )
        )
        > MAX_PUBLIC_METHODS
    ]
    assert big == []
