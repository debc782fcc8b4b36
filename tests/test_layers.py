"""The direction of imports is a test: ``dispatch`` ← ``channels`` ← ``workers`` ← ``gateway``,
``migrations`` → ``dispatch`` only, inside ``dispatch`` each room imports only the rooms below
it, and no module imports itself back through others.

Every import counts: at module level, inside functions, under ``TYPE_CHECKING``. There is no
list of exceptions.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("dispatch", "channels", "workers", "gateway", "migrations")
ALLOWED = {
    "dispatch": {"dispatch"},
    "channels": {"dispatch", "channels"},
    "workers": {"dispatch", "channels", "workers"},
    "gateway": set(PACKAGES),
    "migrations": {"dispatch", "migrations"},
}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            found[_module_name(path)] = path
    return found


MODULES = _modules()


def _resolve(name: str) -> str | None:
    """The project module ``name`` refers to (a module, or the package holding it)."""
    while name:
        if name in MODULES:
            return name
        name = name.rpartition(".")[0]
    return None


def _imports(module: str, path: Path) -> Iterator[tuple[int, str]]:
    """(line, project module) for every import in ``path``, wherever it stands."""
    source = path.read_text(encoding="utf-8")
    return _imports_in(module, source, is_package=path.name == "__init__.py")


def _imports_in(module: str, source: str, *, is_package: bool) -> Iterator[tuple[int, str]]:
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                target = _resolve(alias.name)
                if target is not None:
                    yield node.lineno, target
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = module.split(".")
                if not is_package:
                    anchor = anchor[:-1]
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:
                target = _resolve(f"{base}.{alias.name}") or _resolve(base)
                if target is not None:
                    yield node.lineno, target


GRAPH = {
    module: sorted({target for _, target in _imports(module, path) if target != module})
    for module, path in MODULES.items()
}


def test_every_import_points_the_allowed_way() -> None:
    wrong = [
        f"{path.relative_to(ROOT)}:{line}: {module} imports {target}"
        for module, path in MODULES.items()
        for line, target in _imports(module, path)
        if target.split(".")[0] not in ALLOWED[module.split(".")[0]]
    ]
    assert wrong == []


def _cycles() -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), or self-imports."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in GRAPH[node]:
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in GRAPH:
        if node not in index:
            visit(node)
    return found


ROOMS = ("infra", "language", "record", "policy", "understanding", "work")
"""``dispatch``'s rooms, lowest first: a room imports only itself and the rooms before it."""


def _room(module: str) -> str:
    return module.split(".")[1] if module.count(".") >= 1 else ""


def test_dispatch_is_in_rooms_and_each_imports_only_those_below_it() -> None:
    loose = [m for m in MODULES if m.startswith("dispatch.") and _room(m) not in ROOMS]
    assert loose == [], "every dispatch module lives in a room"
    wrong = [
        f"{path.relative_to(ROOT)}:{line}: {module} imports {target}"
        for module, path in MODULES.items()
        if module.startswith("dispatch.")
        for line, target in _imports(module, path)
        if target.startswith("dispatch.")
        and ROOMS.index(_room(target)) > ROOMS.index(_room(module))
    ]
    assert wrong == []


def test_each_room_says_what_it_owns_and_may_import() -> None:
    for room in ROOMS:
        opening = (ROOT / "dispatch" / room / "__init__.py").read_text(encoding="utf-8")
        assert opening.startswith('"""'), room
        allowed = ROOMS[: ROOMS.index(room)]
        said = opening.split('"""')[1]
        assert all(below in said for below in allowed) or "every other room" in said, room


def test_no_import_cycles() -> None:
    assert _cycles() == []


def test_the_walk_sees_every_kind_of_import() -> None:
    """The checker itself: relative, nested and TYPE_CHECKING imports are found."""
    source = (
        "from typing import TYPE_CHECKING\n"
        "from . import catalog\n"
        "from ..record.models import Message\n"
        "if TYPE_CHECKING:\n    from gateway.app import create_app\n"
        "def f():\n    import workers.jobs\n"
    )
    found = {target for _, target in _imports_in("dispatch.policy.probe", source, is_package=False)}
    assert found == {
        "dispatch.policy.catalog",
        "dispatch.record.models",
        "gateway.app",
        "workers.jobs",
    }


def test_provider_channels_are_named_only_by_the_registry() -> None:
    """A provider's channel is one module and one registry line: nothing outside ``channels``
    imports it (the CLI and the webhook route find it through the registry)."""
    from channels.base import WebhookChannel
    from channels.registry import CHANNEL_TYPES

    providers = {kind.__module__ for kind in CHANNEL_TYPES if issubclass(kind, WebhookChannel)}
    assert providers
    named = sorted(
        f"{module} imports {target}"
        for module, targets in GRAPH.items()
        if module != "channels.registry"
        for target in targets
        if target in providers and target != module
    )
    assert named == []
