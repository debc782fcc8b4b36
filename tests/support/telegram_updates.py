"""Telegram updates as the Bot API posts them to a webhook."""

from __future__ import annotations

from typing import Any

from tests.support.telegram_api import BOT_TOKEN

SECRET = "test-secret_0123456789"
PUBLIC_URL = "https://bot.example.com"


def telegram_env(api_url: str, **extra: Any) -> dict[str, Any]:
    return {
        "telegram_bot_token": BOT_TOKEN,
        "telegram_secret_token": SECRET,
        "telegram_api_url": api_url,
        "public_url": PUBLIC_URL,
        **extra,
    }


def _user(user_id: int) -> dict[str, Any]:
    return {
        "id": user_id,
        "is_bot": False,
        "first_name": "Ana",
        "last_name": "García",
        "language_code": "es",
    }


def update_with(
    update_id: int, *, chat_id: int = 4242, user_id: int | None = None, **content: Any
) -> dict[str, Any]:
    return {
        "update_id": update_id,
        "message": {
            "message_id": update_id,
            "date": 1700000000,
            "chat": {"id": chat_id, "type": "private", "first_name": "Ana"},
            "from": _user(user_id or chat_id),
            **content,
        },
    }


def text_update(
    update_id: int, text: str, *, chat_id: int = 4242, user_id: int | None = None
) -> dict[str, Any]:
    return update_with(update_id, chat_id=chat_id, user_id=user_id, text=text)


def callback_update(
    update_id: int, data: str, *, chat_id: int, query_id: str, user_id: int | None = None
) -> dict[str, Any]:
    return {
        "update_id": update_id,
        "callback_query": {
            "id": query_id,
            "from": _user(user_id or chat_id),
            "chat_instance": "-1234567890",
            "data": data,
            "message": {
                "message_id": 99,
                "date": 1700000000,
                "chat": {"id": chat_id, "type": "private", "first_name": "Ana"},
                "from": {"id": 123456789, "is_bot": True, "first_name": "Switchboard"},
                "text": "You can ask:",
            },
        },
    }
