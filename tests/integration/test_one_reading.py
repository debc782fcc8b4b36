"""Every signed or authenticated request has exactly one reading: a credential header sent twice,
a Twilio parameter sent twice, or a token with something around it is refused, and nothing of
the request is stored. Against a real `switchboard serve` (a test client would merge repeated
headers into one and could not send a raw byte like a non-breaking space)."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Iterator
from urllib.parse import urlencode

import httpx
import pytest
import websockets
from twilio.request_validator import RequestValidator

from dispatch.record.models import Activity, Message, User
from tests.conftest import ADMIN_TOKEN, count_rows, open_db
from tests.support import whatsapp_cloud_webhook as meta
from tests.support.processes import free_port, process, wait_healthy
from tests.support.telegram_updates import SECRET, telegram_env, text_update
from tests.support.twilio_webhook import AUTH_TOKEN, PUBLIC_URL, inbound_form, signed, twilio_env

pytestmark = pytest.mark.services


@pytest.fixture(scope="module")
def gateway(pg_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """A real gateway on the run's database: (its base URL, the database URL)."""
    asyncio.run(_migrated(pg_url))
    port = free_port()
    values = {
        **telegram_env("http://127.0.0.1:9"),
        **twilio_env("http://127.0.0.1:9"),
        **meta.cloud_env("http://127.0.0.1:9"),
        "database_url": pg_url,
        "port": port,
        "redis_prefix": f"sbtest{uuid.uuid4().hex[:10]}",
        "admin_token": ADMIN_TOKEN,
        "log_level": "WARNING",
    }
    env = {f"SWITCHBOARD_{k.upper()}": str(v) for k, v in values.items()}
    work = tmp_path_factory.mktemp("one-reading")
    log = work / "gateway.log"
    base = f"http://127.0.0.1:{port}"
    with process(["serve"], env, work, log) as proc:
        wait_healthy(base, proc, log)
        yield base, pg_url


async def _migrated(url: str) -> None:
    from dispatch.record.db import DatabaseSettings, create_engine
    from migrations import upgrade

    engine = create_engine(DatabaseSettings(url=url))
    try:
        await upgrade(engine)
    finally:
        await engine.dispose()


@pytest.fixture
async def http(gateway: tuple[str, str]) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=gateway[0], timeout=10) as client:
        yield client


async def _rows(gateway: tuple[str, str]) -> tuple[int, ...]:
    async with open_db(gateway[1]) as sessions:
        return tuple([await count_rows(sessions, model) for model in (Message, Activity, User)])


def _twilio_pairs(sid: str) -> list[tuple[str, str]]:
    return list(inbound_form("echo hola", sid=sid).items())


def _refused(response: httpx.Response) -> None:
    assert response.status_code == 403, response.text
    assert response.json()["error"] == "forbidden"


@pytest.mark.parametrize("right_first", [True, False])
async def test_two_twilio_signatures_are_refused_whichever_is_right(
    http: httpx.AsyncClient, gateway: tuple[str, str], right_first: bool
) -> None:
    target, body, headers = signed(inbound_form("echo hola", sid=f"SMtwo{right_first}"))
    right, wrong = headers["x-twilio-signature"], "d3Jvbmc="
    pairs = [right, wrong] if right_first else [wrong, right]
    before = await _rows(gateway)
    response = await http.post(
        target,
        content=body,
        headers=[
            ("content-type", headers["content-type"]),
            *(("x-twilio-signature", value) for value in pairs),
        ],
    )
    _refused(response)
    assert "x-twilio-signature was sent more than once" in response.json()["detail"]
    assert await _rows(gateway) == before


class _Multi(dict[str, list[str]]):
    def getlist(self, name: str) -> list[str]:
        return self[name]


