"""A small Switchboard deployment on loopback, for fault tests and ``bench/faults.py``.

One `switchboard serve` and any number of `switchboard worker` processes on a real PostgreSQL
database and Redis db (Redis optionally behind a :class:`~tests.support.proxy.FaultProxy`), a
local Telegram Bot API server that receives the replies, and a local HTTP service that the
catalog's one action (``work <text>``, an ``http_call``) calls: each call there is one handler
run, timed, so re-runs and overlaps are seen from outside. Messages go in as signed Telegram
webhooks. :meth:`Cluster.figures` counts what came out, from the outside and the database.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import re
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

import aiohttp
import httpx
import msgspec
from sqlalchemy import func, select

from dispatch.record.models import (
    TERMINAL_STATUSES,
    UNDISPATCHED,
    Activity,
    Delivery,
    Direction,
    Message,
)
from tests.support.local_server import LocalServer, QuietHandler
from tests.support.processes import process, wait_healthy
from tests.support.telegram_api import TelegramApi
from tests.support.telegram_updates import SECRET, telegram_env, text_update

__all__ = ["Cluster", "Figures", "Run", "WorkServer"]

CATALOG = """
[fallback]
agent = "system"
action = "help"

[agents.ops.actions.work]
description = "Work on something for a while"
handler = "http_call"
public = true
timeout_s = 120
[agents.ops.actions.work.payload]
text = {{ type = "string" }}
[agents.ops.actions.work.http]
url = "{url}/work"
retries = 0
timeout_s = 120

[[rules]]
id = "work"
agent = "ops"
action = "work"
patterns = ['^work\\s+(?P<text>\\S+)$']
"""
FIRST_CHAT = 700_000
JOB_LINE = re.compile(rb"\] job (dispatch_message|run_activity): [^\n]*\[switchboard\.worker\]")
"""A worker's line for each job it ran (structlog's console lines)."""


@dataclass
class Run:
    """One handler run, as the action's upstream saw it."""

    activity_id: int
    text: str
    started: float
    ended: float | None = None


class WorkServer(LocalServer):
    """The ``work`` action's upstream: answers ``{"reply": "done <text>"}`` after ``delay_s``."""

    def __init__(self, delay_s: float = 0.0) -> None:
        self.delay_s = delay_s
        self.runs: list[Run] = []
        self._lock = threading.Lock()
        owner = self

        class Handler(QuietHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)))
                run = Run(int(body["activity_id"]), str(body["payload"]["text"]), time.monotonic())
                with owner._lock:
                    owner.runs.append(run)
                time.sleep(owner.delay_s)
                run.ended = time.monotonic()
                self.send_json(200, {"reply": f"done {run.text}"})

        self._serve(Handler)

    def running(self) -> int:
        with self._lock:
            return sum(run.ended is None for run in self.runs)

    def overlapping(self) -> int:
        """Activities two of whose runs were in the upstream at the same time."""
        by_activity: dict[int, list[Run]] = {}
        with self._lock:
            for run in self.runs:
                by_activity.setdefault(run.activity_id, []).append(run)
        overlapping = 0
        for runs in by_activity.values():
            runs.sort(key=lambda r: r.started)
            if any(
                later.started < (earlier.ended or float("inf"))
                for earlier, later in itertools.pairwise(runs)
            ):
                overlapping += 1
        return overlapping


class Figures(msgspec.Struct, kw_only=True):
    """What a run did. ``doubled``: messages answered more than once; ``lost``: never answered;
    ``stuck``: messages, activities or replies not in a final state."""

    sent: int
    accepted: int
    activities: int
    handler_runs: int
    overlapping_runs: int
    replies: int
    doubled: int
    lost: int
    stuck: int
    jobs: int

    @property
    def jobs_per_message(self) -> float:
        return self.jobs / self.sent if self.sent else 0.0

    def row(self) -> dict[str, Any]:
        return {**msgspec.to_builtins(self), "jobs_per_message": round(self.jobs_per_message, 2)}


