"""Telegram through the Bot API: python-telegram-bot as client (``Bot``) and parser
(``Update.de_json``) behind our own route; not its ``Application`` loop or webhook server.

Inbound: the ``X-Telegram-Bot-Api-Secret-Token`` header is compared in constant time. Text,
captions with photos/documents, commands and inline-button callbacks are handled; every other
update is stored as ignored and answered 200, so Telegram never retries it forever.

Outbound: plain text (no parse mode, so user content cannot break formatting), split at 4,096
characters, paced per chat and overall, 429 retried after ``retry_after``, 400/403 final.
Offered choices become inline buttons whose callback data is short, opaque and signed.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, ClassVar

import msgspec
from telegram import Bot, InlineKeyboardButton, InlineKeyboardMarkup, Update
from telegram.error import BadRequest, Forbidden, NetworkError, RetryAfter, TelegramError, TimedOut
from telegram.request import HTTPXRequest

from channels.base import ChannelAdapter, RawRequest
from channels.messages import Choice, Delivered, InboundMessage, Media, OutboundMessage
from channels.ratelimit import RateLimiter
from channels.validation import require_text
from dispatch.models import Delivery
from gateway.errors import ForbiddenError, InvalidInput
from gateway.settings import TelegramSettings

__all__ = ["ALLOWED_UPDATES", "TelegramChannel"]

log = logging.getLogger("switchboard.telegram")

SECRET_HEADER = "x-telegram-bot-api-secret-token"  # noqa: S105 - a header name
ALLOWED_UPDATES = ("message", "callback_query")
STALE_BUTTON = "This button is no longer valid."
_SIG_CHARS = 16

# (conversation key, offered choices) of one of our outbound messages, by its id.
ChoiceLookup = Callable[[int], Awaitable[tuple[str, list[Choice]] | None]]


def _b36(number: int) -> str:
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"
    out = ""
    while True:
        number, rest = divmod(number, 36)
        out = digits[rest] + out
        if number == 0:
            return out


class TelegramChannel(ChannelAdapter):
    name: ClassVar[str] = "telegram"
    max_text_chars: ClassVar[int | None] = 4096

    def __init__(
        self,
        *,
        settings: TelegramSettings,
        limiter: RateLimiter,
        lookup: ChoiceLookup,
        max_text_chars: int,
    ) -> None:
        assert settings.bot_token is not None
        self._settings = settings
        self._secret = settings.webhook_secret.encode()
        self._limiter = limiter
        self._lookup = lookup
        self._max_inbound_chars = max_text_chars
        self._bot: Bot | None = None
        self._bot_lock = asyncio.Lock()

    # -- the client ------------------------------------------------------------------------

    async def bot(self) -> Bot:
        """The initialized ``Bot`` (created in the running loop; ``getMe`` on first use)."""
        async with self._bot_lock:
            if self._bot is None:
                bot = Bot(
                    self._settings.bot_token or "",
                    base_url=f"{self._settings.api_url.rstrip('/')}/bot",
                    base_file_url=f"{self._settings.api_url.rstrip('/')}/file/bot",
                    request=HTTPXRequest(connection_pool_size=64),
                )
                await bot.initialize()
                self._bot = bot
            return self._bot

    async def close(self) -> None:
        if self._bot is not None:
            await self._bot.shutdown()

    # -- inbound ---------------------------------------------------------------------------

    async def verify(self, request: RawRequest) -> None:
        given = request.headers.get(SECRET_HEADER)
        if given is None:
            raise ForbiddenError("missing X-Telegram-Bot-Api-Secret-Token")
        if not hmac.compare_digest(given.encode(), self._secret):
            raise ForbiddenError("wrong X-Telegram-Bot-Api-Secret-Token")

    async def parse(self, request: RawRequest) -> InboundMessage:
        try:
            data = msgspec.json.decode(request.body)
        except msgspec.DecodeError as exc:
            raise InvalidInput(f"malformed JSON: {exc}") from None
        if not isinstance(data, dict) or not isinstance(data.get("update_id"), int):
            raise InvalidInput("not a Telegram update: update_id is missing")
        try:
            update = Update.de_json(data, None)
        except (TypeError, KeyError, ValueError) as exc:
            raise InvalidInput(f"not a Telegram update: {exc}") from None
        external_id = str(update.update_id)
        if update.callback_query is not None:
            return await self._callback(update, external_id, data)
        message = update.message
        if message is None:
            kind = next((k for k in data if k != "update_id"), "empty")
            return self._ignored(external_id, data, f"unhandled update kind: {kind}")
        user = message.from_user
        chat_id = str(message.chat.id)
        sender = str(user.id) if user else chat_id
        media = self._media(message)
        text = message.text or message.caption or ""
        if not text.strip() and not media:
            return self._ignored(external_id, data, "unsupported message content", chat_id)
        if text.startswith("/"):
            # "/help@my_bot args" → "/help args": commands work in groups too.
            command, _, rest = text.partition(" ")
            text = command.split("@", 1)[0] + (f" {rest}" if rest else "")
        return InboundMessage(
            channel=self.name,
            external_id=external_id,
            conversation_key=chat_id,
            sender=sender,
            sender_name=user.full_name if user else None,
            text=require_text(text, self._max_inbound_chars, has_media=bool(media)),
            media=media,
            raw=data,
        )

    @staticmethod
    def _media(message: Any) -> tuple[Media, ...]:
        if message.photo:
            largest = max(message.photo, key=lambda p: p.width * p.height)
            return (Media(url=f"telegram-file:{largest.file_id}", content_type="image/jpeg"),)
        if message.document is not None:
            document = message.document
            content_type = document.mime_type or "application/octet-stream"
            return (Media(url=f"telegram-file:{document.file_id}", content_type=content_type),)
        return ()

    def _ignored(
        self, external_id: str, data: dict[str, Any], reason: str, chat_id: str = "unknown"
    ) -> InboundMessage:
        return InboundMessage(
            channel=self.name,
            external_id=external_id,
            conversation_key=chat_id,
            sender=chat_id,
            text="",
            raw=data,
            ignored=reason,
        )

    async def _callback(
        self, update: Update, external_id: str, data: dict[str, Any]
    ) -> InboundMessage:
        query = update.callback_query
        assert query is not None
        chat_id = (
            str(query.message.chat.id) if query.message is not None else str(query.from_user.id)
        )
        text = await self._resolve(query.data or "", chat_id)
        if text is None:
            return self._ignored(external_id, data, "forged or stale button", chat_id)
        return InboundMessage(
            channel=self.name,
            external_id=external_id,
            conversation_key=chat_id,
            sender=str(query.from_user.id),
            sender_name=query.from_user.full_name,
            text=text,
            raw=data,
        )

    @staticmethod
    def callback_query_id(message: InboundMessage) -> str | None:
        query = message.raw.get("callback_query")
        return str(query["id"]) if isinstance(query, dict) and "id" in query else None

    async def answer_callback(self, query_id: str, text: str | None) -> None:
        """Stop the button's spinner; a failure here only costs the user a spinner."""
        try:
            bot = await self.bot()
            await bot.answer_callback_query(query_id, text=text or None)
        except TelegramError:
            log.warning("answerCallbackQuery failed", exc_info=True)

    # -- buttons ---------------------------------------------------------------------------

    def _sign(self, chat_id: str, payload: str) -> str:
        mac = hmac.new(self._secret, f"{chat_id}|{payload}".encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(mac).decode()[:_SIG_CHARS]

    def callback_data(self, chat_id: str, message_id: int, index: int) -> str:
        """``<message>.<choice>.<minute issued>.<signature>``, all base36 but the signature."""
        payload = f"{_b36(message_id)}.{_b36(index)}.{_b36(int(time.time() // 60))}"
        return f"{payload}.{self._sign(chat_id, payload)}"

    async def _resolve(self, data: str, chat_id: str) -> str | None:
        """The chosen text, if the button is ours, for this chat, fresh and still on record."""
        parts = data.split(".")
        if len(parts) != 4:
            return None
        payload, signature = ".".join(parts[:3]), parts[3]
        if not hmac.compare_digest(signature.encode(), self._sign(chat_id, payload).encode()):
            return None
        try:
            message_id, index, minute = (int(p, 36) for p in parts[:3])
        except ValueError:
            return None
        if time.time() - minute * 60 > self._settings.callback_ttl_s:
            return None
        found = await self._lookup(message_id)
        if found is None or found[0] != chat_id or index >= len(found[1]):
            return None
        return found[1][index].text

    # -- outbound --------------------------------------------------------------------------

    async def send(self, message: OutboundMessage) -> Delivered:
        chat_id = message.conversation_key
        markup = None
        if message.choices and message.message_id is not None:
            markup = InlineKeyboardMarkup(
                [
                    [
                        InlineKeyboardButton(
                            choice.label[:64],
                            callback_data=self.callback_data(chat_id, message.message_id, n),
                        )
                    ]
                    for n, choice in enumerate(message.choices)
                ]
            )
        last = Delivered(status=Delivery.SENT.value)
        if message.text:
            last = await self._call(
                chat_id, "send_message", chat_id=chat_id, text=message.text, reply_markup=markup
            )
            if last.status == Delivery.FAILED:
                return last
        for media in message.media:
            photo = media.content_type.startswith("image/")
            target = media.url.removeprefix("telegram-file:")
            if photo:
                last = await self._call(chat_id, "send_photo", chat_id=chat_id, photo=target)
            else:
                last = await self._call(chat_id, "send_document", chat_id=chat_id, document=target)
            if last.status == Delivery.FAILED:
                return last
        return last

    async def _call(self, chat: str, method: str, **params: Any) -> Delivered:
        bot = await self.bot()
        attempt = 0
        while True:
            await self._limiter.acquire(
                (f"telegram:chat:{chat}", self._settings.chat_rate_per_s),
                ("telegram:global", self._settings.global_rate_per_s),
            )
            try:
                sent = await getattr(bot, method)(**params)
            except RetryAfter as exc:
                wait_s = _seconds(exc.retry_after)
                if (
                    attempt >= self._settings.max_retries
                    or wait_s > self._settings.max_retry_after_s
                ):
                    return Delivered(status=Delivery.FAILED.value, error=f"telegram 429: {exc}")
                await asyncio.sleep(wait_s)
            except (BadRequest, Forbidden) as exc:
                code = 403 if isinstance(exc, Forbidden) else 400
                return Delivered(
                    status=Delivery.FAILED.value, error=f"telegram {code}: {exc.message}"
                )
            except TimedOut:
                # The request may have been delivered: retrying could send it twice.
                return Delivered(
                    status=Delivery.FAILED.value, error="telegram: timed out, not retried"
                )
            except NetworkError as exc:
                if attempt >= self._settings.max_retries:
                    return Delivered(status=Delivery.FAILED.value, error=f"telegram: {exc.message}")
                await asyncio.sleep(0.5 * 2**attempt)
            else:
                return Delivered(status=Delivery.SENT.value, external_id=str(sent.message_id))
            attempt += 1

    # -- webhook management (the CLI) ------------------------------------------------------

    async def set_webhook(self, url: str, *, drop_pending_updates: bool) -> bool:
        bot = await self.bot()
        return bool(
            await bot.set_webhook(
                url,
                secret_token=self._settings.webhook_secret,
                allowed_updates=list(ALLOWED_UPDATES),
                drop_pending_updates=drop_pending_updates,
            )
        )

    async def webhook_info(self) -> dict[str, Any]:
        bot = await self.bot()
        info = await bot.get_webhook_info()
        return dict(info.to_dict())

    async def delete_webhook(self, *, drop_pending_updates: bool) -> bool:
        bot = await self.bot()
        return bool(await bot.delete_webhook(drop_pending_updates=drop_pending_updates))


def _seconds(value: Any) -> float:
    return float(value.total_seconds()) if hasattr(value, "total_seconds") else float(value)
