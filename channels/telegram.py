"""Telegram through the Bot API: python-telegram-bot as client (``Bot``) behind our own route;
not its ``Application`` loop or webhook server. Webhook updates are read into msgspec Structs
holding the fields of the Bot API's ``Update`` that the gateway uses (on the request path, a
tenth of the cost of building python-telegram-bot's objects), with the same required fields.

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
import dataclasses
import hashlib
import hmac
import logging
from typing import Any, ClassVar

import msgspec
from telegram import Bot, InlineKeyboardButton, InlineKeyboardMarkup
from telegram.error import BadRequest, Forbidden, NetworkError, RetryAfter, TelegramError, TimedOut

from channels import base
from channels.bot_request import AiohttpRequest
from channels.choices import ChoiceTokens
from channels.retry import TryAgain, unknown_outcome, with_retries
from channels.validation import decode_json, require_text
from dispatch.infra.config import NOT_NEGATIVE, POSITIVE, HttpUrl, Matches, setting
from dispatch.infra.errors import ForbiddenError, InvalidInput
from dispatch.language.i18n import say
from dispatch.record.messages import Delivered, InboundMessage, Media, OutboundMessage
from dispatch.record.models import Delivery
from dispatch.record.users import IdentityKind

__all__ = ["ALLOWED_UPDATES", "TelegramChannel", "TelegramSettings"]

log = logging.getLogger("switchboard.telegram")

SECRET_HEADER = "x-telegram-bot-api-secret-token"  # noqa: S105 - a header name
ALLOWED_UPDATES = ("message", "callback_query")


class _User(msgspec.Struct, frozen=True):
    id: int
    is_bot: bool
    first_name: str
    last_name: str | None = None
    language_code: str | None = None

    @property
    def full_name(self) -> str:
        return f"{self.first_name} {self.last_name}" if self.last_name else self.first_name


class _Chat(msgspec.Struct, frozen=True):
    id: int
    type: str


class _PhotoSize(msgspec.Struct, frozen=True):
    file_id: str
    width: int
    height: int


class _Document(msgspec.Struct, frozen=True):
    file_id: str
    mime_type: str | None = None


class _Message(msgspec.Struct, frozen=True):
    message_id: int
    date: int
    chat: _Chat
    from_user: _User | None = msgspec.field(default=None, name="from")
    text: str | None = None
    caption: str | None = None
    photo: list[_PhotoSize] | None = None
    document: _Document | None = None


class _CallbackMessage(msgspec.Struct, frozen=True):
    """A callback's message: possibly an ``InaccessibleMessage``, which still has its chat."""

    chat: _Chat


class _CallbackQuery(msgspec.Struct, frozen=True):
    id: str
    from_user: _User = msgspec.field(name="from")
    chat_instance: str
    message: _CallbackMessage | None = None
    data: str | None = None


class _Update(msgspec.Struct, frozen=True):
    """The part of the Bot API's ``Update`` the gateway reads (other fields are ignored)."""

    update_id: int
    message: _Message | None = None
    callback_query: _CallbackQuery | None = None


