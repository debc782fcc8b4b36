"""Throughput, measured: how much traffic one gateway and its workers carry, as ratios to a
bare litestar endpoint measured in the same run through the same client.

Everything runs on loopback and is started here: a Redis instance of its own (so its command
counts are ours), a fresh PostgreSQL database per phase, `switchboard serve` and `switchboard
worker` processes, local Telegram and Twilio API servers, the bare endpoint
(``bench/bare.py``), and the load generator (``bench/load.py``) in a process of its own.
Messages are Telegram webhooks ``echo k<n>`` with unique ``update_id``s spread over many
chats (and signed Twilio webhooks for the second acknowledgement figure); a message is
answered end to end when its reply reaches the local Bot API server. Every feature stays on;
the provider's own pacing is set far above the load (a local server has no such limit).

Phases, each on a deployment of its own, measured after a warm-up (2,000 webhooks, answered
if workers run, then ``ANALYZE``: the query plans of a database in use, not of empty tables):

- ``ceiling``: the load generator's own ceiling, against a trivial endpoint (``bench/bare.py
  --trivial``, a raw asyncio protocol): the bare figure means something only well below it;
- ``bare``: the bare endpoint at saturation (closed loop, 64 connections);
- ``ack-telegram``, ``ack-twilio``: webhooks acknowledged per second with no worker running;
- ``e2e``: a burst of ``--e2e-messages`` webhooks (three a chat) sent as fast as the gateway
  takes them with the workers running, then until every accepted message is answered:
  messages answered per second (first request to last reply), PostgreSQL transactions
  (``pg_stat_database``, commits and rollbacks) and Redis commands (``INFO commandstats``)
  per message; CPU seconds the workers and gateways spent per message;
- ``open-<rate>``: an open loop at a fixed rate (100, 500, 1,000 messages/s): acknowledgement
  and end-to-end latency p50/p99 from when each message was due, what was not answered within
  ``--drain-s`` after the last one, and (for the ``--rss-rate`` phase, run ``--rss-s``) the
  RSS of the gateway and each worker at its start and end.

    python bench/throughput.py                        # every phase, prints a table
    python bench/throughput.py --json bench.json      # and writes the figures
    python bench/throughput.py --quick                # short phases, to try the harness
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import multiprocessing
import os
import resource
import secrets
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import asyncpg
import redis.asyncio as aioredis

from bench.grown import Record, captured, plans, preload, timed_reads
from bench.load import Request, Result, run
from dispatch.infra.queue import queue_name
from gateway.settings import Settings
from scripts.lockfile import require_the_lock
from tests.support.processes import child_env, free_port, process, wait_healthy
from tests.support.services import PG_ADMIN_DSN, own_database
from tests.support.telegram_api import TelegramApi
from tests.support.telegram_updates import SECRET, telegram_env, text_update
from tests.support.twilio_api import TwilioApi
from tests.support.twilio_webhook import ACCOUNT_SID, AUTH_TOKEN, inbound_form, signed, twilio_env

BARE = Path(__file__).resolve().parent / "bare.py"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
"""``/proc``'s CPU times are in these a second."""
DRAIN_MAX_S = 90.0
CHATS = 5000
E2E_MESSAGES_PER_CHAT = 3
"""The end-to-end burst's messages per chat: a conversation's later messages arrive while its
earlier ones are worked on, as in a busy hour."""
E2E_SEND_MAX_S = 300.0
WARM_UP_MESSAGES = 2000
WARM_UP_FIRST = 50_000_000
"""Warm-up messages are numbered from here, apart from the measured ones (same chats)."""
E2E_DRAIN_MAX_S = 900.0
FIRST_CHAT = 800_000
TARGETS = {
    "ack_ratio": ">= 25 % of bare",
    "ack_p99_1000": "< 25 ms",
    "e2e_per_s": ">= 800",
    "e2e_500_p50": "< 50 ms",
    "e2e_500_p99": "< 250 ms",
    "pg_xacts_per_message": "<= 4",
    "redis_commands_per_message": "<= 8",
    "rss_growth": "within 10 %",
}


def _pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _ms(value: float | None) -> float | None:
    return None if value is None else round(value * 1000, 1)


def _cpu_s(pid: int) -> float:
    """CPU seconds (user and system) a process has used so far."""
    return _stat_cpu_s(Path(f"/proc/{pid}/stat").read_text())