@pytest.mark.parametrize("param", ["Body", "From", "MessageSid", "To"])
async def test_a_twilio_parameter_sent_twice_is_refused_though_signed(
    http: httpx.AsyncClient, gateway: tuple[str, str], param: str
) -> None:
    pairs = _twilio_pairs(f"SMdup{param}")
    pairs.append(
        (param, "echo other" if param == "Body" else pairs[[k for k, _ in pairs].index(param)][1])
    )
    params = _Multi()
    for key, value in pairs:
        params.setdefault(key, []).append(value)
    # Signed the way Twilio's validator reads repeated names: both values are covered.
    signature = RequestValidator(AUTH_TOKEN).compute_signature(
        f"{PUBLIC_URL}/webhooks/twilio", params
    )
    before = await _rows(gateway)
    response = await http.post(
        "/webhooks/twilio",
        content=urlencode(pairs).encode(),
        headers={
            "content-type": "application/x-www-form-urlencoded",
            "x-twilio-signature": signature,
        },
    )
    _refused(response)
    assert f"{param} sent more than once" in response.json()["detail"]
    assert await _rows(gateway) == before


async def test_two_telegram_secret_headers_are_refused(
    http: httpx.AsyncClient, gateway: tuple[str, str]
) -> None:
    before = await _rows(gateway)
    response = await http.post(
        "/webhooks/telegram",
        json=text_update(9101, "echo hola"),
        headers=[
            ("x-telegram-bot-api-secret-token", SECRET),
            ("x-telegram-bot-api-secret-token", SECRET),
        ],
    )
    _refused(response)
    assert await _rows(gateway) == before


async def test_two_meta_signatures_are_refused(
    http: httpx.AsyncClient, gateway: tuple[str, str]
) -> None:
    body, headers = meta.signed(meta.notification(meta.messages(meta.text("echo hola"))))
    before = await _rows(gateway)
    response = await http.post(
        meta.PATH,
        content=body,
        headers=[
            ("content-type", "application/json"),
            ("x-hub-signature-256", headers["x-hub-signature-256"]),
            ("x-hub-signature-256", headers["x-hub-signature-256"]),
        ],
    )
    _refused(response)
    assert await _rows(gateway) == before


@pytest.mark.parametrize(
    "header",
    [
        b"Bearer " + ADMIN_TOKEN.encode() + b"\xa0",
        b"Bearer \xa0" + ADMIN_TOKEN.encode(),
        b"Bearer " + ADMIN_TOKEN.encode() + "\u200b".encode(),
        b"Bearer  " + ADMIN_TOKEN.encode(),
    ],
    ids=["nbsp after", "nbsp before", "zero width", "two spaces"],
)
async def test_a_token_is_compared_exactly_as_issued(
    http: httpx.AsyncClient, header: bytes
) -> None:
    response = await http.get("/api/v1/activities", headers=[(b"authorization", header)])
    assert response.status_code == 401, response.text
    exact = await http.get("/api/v1/activities", headers={"authorization": f"Bearer {ADMIN_TOKEN}"})
    assert exact.status_code == 200


async def test_two_authorization_headers_are_refused(http: httpx.AsyncClient) -> None:
    response = await http.get(
        "/api/v1/activities",
        headers=[("authorization", f"Bearer {ADMIN_TOKEN}"), ("authorization", "Bearer other")],
    )
    assert response.status_code == 401
    assert "one Authorization header" in response.json()["detail"]


async def test_the_events_socket_compares_its_token_exactly(gateway: tuple[str, str]) -> None:
    url = gateway[0].replace("http://", "ws://") + "/api/v1/events"
    async with websockets.connect(url) as socket:
        await socket.send(json.dumps({"token": f"{ADMIN_TOKEN}\u00a0"}))
        assert '"error"' in str(await asyncio.wait_for(socket.recv(), 10))
        with pytest.raises(websockets.ConnectionClosed) as closed:
            await asyncio.wait_for(socket.recv(), 10)
    assert closed.value.rcvd is not None
    assert closed.value.rcvd.code == 4401
