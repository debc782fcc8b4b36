"""Reading the lock (``requirements/*.txt``, written by ``scripts/lock.py``) and comparing the
running environment with it: the tests check that the lock satisfies ``pyproject.toml`` and
that they run on what it pins; the benchmarks refuse to measure anything else."""

from __future__ import annotations

import os
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parent.parent
APP_LOCK = ROOT / "requirements" / "app.txt"
DEV_LOCK = ROOT / "requirements" / "dev.txt"
UNLOCKED = "SWITCHBOARD_UNLOCKED"
"""Set by ``scripts/newest.sh``: the environment is the newest allowed, on purpose."""
NOT_LOCKED = frozenset({"pip", "switchboard"})
"""The installer the venv comes with, and the project itself (installed from the checkout)."""


@dataclass(frozen=True)
class Pin:
    """One locked package."""

    name: str
    """Canonical (PEP 503) name."""
    version: Version
    marker: Marker | None
    hashes: tuple[str, ...]

    def applies(self, environment: dict[str, str] | None = None) -> bool:
        """Whether it is installed where ``environment`` (default: here) describes."""
        return self.marker is None or self.marker.evaluate(environment)


def read_lock(path: Path) -> dict[str, Pin]:
    """The pins of a lock written by ``uv pip compile --generate-hashes``."""
    pins: dict[str, Pin] = {}
    entry: list[str] = []

    def close() -> None:
        if not entry:
            return
        requirement = Requirement(entry[0])
        (specifier,) = requirement.specifier  # exactly one ``==``: a pin
        if specifier.operator != "==":
            raise ValueError(f"{path.name}: {requirement} is not pinned")
        name = canonicalize_name(requirement.name)
        if name in pins and pins[name].applies():
            raise ValueError(f"{path.name}: {name} is pinned twice")
        pin = Pin(
            name=name,
            version=Version(specifier.version),
            marker=requirement.marker,
            hashes=tuple(part.removeprefix("--hash=") for part in entry[1:]),
        )
        if name not in pins or pin.applies():
            pins[name] = pin
        entry.clear()

    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.split("#", 1)[0].strip().removesuffix("\\").strip()
        if not line:
            continue
        if not raw.startswith(" "):
            close()
        entry.extend([line] if not raw.startswith(" ") else line.split())
    close()
    return pins


def installed() -> dict[str, Version]:
    """What this interpreter's environment holds, by canonical name."""
    found: dict[str, Version] = {}
    for dist in metadata.distributions():
        name = dist.metadata["Name"]
        if name:
            found[canonicalize_name(name)] = Version(dist.version)
    return found


def differences(lock: Path = DEV_LOCK) -> list[str]:
    """How the running environment differs from ``lock`` (empty: it is the lock)."""
    pins = {name: pin for name, pin in read_lock(lock).items() if pin.applies()}
    here = installed()
    problems = [
        f"{name} {here[name]} installed, {pin.version} locked"
        if name in here
        else f"{name} {pin.version} locked, not installed"
        for name, pin in sorted(pins.items())
        if here.get(name) != pin.version
    ]
    problems += [
        f"{name} {version} installed, not in the lock"
        for name, version in sorted(here.items())
        if name not in pins and name not in NOT_LOCKED
    ]
    return problems


def unlocked_on_purpose() -> bool:
    return os.environ.get(UNLOCKED) == "1"


def require_the_lock(what: str, *, allow_unlocked: bool) -> list[str]:
    """For a benchmark: refuse to measure an environment that is not the lock (its figures would
    not be of what we ship) unless ``allow_unlocked``; the differences, to keep with figures."""
    problems = differences()
    if problems and not allow_unlocked:
        shown = "\n  ".join(problems[:20])
        raise SystemExit(
            f"{what}: this environment is not the lock ({DEV_LOCK.relative_to(ROOT)}):\n  "
            f"{shown}\ninstall it with the README's test command, or pass --unlocked to "
            "measure it anyway"
        )
    return problems
