"""End to end with real processes: `switchboard serve` + `switchboard worker` on PostgreSQL and
Redis, and `switchboard send` on the embedded default."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import httpx
import pytest
import websockets

from tests.conftest import ADMIN, free_port
from tests.support.flow import outbound, post, wait_for
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

SWITCHBOARD = [str(Path(sys.executable).parent / "switchboard")]


def _env(values: dict[str, str], cwd: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SWITCHBOARD_")}
    return {**env, **values, "PYTHONUNBUFFERED": "1"}


@contextlib.contextmanager
def process(
    args: list[str], env: dict[str, str], cwd: Path, log: Path
) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("wb") as out:
        proc = subprocess.Popen(
            SWITCHBOARD + args, env=_env(env, cwd), cwd=cwd, stdout=out, stderr=subprocess.STDOUT
        )
        try:
            yield proc
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def wait_healthy(
    base: str, proc: subprocess.Popen[bytes], log: Path, timeout_s: float = 30
) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"gateway exited {proc.returncode}:\n{log.read_text()}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                return
        time.sleep(0.1)
    raise AssertionError(f"gateway not healthy in {timeout_s} s:\n{log.read_text()}")


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


def run_cli(args: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*SWITCHBOARD, *args],
        env=_env(env, cwd),
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


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