@dataclasses.dataclass(frozen=True)
class TelegramSettings(base.ChannelSettings):
    """Telegram Bot API. Enabled when the bot token is set."""

    bot_token: str | None = setting(
        None,
        "TELEGRAM_BOT_TOKEN",
        "Bot token from @BotFather.",
        secret=True,
        check=Matches(r"\d+:[A-Za-z0-9_-]{30,}", "a bot token from @BotFather (123456:ABC...)"),
    )
    secret_token: str | None = setting(
        None,
        "TELEGRAM_SECRET_TOKEN",
        "Secret Telegram sends in X-Telegram-Bot-Api-Secret-Token (1-256 of A-Z a-z 0-9 _ -). "
        "Unset: derived from the bot token, so set-webhook and the gateway always agree on one.",
        secret=True,
        check=Matches(
            "[A-Za-z0-9_-]{1,256}", "1-256 characters of A-Z a-z 0-9 _ - (what Telegram accepts)"
        ),
    )
    api_url: str = setting(
        "https://api.telegram.org",
        "TELEGRAM_API_URL",
        "Base URL of the Bot API; calls go to {url}/bot<token>/<method>.",
        check=HttpUrl(),
    )
    chat_rate_per_s: float = setting(
        1.0, "TELEGRAM_CHAT_RATE_PER_S", "Most messages per second to one chat.", check=POSITIVE
    )
    global_rate_per_s: float = setting(
        30.0,
        "TELEGRAM_GLOBAL_RATE_PER_S",
        "Most messages per second overall (all workers).",
        check=POSITIVE,
    )
    max_retries: int = setting(
        3,
        "TELEGRAM_MAX_RETRIES",
        "Retries of a send refused with 429 (after retry_after) or 5xx.",
        check=NOT_NEGATIVE,
    )
    max_retry_after_s: float = setting(
        60.0,
        "TELEGRAM_MAX_RETRY_AFTER_S",
        "Longest retry_after the sender waits before giving up.",
        check=NOT_NEGATIVE,
    )
    callback_ttl_s: float = setting(
        86400.0, "TELEGRAM_CALLBACK_TTL_S", "How long an inline button stays valid.", check=POSITIVE
    )

    @property
    def enabled(self) -> bool:
        return self.bot_token is not None

    @property
    def webhook_secret(self) -> str:
        """The configured secret, or one derived from the bot token (stable, URL-safe)."""
        if self.secret_token is not None:
            return self.secret_token
        assert self.bot_token is not None
        digest = hmac.new(self.bot_token.encode(), b"switchboard-webhook", hashlib.sha256)
        return base64.urlsafe_b64encode(digest.digest()).decode().rstrip("=")


def _user_id(address: str) -> str:
    if not address.lstrip("-").isdigit():
        raise InvalidInput("a Telegram address is the numeric user id")
    return str(int(address))


TELEGRAM = IdentityKind(name="telegram", normalize=_user_id, help="Telegram numeric user id")


