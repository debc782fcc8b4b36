"""The portal's login lockout, through a real `switchboard serve` (uvicorn decides which address
a request comes from): only failures count, and `X-Forwarded-For` is believed only from the
proxies `SWITCHBOARD_TRUSTED_PROXIES` names."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from dispatch.infra.errors import SettingsError
from gateway.settings import Settings
from tests.support.processes import free_port, process, wait_healthy
from tests.support.runtime import runtime_for

PASSWORD = "correct horse battery"
NAMES = ["sup", "ana", "bea"]


@pytest.fixture
async def users(make_settings: Callable[..., Settings], sqlite_url: str) -> str:
    async with runtime_for(make_settings(database_url=sqlite_url)) as runtime:
        for name in NAMES:
            await runtime.users.add(name, "supervisor")
            await runtime.users.set_password(name, PASSWORD)
    return sqlite_url


@pytest.fixture
def gateway(
    make_env: Callable[..., dict[str, str]], users: str, tmp_path: Path
) -> Iterator[Callable[..., Any]]:
    """Starts a gateway with the given settings; yields its base URL."""
    started: list[Any] = []

    def start(**values: str) -> str:
        port = free_port()
        env = make_env(database_url=users, port=port, **values)
        log = tmp_path / f"gateway-{port}.log"
        context = process(["serve"], env, tmp_path, log)
        proc = context.__enter__()
        started.append(context)
        base = f"http://127.0.0.1:{port}"
        wait_healthy(base, proc, log)
        return base

    yield start
    for context in started:
        context.__exit__(None, None, None)


def _login(
    base: str, name: str, password: str = PASSWORD, forwarded: str | None = None
) -> httpx.Response:
    headers = {"X-Forwarded-For": forwarded} if forwarded else {}
    return httpx.post(
        f"{base}/portal/login",
        json={"name": name, "password": password},
        headers=headers,
        timeout=10,
    )


def test_only_failures_count_a_supervisor_logs_in_all_day(gateway: Callable[..., Any]) -> None:
    base = gateway()
    assert [_login(base, NAMES[i % 3]).status_code for i in range(30)] == [200] * 30
    # Four wrong, then right: the name starts again, and the address holds nothing against it.
    for _ in range(4):
        assert _login(base, "sup", "wrong").status_code == 401
    assert _login(base, "sup").status_code == 200
    for _ in range(4):
        assert _login(base, "sup", "wrong").status_code == 401
    assert _login(base, "sup").status_code == 200
    # Five wrong in a row lock the name (only the name: another user still logs in).
    for _ in range(5):
        assert _login(base, "sup", "wrong").status_code == 401
    locked = _login(base, "sup")
    assert locked.status_code == 429
    assert int(locked.headers["Retry-After"]) > 0
    assert _login(base, "ana").status_code == 200


def test_x_forwarded_for_from_an_untrusted_peer_is_ignored(gateway: Callable[..., Any]) -> None:
    base = gateway()
    # Twenty failures, each claiming another address: all are the peer's, 127.0.0.1.
    for n in range(20):
        failed = _login(base, f"nobody{n}", "wrong", forwarded=f"203.0.113.{n}")
        assert failed.status_code == 401
    refused = _login(base, "ana", forwarded="198.51.100.7")
    assert refused.status_code == 429, "a forged X-Forwarded-For escaped the address lock"


def test_x_forwarded_for_from_a_trusted_proxy_is_the_client(gateway: Callable[..., Any]) -> None:
    base = gateway(trusted_proxies="127.0.0.1, 10.0.0.0/8")
    for n in range(20):
        failed = _login(base, f"nobody{n}", "wrong", forwarded="203.0.113.9")
        assert failed.status_code == 401
    assert _login(base, "ana", forwarded="203.0.113.9").status_code == 429
    # Another client behind the same proxy is not locked out with it.
    assert _login(base, "ana", forwarded="203.0.113.10").status_code == 200


@pytest.mark.parametrize("value", ["not-an-address", "10.0.0.0/33", "127.0.0.1,,bogus"])
def test_a_bad_trusted_proxy_names_the_variable(value: str) -> None:
    with pytest.raises(SettingsError) as caught:
        Settings.from_env({"SWITCHBOARD_TRUSTED_PROXIES": value})
    assert "SWITCHBOARD_TRUSTED_PROXIES" in str(caught.value)
