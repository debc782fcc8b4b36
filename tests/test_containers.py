"""The containers: the `Dockerfile` and `compose.yaml` as written, and the healthchecks they name,
run for real against a real gateway and a real worker. (No Docker engine runs here; `.ci/run`
also has `docker compose config` read the file where docker compose is installed.)"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import time
import tomllib
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway.cli import _parser
from tests.support.processes import free_port, process, run_cli, wait_healthy

ROOT = Path(__file__).resolve().parent.parent
COMPOSE: dict[str, Any] = yaml.safe_load((ROOT / "compose.yaml").read_text())
SERVICES: dict[str, Any] = COMPOSE["services"]
DOCKERFILE = (ROOT / "Dockerfile").read_text()
RELEASE = {"python": r"\d+\.\d+\.\d+", "redis": r"\d+\.\d+\.\d+", "postgres": r"\d+\.\d+"}
"""What names one release of each image (PostgreSQL's are ``major.minor`` since 10)."""


def _exact(image: str) -> bool:
    """Named by an exact release (``redis:7.4.5-bookworm``) or a digest, not ``redis:7``."""
    name, _, tag = image.partition(":")
    return bool(
        re.fullmatch(r"[\w./-]+@sha256:[0-9a-f]{64}", image)
        or re.fullmatch(rf"{RELEASE[name]}(-[\w.-]+)?", tag)
    )


OURS = {"migrate", "gateway", "worker"}
PACKAGES = ("gateway", "channels", "dispatch", "workers", "migrations")


def _instruction(name: str) -> list[str]:
    joined = DOCKERFILE.replace("\\\n", " ")
    return [line.split(None, 1)[1] for line in joined.splitlines() if line.startswith(f"{name} ")]


def test_compose_runs_the_database_redis_the_migration_a_gateway_and_two_workers() -> None:
    assert set(SERVICES) == {"postgres", "redis", *OURS}
    assert SERVICES["worker"]["deploy"]["replicas"] == 2
    assert [SERVICES[name]["command"] for name in ("migrate", "gateway", "worker")] == [
        ["switchboard", "migrate"],
        ["switchboard", "serve"],
        ["switchboard", "worker"],
    ]
    assert SERVICES["migrate"]["depends_on"] == {"postgres": {"condition": "service_healthy"}}
    for name in ("gateway", "worker"):
        assert SERVICES[name]["depends_on"] == {
            "migrate": {"condition": "service_completed_successfully"},
            "redis": {"condition": "service_healthy"},
        }


def test_every_image_is_pinned_to_an_exact_release() -> None:
    for name, service in SERVICES.items():
        if name in OURS:
            assert service["build"] == ".", name
            assert "image" not in service, name
        else:
            assert _exact(service["image"]), service["image"]
    (base,) = re.findall(r"^ARG PYTHON_IMAGE=(\S+)$", DOCKERFILE, flags=re.M)
    assert _exact(base), base
    assert not _exact("python:3.11-slim")
    assert not _exact("postgres:16")
    assert _instruction("FROM") == ["${PYTHON_IMAGE} AS build", "${PYTHON_IMAGE}"]


def test_every_long_lived_service_restarts_and_checks_what_it_does() -> None:
    for name, service in SERVICES.items():
        if name == "migrate":  # one run, retried if it fails; the others wait for it
            assert service["restart"].startswith("on-failure")
            assert service["healthcheck"] == {"disable": True}
            continue
        assert service["restart"] == "unless-stopped", name
        test = service["healthcheck"]["test"]
        assert test[0] == "CMD", name
        if name in OURS:
            # Our own command, checking this very process's work (not the image's default).
            subcommand = service["command"][1]
            assert test[1:] == ["switchboard", subcommand, "--check"], name
            args = _parser().parse_args(test[2:])
            assert (args.command, args.check) == (subcommand, True)
        else:
            assert test[1] == {"postgres": "pg_isready", "redis": "redis-cli"}[name]


def test_the_image_is_built_from_the_lock_and_runs_unprivileged() -> None:
    installs = [run for run in _instruction("RUN") if "pip install" in run]
    assert installs == [
        "/opt/switchboard/bin/pip install --no-cache-dir --require-hashes -r requirements/app.txt",
        "/opt/switchboard/bin/pip install --no-cache-dir --no-deps --no-build-isolation .",
    ]
    copied = {line.split()[0] for line in _instruction("COPY") if not line.startswith("--from")}
    assert "requirements/app.txt" in copied
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    found = pyproject["tool"]["setuptools"]["packages"]["find"]["include"]
    assert {pattern.removesuffix("*") for pattern in found} == set(PACKAGES)
    assert set(PACKAGES) <= copied, "every package of the project is copied into the image"
    assert _instruction("USER") == ["switchboard"]
    assert "useradd --create-home --uid 10001 switchboard" in DOCKERFILE
    (health,) = _instruction("HEALTHCHECK")
    assert health.endswith('CMD ["switchboard", "serve", "--check"]')
    assert _instruction("CMD") == ['["switchboard", "serve"]']


def _check(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return run_cli([*args, "--check"], cwd, timeout_s=30, **env)


def _until(
    args: list[str], env: dict[str, str], cwd: Path, status: int, within_s: float
) -> subprocess.CompletedProcess[str]:
    deadline = time.monotonic() + within_s
    while True:
        result = _check(args, env, cwd)
        if result.returncode == status or time.monotonic() > deadline:
            return result
        time.sleep(0.5)


@pytest.mark.services
def test_the_worker_check_reads_the_heartbeat_of_a_worker_on_this_host(
    make_env: Callable[..., dict[str, str]], pg_migrated: str, redis_url: str, tmp_path: Path
) -> None:
    env = make_env(database_url=pg_migrated, redis_url=redis_url)
    before = _check(["worker"], env, tmp_path)
    assert before.returncode == 1, before.stdout + before.stderr
    assert "no worker on this host" in before.stdout
    log = tmp_path / "worker.log"
    with process(["worker"], env, tmp_path, log) as worker:
        alive = _until(["worker"], env, tmp_path, 0, within_s=20)
        assert alive.returncode == 0, alive.stdout + alive.stderr + log.read_text()
        assert f":{worker.pid} alive" in alive.stdout
        worker.terminate()
        worker.wait(timeout=60)
    # A worker that stops says so at once (its heartbeat is deleted on the way out).
    after = _check(["worker"], env, tmp_path)
    assert after.returncode == 1, after.stdout


@pytest.mark.services
def test_the_worker_check_fails_when_redis_does_not_answer(
    make_env: Callable[..., dict[str, str]], pg_migrated: str, tmp_path: Path
) -> None:
    env = make_env(database_url=pg_migrated, redis_url=f"redis://127.0.0.1:{free_port()}/0")
    result = _check(["worker"], env, tmp_path)
    assert result.returncode == 1
    assert "Redis did not answer" in result.stdout


@pytest.mark.services
def test_the_gateway_check_asks_the_gateway_on_this_host(
    make_env: Callable[..., dict[str, str]], pg_migrated: str, redis_url: str, tmp_path: Path
) -> None:
    port = free_port()
    env = make_env(database_url=pg_migrated, redis_url=redis_url, port=port, host="0.0.0.0")
    assert _check(["serve"], env, tmp_path).returncode == 1
    log = tmp_path / "gateway.log"
    with process(["serve"], env, tmp_path, log) as gateway:
        wait_healthy(f"http://127.0.0.1:{port}", gateway, log)
        result = _check(["serve"], env, tmp_path)
        assert result.returncode == 0, result.stdout + result.stderr
        assert '"status":"ok"' in result.stdout
    assert _check(["serve"], env, tmp_path).returncode == 1


def test_the_installed_project_holds_every_module_and_asset(tmp_path: Path) -> None:
    """The image installs the project as a wheel (not editable, as tests and developers do):
    everything git tracks under the packages is in it. (A listed set of packages once left
    out `gateway.routes`: only editable installs could start.)"""
    tracked = subprocess.run(
        ["git", "ls-files", *PACKAGES],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    if not tracked:
        pytest.skip("not a git checkout")
    # From a copy of what the image copies: no build directory of an earlier build can help.
    source = tmp_path / "src"
    for name in ["pyproject.toml", "README.md", *tracked]:
        (source / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(ROOT / name, source / name)
    build = ["wheel", "-q", "--no-deps", "--no-build-isolation", "--wheel-dir", str(tmp_path)]
    built = subprocess.run(
        [sys.executable, "-m", "pip", *build, str(source)],
        check=False,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert built.returncode == 0, built.stdout + built.stderr
    (wheel,) = tmp_path.glob("switchboard-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        held = set(archive.namelist())
    assert sorted(set(tracked) - held) == []
