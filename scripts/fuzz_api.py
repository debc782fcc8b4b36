"""Fuzz the HTTP API against its own OpenAPI document (schemathesis), for CI.

Starts a deployment of its own on the real services: a fresh PostgreSQL database, a Redis db
nobody else uses meanwhile, `switchboard serve` on a free port and a `switchboard worker`. It
makes an ``operator`` and an ``actions`` token and runs schemathesis with every check it has
(server errors, status codes and headers the document does not list, responses outside their
schema, data the schema forbids being accepted, data it allows being refused, …) with a fixed
seed and a bounded number of examples, once per role: admin, operator, actions. Exits non-zero
on any failure, or if the gateway logged a traceback. With ``--junit-dir``, each run's results
are also written there as JUnit XML (``fuzz-admin.xml``, ``fuzz-operator.xml``,
``fuzz-actions.xml``), which `.ci/run` counts with the other stages.

    python scripts/fuzz_api.py [--max-examples N] [--seed S] [--junit-dir DIR] [--role R]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.support.processes import free_port, process, wait_healthy
from tests.support.services import own_database, own_redis_db

ROLES = ("admin", "operator", "actions")
CONFIG = Path(__file__).resolve().parent / "schemathesis.toml"


def _token(base: str, admin: str, role: str) -> str:
    answer = httpx.post(
        f"{base}/api/v1/tokens",
        json={"name": f"fuzz-{role}", "role": role},
        headers={"Authorization": f"Bearer {admin}"},
        timeout=10,
    )
    answer.raise_for_status()
    token: str = answer.json()["token"]
    return token


@contextlib.contextmanager
def _services() -> Iterator[tuple[str, str]]:
    """(database URL, Redis URL), both of our own, removed afterwards."""
    loop = asyncio.new_event_loop()
    database = own_database("switchboard_fuzz")
    redis = own_redis_db()
    try:
        db_url = loop.run_until_complete(database.__aenter__())
        try:
            redis_url = loop.run_until_complete(redis.__aenter__())
            try:
                yield db_url, redis_url
            finally:
                loop.run_until_complete(redis.__aexit__(None, None, None))
        finally:
            loop.run_until_complete(database.__aexit__(None, None, None))
    finally:
        loop.close()


def _schemathesis(
    schemathesis: str, base: str, token: str, args: argparse.Namespace, who: str
) -> int:
    report = []
    if args.junit_dir is not None:
        path = args.junit_dir / f"fuzz-{who}.xml"
        report = ["--report", "junit", "--report-junit-path", str(path)]
    print(f"== schemathesis as the {who} token", flush=True)
    run = subprocess.run(  # noqa: S603 - our own venv's schemathesis
        [
            schemathesis,
            "--config-file",
            str(CONFIG),
            "run",
            f"{base}/schema/openapi.json",
            "--header",
            f"Authorization: Bearer {token}",
            "--checks",
            "all",
            "--max-examples",
            str(args.max_examples),
            "--seed",
            str(args.seed),
            "--no-color",
            *report,
        ],
        check=False,
    )
    return run.returncode


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--max-examples", type=int, default=25)
    parser.add_argument("--seed", type=int, default=20261124)
    parser.add_argument("--junit-dir", type=Path, help="write each run's JUnit XML report here")
    parser.add_argument("--role", choices=ROLES, action="append", help="(default: all three)")
    args = parser.parse_args()
    schemathesis = shutil.which("schemathesis", path=str(Path(sys.executable).parent))
    if schemathesis is None:
        raise SystemExit("schemathesis is not installed: install requirements/dev.txt")
    work = Path(tempfile.mkdtemp(prefix="switchboard-fuzz-"))
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    admin = secrets.token_urlsafe(32)
    with _services() as (db_url, redis_url):
        env = {
            "SWITCHBOARD_DATABASE_URL": db_url,
            "SWITCHBOARD_REDIS_URL": redis_url,
            "SWITCHBOARD_REDIS_PREFIX": f"fuzz{uuid.uuid4().hex[:8]}",
            "SWITCHBOARD_ADMIN_TOKEN": admin,
            "SWITCHBOARD_PUBLIC_URL": base,
            "SWITCHBOARD_PORT": str(port),
            "SWITCHBOARD_LOG_LEVEL": "WARNING",
        }
        logs = {name: work / f"{name}.log" for name in ("gateway", "worker")}
        with (
            process(["serve"], env, work, logs["gateway"]) as gateway,
            process(["worker"], env, work, logs["worker"]),
        ):
            wait_healthy(base, gateway, logs["gateway"])
            time.sleep(1)  # the worker's first heartbeat
            tokens = {"admin": admin}
            tokens |= {role: _token(base, admin, role) for role in ("operator", "actions")}
            failed = False
            for who in args.role or ROLES:
                failed |= _schemathesis(schemathesis, base, tokens[who], args, who) != 0
        for name, log in logs.items():
            if "Traceback" in log.read_text():
                print(f"== the {name} logged a traceback:\n{log.read_text()}")
                failed = True
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
