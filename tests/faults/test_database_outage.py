"""PostgreSQL refusing connections, or frozen: every request is answered 503 with Retry-After
within 5 s (Twilio gives up after 15), nothing unstored is ever answered 2xx, and the gateway
recovers by itself. A proxy stands between the app and the real server, which is never touched."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import aiohttp
import pytest
from litestar.testing import AsyncTestClient
from sqlalchemy import select

from dispatch.record.models import Message
from gateway.app import create_app
from gateway.settings import Settings
from tests.conftest import ADMIN, open_db
from tests.support.processes import free_port, process, wait_healthy
from tests.support.proxy import FaultProxy
from tests.support.twilio_webhook import inbound_form, signed, twilio_env

pytestmark = pytest.mark.services

BUDGET_S = 5.0


@pytest.fixture
def proxy(pg_migrated: str) -> Iterator[FaultProxy]:
    upstream = urlparse(pg_migrated.replace("postgresql+asyncpg", "postgresql"))
    with FaultProxy(upstream.hostname or "127.0.0.1", upstream.port or 5432) as server:
        yield server


@pytest.fixture
def settings(
    make_settings: Callable[..., Settings], pg_migrated: str, proxy: FaultProxy
) -> Settings:
    return make_settings(
        database_url=_through(pg_migrated, proxy), **twilio_env("http://127.0.0.1:9")
    )


async def _requests(client: AsyncTestClient[Any]) -> dict[str, Any]:
    """One of each kind of request, timed: (status, seconds, response)."""
    key = uuid.uuid4().hex[:8]
    target, body, headers = signed(inbound_form("hola", sid=f"SMout{key}"))
    calls = {
        "rest": lambda: client.post(
            "/api/v1/messages",
            json={"id": f"out-{key}", "conversation": "out", "sender": "out", "text": "hola"},
        ),
        "webhook": lambda: client.post(target, content=body, headers=headers),
        "read": lambda: client.get("/api/v1/activities/1"),
        "health": lambda: client.get("/healthz"),
    }
    seen = {}
    for name, call in calls.items():
        started = time.monotonic()
        response = await call()
        seen[name] = (response.status_code, time.monotonic() - started, response)
    return {"key": key, **seen}


def _all_unavailable(seen: dict[str, Any]) -> None:
    for name in ("rest", "webhook", "read", "health"):
        status, took_s, response = seen[name]
        assert status == 503, (name, response.text)
        assert took_s < BUDGET_S, (name, took_s)
        assert response.headers["retry-after"] == "5"
        assert response.json()["error"] == "unavailable", (name, took_s, response.text)


async def _until_accepted(client: AsyncTestClient[Any]) -> float:
    started = time.monotonic()
    while time.monotonic() - started < 15:
        response = await client.post(
            "/api/v1/messages",
            json={"id": uuid.uuid4().hex, "conversation": "back", "sender": "back", "text": "hi"},
        )
        if response.status_code == 202:
            return time.monotonic() - started
        assert response.status_code == 503, response.text
    raise AssertionError("the gateway did not recover within 15 s")


async def _nothing_stored(url: str, key: str) -> None:
    async with open_db(url) as sessions, sessions() as session:
        found = await session.scalar(select(Message.id).where(Message.external_id == f"out-{key}"))
    assert found is None


@pytest.mark.parametrize("fault", ["refuse", "freeze"])
async def test_an_unreachable_database_is_503_within_seconds_and_recovers(
    settings: Settings, proxy: FaultProxy, pg_migrated: str, fault: str
) -> None:
    async with AsyncTestClient(create_app(settings)) as client:
        client.headers.update(ADMIN)
        healthy = await _requests(client)
        assert healthy["rest"][0] == 202
        getattr(proxy, fault)()
        try:
            down = await _requests(client)
            _all_unavailable(down)
        finally:
            proxy.heal()
        recovered_s = await _until_accepted(client)
        # Nothing is left half done in the shared db: the app's shutdown drains its jobs, in
        # its own loop (drained from this one, the queue's event was bound to the wrong loop).
    assert recovered_s < 10
    await _nothing_stored(pg_migrated, down["key"])


async def test_with_the_database_frozen_every_request_is_answered_within_the_budget(
    make_env: Callable[..., dict[str, str]],
    pg_migrated: str,
    redis_url: str,
    proxy: FaultProxy,
    tmp_path: Path,
) -> None:
    """A real gateway (and Redis) with PostgreSQL frozen behind the proxy, 200 requests of every
    kind at once, three times: the pool fills with stuck connections and the rest queue behind
    them, and still each is answered 503 within 5 s. (aiohttp as the client: httpx's pool
    itself adds seconds at 200 connections, which is not the gateway's time.)"""
    port = free_port()
    env = make_env(
        database_url=_through(pg_migrated, proxy),
        redis_url=redis_url,
        port=port,
        **twilio_env("http://127.0.0.1:9"),
    )
    base = f"http://127.0.0.1:{port}"
    log = tmp_path / "gateway.log"
    with process(["serve"], env, tmp_path, log) as gateway:
        wait_healthy(base, gateway, log)
        connector = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(base, headers=ADMIN, connector=connector) as http:
            assert (await _timed(http, "rest"))[0] == 202
            proxy.freeze()
            try:
                answers: list[tuple[int, float, str]] = []
                for _ in range(3):
                    kinds = ["rest", "webhook", "read", "health"] * 50
                    answers += await asyncio.gather(*(_timed(http, kind) for kind in kinds))
            finally:
                proxy.heal()
    assert {status for status, _, _ in answers} == {503}, log.read_text()[-3000:]
    assert {error for _, _, error in answers} == {"unavailable"}
    late = sorted(round(took_s, 2) for _, took_s, _ in answers if took_s >= BUDGET_S)
    assert late == [], f"{len(late)} of {len(answers)} answered after {BUDGET_S} s: {late}"


def _through(url: str, proxy: FaultProxy) -> str:
    host_port = urlparse(url.replace("postgresql+asyncpg", "postgresql")).netloc
    return url.replace(host_port.split("@")[-1], f"127.0.0.1:{proxy.port}")


async def _timed(http: aiohttp.ClientSession, kind: str) -> tuple[int, float, str]:
    """(status, seconds, error code) of one request of ``kind``."""
    key = uuid.uuid4().hex[:12]
    started = time.monotonic()
    if kind == "rest":
        body = {"id": f"f-{key}", "conversation": f"f-{key}", "sender": f"f-{key}", "text": "hi"}
        response = await http.post("/api/v1/messages", json=body)
    elif kind == "webhook":
        target, content, headers = signed(inbound_form("hola", sid=f"SMf{key}"))
        response = await http.post(target, data=content, headers=headers)
    elif kind == "read":
        response = await http.get("/api/v1/activities?limit=5")
    else:
        response = await http.get("/healthz")
    answer = await response.json()
    return response.status, time.monotonic() - started, answer.get("error", "")
