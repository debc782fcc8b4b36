"""The portal's sessions: who may log in, the cookie, CSRF on every change, and the lockout
after repeated wrong passwords."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from litestar.testing import AsyncTestClient

from gateway.app import create_app
from gateway.settings import Settings
from tests.support.runtime import runtime_for

PASSWORD = "correct horse battery"


@pytest.fixture
async def client(
    make_settings: Callable[..., Settings], sqlite_url: str
) -> AsyncIterator[AsyncTestClient[Any]]:
    settings = make_settings(database_url=sqlite_url)
    async with runtime_for(settings) as runtime:
        for name, role in [("sup", "supervisor"), ("gus", "guest"), ("old", "operator")]:
            await runtime.users.add(name, role)
            await runtime.users.set_password(name, PASSWORD)
        await runtime.users.set_active("old", False)
    async with AsyncTestClient(create_app(settings)) as test_client:
        yield test_client


async def _login(client: AsyncTestClient[Any], name: str, password: str = PASSWORD) -> Any:
    return await client.post("/portal/login", json={"name": name, "password": password})


async def test_a_supervisor_logs_in_and_changes_need_the_csrf_token(
    client: AsyncTestClient[Any],
) -> None:
    logged = await _login(client, "sup")
    assert logged.status_code == 200, logged.text
    set_cookie = logged.headers["set-cookie"]
    assert "HttpOnly" in set_cookie
    assert "samesite=strict" in set_cookie.lower()
    assert "Secure" not in set_cookie  # plain HTTP here; behind HTTPS it is set
    csrf = logged.json()["csrf"]
    assert (await client.get("/portal/me")).json()["user"]["name"] == "sup"
    listed = await client.get("/api/v1/activities")  # the cookie stands for an operator token
    assert listed.status_code == 200
    forged = await client.post("/api/v1/activities/1/cancel")
    assert (forged.status_code, forged.json()["error"]) == (403, "forbidden")
    assert "X-CSRF-Token" in forged.json()["detail"]
    wrong = await client.post("/api/v1/activities/1/cancel", headers={"X-CSRF-Token": "nope"})
    assert wrong.status_code == 403
    real = await client.post("/api/v1/activities/1/cancel", headers={"X-CSRF-Token": csrf})
    assert real.status_code == 404  # past the guard: there is no activity 1
    admin_only = await client.get("/api/v1/users")
    assert admin_only.status_code == 403  # a supervisor is an operator here, not an admin
    out = await client.post("/portal/logout", headers={"X-CSRF-Token": csrf})
    assert out.status_code == 200
    client.cookies.clear()
    assert (await client.get("/api/v1/activities")).status_code == 401


@pytest.mark.parametrize(
    ("name", "password", "status"),
    [
        ("sup", "wrong password", 401),
        ("nobody", PASSWORD, 401),
        ("gus", PASSWORD, 403),  # a guest has no portal
        ("old", PASSWORD, 401),  # deactivated
    ],
)
async def test_who_is_refused(
    client: AsyncTestClient[Any], name: str, password: str, status: int
) -> None:
    refused = await _login(client, name, password)
    assert refused.status_code == status, refused.text
    assert "set-cookie" not in refused.headers


async def test_a_forged_or_tampered_cookie_is_no_session(client: AsyncTestClient[Any]) -> None:
    logged = await _login(client, "sup")
    cookie = logged.cookies["sb_portal"]
    body, _, signature = cookie.partition(".")
    client.cookies.clear()
    for bad in [f"{body}.{signature[:-2]}xx", f"{body[:-2]}AA.{signature}", "garbage"]:
        client.cookies.set("sb_portal", bad)
        assert (await client.get("/api/v1/activities")).status_code == 401
        assert (await client.get("/portal/me")).status_code == 401


async def test_repeated_wrong_passwords_lock_the_name_out(client: AsyncTestClient[Any]) -> None:
    for _ in range(5):
        assert (await _login(client, "sup", "wrong password")).status_code == 401
    locked = await _login(client, "sup")  # even the right password, for a while
    assert locked.status_code == 429
    assert int(locked.headers["retry-after"]) >= 1
    assert (await _login(client, "gus", "wrong password")).status_code == 401  # others are not


async def test_a_login_is_json_only_so_no_other_site_can_post_one(
    client: AsyncTestClient[Any],
) -> None:
    form = await client.post(
        "/portal/login",
        content=f'{{"name": "sup", "password": "{PASSWORD}"}}',
        headers={"Content-Type": "text/plain"},
    )
    assert form.status_code == 400
    assert "set-cookie" not in form.headers