def _stat_cpu_s(stat: str) -> float:
    """The CPU seconds (user and system) in a ``/proc/<pid>/stat`` line."""
    fields = stat.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def _machine_cpu_s() -> tuple[float, float]:
    """(busy, all) CPU seconds of the whole machine so far, every core (``/proc/stat``)."""
    ticks = [int(t) for t in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = ticks[3] + ticks[4]  # idle, iowait
    every = sum(ticks[:8])  # user .. steal (guest time is counted in user already)
    return (every - idle) / CLOCK_TICKS, every / CLOCK_TICKS


def _named_cpu_s(names: frozenset[str]) -> dict[int, tuple[str, float]]:
    """Each live process called one of ``names``: (its name, CPU seconds so far)."""
    found = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError):
            text = stat.read_text()
            name = text[text.index("(") + 1 : text.rindex(")")]
            if name in names:
                found[int(stat.parent.name)] = (name, _stat_cpu_s(text))
    return found


class ServiceCpu:
    """CPU seconds PostgreSQL's and Redis's processes spend from :meth:`start` to :meth:`stop`,
    sampled every 0.2 s: a backend that ends meanwhile (a pool's overflow connection, closed
    as it is given back) still counts up to its last sample."""

    NAMES = frozenset({"postgres", "redis-server"})

    def __init__(self) -> None:
        self._first: dict[int, tuple[str, float]] = {}
        self._last: dict[int, tuple[str, float]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def start(self) -> None:
        self._first = _named_cpu_s(self.NAMES)
        self._last = dict(self._first)
        self._thread.start()

    def stop(self) -> dict[str, float]:
        """Seconds spent meanwhile, by process name."""
        self._stop.set()
        self._thread.join()
        self._last.update(_named_cpu_s(self.NAMES))
        spent = dict.fromkeys(self.NAMES, 0.0)
        for pid, (name, seconds) in self._last.items():
            spent[name] += seconds - self._first.get(pid, (name, 0.0))[1]
        return spent

    def _sample(self) -> None:
        while not self._stop.wait(0.2):
            self._last.update(_named_cpu_s(self.NAMES))


HARNESS = (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)


@dataclass(frozen=True)
class CpuSnapshot:
    """Where the machine's CPU has gone so far: our processes', and the whole machine's."""

    workers_s: float
    gateways_s: float
    harness_s: float
    """This process (the local Bot API and Twilio servers are its threads) and its ended
    children (the load generator)."""
    busy_s: float
    all_s: float

    @classmethod
    def take(cls, deployment: Deployment) -> CpuSnapshot:
        busy_s, all_s = _machine_cpu_s()
        return cls(
            workers_s=sum(_cpu_s(p.pid) for p in deployment.worker_processes),
            gateways_s=sum(_cpu_s(p.pid) for p in deployment.gateway_processes),
            harness_s=sum(
                usage.ru_utime + usage.ru_stime for usage in map(resource.getrusage, HARNESS)
            ),
            busy_s=busy_s,
            all_s=all_s,
        )

    def per_message_ms(
        self, before: CpuSnapshot, services: dict[str, float], messages: int
    ) -> dict[str, float]:
        """Each one's CPU per message since ``before`` (``services``: PostgreSQL's and Redis's,
        see :class:`ServiceCpu`), the bench's own (the load generator, the local Bot API
        server), the rest of what the machine did (the kernel, anything else running), and
        what it left idle."""

        def ms(seconds: float) -> float:
            return round(1000 * seconds / max(1, messages), 2)

        spent = {
            "workers": self.workers_s - before.workers_s,
            "gateways": self.gateways_s - before.gateways_s,
            "postgres": services["postgres"],
            "redis": services["redis-server"],
            "bench": self.harness_s - before.harness_s,
        }
        busy_s = self.busy_s - before.busy_s
        return {
            **{k: ms(v) for k, v in spent.items()},
            "rest": ms(busy_s - sum(spent.values())),
            "idle": ms((self.all_s - before.all_s) - busy_s),
        }


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return round(int(line.split()[1]) / 1024, 1)
    return 0.0


# -- traffic --------------------------------------------------------------------------------------


def telegram_requests(count: int, *, first: int = 0, chats: int = CHATS) -> list[Request]:
    headers = {"Content-Type": "application/json", "X-Telegram-Bot-Api-Secret-Token": SECRET}
    requests = []
    for n in range(first, first + count):
        update = text_update(n + 1, f"echo k{n}", chat_id=FIRST_CHAT + n % chats)
        requests.append(("/webhooks/telegram", headers, json.dumps(update).encode(), f"k{n}"))
    return requests


def twilio_requests(count: int) -> list[Request]:
    requests = []
    for n in range(count):
        number = f"whatsapp:+3460{n % CHATS:07d}"
        form = inbound_form(f"echo k{n}", sid=f"bench-{n}", sender=number)
        path, body, headers = signed(form)
        requests.append((path, headers, body, f"k{n}"))
    return requests


def load(ports: list[int], requests: list[Request], **options: float) -> Result:
    """One measurement by the load generator, in a process of its own, spread over ``ports``."""
    mode = "open" if "rate_per_s" in options else "closed"
    context = multiprocessing.get_context("spawn")
    with context.Pool(1) as pool:
        return pool.apply(run, (mode, "127.0.0.1", ports, requests, options))


# -- what runs ----------------------------------------------------------------------------------


@contextlib.contextmanager
def redis_instance() -> Iterator[str]:
    """A Redis server of its own (its command counts are this run's), on a free port."""
    port = free_port()
    command = ["redis-server", "--bind", "127.0.0.1", "--port", str(port)]
    server = subprocess.Popen(  # noqa: S603 - our own command line
        [*command, "--save", "", "--appendonly", "no"], stdout=subprocess.DEVNULL
    )
    try:
        _wait_port(port, "redis-server")
        yield f"redis://127.0.0.1:{port}"
    finally:
        server.terminate()
        server.wait(10)


async def redis_commands(redis_base: str) -> dict[str, int]:
    """Calls so far by command (those Lua scripts make included)."""
    client = aioredis.from_url(redis_base + "/0")
    try:
        stats = await client.info("commandstats")
    finally:
        await client.aclose()
    return {
        k.removeprefix("cmdstat_"): int(v["calls"])
        for k, v in stats.items()
        if k.startswith("cmdstat_")
    }


async def pg_xacts(db_url: str) -> int:
    name = db_url.rsplit("/", 1)[1]
    connection = await asyncpg.connect(PG_ADMIN_DSN)
    try:
        value = await connection.fetchval(
            "SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = $1", name
        )
    finally:
        await connection.close()
    return int(value or 0)


@dataclass
class Deployment:
    """``gateways`` gateways (and ``workers`` workers) on a fresh database and the bench's
    Redis, sharing one queue."""

    redis_base: str
    workdir: Path
    db: int
    workers: int = 0
    gateways: int = 1
    record: Record | None = None
    """A record to preload (``grown-*`` phases), or none: an empty database."""
    ports: list[int] = field(init=False)
    telegram: TelegramApi = field(init=False)
    gateway_processes: list[subprocess.Popen[bytes]] = field(default_factory=list, init=False)
    worker_processes: list[subprocess.Popen[bytes]] = field(default_factory=list, init=False)
    db_url: str = field(init=False)
    twilio: TwilioApi = field(init=False)
    _stack: contextlib.ExitStack = field(init=False)

    def __post_init__(self) -> None:
        self.ports = [free_port() for _ in range(self.gateways)]
        self._prefix = f"bench{secrets.token_hex(3)}"
        self.admin_token = secrets.token_urlsafe(32)
        self.preload_s = 0.0

    def env(self, db_url: str, port: int) -> dict[str, str]:
        values: dict[str, Any] = {
            "database_url": db_url,
            "redis_url": f"{self.redis_base}/{self.db}",
            "redis_prefix": self._prefix,
            "port": port,
            "log_level": "WARNING",
            "admin_token": self.admin_token,
            **telegram_env(
                self.telegram.url,
                telegram_chat_rate_per_s=1000,
                telegram_global_rate_per_s=100000,
            ),
            **twilio_env(self.twilio.url, twilio_rate_per_s=1000),
        }
        return child_env({f"SWITCHBOARD_{k.upper()}": str(v) for k, v in values.items()})

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[Deployment]:
        async with own_database("switchboard_bench") as db_url:
            self.db_url = db_url
            if self.record is not None:
                self.preload_s = await preload(db_url.replace("+asyncpg", ""), self.record)
            with contextlib.ExitStack() as stack:
                self.telegram = stack.enter_context(TelegramApi())
                self.twilio = stack.enter_context(TwilioApi(ACCOUNT_SID, AUTH_TOKEN))
                for port in self.ports:
                    env = self.env(db_url, port)
                    log = self.workdir / f"gateway-{port}.log"
                    gateway = stack.enter_context(process(["serve"], env, self.workdir, log))
                    self.gateway_processes.append(gateway)
                    await asyncio.to_thread(wait_healthy, f"http://127.0.0.1:{port}", gateway, log)
                for n in range(self.workers):
                    log = self.workdir / f"worker-{self.ports[0]}-{n}.log"
                    self.worker_processes.append(
                        stack.enter_context(process(["worker"], env, self.workdir, log))
                    )
                if self.workers:
                    await self._workers_ready(env["SWITCHBOARD_REDIS_URL"], env)
                self._stack = stack
                await self._warm_up()
                yield self

    async def _warm_up(self) -> None:
        """Traffic before the measurement, then ``ANALYZE``: the steady state of a database
        in use. (A fresh database's first query plans are made on empty tables, sequential
        scans, and each connection keeps them until statistics change, which autovacuum
        brings within its first minute of traffic; a phase lasts less than that.)"""
        requests = telegram_requests(WARM_UP_MESSAGES, first=WARM_UP_FIRST)
        result = await asyncio.to_thread(
            load, self.ports, requests, connections=64, duration_s=E2E_SEND_MAX_S
        )
        if self.workers:
            keys = {s.key for s in result.samples if s.status < 300}
            await _drain(self, keys, timeout_s=15.0)
        connection = await asyncpg.connect(self.db_url.replace("+asyncpg", ""))
        try:
            await connection.execute("ANALYZE")
        finally:
            await connection.close()

    async def _workers_ready(self, redis_url: str, env: dict[str, str]) -> None:
        """Until arq's health-check key is there (a worker polls), then a second more."""
        key = queue_name(env["SWITCHBOARD_REDIS_PREFIX"]) + ":health-check"
        client = aioredis.from_url(redis_url)
        try:
            deadline = time.monotonic() + 30
            while not await client.exists(key):
                if time.monotonic() > deadline:
                    raise RuntimeError("no worker started")
                await asyncio.sleep(0.1)
        finally:
            await client.aclose()
        await asyncio.sleep(1.0)

    async def stop(self) -> None:
        """End the processes (their database sessions flush their statistics as they go)."""
        await asyncio.to_thread(self._stack.close)
        await asyncio.sleep(0.5)

    def answered(self) -> dict[str, float]:
        """When each message's reply reached the local Bot API server, by key."""
        return {
            str(call.params.get("text", "")): call.at
            for call in list(self.telegram.calls)
            if call.method == "sendMessage"
        }


# -- phases ---------------------------------------------------------------------------------------


@dataclass
class Bench:
    args: argparse.Namespace
    redis_base: str
    workdir: Path
    figures: dict[str, Any] = field(default_factory=dict)
    _db: int = 0

    def deployment(self, workers: int = 0, *, grown: bool = False) -> Deployment:
        self._db += 1
        record = Record().scaled(self.args.record_scale) if grown else None
        return Deployment(
            self.redis_base, self.workdir, self._db % 16, workers, self.args.gateways, record
        )

    @staticmethod
    def _key(name: str, grown: bool) -> str:
        return f"grown_{name}" if grown else name

    async def bare(self) -> None:
        port = free_port()
        request = ("/webhooks/bare", {"Content-Type": "application/json"}, b'{"n": 1}', "")
        with _bare_endpoint(port, self.workdir / "bare.log"):
            await asyncio.to_thread(_wait_port, port, "the bare endpoint")
            result = await asyncio.to_thread(
                load, [port], [request] * 400_000, connections=64, duration_s=self.args.duration_s
            )
        self.figures["bare"] = _closed(result)

    async def ceiling(self) -> None:
        """The load generator's own ceiling: the same client, connections and request against
        a trivial endpoint (a raw asyncio protocol answering a fixed 200, no framework): the
        bare figure is the endpoint's only if it stays well below this."""
        port = free_port()
        request = ("/webhooks/bare", {"Content-Type": "application/json"}, b'{"n": 1}', "")
        with _bare_endpoint(port, self.workdir / "trivial.log", "--trivial"):
            await asyncio.to_thread(_wait_port, port, "the trivial endpoint")
            result = await asyncio.to_thread(
                load, [port], [request] * 600_000, connections=64, duration_s=self.args.duration_s
            )
        self.figures["ceiling"] = _closed(result)

    async def ack(self, kind: str, *, grown: bool = False) -> None:
        requests = telegram_requests(200_000) if kind == "telegram" else twilio_requests(60_000)
        async with self.deployment(grown=grown).running() as deployment:
            result = await asyncio.to_thread(
                load, deployment.ports, requests, connections=64, duration_s=self.args.duration_s
            )
        self.figures[self._key(f"ack_{kind}", grown)] = _closed(result)

    async def e2e(self, *, grown: bool = False) -> None:
        # A burst of a fixed size, sent as fast as the gateway takes it and then drained to
        # the last reply: the workers are saturated throughout, and every transaction and
        # Redis command counted belongs to a message that was answered.
        count = self.args.e2e_messages
        requests = telegram_requests(count, chats=max(1, count // E2E_MESSAGES_PER_CHAT))
        deployment = self.deployment(self.args.workers, grown=grown)
        async with deployment.running():
            xacts_before = await pg_xacts(deployment.db_url)
            commands_before = await redis_commands(self.redis_base)
            cpu_before = CpuSnapshot.take(deployment)
            services = ServiceCpu()
            services.start()
            result = await asyncio.to_thread(
                load, deployment.ports, requests, connections=64, duration_s=E2E_SEND_MAX_S
            )
            accepted = [s for s in result.samples if s.status < 300]
            answered = await _drain(
                deployment, {s.key for s in accepted}, self.args.e2e_drain_s, max_s=E2E_DRAIN_MAX_S
            )
            cpu_after = CpuSnapshot.take(deployment)
            services_s = services.stop()
            # Counted once the processes have ended (a backend flushes its statistics then).
            await deployment.stop()
            xacts = await pg_xacts(deployment.db_url) - xacts_before
        after = await redis_commands(self.redis_base)
        by_kind = {k: n - commands_before.get(k, 0) for k, n in after.items()}
        by_kind = {k: n for k, n in sorted(by_kind.items(), key=lambda kv: -kv[1]) if n}
        commands = sum(by_kind.values())
        keys = {s.key for s in accepted}
        done = [at for key, at in answered.items() if key in keys]
        span_s = (max(done) - result.started) if done else None
        cpu_ms = cpu_after.per_message_ms(cpu_before, services_s, len(done))
        self.figures[self._key("e2e", grown)] = {
            "accepted": len(accepted),
            "answered": len(done),
            "messages_per_s": round(len(done) / span_s, 1) if span_s else 0.0,
            "pg_xacts_per_message": round(xacts / max(1, len(done)), 1),
            "redis_commands_per_message": round(commands / max(1, len(done)), 1),
            "worker_cpu_ms_per_message": cpu_ms["workers"],
            "gateway_cpu_ms_per_message": cpu_ms["gateways"],
            "machine_cpu_ms_per_message": cpu_ms,
            "cores": os.cpu_count(),
            "redis_commands_per_message_by_kind": {
                k: round(n / max(1, len(done)), 2) for k, n in by_kind.items()
            },
            "workers": len(deployment.worker_processes),
            "gateways": len(deployment.gateway_processes),
        }

    async def reads(self) -> None:
        """On a grown record: what the portal and an operator read, each timed over HTTP
        against the gateway and each of its statements' plans looked at; and the recovery
        sweep, timed and planned the same way."""
        deployment = self.deployment(grown=True)
        async with deployment.running():
            base = f"http://127.0.0.1:{deployment.ports[0]}"
            timed = await timed_reads(base, deployment.admin_token, times=self.args.read_times)
            settings = Settings.from_env(deployment.env(deployment.db_url, free_port()))
            dsn = deployment.db_url.replace("+asyncpg", "")
            planned = await _planned_reads(settings, dsn, {k: v["path"] for k, v in timed.items()})
            sweep = await _sweep(settings, dsn, times=self.args.read_times)
        assert deployment.record is not None
        self.figures["grown_reads"] = {
            "record": dataclasses.asdict(deployment.record),
            "preload_s": round(deployment.preload_s, 1),
            "reads": {name: {**timed[name], **planned[name]} for name in timed},
            "recovery_sweep": sweep,
        }

    async def open_loop(self, rate: int) -> None:
        rss = rate == self.args.rss_rate
        duration_s = self.args.rss_s if rss else self.args.duration_s
        requests = telegram_requests(round(rate * duration_s))
        deployment = self.deployment(self.args.workers)
        async with deployment.running():
            pids = [g.pid for g in deployment.gateway_processes]
            pids += [w.pid for w in deployment.worker_processes]
            rss_start = [_rss_mb(pid) for pid in pids]
            result = await asyncio.to_thread(
                load, deployment.ports, requests, rate_per_s=rate, duration_s=duration_s
            )
            rss_end = [_rss_mb(pid) for pid in pids]
            accepted = [s for s in result.samples if s.status < 300]
            answered = await _drain(deployment, {s.key for s in accepted}, self.args.drain_s)
        acks = [s.ended - s.due for s in result.samples]
        e2e = [answered[s.key] - s.due for s in accepted if s.key in answered]
        row: dict[str, Any] = {
            "rate_per_s": rate,
            "duration_s": duration_s,
            "sent": len(result.samples) + result.errors,
            "accepted": len(accepted),
            "refused": len(result.samples) - len(accepted) + result.errors,
            "not_2xx": len(result.samples) - len(accepted),
            "connection_errors": result.errors,
            "ack_p50_ms": _ms(_pct(acks, 0.5)),
            "ack_p99_ms": _ms(_pct(acks, 0.99)),
            "e2e_p50_ms": _ms(_pct(e2e, 0.5)),
            "e2e_p99_ms": _ms(_pct(e2e, 0.99)),
            "unanswered": len(accepted) - len(e2e),
        }
        if rss:
            row["rss_mb"] = {"start": rss_start, "end": rss_end}
        self.figures[f"open_{rate}"] = row


def _plan_summary(found: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "statements": len(found),
        "indexes": sorted({i for f in found for i in f["indexes"]}),
        "whole_scans": sorted({t for f in found for t in f["whole_scans"]}),
        "slowest_statement_ms": round(max((f["ms"] for f in found), default=0.0), 2),
    }


async def _planned_reads(
    settings: Settings, dsn: str, paths: dict[str, str]
) -> dict[str, dict[str, Any]]:
    """Each read's statements, run once by an app of this process on the same database, and
    their plans as the gateway makes them."""
    from litestar.testing import AsyncTestClient

    from gateway.app import create_app

    app = create_app(settings)
    found: dict[str, dict[str, Any]] = {}
    async with AsyncTestClient(app) as client:
        client.headers["Authorization"] = f"Bearer {settings.http.admin_token}"
        engine = app.state.runtime.engine
        for name, path in paths.items():
            await client.get(path)  # its plans made, as they are by the gateway's own reads
            with captured(engine) as statements:
                await client.get(path)
            found[name] = _plan_summary(await plans(dsn, list(statements)))
    return found


async def _sweep(settings: Settings, dsn: str, *, times: int) -> dict[str, Any]:
    """The recovery pass (finding nothing to do, as on a healthy deployment): p50/p99 over
    ``times`` passes, and its statements' plans."""
    from workers.compose import open_runtime
    from workers.recovery import recover

    spent: list[float] = []
    async with open_runtime(settings, role="gateway") as runtime:
        for _ in range(times):
            started = time.perf_counter()
            await recover(runtime)
            spent.append(time.perf_counter() - started)
        with captured(runtime.engine) as statements:
            await recover(runtime)
    return {
        "p50_ms": _ms(_pct(spent, 0.5)),
        "p99_ms": _ms(_pct(spent, 0.99)),
        **_plan_summary(await plans(dsn, list(statements))),
    }


@contextlib.contextmanager
def _bare_endpoint(port: int, log: Path, *options: str) -> Iterator[None]:
    with (
        log.open("wb") as out,
        subprocess.Popen(  # noqa: S603 - our own command line
            [sys.executable, str(BARE), str(port), *options], stdout=out, stderr=subprocess.STDOUT
        ) as server,
    ):
        try:
            yield
        finally:
            server.terminate()


def _wait_port(port: int, what: str) -> None:
    """Until something listens on ``port`` (``what``, for the error if nothing does)."""
    deadline = time.monotonic() + 20
    while True:
        with contextlib.suppress(OSError):
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} did not start")
        time.sleep(0.05)


async def _drain(
    deployment: Deployment, keys: set[str], timeout_s: float, *, max_s: float = DRAIN_MAX_S
) -> dict[str, float]:
    """Wait until the messages ``keys`` are answered, ``timeout_s`` passed without progress,
    or ``max_s`` passed: what is still unanswered then is reported as such."""
    started = last_progress = time.monotonic()
    last_count = -1
    while True:
        answered = {k: at for k, at in deployment.answered().items() if k in keys}
        if len(answered) >= len(keys):
            return answered
        if len(answered) != last_count:
            last_count, last_progress = len(answered), time.monotonic()
        now = time.monotonic()
        if now - last_progress > timeout_s or now - started > max_s:
            return answered
        await asyncio.sleep(0.2)


def _closed(result: Result) -> dict[str, Any]:
    ok = [s for s in result.samples if s.status < 300]
    latencies = [s.ended - s.due for s in result.samples]
    span_s = max(1e-9, result.ended - result.started)
    return {
        "requests": len(result.samples),
        "ok": len(ok),
        "errors": result.errors + len(result.samples) - len(ok),
        "per_s": round(len(ok) / span_s, 1),
        "p50_ms": _ms(_pct(latencies, 0.5)),
        "p99_ms": _ms(_pct(latencies, 0.99)),
    }


def table(figures: dict[str, Any]) -> str:
    bare = figures.get("bare", {}).get("per_s") or 0.0

    def ratio(value: float | None) -> str:
        return f"{100 * value / bare:.1f} %" if bare and value is not None else ""

    rows = [("figure", "measured", "vs bare", "target")]
    if "ceiling" in figures:
        c = figures["ceiling"]
        rows.append(
            (
                "load generator's ceiling (trivial asyncio endpoint)",
                f"{c['per_s']:,.0f} req/s (p99 {c['p99_ms']} ms)",
                ratio(c["per_s"]),
                "well above bare",
            )
        )
    if "bare" in figures:
        b = figures["bare"]
        rows.append(
            ("bare litestar POST → 200", f"{bare:,.0f} req/s (p99 {b['p99_ms']} ms)", "100 %", "")
        )
    for kind in ("telegram", "twilio"):
        if f"ack_{kind}" in figures:
            a = figures[f"ack_{kind}"]
            rows.append(
                (
                    f"webhook acknowledged, {kind} (no worker)",
                    f"{a['per_s']:,.0f} req/s, p50 {a['p50_ms']} ms, {a['errors']} not 2xx",
                    ratio(a["per_s"]),
                    TARGETS["ack_ratio"],
                )
            )
    if "e2e" in figures:
        e = figures["e2e"]
        rows.append(
            (
                f"end to end at saturation ({e.get('gateways', 1)} gateway(s), "
                f"{e['workers']} worker(s))",
                f"{e['messages_per_s']:,.1f} messages/s ({e['answered']}/{e['accepted']})",
                ratio(e["messages_per_s"]),
                TARGETS["e2e_per_s"],
            )
        )
        rows.append(
            (
                "PostgreSQL transactions per message",
                str(e["pg_xacts_per_message"]),
                "",
                TARGETS["pg_xacts_per_message"],
            )
        )
        rows.append(
            (
                "Redis commands per message",
                str(e["redis_commands_per_message"]),
                "",
                TARGETS["redis_commands_per_message"],
            )
        )
        if "worker_cpu_ms_per_message" in e:
            rows.append(
                (
                    "CPU per message: workers, gateways",
                    f"{e['worker_cpu_ms_per_message']} ms, {e['gateway_cpu_ms_per_message']} ms",
                    "",
                    "reported",
                )
            )
        if "machine_cpu_ms_per_message" in e:
            m = e["machine_cpu_ms_per_message"]
            rows.append(
                (
                    f"the machine's CPU per message ({e['cores']} cores)",
                    f"workers {m['workers']}, gateways {m['gateways']}, PostgreSQL "
                    f"{m['postgres']}, Redis {m['redis']}, the bench's load generator and "
                    f"local Bot API {m['bench']}, the rest {m['rest']}, idle {m['idle']} ms",
                    "",
                    "what bounds it",
                )
            )
    rows += _grown_rows(figures)
    for key, row in figures.items():
        if not key.startswith("open_"):
            continue
        rate = row["rate_per_s"]
        target = {500: "e2e p50 < 50 ms, p99 < 250 ms", 1000: "ack p99 < 25 ms"}.get(rate, "")
        rows.append(
            (
                f"open loop {rate} messages/s, {row['duration_s']:g} s",
                f"ack p50 {row['ack_p50_ms']} / p99 {row['ack_p99_ms']} ms; e2e p50 "
                f"{row['e2e_p50_ms']} / p99 {row['e2e_p99_ms']} ms; refused {row['refused']}, "
                f"unanswered {row['unanswered']} of {row['accepted']}",
                "",
                target,
            )
        )
        if "rss_mb" in row:
            start, end = row["rss_mb"]["start"], row["rss_mb"]["end"]
            rows.append(
                (
                    "RSS over that run (gateway, workers), MB",
                    f"{start} → {end}",
                    "",
                    TARGETS["rss_growth"],
                )
            )
    widths = [max(len(str(r[i])) for r in rows) for i in range(4)]
    lines = [
        "| " + " | ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)) + " |"
        for r in rows
    ]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def _grown_rows(figures: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """The grown record's rows: rates against the empty database's, each read's p99 and
    plan."""
    rows: list[tuple[str, str, str, str]] = []
    for name, unit in (("ack_telegram", "per_s"), ("ack_twilio", "per_s"), ("e2e", None)):
        grown = figures.get(f"grown_{name}")
        if not grown:
            continue
        measure = "per_s" if unit else "messages_per_s"
        value = grown[measure]
        empty = figures.get(name, {}).get(measure)
        share = f"{100 * value / empty:.1f} % of empty" if empty else ""
        rows.append(
            (f"grown record: {name.replace('_', ' ')}", f"{value:,.1f}/s", share, "within 10 %")
        )
    reads = figures.get("grown_reads")
    if reads:
        r = reads["record"]
        rows.append(
            (
                "grown record (preloaded)",
                f"{r['messages']:,} messages, {r['activities']:,} activities, "
                f"{r['conversations']:,} conversations, {r['users']:,} users "
                f"in {reads['preload_s']} s",
                "",
                "",
            )
        )
        every = {**reads["reads"], "recovery sweep (nothing to do)": reads["recovery_sweep"]}
        for name, read in every.items():
            scans = ", ".join(read["whole_scans"]) or "none"
            status = f"{read['status']}, " if "status" in read else ""
            rows.append(
                (
                    f"grown: {name}",
                    f"{status}p50 {read['p50_ms']} / p99 {read['p99_ms']} ms; "
                    f"{read['statements']} statements, whole-table scans: {scans}",
                    "",
                    "p99 < 50 ms, indexes",
                )
            )
    return rows


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="throughput-") as tmp, redis_instance() as redis_base:
        bench = Bench(args, redis_base, Path(tmp))
        phases = args.phases or [
            "ceiling",
            "bare",
            "ack-telegram",
            "ack-twilio",
            "e2e",
            *(f"open-{r}" for r in args.rates),
            "grown-reads",
            "grown-ack-telegram",
            "grown-e2e",
        ]
        for phase in phases:
            started = time.monotonic()
            if phase == "ceiling":
                await bench.ceiling()
            elif phase == "bare":
                await bench.bare()
            elif phase.startswith("ack-"):
                await bench.ack(phase.removeprefix("ack-"))
            elif phase.startswith("grown-ack-"):
                await bench.ack(phase.removeprefix("grown-ack-"), grown=True)
            elif phase == "e2e":
                await bench.e2e()
            elif phase == "grown-e2e":
                await bench.e2e(grown=True)
            elif phase == "grown-reads":
                await bench.reads()
            elif phase.startswith("open-"):
                await bench.open_loop(int(phase.removeprefix("open-")))
            else:
                raise SystemExit(f"unknown phase {phase}")
            print(f"{phase}: {time.monotonic() - started:.0f} s", file=sys.stderr, flush=True)
        return {
            "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0]},
            "deployment": {"gateways": args.gateways, "workers": args.workers},
            **bench.figures,
        }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "phases",
        nargs="*",
        help="ceiling, bare, ack-telegram, ack-twilio, e2e, open-<rate>, grown-reads, "
        "grown-ack-telegram, grown-ack-twilio, grown-e2e",
    )
    parser.add_argument("--duration-s", type=float, default=10.0)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--gateways", type=int, default=1, help="gateway processes, one queue")
    parser.add_argument("--rates", type=int, nargs="*", default=[100, 500, 1000])
    parser.add_argument("--rss-rate", type=int, default=500)
    parser.add_argument("--rss-s", type=float, default=60.0)
    parser.add_argument("--drain-s", type=float, default=15.0, help="wait for progress this long")
    parser.add_argument("--e2e-drain-s", type=float, default=15.0)
    parser.add_argument(
        "--e2e-messages", type=int, default=6000, help="the end-to-end burst, drained to the end"
    )
    parser.add_argument(
        "--record-scale",
        type=float,
        default=1.0,
        help="the grown record's size, as a share of 1,000,000 messages (and the rest)",
    )
    parser.add_argument("--read-times", type=int, default=200, help="each grown read, timed")
    parser.add_argument(
        "--quick", action="store_true", help="3 s phases, RSS over 10 s, a tenth of the record"
    )
    parser.add_argument("--json", type=Path)
    parser.add_argument(
        "--unlocked", action="store_true", help="measure an environment that is not the lock"
    )
    args = parser.parse_args()
    unlocked = require_the_lock(Path(__file__).name, allow_unlocked=args.unlocked)
    if args.quick:
        args.duration_s, args.rss_s, args.e2e_messages = 3.0, 10.0, 600
        args.record_scale, args.read_times = 0.1, 30
    figures = asyncio.run(main_async(args))
    figures["not_the_lock"] = unlocked
    print(table(figures))
    if unlocked:
        print("NOT the lock, measured anyway (--unlocked):\n  " + "\n  ".join(unlocked))
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
