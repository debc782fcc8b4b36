"""The lock (``requirements/``) and ``pyproject.toml`` cannot drift apart, the lock is whole, and
the tests run on exactly what it pins (``scripts/newest.sh`` runs them on the newest allowed
versions instead, on purpose)."""

from __future__ import annotations

import tomllib
from collections import deque
from importlib import metadata

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from scripts.lock import BUILD_SYSTEM, MSGSPEC_PREVIOUS, MSGSPEC_PREVIOUS_IN, _previous
from scripts.lockfile import (
    APP_LOCK,
    DEV_LOCK,
    ROOT,
    UNLOCKED,
    Pin,
    differences,
    read_lock,
    unlocked_on_purpose,
)

PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
RUNTIME = [Requirement(r) for r in PYPROJECT["project"]["dependencies"]]
EXTRAS = {
    extra: [Requirement(r) for r in requirements]
    for extra, requirements in PYPROJECT["project"]["optional-dependencies"].items()
}
BUILD = [Requirement(r) for r in PYPROJECT["build-system"]["requires"]]
EVERY = RUNTIME + BUILD + [r for requirements in EXTRAS.values() for r in requirements]
APP = read_lock(APP_LOCK)
DEV = read_lock(DEV_LOCK)


def _unsatisfied(requirements: list[Requirement], pins: dict[str, Pin]) -> list[str]:
    problems = []
    for requirement in requirements:
        if requirement.marker is not None and not requirement.marker.evaluate():
            continue
        pin = pins.get(canonicalize_name(requirement.name))
        if pin is None:
            problems.append(f"{requirement}: not in the lock")
        elif not requirement.specifier.contains(pin.version, prereleases=True):
            problems.append(f"{requirement}: locked at {pin.version}")
    return problems


def test_the_app_lock_satisfies_the_runtime_ranges() -> None:
    assert _unsatisfied(RUNTIME + BUILD, APP) == []


def test_the_dev_lock_satisfies_every_range() -> None:
    assert _unsatisfied(EVERY, DEV) == []


def test_the_app_runs_on_the_versions_that_are_tested() -> None:
    assert {name: pin.version for name, pin in APP.items() if name not in DEV} == {}
    assert {
        name: (pin.version, DEV[name].version)
        for name, pin in APP.items()
        if pin.version != DEV[name].version
    } == {}


def test_every_pin_carries_hashes() -> None:
    for lock in (APP_LOCK, DEV_LOCK, MSGSPEC_PREVIOUS):
        pins = read_lock(lock)
        assert pins, lock
        assert [name for name, pin in pins.items() if not pin.hashes] == [], lock
        assert all(h.startswith("sha256:") for pin in pins.values() for h in pin.hashes)


def test_the_lock_inputs_are_current() -> None:
    """What ``scripts/lock.py`` writes beside the lock is what it would write now."""
    written = [line for line in BUILD_SYSTEM.read_text().splitlines() if not line.startswith("#")]
    assert written == PYPROJECT["build-system"]["requires"]
    previous = MSGSPEC_PREVIOUS_IN.read_text().splitlines()[-1]
    assert previous == f"msgspec{_previous(str(DEV['msgspec'].version))}"
    (pin,) = read_lock(MSGSPEC_PREVIOUS).values()
    assert Requirement(previous).specifier.contains(pin.version)


@pytest.mark.skipif(unlocked_on_purpose(), reason=f"{UNLOCKED}=1: the newest allowed versions")
def test_the_lock_is_whole() -> None:
    """Every dependency of every locked package (with the extras asked for) is locked too, at a
    version it accepts: read from the installed packages' own metadata, from the project's
    requirements down."""
    pending = deque((r, "project") for r in EVERY)
    seen: set[tuple[str, frozenset[str]]] = set()
    problems: list[str] = []
    while pending:
        requirement, wanted_by = pending.popleft()
        name = canonicalize_name(requirement.name)
        key = (name, frozenset(requirement.extras))
        if key in seen:
            continue
        seen.add(key)
        pin = DEV.get(name)
        if pin is None or not pin.applies():
            problems.append(f"{requirement} (for {wanted_by}): not locked")
            continue
        if not requirement.specifier.contains(pin.version, prereleases=True):
            problems.append(f"{requirement} (for {wanted_by}): locked at {pin.version}")
        for raw in metadata.distribution(name).requires or []:
            dependency = Requirement(raw)
            if dependency.marker is None or any(
                dependency.marker.evaluate({"extra": extra}) for extra in ("", *requirement.extras)
            ):
                pending.append((dependency, name))
    assert problems == []


@pytest.mark.skipif(unlocked_on_purpose(), reason=f"{UNLOCKED}=1: the newest allowed versions")
def test_the_tests_run_on_what_the_lock_pins() -> None:
    assert differences(DEV_LOCK) == []
