"""Replies are written in the same transaction that finishes their activity.

So a later activity of the conversation, which may run as soon as this one is finished, can
never overtake this one's reply; and the row, unique per (activity, part), is what lets a reply
go out at most once (see ``workers.replies``).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from dispatch.models import ActivityStatus, Delivery, Direction, Message
from dispatch.sql import insert_or_get

__all__ = ["add_reply", "payload_text", "reply_text"]


def payload_text(payload: dict[str, Any]) -> str:
    """A payload for people: ``client=Acme, amount=120 EUR``."""
    return ", ".join(f"{k}={_plain(v)}" for k, v in payload.items())


def _plain(value: Any) -> str:
    if isinstance(value, dict) and "value" in value:  # an amount
        return f"{value['value']:g} {value.get('currency') or ''}".strip()
    return str(value)


def reply_text(activity_id: int, status: str, details: dict[str, Any]) -> str | None:
    """What to tell the requester about a finished activity (None: nothing to say)."""
    if status == ActivityStatus.COMPLETED:
        result = details.get("result") or {}
        return str(result.get("text") or f"Request #{activity_id} done.")
    if status == ActivityStatus.FAILED:
        error = details.get("error") or {}
        if error.get("reason") == "forbidden":
            return f"Sorry, you are not allowed to do that (request #{activity_id})."
        return f"Sorry, request #{activity_id} failed: {error.get('message', 'unknown error')}"
    return None


async def add_reply(
    session: AsyncSession,
    *,
    activity_id: int,
    conversation_id: int | None,
    channel: str | None,
    parts: list[str],
    media: list[dict[str, Any]] | None = None,
    choices: list[dict[str, Any]] | None = None,
) -> None:
    """Queue a message as pending outbound rows, one per part, in order (once each).

    An activity may say several things over its life (approval requests, decisions, its
    result): each message's parts are numbered on after the ones it already has. Callers hold
    the activity's row (a guarded status change or a lock), so numbering cannot race.
    """
    if not parts or conversation_id is None or channel is None:
        return
    last = await session.scalar(
        select(func.max(Message.part)).where(Message.activity_id == activity_id)
    )
    first = 0 if last is None else int(last) + 1
    for offset, text in enumerate(parts):
        index = first + offset
        await insert_or_get(
            session,
            Message.__table__,  # type: ignore[arg-type]
            {
                "direction": Direction.OUTBOUND.value,
                "channel": channel,
                "external_id": None,
                "conversation_id": conversation_id,
                "sender": "switchboard",
                "text": text,
                # Attachments go with the first part.
                "media": (media or []) if offset == 0 else [],
                # Offered answers go with the last part, under which buttons make sense.
                "raw": {"choices": choices} if choices and offset == len(parts) - 1 else {},
                "delivery": Delivery.PENDING.value,
                "activity_id": activity_id,
                "part": index,
            },
            ("activity_id", "part"),
        )