class TelegramChannel(base.WebhookChannel):
    name: ClassVar[str] = "telegram"
    buttons: ClassVar[bool] = True
    identity: ClassVar[IdentityKind] = TELEGRAM
    max_text_chars: ClassVar[int | None] = 4096
    settings_type: ClassVar[type[base.ChannelSettings] | None] = TelegramSettings
    webhook_paths: ClassVar[tuple[str, ...]] = ("/webhooks/telegram",)
    credential_headers: ClassVar[tuple[str, ...]] = (SECRET_HEADER,)

    def __init__(self, settings: TelegramSettings, context: base.ChannelContext) -> None:
        assert settings.bot_token is not None
        self._settings = settings
        self._secret = settings.webhook_secret.encode()
        self._limiter = context.limiter
        self._max_inbound_chars = context.core.max_text_chars
        self._buttons = ChoiceTokens(
            self._secret, ttl_s=settings.callback_ttl_s, lookup=context.choices
        )
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
                    request=AiohttpRequest(connection_pool_size=64),
                )
                await bot.initialize()
                self._bot = bot
            return self._bot

    async def close(self) -> None:
        if self._bot is not None:
            await self._bot.shutdown()

    # -- inbound ---------------------------------------------------------------------------

    async def verify(self, request: base.RawRequest) -> None:
        given = request.headers.get(SECRET_HEADER)
        if given is None:
            raise ForbiddenError("missing X-Telegram-Bot-Api-Secret-Token")
        if not hmac.compare_digest(given.encode(), self._secret):
            raise ForbiddenError("wrong X-Telegram-Bot-Api-Secret-Token")

    def acknowledgement(self) -> base.WebhookReply:
        return base.WebhookReply(body='{"ok":true}', media_type="application/json")

    async def parse(self, request: base.RawRequest) -> base.Received:
        data = decode_json(request.body)
        if not isinstance(data, dict) or not isinstance(data.get("update_id"), int):
            raise InvalidInput("not a Telegram update: update_id is missing")
        try:
            update = msgspec.convert(data, _Update)
        except msgspec.ValidationError as exc:
            raise InvalidInput(f"not a Telegram update: {exc}") from None
        external_id = str(update.update_id)
        if update.callback_query is not None:
            return await self._callback(update, external_id, data)
        message = update.message
        if message is None:
            kind = next((k for k in data if k != "update_id"), "empty")
            return base.Received(
                messages=(self.ignored(external_id, data, f"unhandled update kind: {kind}"),)
            )
        user = message.from_user
        chat_id = str(message.chat.id)
        sender = str(user.id) if user else chat_id
        media = self._media(message)
        text = message.text or message.caption or ""
        if not text.strip() and not media:
            ignored = self.ignored(external_id, data, "unsupported message content", chat_id)
            return base.Received(messages=(ignored,))
        if text.startswith("/"):
            # "/help@my_bot args" → "/help args": commands work in groups too.
            command, _, rest = text.partition(" ")
            text = command.split("@", 1)[0] + (f" {rest}" if rest else "")
        inbound = InboundMessage(
            channel=self.name,
            external_id=external_id,
            conversation_key=chat_id,
            sender=sender,
            sender_name=user.full_name if user else None,
            text=require_text(text, self._max_inbound_chars, has_media=bool(media)),
            media=media,
            raw=data,
        )
        return base.Received(messages=(inbound,))

    @staticmethod
    def _media(message: _Message) -> tuple[Media, ...]:
        if message.photo:
            largest = max(message.photo, key=lambda p: p.width * p.height)
            return (Media(url=f"telegram-file:{largest.file_id}", content_type="image/jpeg"),)
        if message.document is not None:
            document = message.document
            content_type = document.mime_type or "application/octet-stream"
            return (Media(url=f"telegram-file:{document.file_id}", content_type=content_type),)
        return ()

    async def _callback(
        self, update: _Update, external_id: str, data: dict[str, Any]
    ) -> base.Received:
        query = update.callback_query
        assert query is not None
        chat_id = (
            str(query.message.chat.id) if query.message is not None else str(query.from_user.id)
        )
        text = await self._buttons.resolve(query.data or "", chat_id)
        inbound = (
            self.ignored(external_id, data, "forged or stale button", chat_id)
            if text is None
            else InboundMessage(
                channel=self.name,
                external_id=external_id,
                conversation_key=chat_id,
                sender=str(query.from_user.id),
                sender_name=query.from_user.full_name,
                text=text,
                raw=data,
            )
        )

        async def stop_spinner() -> None:
            # After Telegram has its answer, never before; a failure only costs a spinner.
            try:
                bot = await self.bot()
                await bot.answer_callback_query(
                    query.id,
                    text=None
                    if text is not None
                    else say("button.stale", (query.from_user.language_code or "")[:2] or None),
                )
            except TelegramError:
                log.warning("answerCallbackQuery failed", exc_info=True)

        return base.Received(messages=(inbound,), follow_up=stop_spinner)

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
                            callback_data=self._buttons.issue(chat_id, message.message_id, n),
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

        async def attempt() -> Delivered | TryAgain:
            await self._limiter.acquire(
                (f"telegram:chat:{chat}", self._settings.chat_rate_per_s),
                ("telegram:global", self._settings.global_rate_per_s),
            )
            try:
                sent = await getattr(bot, method)(**params)
            except RetryAfter as exc:
                return TryAgain(f"telegram 429: {exc}", after_s=_seconds(exc.retry_after))
            except (BadRequest, Forbidden) as exc:
                code = 403 if isinstance(exc, Forbidden) else 400
                return Delivered(
                    status=Delivery.FAILED.value, error=f"telegram {code}: {exc.message}"
                )
            except TimedOut as exc:
                return unknown_outcome(exc)
            except NetworkError as exc:
                return TryAgain(f"telegram: {exc.message}")
            # A message id is unique within its chat only.
            return Delivered(status=Delivery.SENT.value, external_id=f"{chat}:{sent.message_id}")

        return await with_retries(
            attempt,
            retries=self._settings.max_retries,
            backoff_s=0.5,
            max_wait_s=self._settings.max_retry_after_s,
        )

    # -- webhook management (the CLI) ------------------------------------------------------

    async def set_webhook(self, url: str, *, drop_pending_updates: bool) -> str:
        bot = await self.bot()
        await bot.set_webhook(
            url,
            secret_token=self._settings.webhook_secret,
            allowed_updates=list(ALLOWED_UPDATES),
            drop_pending_updates=drop_pending_updates,
        )
        return f"secret token set; updates: {', '.join(ALLOWED_UPDATES)}"

    async def webhook_info(self) -> dict[str, Any]:
        bot = await self.bot()
        info = await bot.get_webhook_info()
        return dict(info.to_dict())

    async def delete_webhook(self, *, drop_pending_updates: bool) -> None:
        bot = await self.bot()
        await bot.delete_webhook(drop_pending_updates=drop_pending_updates)


def _seconds(value: Any) -> float:
    return float(value.total_seconds()) if hasattr(value, "total_seconds") else float(value)
