"""A TCP proxy between the app and a real server (PostgreSQL, Redis), for fault tests.

The Toxiproxy idea, small: it listens on 127.0.0.1 and forwards to the real server, and a test
can make it refuse new connections (:meth:`FaultProxy.refuse`), cut the live ones
(:meth:`FaultProxy.cut`), freeze everything — connections accepted, nothing forwarded either way,
as a server stopped with SIGSTOP would (:meth:`FaultProxy.freeze`) — and heal it again. The
shared servers themselves are never touched. It runs its own event loop in a thread, so the app
may be in this process (any loop) or another.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from typing import Self

from tests.support.processes import free_port

__all__ = ["FaultProxy"]


class FaultProxy:
    def __init__(self, upstream_host: str, upstream_port: int) -> None:
        self._upstream = (upstream_host, upstream_port)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.Server | None = None
        self._links: set[tuple[asyncio.StreamWriter, asyncio.StreamWriter]] = set()
        self._flowing = asyncio.Event()
        self.connections = 0
        self.port = free_port()

    # -- control (from any thread) -----------------------------------------------------------

    def __enter__(self) -> Self:
        self._thread.start()
        self._call(self._listen())
        self._loop.call_soon_threadsafe(self._flowing.set)
        return self

    def __exit__(self, *exc: object) -> None:
        self._call(self._stop())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)

    def refuse(self) -> None:
        """New connections are refused (nothing listens) and live ones are cut."""
        self._call(self._stop())

    def cut(self) -> None:
        """Live connections are dropped; new ones go through."""
        self._call(self._drop())

    def freeze(self) -> None:
        """Connections are accepted, but nothing is forwarded, either way, until healed."""
        self._loop.call_soon_threadsafe(self._flowing.clear)

    def heal(self) -> None:
        """Back to forwarding (listening again after :meth:`refuse`)."""
        self._call(self._listen())
        self._loop.call_soon_threadsafe(self._flowing.set)

    def _call(self, coro: object) -> None:
        asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout=10)  # type: ignore[arg-type]

    # -- the proxy (its own loop) ----------------------------------------------------------

    async def _listen(self) -> None:
        if self._server is None:
            self._server = await asyncio.start_server(
                self._accept, "127.0.0.1", self.port, reuse_address=True
            )

    async def _stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        await self._drop()

    async def _drop(self) -> None:
        for client, upstream in list(self._links):
            for writer in (client, upstream):
                with contextlib.suppress(Exception):
                    writer.transport.abort()
        self._links.clear()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        await self._flowing.wait()  # a frozen server does not answer the handshake either
        try:
            up_reader, up_writer = await asyncio.open_connection(*self._upstream)
        except OSError:
            writer.transport.abort()
            return
        link = (writer, up_writer)
        self._links.add(link)
        try:
            await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))
        finally:
            self._links.discard(link)
            for side in link:
                with contextlib.suppress(Exception):
                    side.transport.abort()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(Exception):
            while True:
                data = await reader.read(65536)
                if not data:
                    break
                await self._flowing.wait()
                writer.write(data)
                await writer.drain()
        with contextlib.suppress(Exception):
            writer.write_eof()
