"""The bare endpoint every throughput figure is a ratio to: a litestar POST answering 200,
served by uvicorn as ``switchboard serve`` serves the gateway (one process, same options).
With ``--trivial``, the load generator's ceiling instead: a raw asyncio protocol answering
every request with a fixed 200 (no framework, no parsing beyond finding where a request ends).

    python bench/bare.py PORT [--trivial]
"""

from __future__ import annotations

import asyncio
import sys

import uvicorn
from litestar import Litestar, Request, post


@post("/webhooks/bare", status_code=200)
async def bare(request: Request[object, object, object]) -> dict[str, bool]:
    await request.body()
    return {"ok": True}


_ANSWER = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 11\r\n\r\n"
_ANSWER += b'{"ok":true}'


class _Trivial(asyncio.Protocol):
    """Answers each request once its head and body (``Content-Length``) have arrived."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport, self.buffer = transport, b""

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while (end := self.buffer.find(b"\r\n\r\n")) >= 0:
            length = 0
            for line in self.buffer[:end].split(b"\r\n"):
                if line[:15].lower() == b"content-length:":
                    length = int(line[15:])
            if len(self.buffer) < end + 4 + length:
                return
            self.buffer = self.buffer[end + 4 + length :]
            self.transport.write(_ANSWER)


async def _trivial(port: int) -> None:
    server = await asyncio.get_running_loop().create_server(_Trivial, "127.0.0.1", port)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    if "--trivial" in sys.argv:
        asyncio.run(_trivial(int(sys.argv[1])))
    else:
        uvicorn.run(Litestar([bare]), host="127.0.0.1", port=int(sys.argv[1]), log_level="warning")
