"""Faults, measured: what comes out when workers die and Redis goes away mid-flight.

Each scenario starts a deployment of its own on loopback (a fresh PostgreSQL database, a Redis
db claimed for the run, `switchboard serve` and `switchboard worker` processes, a local
Telegram Bot API server and the action's upstream; see ``tests/support/cluster.py``), sends
signed Telegram webhooks (``work m<n>``, spread over conversations), injects its fault, waits
until everything is answered and finished, and counts from outside and from the database:

    sent / accepted / activities / handler runs / replies / doubled / lost / stuck / jobs/message
    / 5xx / bystander s

``doubled``: messages answered more than once; ``lost``: never answered; ``stuck``: messages,
activities or replies not in a final state when the run ends; ``jobs``: arq jobs run by all
workers (each logs one line per job). Handler runs above one per activity are re-runs: a
worker killed mid-job leaves its runs to be run again (handlers are at-least-once); nothing
else should cause one.

    python bench/faults.py                       # every scenario
    python bench/faults.py baseline --messages 5000 --conversations 500
    python bench/faults.py sigkill sigterm --json faults.json
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import secrets
import signal
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import websockets

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dispatch.infra.throttle import ThrottleSettings
from dispatch.record.db import DatabaseSettings, create_engine, create_sessionmaker
from scripts.lockfile import require_the_lock
from tests.support.cluster import Cluster, Figures, redis_through
from tests.support.processes import free_port
from tests.support.proxy import FaultProxy
from tests.support.services import REDIS_BASE, flush_redis, own_database, own_redis_db

SETTLE_S = 600.0
BYSTANDER_BUDGET_S = 2.0
"""How long another conversation's message may wait while one client floods."""


@contextlib.asynccontextmanager
async def deployment(
    workdir: Path, *, delay_s: float, redis_port: int | None = None
) -> AsyncIterator[tuple[Cluster, Any, str]]:
    """A cluster on a database and Redis db of its own: (cluster, sessions, redis URL)."""
    async with own_database("switchboard_bench") as db_url, own_redis_db() as redis_url:
        env = {
            "SWITCHBOARD_DATABASE_URL": db_url,
            "SWITCHBOARD_REDIS_URL": (
                redis_url if redis_port is None else redis_through(redis_url, redis_port)
            ),
            "SWITCHBOARD_PORT": str(free_port()),
            "SWITCHBOARD_REDIS_PREFIX": f"bench{secrets.token_hex(4)}",
            "SWITCHBOARD_ADMIN_TOKEN": secrets.token_urlsafe(32),
            "SWITCHBOARD_LOG_LEVEL": "WARNING",
        }
        engine = create_engine(DatabaseSettings(url=db_url))
        try:
            async with Cluster(env, workdir, delay_s=delay_s) as cluster:
                yield cluster, create_sessionmaker(engine), redis_url
        finally:
            await engine.dispose()


