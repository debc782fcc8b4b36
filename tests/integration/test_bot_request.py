"""python-telegram-bot's ``Bot`` on our aiohttp backend (``channels.bot_request``), against a
local Bot API server behind a TCP proxy: what it sends, and the errors it raises when the
server stops answering, refuses or cuts (``TimedOut`` only where a reply may have gone out)."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator, Iterator

import pytest
from telegram import Bot, InlineKeyboardButton, InlineKeyboardMarkup, InputFile
from telegram.error import NetworkError, TimedOut

from channels.bot_request import AiohttpRequest
from tests.support.proxy import FaultProxy
from tests.support.telegram_api import BOT_TOKEN, TelegramApi

LIMIT_S = 0.5


@pytest.fixture
def api() -> Iterator[TelegramApi]:
    with TelegramApi() as server:
        yield server
        assert server.unexpected == []


@pytest.fixture
def proxy(api: TelegramApi) -> Iterator[FaultProxy]:
    host, port = api.url.removeprefix("http://").split(":")
    with FaultProxy(host, int(port)) as proxy:
        yield proxy


@pytest.fixture
async def bot(proxy: FaultProxy) -> AsyncIterator[Bot]:
    request = AiohttpRequest(
        4,
        read_timeout=LIMIT_S,
        write_timeout=LIMIT_S,
        connect_timeout=LIMIT_S,
        pool_timeout=LIMIT_S,
    )
    base = f"http://127.0.0.1:{proxy.port}"
    bot = Bot(BOT_TOKEN, base_url=f"{base}/bot", base_file_url=f"{base}/file/bot", request=request)
    await bot.initialize()
    yield bot
    await bot.shutdown()


async def test_a_message_goes_out_as_python_telegram_bot_encodes_it(
    bot: Bot, api: TelegramApi
) -> None:
    markup = InlineKeyboardMarkup([[InlineKeyboardButton("Yes", callback_data="y:1")]])
    sent = await bot.send_message(chat_id=42, text="héllo & <b>", reply_markup=markup)
    again = await bot.send_message(chat_id=42, text="second")
    assert (sent.message_id, again.message_id) == (1, 2)
    call = api.calls[-2]
    assert call.method == "sendMessage"
    assert call.params["chat_id"] == "42"
    assert call.params["text"] == "héllo & <b>"
    assert call.params["reply_markup"] == {
        "inline_keyboard": [[{"text": "Yes", "callback_data": "y:1"}]]
    }


async def test_a_file_is_uploaded_as_multipart(bot: Bot, api: TelegramApi) -> None:
    content = bytes(range(256)) * 4
    await bot.send_document(
        chat_id=7, document=InputFile(content, filename="report.bin"), caption="the report"
    )
    call = api.calls[-1]
    assert call.method == "sendDocument"
    assert call.params["chat_id"] == "7"
    assert call.params["caption"] == "the report"
    filename, uploaded, _ = call.params["document"]
    assert (filename, uploaded) == ("report.bin", content)


async def test_a_server_that_stops_answering_is_a_timeout_within_the_limits(
    bot: Bot, proxy: FaultProxy
) -> None:
    await bot.send_message(chat_id=1, text="warm")  # a kept-alive connection to reuse
    proxy.freeze()
    started = time.monotonic()
    with pytest.raises(TimedOut):  # the reply may have gone out: never sent again
        await bot.send_message(chat_id=1, text="lost in the middle")
    assert time.monotonic() - started < 4 * LIMIT_S + 1.0
    proxy.heal()
    assert (await bot.send_message(chat_id=1, text="back")).text == "back"


async def test_a_refused_or_cut_connection_is_a_network_error(bot: Bot, proxy: FaultProxy) -> None:
    await bot.send_message(chat_id=1, text="warm")
    proxy.refuse()
    with pytest.raises(NetworkError) as refused:
        await bot.send_message(chat_id=1, text="nobody listens")
    assert not isinstance(refused.value, TimedOut)
    proxy.heal()
    await bot.send_message(chat_id=1, text="warm again")
    proxy.cut()  # the kept-alive connection is gone; the next call finds out
    outcome: object
    try:
        outcome = (await bot.send_message(chat_id=1, text="after the cut")).text
    except NetworkError as exc:
        outcome = exc
    assert outcome == "after the cut" or (
        isinstance(outcome, NetworkError) and not isinstance(outcome, TimedOut)
    )
    assert (await bot.send_message(chat_id=1, text="then")).text == "then"


async def test_no_connection_in_time_is_a_network_error_the_reply_never_left(
    proxy: FaultProxy,
) -> None:
    """The one connection is held by a call the frozen server never answers; the next call gets
    no connection within its pool and connect limits: never sent, so safe to send again."""
    request = AiohttpRequest(1, read_timeout=2.0, connect_timeout=0.1, pool_timeout=0.1)
    base = f"http://127.0.0.1:{proxy.port}"
    bot = Bot(BOT_TOKEN, base_url=f"{base}/bot", base_file_url=f"{base}/file/bot", request=request)
    await bot.initialize()
    try:
        proxy.freeze()
        held = asyncio.create_task(bot.send_message(chat_id=1, text="holds the connection"))
        await asyncio.sleep(0.2)
        with pytest.raises(NetworkError) as waited:
            await bot.send_message(chat_id=1, text="never sent")
        assert not isinstance(waited.value, TimedOut)
        with pytest.raises(TimedOut):
            await held
    finally:
        proxy.heal()
        await bot.shutdown()


async def test_calls_go_through_the_environment_proxy_unless_no_proxy_names_the_host(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """HTTP_PROXY and NO_PROXY as httpx honoured them (read once a host, not at every call)."""
    lines: list[str] = []

    async def forward_proxy(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        lines.append(head.split(b"\r\n", 1)[0].decode())
        length = re.search(rb"(?i)content-length: *(\d+)", head)
        await reader.readexactly(int(length.group(1)) if length else 0)
        body = b'{"ok": true, "result": true}'
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
        )
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(forward_proxy, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    for name in ("HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy", "NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("NO_PROXY", "direct.invalid")
    request = AiohttpRequest(2, read_timeout=LIMIT_S, connect_timeout=LIMIT_S)
    await request.initialize()
    try:
        # A host that resolves nowhere: only the proxy can answer for it.
        for _ in range(2):
            assert await request.post(f"http://api.telegram.invalid/bot{BOT_TOKEN}/getMe") is True
        assert lines == [f"POST http://api.telegram.invalid/bot{BOT_TOKEN}/getMe HTTP/1.1"] * 2
        with pytest.raises(NetworkError):  # not proxied: its name does not resolve
            await request.post(f"http://direct.invalid/bot{BOT_TOKEN}/getMe")
        assert len(lines) == 2
    finally:
        await request.shutdown()
        server.close()
        await server.wait_closed()