@dataclass
class Cluster:
    """Use as an async context manager; ``env`` holds the SWITCHBOARD_* values (database, Redis,
    port, prefix ...) that every process gets."""

    env: dict[str, str]
    workdir: Path
    delay_s: float = 0.0
    work: WorkServer = field(init=False)
    telegram: TelegramApi = field(init=False)
    gateway: subprocess.Popen[bytes] = field(init=False)
    workers: list[subprocess.Popen[bytes]] = field(default_factory=list, init=False)
    sent: list[str] = field(default_factory=list, init=False)
    accepted: int = field(default=0, init=False)
    ack_s: list[float] = field(default_factory=list, init=False)
    """How long each webhook took to be answered."""
    server_errors: int = field(default=0, init=False)
    """Webhooks answered 5xx."""
    _stack: contextlib.ExitStack = field(default_factory=contextlib.ExitStack, init=False)
    _update_ids: Iterator[int] = field(default_factory=lambda: itertools.count(1), init=False)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.env['SWITCHBOARD_PORT']}"

    async def __aenter__(self) -> Self:
        self.work = self._stack.enter_context(WorkServer(self.delay_s))
        self.telegram = self._stack.enter_context(TelegramApi())
        catalog = self.workdir / "catalog.toml"
        catalog.write_text(CATALOG.format(url=self.work.url))
        self.env = {
            **self.env,
            **_variables(telegram_env(self.telegram.url)),
            "SWITCHBOARD_CATALOG": str(catalog),
        }
        log = self.workdir / "gateway.log"
        self.gateway = self._stack.enter_context(process(["serve"], self.env, self.workdir, log))
        await asyncio.to_thread(wait_healthy, self.base_url, self.gateway, log)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await asyncio.to_thread(self._stack.close)

    # -- processes -----------------------------------------------------------------------------

    def start_worker(self, **values: Any) -> subprocess.Popen[bytes]:
        """One more `switchboard worker`, logging each job (INFO) to ``worker-<n>.log``."""
        env = {**self.env, "SWITCHBOARD_LOG_LEVEL": "INFO", **_variables(values)}
        log = self.workdir / f"worker-{len(self.workers)}.log"
        worker = self._stack.enter_context(process(["worker"], env, self.workdir, log))
        self.workers.append(worker)
        return worker

    @staticmethod
    async def stop(worker: subprocess.Popen[bytes], sig: int, *, timeout_s: float = 60) -> int:
        """Send ``sig`` and wait for the worker to end; its exit code."""
        worker.send_signal(sig)
        return await asyncio.to_thread(worker.wait, timeout_s)

    def logs(self, *, tail_chars: int = 6000) -> str:
        """Every process's output (the last ``tail_chars`` of each; 0: all of it)."""
        return "\n".join(
            f"== {path.name}\n{path.read_text(errors='replace')[-tail_chars:]}"
            for path in sorted(self.workdir.glob("*.log"))
        )

    # -- traffic ---------------------------------------------------------------------------------

    async def send(self, messages: int, *, conversations: int, concurrency: int = 32) -> None:
        """``messages`` Telegram webhooks (``work m<n>``), spread round-robin over
        ``conversations`` chats, ``concurrency`` at a time; in order within each chat."""
        first = len(self.sent)
        texts = [f"m{first + n}" for n in range(messages)]
        self.sent.extend(texts)
        chats: dict[int, list[str]] = {}
        for n, text in enumerate(texts):
            chats.setdefault(FIRST_CHAT + (first + n) % conversations, []).append(text)
        limit = asyncio.Semaphore(concurrency)
        headers = {"X-Telegram-Bot-Api-Secret-Token": SECRET}

        async def chat(client: httpx.AsyncClient, chat_id: int, lines: list[str]) -> None:
            for text in lines:
                update = text_update(next(self._update_ids), f"work {text}", chat_id=chat_id)
                async with limit:
                    started = time.monotonic()
                    response = await client.post("/webhooks/telegram", json=update, headers=headers)
                    self.ack_s.append(time.monotonic() - started)
                self.accepted += response.is_success
                self.server_errors += response.status_code >= 500

        async with httpx.AsyncClient(base_url=self.base_url, timeout=30) as client:
            await asyncio.gather(*(chat(client, c, lines) for c, lines in chats.items()))

    async def storm(self, messages: int, *, copies: int) -> None:
        """A provider's retry storm: ``messages`` webhooks (``work m<n>``, a chat each), every
        one posted ``copies`` times, all at once (aiohttp: httpx's pool adds seconds of its own
        at thousands of connections). A message counts as accepted once any copy got a 2xx."""
        first = len(self.sent)
        texts = [f"m{first + n}" for n in range(messages)]
        self.sent.extend(texts)
        bodies = [
            json.dumps(text_update(next(self._update_ids), f"work {text}", chat_id=FIRST_CHAT + n))
            for n, text in enumerate(texts)
        ]
        headers = {"X-Telegram-Bot-Api-Secret-Token": SECRET, "content-type": "application/json"}
        ok: set[int] = set()
        connector = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(self.base_url, connector=connector) as http:

            async def post(n: int) -> None:
                started = time.monotonic()
                async with http.post("/webhooks/telegram", data=bodies[n], headers=headers) as got:
                    await got.read()
                    self.ack_s.append(time.monotonic() - started)
                    if 200 <= got.status < 300:
                        ok.add(n)
                    self.server_errors += got.status >= 500

            await asyncio.gather(*(post(n) for _ in range(copies) for n in range(messages)))
        self.accepted += len(ok)

    async def reply_time(self, text: str, *, chat_id: int, timeout_s: float = 60) -> float:
        """Send one webhook (``work <text>``) and wait for its reply: the seconds it took."""
        self.sent.append(text)
        update = text_update(next(self._update_ids), f"work {text}", chat_id=chat_id)
        started = time.monotonic()
        async with httpx.AsyncClient(base_url=self.base_url, timeout=30) as client:
            response = await client.post(
                "/webhooks/telegram",
                json=update,
                headers={"X-Telegram-Bot-Api-Secret-Token": SECRET},
            )
        self.accepted += response.is_success
        self.server_errors += response.status_code >= 500
        while time.monotonic() - started < timeout_s:
            if self.replies()[text]:
                return time.monotonic() - started
            await asyncio.sleep(0.02)
        return float("inf")

    def replies(self) -> Counter[str]:
        """How often each message was answered, by its text."""
        return Counter(
            str(call.params.get("text", "")).removeprefix("done ")
            for call in self.telegram.calls_to("sendMessage")
            if str(call.params.get("text", "")).startswith("done ")
        )

    # -- figures ----------------------------------------------------------------------------------

    async def unfinished(self, sessions: Any) -> int:
        """Messages not yet interpreted, activities not finished, replies not handed over."""
        async with sessions() as session:
            messages = await session.scalar(
                select(func.count())
                .select_from(Message)
                .where(
                    Message.direction == Direction.INBOUND.value,
                    Message.state.in_([s.value for s in UNDISPATCHED]),
                )
            )
            activities = await session.scalar(
                select(func.count())
                .select_from(Activity)
                .where(Activity.status.not_in([s.value for s in TERMINAL_STATUSES]))
            )
            replies = await session.scalar(
                select(func.count())
                .select_from(Message)
                .where(
                    Message.direction == Direction.OUTBOUND.value,
                    Message.delivery.in_([Delivery.PENDING.value, Delivery.SENDING.value]),
                )
            )
        return int(messages or 0) + int(activities or 0) + int(replies or 0)

    async def settle(self, sessions: Any, *, timeout_s: float, quiet_s: float = 1.0) -> bool:
        """Wait until every message sent is answered and nothing is unfinished, then ``quiet_s``
        more (for any late double to show); False if that did not happen in ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            answered = self.replies()
            if all(answered[text] for text in self.sent) and not await self.unfinished(sessions):
                await asyncio.sleep(quiet_s)
                return True
            await asyncio.sleep(0.2)
        return False

    def jobs(self) -> int:
        """Jobs run by all workers (each logs one line per job)."""
        return sum(
            len(JOB_LINE.findall(path.read_bytes())) for path in self.workdir.glob("worker-*.log")
        )

    async def figures(self, sessions: Any) -> Figures:
        answered = self.replies()
        async with sessions() as session:
            activities = await session.scalar(
                select(func.count()).select_from(Activity).where(Activity.action_type == "work")
            )
        return Figures(
            sent=len(self.sent),
            accepted=self.accepted,
            activities=int(activities or 0),
            handler_runs=len(self.work.runs),
            overlapping_runs=self.work.overlapping(),
            replies=sum(answered.values()),
            doubled=sum(1 for text in self.sent if answered[text] > 1),
            lost=sum(1 for text in self.sent if not answered[text]),
            stuck=await self.unfinished(sessions),
            jobs=self.jobs(),
        )


def _variables(values: dict[str, Any]) -> dict[str, str]:
    return {f"SWITCHBOARD_{key.upper()}": str(value) for key, value in values.items()}


def redis_through(url: str, port: int) -> str:
    """``url`` (redis://host:port/db) pointed at a proxy on 127.0.0.1:``port``."""
    return re.sub(r"//[^/]+/", f"//127.0.0.1:{port}/", url, count=1)
