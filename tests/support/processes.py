"""Real `switchboard` processes for end-to-end and fault tests (and ``bench/``)."""

from __future__ import annotations

import contextlib
import os
import random
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

__all__ = ["SWITCHBOARD", "child_env", "free_port", "process", "run_cli", "wait_healthy"]

SWITCHBOARD = [str(Path(sys.executable).parent / "switchboard")]


LISTEN_PORTS = range(20_000, 32_000)
"""Where test servers listen: below Linux's ephemeral range (32768-60999), from which the
kernel picks the local port of every outgoing connection. A port taken from that range (bind
to port 0) could be handed to some client's connection before the server got to bind it
("address already in use", seen in CI)."""
_handed_out: set[int] = set()


def free_port() -> int:
    """A TCP port on 127.0.0.1 nothing listens on at this moment, outside the ephemeral range
    and not handed out before in this process."""
    for _ in range(200):
        port = random.choice(LISTEN_PORTS)
        if port in _handed_out:
            continue
        with contextlib.closing(socket.socket()) as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
        _handed_out.add(port)
        return port
    raise RuntimeError(f"no free port in {LISTEN_PORTS}")


def child_env(values: dict[str, str]) -> dict[str, str]:
    """The caller's environment without its SWITCHBOARD_* values, plus ``values``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SWITCHBOARD_")}
    return {**env, **values, "PYTHONUNBUFFERED": "1"}


def run_cli(
    args: list[str], cwd: Path, *, timeout_s: float = 60, **env: str
) -> subprocess.CompletedProcess[str]:
    """``switchboard <args>`` run to its end, its output captured as text."""
    return subprocess.run(
        [*SWITCHBOARD, *args],
        env=child_env(env),
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )


@contextlib.contextmanager
def process(
    args: list[str], env: dict[str, str], cwd: Path, log: Path
) -> Iterator[subprocess.Popen[bytes]]:
    """``switchboard <args>`` with its output in ``log``; stopped (SIGTERM, then SIGKILL after
    10 s) on leaving, unless it has already ended."""
    with log.open("ab") as out:
        proc = subprocess.Popen(
            SWITCHBOARD + args, env=child_env(env), cwd=cwd, stdout=out, stderr=subprocess.STDOUT
        )
        try:
            yield proc
        finally:
            if proc.poll() is None:
                proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def wait_healthy(
    base: str, proc: subprocess.Popen[bytes], log: Path, timeout_s: float = 30
) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"gateway exited {proc.returncode}:\n{log.read_text()}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                return
        time.sleep(0.1)
    raise AssertionError(f"gateway not healthy in {timeout_s} s:\n{log.read_text()}")
