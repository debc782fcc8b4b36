"""Every request is answered within ``SWITCHBOARD_REQUEST_TIMEOUT_S`` (see also the frozen
database in ``tests/faults``), except the waiting a caller asked for: a synchronous execution
waits its own ``timeout_s`` on top."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from litestar.testing import AsyncTestClient

from gateway.app import create_app
from gateway.settings import Settings
from tests.conftest import ADMIN
from tests.support.http_server import Answer, ScriptedServer

CATALOG = """
[fallback]
agent = "ops"
action = "help"

[agents.ops.actions.help]
description = "help"
handler = "help"
public = true

[agents.ops.actions.slow]
description = "Slow thing"
handler = "http_call"
roles = ["operator"]
timeout_s = 10
[agents.ops.actions.slow.http]
url = "{url}/slow"
retries = 0
timeout_s = 10
reply_field = "message"
"""
BUDGET_S = 0.5
UPSTREAM_S = 1.5


@pytest.fixture
def upstream() -> Iterator[ScriptedServer]:
    with ScriptedServer() as server:
        yield server


@pytest.fixture
async def client(
    make_settings: Callable[..., Settings],
    sqlite_url: str,
    tmp_path: Path,
    upstream: ScriptedServer,
) -> AsyncIterator[AsyncTestClient[Any]]:
    catalog = tmp_path / "catalog.toml"
    catalog.write_text(CATALOG.format(url=upstream.url))
    settings = make_settings(database_url=sqlite_url, catalog=catalog, request_timeout_s=BUDGET_S)
    async with AsyncTestClient(create_app(settings)) as test_client:
        test_client.headers.update(ADMIN)
        yield test_client


async def test_a_synchronous_execution_waits_past_the_budget_as_asked(
    client: AsyncTestClient[Any], upstream: ScriptedServer
) -> None:
    upstream.expect("/slow", Answer(body={"message": "done"}, delay_s=UPSTREAM_S))
    started = time.monotonic()
    response = await client.post(
        "/api/v1/actions/execute",
        json={"agent": "ops", "action_type": "slow", "sync": True, "timeout_s": 5},
    )
    took_s = time.monotonic() - started
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "completed"
    assert took_s >= UPSTREAM_S


async def test_an_asynchronous_execution_is_answered_at_once(
    client: AsyncTestClient[Any], upstream: ScriptedServer
) -> None:
    upstream.expect("/slow", Answer(body={"message": "done"}, delay_s=UPSTREAM_S))
    response = await client.post(
        "/api/v1/actions/execute", json={"agent": "ops", "action_type": "slow"}
    )
    assert response.status_code == 202, response.text
