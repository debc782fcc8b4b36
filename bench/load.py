"""A small HTTP/1.1 load generator for ``bench/throughput.py``, run in a process of its own.

Keep-alive connections over raw asyncio streams, requests built up front: on one core it
drives about ten thousand requests a second, enough to saturate a gateway on this machine and
to measure the bare endpoint it is compared with (both through this same client, so the ratio
is fair). Two modes:

- closed loop (``rate_per_s`` None): ``connections`` clients each send, wait for the answer,
  send again, for ``duration_s``;
- open loop: request ``i`` is due at ``start + i / rate_per_s`` whatever happened before;
  latency counts from when it was due (no coordinated omission), and a new connection is
  opened when none is free (up to ``max_connections``).

Each request is ``(path, headers, body, key)``; the result holds, per request sent, its key,
when it was due, when its answer ended (``time.monotonic``, comparable across processes on
one machine) and the status.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

Request = tuple[str, dict[str, str], bytes, str]


@dataclass
class Sample:
    key: str
    due: float
    ended: float
    status: int


@dataclass
class Result:
    samples: list[Sample] = field(default_factory=list)
    errors: int = 0
    started: float = 0.0
    ended: float = 0.0


def _encode(host: str, request: Request) -> bytes:
    path, headers, body, _ = request
    lines = [f"POST {path} HTTP/1.1", f"Host: {host}", f"Content-Length: {len(body)}"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


class _Connection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    async def exchange(self, raw: bytes) -> int:
        self.writer.write(raw)
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        length = 0
        for line in head.split(b"\r\n"):
            if line[:15].lower() == b"content-length:":
                length = int(line[15:])
        if length:
            await self.reader.readexactly(length)
        return status


async def _connect(host: str, port: int) -> _Connection:
    reader, writer = await asyncio.open_connection(host, port)
    return _Connection(reader, writer)


async def closed_loop(
    host: str, ports: list[int], requests: list[Request], *, connections: int, duration_s: float
) -> Result:
    """Client ``i`` talks to ``ports[i % len(ports)]`` (several gateways share the load)."""
    raws = [(_encode(host, r), r[3]) for r in requests]
    result = Result()
    position = 0
    deadline = 0.0

    async def client(port: int) -> None:
        nonlocal position
        connection = await _connect(host, port)
        try:
            while time.monotonic() < deadline and position < len(raws):
                raw, key = raws[position]
                position += 1
                due = time.monotonic()
                try:
                    status = await connection.exchange(raw)
                except (OSError, asyncio.IncompleteReadError):
                    result.errors += 1
                    connection.writer.close()
                    connection = await _connect(host, port)
                    continue
                result.samples.append(Sample(key, due, time.monotonic(), status))
        finally:
            connection.writer.close()

    result.started = time.monotonic()
    deadline = result.started + duration_s
    await asyncio.gather(*(client(ports[n % len(ports)]) for n in range(connections)))
    result.ended = time.monotonic()
    return result


async def open_loop(
    host: str,
    ports: list[int],
    requests: list[Request],
    *,
    rate_per_s: float,
    duration_s: float,
    max_connections: int = 512,
) -> Result:
    """Request ``n`` goes to ``ports[n % len(ports)]``."""
    count = min(len(requests), round(rate_per_s * duration_s))
    raws = [(_encode(host, r), r[3]) for r in requests[:count]]
    result = Result()
    idle: dict[int, list[_Connection]] = {port: [] for port in ports}
    opened = 0
    slots = asyncio.Semaphore(max_connections)
    tasks: set[asyncio.Task[None]] = set()

    async def one(port: int, raw: bytes, key: str, due: float) -> None:
        nonlocal opened
        async with slots:
            reused = bool(idle[port])
            if reused:
                connection = idle[port].pop()
            else:
                opened += 1
                connection = await _connect(host, port)
            try:
                status = await connection.exchange(raw)
            except (OSError, asyncio.IncompleteReadError):
                connection.writer.close()
                if not reused:
                    result.errors += 1
                    return
                # A kept-alive connection the server closed while it was idle (uvicorn closes
                # them after 5 s): the request never reached it. Sent again on a new one, as
                # HTTP clients do; an error only if that fails too.
                opened += 1
                try:
                    connection = await _connect(host, port)
                    status = await connection.exchange(raw)
                except (OSError, asyncio.IncompleteReadError):
                    result.errors += 1
                    connection.writer.close()
                    return
            result.samples.append(Sample(key, due, time.monotonic(), status))
            idle[port].append(connection)

    result.started = start = time.monotonic()
    for n, (raw, key) in enumerate(raws):
        due = start + n / rate_per_s
        wait_s = due - time.monotonic()
        if wait_s > 0:
            await asyncio.sleep(wait_s)
        task = asyncio.create_task(one(ports[n % len(ports)], raw, key, due))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    while tasks:
        await asyncio.gather(*list(tasks))
    result.ended = time.monotonic()
    for connection in (c for pool in idle.values() for c in pool):
        connection.writer.close()
    return result


def run(
    mode: str, host: str, ports: list[int], requests: list[Request], options: dict[str, float]
) -> Result:
    """Entry point for a child process (``multiprocessing``): one measurement."""
    if mode == "closed":
        return asyncio.run(
            closed_loop(
                host,
                ports,
                requests,
                connections=int(options["connections"]),
                duration_s=options["duration_s"],
            )
        )
    return asyncio.run(
        open_loop(
            host,
            ports,
            requests,
            rate_per_s=options["rate_per_s"],
            duration_s=options["duration_s"],
        )
    )
