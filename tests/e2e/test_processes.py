"""End to end with real processes: `switchboard serve` + `switchboard worker` on PostgreSQL and
Redis, and `switchboard send` on the embedded default."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import httpx
import pytest
import websockets

from dispatch.record.models import Message
from tests.conftest import ADMIN, open_db
from tests.support import whatsapp_cloud_webhook as meta
from tests.support.flow import outbound, post, wait_for
from tests.support.graph_api import GraphApi
from tests.support.processes import (
    free_port,
    process,
    run_cli,
    wait_healthy,
)
from tests.support.telegram_api import TelegramApi
from tests.support.telegram_updates import SECRET, telegram_env, text_update
from tests.support.twilio_api import TwilioApi
from tests.support.twilio_webhook import (
    ACCOUNT_SID,
    AUTH_TOKEN,
    WHATSAPP_FROM,
    inbound_form,
    signed,
    twilio_env,
)


@contextlib.asynccontextmanager
async def gateway_and_worker(
    env: dict[str, str], tmp_path: Path, pids: dict[str, int] | None = None
) -> AsyncIterator[str]:
    """`switchboard serve` and `switchboard worker`, healthy; yields the gateway's base URL
    (and fills ``pids`` with each process's id)."""
    base = f"http://127.0.0.1:{env['SWITCHBOARD_PORT']}"
    gateway_log, worker_log = tmp_path / "gateway.log", tmp_path / "worker.log"
    with (
        process(["serve"], env, tmp_path, gateway_log) as gateway,
        process(["worker"], env, tmp_path, worker_log) as worker,
    ):
        if pids is not None:
            pids.update(gateway=gateway.pid, worker=worker.pid)
        await asyncio.to_thread(wait_healthy, base, gateway, gateway_log)
        try:
            yield base
        except BaseException:
            print(gateway_log.read_text(), worker_log.read_text())
            raise


@pytest.mark.services
async def test_gateway_and_worker_processes_on_postgres_and_redis(
    make_env: Callable[..., dict[str, str]], pg_migrated: str, redis_url: str, tmp_path: Path
) -> None:
    port = free_port()
    env = make_env(database_url=pg_migrated, redis_url=redis_url, port=port)
    async with (
        gateway_and_worker(env, tmp_path) as base,
        httpx.AsyncClient(base_url=base, timeout=10, headers=ADMIN) as client,
    ):
        health = (await client.get("/healthz")).json()
        assert health == {"status": "ok", "database": "postgresql", "jobs": "arq"}
        body = (await post(client, "echo over REST", id="e2e-1", conversation="e2e")).json()
        [reply] = await outbound(client, body["conversation_id"], timeout_s=30)
        assert reply["text"] == "over REST"

        async with websockets.connect(f"ws://127.0.0.1:{port}/chat/ws") as socket:
            hello = json.loads(await socket.recv())
            assert hello["type"] == "hello"
            await socket.send(json.dumps({"id": "e2e-ws", "text": "repite por websocket"}))
            frames = [json.loads(await asyncio.wait_for(socket.recv(), 30)) for _ in range(2)]
        reply_frame = next(f for f in frames if f["type"] == "reply")
        assert reply_frame["text"] == "por websocket"
        assert reply_frame["in_reply_to"] == "e2e-ws"


@pytest.mark.services
async def test_execute_waits_for_the_worker_process_and_answers_the_result(
    make_env: Callable[..., dict[str, str]], pg_migrated: str, redis_url: str, tmp_path: Path
) -> None:
    port = free_port()
    env = make_env(database_url=pg_migrated, redis_url=redis_url, port=port)
    async with (
        gateway_and_worker(env, tmp_path) as base,
        httpx.AsyncClient(base_url=base, timeout=40, headers=ADMIN) as client,
    ):
        named = await client.post(
            "/api/v1/actions/execute",
            json={
                "agent": "assistant",
                "action_type": "echo",
                "payload": {"text": "hola"},
                "sync": True,
                "timeout_s": 20,
            },
        )
        assert named.status_code == 200, named.text
        body = named.json()
        assert (body["status"], body["created"], body["warning"]) == ("completed", True, None)
        assert body["result"]["text"] == "hola"
        by_intent = await client.post(
            "/api/v1/actions/execute", json={"intent": "repite adiós", "sync": True}
        )
        assert by_intent.status_code == 200, by_intent.text
        assert by_intent.json()["result"]["text"] == "adiós"


@pytest.mark.services
async def test_whatsapp_webhook_to_reply_through_a_worker_process(
    make_env: Callable[..., dict[str, str]], pg_migrated: str, redis_url: str, tmp_path: Path
) -> None:
    """Signed webhook in → activity → arq worker process → reply at the Twilio API server."""
    port = free_port()
    with TwilioApi(ACCOUNT_SID, AUTH_TOKEN) as api:
        env = make_env(
            database_url=pg_migrated, redis_url=redis_url, port=port, **twilio_env(api.url)
        )
        base = f"http://127.0.0.1:{port}"
        gateway_log, worker_log = tmp_path / "gateway.log", tmp_path / "worker.log"
        with process(["serve"], env, tmp_path, gateway_log) as gateway:
            await asyncio.to_thread(wait_healthy, base, gateway, gateway_log)
            target, body, headers = signed(inbound_form("echo desde Twilio", sid="SMe2e"))
            async with httpx.AsyncClient(base_url=base, timeout=10, headers=ADMIN) as client:
                # No worker yet: the webhook is answered anyway, as soon as it is stored.
                response = await client.post(target, content=body, headers=headers)
            assert response.status_code == 200
            assert response.text.endswith("<Response/>")
            await asyncio.sleep(0.5)
            assert api.attempts == []
            with process(["worker"], env, tmp_path, worker_log):
                await wait_for(lambda: asyncio.sleep(0, result=bool(api.sent)), timeout_s=30)
        [message] = api.sent
        assert (message.to, message.from_, message.body) == (
            "whatsapp:+34600111222",
            WHATSAPP_FROM,
            "desde Twilio",
        )
        assert api.unexpected == []


@pytest.mark.services
async def test_whatsapp_cloud_webhook_to_reply_through_a_worker_process(
    make_env: Callable[..., dict[str, str]], pg_migrated: str, redis_url: str, tmp_path: Path
) -> None:
    """Meta's subscription check, then a signed webhook → arq worker process → reply at the
    Graph API server, and its status report moves the reply forward."""
    port = free_port()
    with GraphApi() as api:
        env = make_env(
            database_url=pg_migrated, redis_url=redis_url, port=port, **meta.cloud_env(api.url)
        )
        async with (
            gateway_and_worker(env, tmp_path) as base,
            httpx.AsyncClient(base_url=base, timeout=10, headers=ADMIN) as client,
        ):
            check = await client.get(
                meta.PATH,
                params={
                    "hub.mode": "subscribe",
                    "hub.verify_token": meta.VERIFY_TOKEN,
                    "hub.challenge": "424242",
                },
            )
            assert (check.status_code, check.text) == (200, "424242")
            payload = meta.notification(meta.messages(meta.text("echo desde Meta")))
            body, headers = meta.signed(payload)
            assert (await client.post(meta.PATH, content=body, headers=headers)).status_code == 200
            [reply] = await asyncio.to_thread(api.wait_sent, 1, 30)
            ours = int(reply["biz_opaque_callback_data"].removeprefix("sb:"))
            report = meta.status("wamid.e2e", "read", ours=ours)
            body, headers = meta.signed(meta.notification({"statuses": [report]}))
            assert (await client.post(meta.PATH, content=body, headers=headers)).status_code == 200
        async with open_db(pg_migrated) as sessions, sessions() as session:
            row = await session.get(Message, ours)
        assert reply["text"]["body"] == "desde Meta"
        assert row is not None
        assert (row.channel, row.delivery) == ("whatsapp_cloud", "read")
        assert row.external_id is not None
        assert row.external_id.startswith("wamid.")  # the send's, which a report never replaces
        assert api.unexpected == []


@pytest.mark.services
async def test_telegram_update_to_reply_through_a_worker_process(
    make_env: Callable[..., dict[str, str]], pg_migrated: str, redis_url: str, tmp_path: Path
) -> None:
    """Update in → activity → arq worker process → reply at the Bot API server."""
    port = free_port()
    with TelegramApi() as api:
        env = make_env(
            database_url=pg_migrated, redis_url=redis_url, port=port, **telegram_env(api.url)
        )
        async with gateway_and_worker(env, tmp_path) as base:
            async with httpx.AsyncClient(base_url=base, timeout=10, headers=ADMIN) as client:
                response = await client.post(
                    "/webhooks/telegram",
                    json=text_update(9001, "repite desde Telegram", chat_id=31337),
                    headers={"X-Telegram-Bot-Api-Secret-Token": SECRET},
                )
            assert response.status_code == 200
            await wait_for(
                lambda: asyncio.sleep(0, result=bool(api.calls_to("sendMessage"))), timeout_s=30
            )
        [sent] = api.calls_to("sendMessage")
        assert (sent.params["chat_id"], sent.params["text"]) == ("31337", "desde Telegram")
        assert api.unexpected == []


def test_telegram_webhook_commands(make_env: Callable[..., dict[str, str]], tmp_path: Path) -> None:
    with TelegramApi() as api:
        env = make_env(**telegram_env(api.url))
        result = run_cli(["telegram", "set-webhook", "--drop-pending-updates"], tmp_path, **env)
        assert result.returncode == 0, result.stderr
        assert api.webhook == {
            "url": "https://bot.example.com/webhooks/telegram",
            "secret_token": SECRET,
            "allowed_updates": ["message", "callback_query"],
            "drop_pending_updates": True,
        }
        info = run_cli(["telegram", "webhook-info"], tmp_path, **env)
        assert info.returncode == 0, info.stderr
        assert '"url": "https://bot.example.com/webhooks/telegram"' in info.stdout
        assert SECRET not in info.stdout + info.stderr + result.stdout + result.stderr
        deleted = run_cli(["telegram", "delete-webhook"], tmp_path, **env)
        assert deleted.returncode == 0, deleted.stderr
        assert api.webhook == {}
        assert api.unexpected == []


def test_cli_send_on_the_embedded_default(tmp_path: Path) -> None:
    """A newcomer's first command: no database set up, no Redis, just an answer."""
    result = run_cli(["send", "help"], tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("You can ask:")
    assert "Repeat a text back" in result.stdout
    assert (tmp_path / "switchboard.db").exists()  # created and migrated on first use
    migrate = run_cli(["migrate"], tmp_path)  # idempotent on an up-to-date database
    assert migrate.returncode == 0, migrate.stderr
    echo = run_cli(["send", "echo ¡hola!"], tmp_path)
    assert echo.stdout == "¡hola!\n"


def test_bad_setting_fails_at_start_with_a_clear_message(tmp_path: Path) -> None:
    result = run_cli(["send", "help"], tmp_path, SWITCHBOARD_MAX_BODY_BYTES="huge")
    assert result.returncode == 2
    assert result.stderr.startswith("switchboard: SWITCHBOARD_MAX_BODY_BYTES:")


def test_settings_command_shows_every_value_and_its_source(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text(
        "SWITCHBOARD_PORT=9000\nSWITCHBOARD_TELEGRAM_BOT_TOKEN=123456:" + "A" * 35 + "\n"
    )
    result = run_cli(["settings"], tmp_path, SWITCHBOARD_LLM_MODEL="local-model")
    assert result.returncode == 0, result.stderr
    lines = {line.split(" = ")[0]: line for line in result.stdout.splitlines() if " = " in line}
    assert lines["SWITCHBOARD_PORT"] == "SWITCHBOARD_PORT = 9000  [.env; default 8000]"
    assert lines["SWITCHBOARD_LLM_MODEL"] == (
        "SWITCHBOARD_LLM_MODEL = local-model  [env; default gpt-4o-mini]"
    )
    assert lines["SWITCHBOARD_HOST"] == "SWITCHBOARD_HOST = 127.0.0.1  [default]"
    assert lines["SWITCHBOARD_TELEGRAM_BOT_TOKEN"] == (
        "SWITCHBOARD_TELEGRAM_BOT_TOKEN = ********  [.env]"
    )
    assert lines["SWITCHBOARD_WHATSAPP_CLOUD_ACCESS_TOKEN"].endswith("= (unset)  [default]")
    assert "A" * 35 not in result.stdout
    # Every group, wherever it is declared, is listed.
    for owner in ("DATABASE_URL", "WORKER_MAX_JOBS", "TWILIO_ACCOUNT_SID", "ADMIN_TOKEN"):
        assert f"SWITCHBOARD_{owner}" in lines
