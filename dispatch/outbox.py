"""Replies are written in the same transaction that finishes their activity.

So a later activity of the conversation, which may run as soon as this one is finished, can
never overtake this one's reply; and the row, unique per (activity, part), is what lets a reply
go out at most once (see ``workers.replies``).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from dispatch.clean import clean_text
from dispatch.models import ActivityStatus, Delivery, Direction, Message
from dispatch.sql import insert_or_get

__all__ = ["add_reply", "failure_reason", "failure_text", "payload_text", "reply_text"]


def payload_text(payload: dict[str, Any]) -> str:
    """A payload for people: ``client=Acme, amount=120 EUR``."""
    return ", ".join(f"{k}={_plain(v)}" for k, v in payload.items())


def _plain(value: Any) -> str:
    if isinstance(value, dict) and "value" in value:  # an amount
        return f"{value['value']:g} {value.get('currency') or ''}".strip()
    return str(value)


_FAILURES = {
    "forbidden": "Sorry, you are not allowed to do that (request #{id}).",
    "timeout": "Sorry, request #{id} took too long and was stopped.",
    "no_approver": "Sorry, request #{id} needs an approval that no one can give right now.",
    "dispatch_failed": "Sorry, I could not make sense of your message (request #{id}).",
}
_FAILED = "Sorry, request #{id} could not be completed."
_REASONS = {
    "forbidden": "not allowed",
    "timeout": "took too long",
    "no_approver": "no approver",
    "dispatch_failed": "not understood",
}


def failure_text(activity_id: int, error: Any) -> str:
    """What a person is told of a failure: its kind and the request number, never the detail
    (exception text, a service's answer), which stays on the activity."""
    reason = error.get("reason") if isinstance(error, dict) else None
    return _FAILURES.get(str(reason), _FAILED).format(id=activity_id)


def failure_reason(error: Any) -> str:
    """A few words on why something failed, for people (``status 12``)."""
    reason = error.get("reason") if isinstance(error, dict) else None
    return _REASONS.get(str(reason), "could not be completed")


def reply_text(activity_id: int, status: str, details: dict[str, Any]) -> str | None:
    """What to tell the requester about a finished activity (None: nothing to say)."""
    if status == ActivityStatus.COMPLETED:
        result = details.get("result") or {}
        return str(result.get("text") or f"Request #{activity_id} done.")
    if status == ActivityStatus.FAILED:
        return failure_text(activity_id, details.get("error"))
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
                "text": clean_text(text),
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
