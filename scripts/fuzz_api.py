"""Fuzz the HTTP API against its own OpenAPI document (schemathesis), for CI.

Starts `switchboard serve` on the embedded default (a fresh SQLite file, in-process jobs) on a
free port, makes an ``actions`` token, and runs schemathesis with a fixed seed and a bounded
number of examples twice — as the admin and as the actions token — checking that no response
is a server error and that every response fits its documented schema. Exits non-zero on any
failure. With ``--junit-dir``, each run's results are also written there as JUnit XML
(``fuzz-admin.xml``, ``fuzz-actions.xml``), which `.ci/run` counts with the other stages.

    python scripts/fuzz_api.py [--max-examples N] [--seed S] [--junit-dir DIR]
"""

from __future__ import annotations

import argparse
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.support.processes import free_port

CHECKS = "not_a_server_error,response_schema_conformance"


def _wait(base: str, server: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"the gateway exited:\n{log.read_text()}")
        try:
            if httpx.get(f"{base}/healthz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            time.sleep(0.2)
    raise SystemExit(f"the gateway did not start:\n{log.read_text()}")


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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--max-examples", type=int, default=25)
    parser.add_argument("--seed", type=int, default=20261124)
    parser.add_argument("--junit-dir", type=Path, help="write each run's JUnit XML report here")
    args = parser.parse_args()
    schemathesis = shutil.which("schemathesis", path=str(Path(sys.executable).parent))
    if schemathesis is None:
        raise SystemExit("schemathesis is not installed: install requirements/dev.txt")
    work = Path(tempfile.mkdtemp(prefix="switchboard-fuzz-"))
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    admin = secrets.token_urlsafe(32)
    env = {
        **os.environ,
        "SWITCHBOARD_DATABASE_URL": f"sqlite+aiosqlite:///{work / 'fuzz.db'}",
        "SWITCHBOARD_REDIS_URL": "",
        "SWITCHBOARD_ADMIN_TOKEN": admin,
        "SWITCHBOARD_PUBLIC_URL": base,
        "SWITCHBOARD_LOG_LEVEL": "WARNING",
    }
    log = work / "gateway.log"
    switchboard = Path(sys.executable).parent / "switchboard"
    with log.open("wb") as out:
        server = subprocess.Popen(  # noqa: S603 - our own executable, fixed arguments
            [str(switchboard), "serve", "--host", "127.0.0.1", "--port", str(port)],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        _wait(base, server, log)
        failed = False
        for who, token in (("admin", admin), ("actions", _token(base, admin, "actions"))):
            print(f"== schemathesis as the {who} token", flush=True)
            report = []
            if args.junit_dir is not None:
                path = args.junit_dir / f"fuzz-{who}.xml"
                report = ["--report", "junit", "--report-junit-path", str(path)]
            run = subprocess.run(  # noqa: S603 - our own venv's schemathesis
                [
                    schemathesis,
                    "run",
                    f"{base}/schema/openapi.json",
                    "--header",
                    f"Authorization: Bearer {token}",
                    "--checks",
                    CHECKS,
                    "--max-examples",
                    str(args.max_examples),
                    "--seed",
                    str(args.seed),
                    "--no-color",
                    *report,
                ],
                check=False,
            )
            failed |= run.returncode != 0
        if "Traceback" in log.read_text():
            print(log.read_text())
            failed = True
        return 1 if failed else 0
    finally:
        server.terminate()
        server.wait(timeout=30)


if __name__ == "__main__":
    raise SystemExit(main())
