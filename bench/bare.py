"""The bare endpoint every throughput figure is a ratio to: a litestar POST answering 200,
served by uvicorn as ``switchboard serve`` serves the gateway (one process, same options).

    python bench/bare.py PORT
"""

from __future__ import annotations

import sys

import uvicorn
from litestar import Litestar, Request, post


@post("/webhooks/bare", status_code=200)
async def bare(request: Request[object, object, object]) -> dict[str, bool]:
    await request.body()
    return {"ok": True}


if __name__ == "__main__":
    uvicorn.run(Litestar([bare]), host="127.0.0.1", port=int(sys.argv[1]), log_level="warning")