async def _until(predicate: Callable[[], bool], timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError("the run did not get under way")
        await asyncio.sleep(0.05)


async def _answered(cluster: Cluster, at_least: int) -> None:
    await _until(lambda: sum(cluster.replies().values()) >= at_least)


# -- scenarios: each sends its messages and injects its fault ------------------------------------

Scenario = Callable[[Cluster, str, argparse.Namespace], Awaitable[None]]


async def baseline(cluster: Cluster, _redis: str, args: argparse.Namespace) -> None:
    """No fault: the job count of a plain run (the bar: at most 2.5 jobs per message)."""
    for _ in range(args.workers):
        cluster.start_worker()
    await cluster.send(args.messages, conversations=args.conversations)


async def sigkill(cluster: Cluster, _redis: str, args: argparse.Namespace) -> None:
    """A worker is killed (SIGKILL) while it runs jobs; a new one is started."""
    doomed = cluster.start_worker(worker_lease_s=4)
    for _ in range(args.workers - 1):
        cluster.start_worker(worker_lease_s=4)
    sending = asyncio.create_task(cluster.send(args.messages, conversations=args.conversations))
    await _until(lambda: cluster.work.running() >= 5)
    await cluster.stop(doomed, signal.SIGKILL)
    cluster.start_worker(worker_lease_s=4)
    await sending


async def sigterm(cluster: Cluster, _redis: str, args: argparse.Namespace) -> None:
    """A worker is stopped (SIGTERM) while it runs jobs: it finishes them and leaves."""
    stopping = cluster.start_worker()
    for _ in range(args.workers - 1):
        cluster.start_worker()
    sending = asyncio.create_task(cluster.send(args.messages, conversations=args.conversations))
    await _until(lambda: cluster.work.running() >= 5)
    await cluster.stop(stopping, signal.SIGTERM)
    cluster.start_worker()
    await sending


async def redis_flushed(cluster: Cluster, redis_url: str, args: argparse.Namespace) -> None:
    """Redis loses everything (FLUSHDB) mid-flight."""
    for _ in range(args.workers):
        cluster.start_worker()
    sending = asyncio.create_task(cluster.send(args.messages, conversations=args.conversations))
    await _answered(cluster, args.messages // 5)
    await flush_redis(redis_url)
    await sending


def _redis_away(fault: str) -> Scenario:
    async def scenario(cluster: Cluster, _redis: str, args: argparse.Namespace) -> None:
        proxy: FaultProxy = args.proxy
        for _ in range(args.workers):
            cluster.start_worker()
        half = args.messages // 2
        await cluster.send(half, conversations=args.conversations)
        await _answered(cluster, half // 5)
        getattr(proxy, fault)()
        try:
            await cluster.send(args.messages - half, conversations=args.conversations)
            await asyncio.sleep(args.outage_s)
            if any(worker.poll() is not None for worker in cluster.workers):
                raise RuntimeError("a worker ended during the Redis outage")
        finally:
            proxy.heal()

    scenario.__doc__ = f"Redis {'refuses connections' if fault == 'refuse' else 'hangs'} "
    scenario.__doc__ += "for a while mid-flight (webhooks keep coming)."
    return scenario


async def retry_storm(cluster: Cluster, _redis: str, args: argparse.Namespace) -> None:
    """A provider's retry storm: every message posted 50 times at once (a webhook answered
    late is sent again; Telegram and Meta retry for days)."""
    for _ in range(args.workers):
        cluster.start_worker()
    await cluster.storm(args.messages // STORM_COPIES or 1, copies=STORM_COPIES)


async def socket_flood(cluster: Cluster, _redis: str, args: argparse.Namespace) -> None:
    """500 web chat sockets from one client, four frames each, while a message of another
    conversation comes in: how long that one waits for its answer, and the gateway's memory
    before (at work: one client's share of chats) and after (the sockets closed)."""
    for _ in range(args.workers):
        cluster.start_worker()
    url = cluster.base_url.replace("http://", "ws://") + "/chat/ws"

    async def socket(n: int) -> None:
        with contextlib.suppress(OSError, websockets.WebSocketException, TimeoutError):
            async with websockets.connect(url, origin=cluster.base_url, open_timeout=30) as ws:  # type: ignore[arg-type]
                await ws.recv()
                for frame in range(4):
                    await ws.send(json.dumps({"id": f"f{n}-{frame}", "text": f"echo {n}"}))
                with contextlib.suppress(TimeoutError):
                    while True:
                        await asyncio.wait_for(ws.recv(), 3)

    async def bystander() -> None:
        await asyncio.sleep(1.0)  # the flood in full swing
        args.bystander_s = await cluster.reply_time("calm", chat_id=990_000)

    await asyncio.gather(*(socket(FLOOD_SOCKETS + n) for n in range(SOCKETS_PER_ADDRESS)))
    await asyncio.sleep(2)
    before_mb = _rss_mb(cluster.gateway.pid)
    await asyncio.gather(bystander(), *(socket(n) for n in range(FLOOD_SOCKETS)))
    await asyncio.sleep(3)
    args.rss_mb = f"{before_mb:.0f} → {_rss_mb(cluster.gateway.pid):.0f}"


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for {pid}")


STORM_COPIES = 50
FLOOD_SOCKETS = 500
SOCKETS_PER_ADDRESS = ThrottleSettings().sockets_per_address
"""A client's share of chat sockets (the default), the gateway at work before the flood."""

SCENARIOS: dict[str, tuple[Scenario, float, bool]] = {
    # name: (scenario, handler delay in seconds, Redis behind a fault proxy)
    "baseline": (baseline, 0.0, False),
    "sigkill": (sigkill, 1.0, False),
    "sigterm": (sigterm, 1.0, False),
    "redis-flushed": (redis_flushed, 0.02, False),
    "redis-refused": (_redis_away("refuse"), 0.02, True),
    "redis-frozen": (_redis_away("freeze"), 0.02, True),
    "retry-storm": (retry_storm, 0.02, False),
    "socket-flood": (socket_flood, 0.02, False),
}


async def run(name: str, args: argparse.Namespace) -> dict[str, Any]:
    scenario, delay_s, proxied = SCENARIOS[name]
    with (
        tempfile.TemporaryDirectory(prefix=f"faults-{name}-") as tmp,
        contextlib.ExitStack() as stack,
    ):
        redis_port = None
        if proxied:
            redis = urlparse(REDIS_BASE)
            args.proxy = stack.enter_context(
                FaultProxy(redis.hostname or "127.0.0.1", redis.port or 6379)
            )
            redis_port = args.proxy.port
        started = time.monotonic()
        async with deployment(Path(tmp), delay_s=delay_s, redis_port=redis_port) as (
            cluster,
            sessions,
            redis_url,
        ):
            args.bystander_s = None
            args.rss_mb = None
            await scenario(cluster, redis_url, args)
            sent_at = time.monotonic()
            settled = await cluster.settle(sessions, timeout_s=SETTLE_S, quiet_s=2.0)
            drained_s = time.monotonic() - sent_at
            figures: Figures = await cluster.figures(sessions)
            acks = sorted(cluster.ack_s)
        return {
            "scenario": name,
            **figures.row(),
            "settled": settled,
            "drain_s": round(drained_s, 1),
            "ack_p50_ms": round(acks[len(acks) // 2] * 1000, 1) if acks else None,
            "ack_max_ms": round(acks[-1] * 1000, 1) if acks else None,
            "server_errors": cluster.server_errors,
            "bystander_s": None if args.bystander_s is None else round(args.bystander_s, 2),
            "gateway_rss_mb": args.rss_mb,
            "run_s": round(time.monotonic() - started, 1),
        }


COLUMNS = [
    ("scenario", "scenario"),
    ("sent", "sent"),
    ("accepted", "accepted"),
    ("activities", "activities"),
    ("handler_runs", "handler runs"),
    ("replies", "replies"),
    ("doubled", "doubled"),
    ("lost", "lost"),
    ("stuck", "stuck"),
    ("jobs_per_message", "jobs/message"),
    ("drain_s", "drain s"),
    ("ack_p50_ms", "ack p50 ms"),
    ("ack_max_ms", "ack max ms"),
    ("server_errors", "5xx"),
    ("bystander_s", "bystander s"),
    ("gateway_rss_mb", "gateway RSS MB"),
]


def table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| " + " | ".join(title for _, title in COLUMNS) + " |",
        "|" + "|".join("---" for _ in COLUMNS) + "|",
    ]
    lines += ["| " + " | ".join(str(row[key]) for key, _ in COLUMNS) + " |" for row in rows]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("scenarios", nargs="*", help=f"any of: {', '.join(SCENARIOS)} (all)")
    parser.add_argument("--messages", type=int, help="per scenario (default 5000 / 200)")
    parser.add_argument("--conversations", type=int, help="(default 500 / 20)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--outage-s", type=float, default=5.0, help="how long Redis is away")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    parser.add_argument(
        "--unlocked", action="store_true", help="measure an environment that is not the lock"
    )
    args = parser.parse_args()
    unlocked = require_the_lock(Path(__file__).name, allow_unlocked=args.unlocked)
    unknown = set(args.scenarios) - set(SCENARIOS)
    if unknown:
        parser.error(f"unknown scenario(s): {', '.join(sorted(unknown))}")
    rows = []
    failed = False
    for name in args.scenarios or list(SCENARIOS):
        big = name == "baseline"
        scenario_args = argparse.Namespace(**vars(args))
        scenario_args.messages = args.messages or (5000 if big else 200)
        scenario_args.conversations = args.conversations or (500 if big else 20)
        row = asyncio.run(run(name, scenario_args))
        rows.append(row)
        print(json.dumps(row), file=sys.stderr)
        failed |= not row["settled"] or bool(row["doubled"] or row["lost"] or row["stuck"])
        failed |= bool(row["server_errors"]) or (row["bystander_s"] or 0) >= BYSTANDER_BUDGET_S
    print(table(rows))
    if unlocked:
        print("NOT the lock, measured anyway (--unlocked):\n  " + "\n  ".join(unlocked))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
