"""Replies are written in the same transaction that finishes their activity.

So a later activity of the conversation, which may run as soon as this one is finished, can
never overtake this one's reply; and the row, unique per (activity, part), is what lets a reply
go out at most once (see ``workers.replies``).
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import Any

import msgspec
from sqlalchemy import Boolean, Integer, Select, Text, bindparam, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from dispatch.infra.clean import clean_text
from dispatch.language.i18n import say
from dispatch.record.models import (
    ActivityStatus,
    Conversation,
    Delivery,
    Direction,
    Message,
    utcnow,
)
from dispatch.record.rows import ID, JSON_ROW, KEY, BatchStatement, any_id

__all__ = [
    "Outbox",
    "Reply",
    "add_replies",
    "add_reply",
    "failure_reason",
    "failure_text",
    "give_back",
    "payload_text",
    "pending_of",
    "read_outbox",
    "reply_text",
    "reserve_outboxes",
]


class Outbox(msgspec.Struct, frozen=True, kw_only=True):
    """Replies to hand over, in order, with the conversations they go to (mostly the
    requester's; approval requests go to approvers') and the external id of the message they
    answer. ``reserved``: the one already claimed (``sending``) for whoever holds this, by the
    transaction that wrote them."""

    replies: list[Message]
    conversations: dict[int, Conversation]
    in_reply_to: str | None = None
    reserved: int | None = None


def payload_text(payload: dict[str, Any]) -> str:
    """A payload for people: ``client=Acme, amount=120 EUR``."""
    return ", ".join(f"{k}={_plain(v)}" for k, v in payload.items())


def _plain(value: Any) -> str:
    if isinstance(value, dict) and "value" in value:  # an amount
        return f"{value['value']:g} {value.get('currency') or ''}".strip()
    return str(value)


_KNOWN_FAILURES = frozenset(
    {"forbidden", "timeout", "no_approver", "dispatch_failed", "unavailable"}
)


def _reason(error: Any) -> str | None:
    reason = error.get("reason") if isinstance(error, dict) else None
    return str(reason) if reason in _KNOWN_FAILURES else None


def failure_text(activity_id: int, error: Any, language: str | None = None) -> str:
    """What a person is told of a failure: its kind and the request number, never the detail
    (exception text, a service's answer), which stays on the activity."""
    reason = _reason(error)
    return say(f"failed.{reason}" if reason else "failed", language, id=activity_id)


def failure_reason(error: Any, language: str | None = None) -> str:
    """A few words on why something failed, for people (``status 12``)."""
    reason = _reason(error)
    return say(f"reason.{reason}" if reason else "reason", language)


def reply_text(
    activity_id: int, status: str, details: dict[str, Any], language: str | None = None
) -> str | None:
    """What to tell the requester about a finished activity (None: nothing to say)."""
    if status == ActivityStatus.COMPLETED:
        result = details.get("result") or {}
        return str(result.get("text") or say("done", language, id=activity_id))
    if status == ActivityStatus.FAILED:
        return failure_text(activity_id, details.get("error"), language)
    if status == ActivityStatus.CANCELLED:
        return cancelled_notice(activity_id, language)
    if status == ActivityStatus.WAITING_FOR_AGENT:
        return say("task.waiting", language, id=activity_id)
    if status == ActivityStatus.IN_REVIEW:  # (a council's proposal; an agent's is told apart)
        return say("task.council_review", language, id=activity_id)
    return None


def cancelled_notice(activity_id: int, language: str | None = None) -> str:
    """What a requester is told when an operator withdraws or stops their request, in their
    language."""
    return say("cancel.operator", language, id=activity_id)


class Reply(msgspec.Struct, frozen=True, kw_only=True):
    """A message an activity says, to be sent in parts (see :func:`add_replies`)."""

    activity_id: int
    conversation_id: int
    channel: str
    parts: list[str]
    media: list[dict[str, Any]] | None = None
    choices: list[dict[str, Any]] | None = None
    author: str | None = None


async def add_reply(
    session: AsyncSession,
    *,
    activity_id: int,
    conversation_id: int | None,
    channel: str | None,
    parts: list[str],
    media: list[dict[str, Any]] | None = None,
    choices: list[dict[str, Any]] | None = None,
    author: str | None = None,
) -> None:
    """Queue a message as pending outbound rows, one per part, in order (once each).

    An activity may say several things over its life (approval requests, decisions, its
    result): each message's parts are numbered on after the ones it already has. Callers hold
    the activity's row (a guarded status change or a lock), so numbering cannot race.
    """
    if not parts or conversation_id is None or channel is None:
        return
    reply = Reply(
        activity_id=activity_id,
        conversation_id=conversation_id,
        channel=channel,
        parts=parts,
        media=media,
        choices=choices,
        author=author,
    )
    await add_replies(session, [reply])


async def add_replies(
    session: AsyncSession, replies: Sequence[Reply], *, reserve: bool = False
) -> set[int]:
    """:func:`add_reply` for many activities' messages (one each), in one statement: each
    part numbered on after the last one its activity has, and written unless that number is
    taken (once each). With ``reserve``, a message's first part is written claimed
    (``sending``, as :func:`reserve_outboxes` would claim it) where its activity has no
    earlier reply still to send; returns those parts."""
    rows = [
        _part(r, offset, text, reserve=reserve)
        for r in replies
        for offset, text in enumerate(r.parts)
    ]
    if not rows:
        return set()
    statement, params = _ADD(session, rows)
    written = await session.scalars(statement, {"now": utcnow(), **params})
    return {int(i) for i in written if i is not None}


_PART = (
    ("activity_id", ID),
    ("step", Integer()),
    ("reserve", Boolean()),
    ("channel", KEY),
    ("conversation_id", ID),
    ("sender", KEY),
    ("text", Text()),
    ("media", JSON_ROW),
    ("raw", JSON_ROW),
)
_PENDING_PART, _SENDING_PART = Delivery.PENDING.value, Delivery.SENDING.value
_ADD = BatchStatement(
    "parts",
    _PART,
    lambda w: (
        f"""
        INSERT INTO messages (direction, channel, conversation_id, sender, text, media, raw,
            delivery, activity_id, part, dispatch_attempts, received_at, updated_at)
        SELECT '{Direction.OUTBOUND.value}', w.channel, w.conversation_id, w.sender, w.text,
            w.media, w.raw,
            CASE WHEN w.reserve AND w.step = 1 AND NOT EXISTS (
                    SELECT 1 FROM messages AS m
                    WHERE m.activity_id = w.activity_id AND m.delivery = '{_PENDING_PART}')
                THEN '{_SENDING_PART}' ELSE '{_PENDING_PART}' END,
            w.activity_id,
            COALESCE((SELECT max(m.part) FROM messages AS m
                      WHERE m.activity_id = w.activity_id), -1) + w.step,
            0, :now, :now
        FROM {w} WHERE true ORDER BY w.n
        ON CONFLICT (activity_id, part) DO NOTHING
        RETURNING CASE WHEN delivery = '{_SENDING_PART}' THEN id END"""  # noqa: S608 - no value in it: all bound
    ),
)
"""The statement writing the parts (rows of :data:`_PART`) in their order, ``RETURNING`` those
written claimed."""


def _part(reply: Reply, offset: int, text: str, *, reserve: bool) -> tuple[Any, ...]:
    """A part of a reply, as a row of :data:`_PART`: its place among the reply's parts (from
    1), who wrote it (a person's name, a supervisor answering; else the bot), the attachments
    with the first part, the offered answers with the last (under which buttons make sense)."""
    author = reply.author
    raw = (
        {"choices": reply.choices} if reply.choices and offset == len(reply.parts) - 1 else {}
    ) | ({"author": author} if author else {})
    return (
        reply.activity_id,
        offset + 1,
        reserve,
        reply.channel,
        reply.conversation_id,
        author or "switchboard",
        clean_text(text),
        (reply.media or []) if offset == 0 else [],
        raw,
    )


def pending_of(activity_id: int) -> Select[Message]:
    """An activity's replies still to send, in order."""
    return (
        select(Message)
        .where(Message.activity_id == activity_id, Message.delivery == Delivery.PENDING.value)
        .order_by(Message.part)
    )


async def read_outbox(
    session: AsyncSession, replies: list[Message], source_message_id: int | None
) -> Outbox:
    """``replies`` (in order) with the conversations they go to and the external id of the
    message they answer."""
    return (await _addressed(session, {0: replies}, {0: source_message_id}, set()))[0]


async def reserve_outboxes(
    session: AsyncSession, activities: dict[int, int | None], claimed: Collection[int] = ()
) -> dict[int, Outbox]:
    """The replies still to send of each activity ({activity id: its source message's id}),
    in order, with the conversations they go to and the external id of the message they
    answer (:class:`Outbox`), the first claimed (pending → sending, the at-most-once gate, as
    ``claim_reply``) for the caller, who hands it over at once, unless it is one of
    ``claimed`` already (written so by :func:`add_replies`); the others are claimed one by one
    as their turn comes, so a sender that dies loses the part in flight only. Three or four
    statements, whatever their number."""
    if not activities:
        return {}
    rows = list(
        await session.scalars(_PENDING, {"ids": sorted(activities), "claimed": sorted(claimed)})
    )
    if not rows:
        return {a: Outbox(replies=[], conversations={}) for a in activities}
    replies: dict[int, list[Message]] = {}
    for row in rows:
        replies.setdefault(int(row.activity_id or 0), []).append(row)
    firsts = sorted(r[0].id for r in replies.values() if r[0].id not in claimed)
    if firsts:
        claimed = {*claimed, *await session.scalars(_RESERVE, {"ids": firsts, "now": utcnow()})}
    return await _addressed(session, replies, activities, set(claimed))


async def _addressed(
    session: AsyncSession,
    replies: dict[int, list[Message]],
    sources: dict[int, int | None],
    claimed: set[int],
) -> dict[int, Outbox]:
    """Each activity's outbox ({activity: its replies}, {activity: its source message}): the
    conversations its replies go to and the external id of the message they answer, two
    statements for them all; ``reserved`` where its first reply is one of ``claimed``."""
    rows = [r for mine in replies.values() for r in mine]
    conversations: dict[int, Conversation] = {}
    if rows:
        found = await session.scalars(
            _CONVERSATIONS, {"ids": sorted({r.conversation_id for r in rows})}
        )
        conversations = {c.id: c for c in found}
    answering = sorted({s for a, s in sources.items() if s is not None and replies.get(a)})
    answered: dict[int, str | None] = {}
    if answering:
        answers = await session.execute(_ANSWERED, {"ids": answering})
        answered = {message_id: external_id for message_id, external_id in answers}
    outboxes: dict[int, Outbox] = {}
    for activity_id, source in sources.items():
        mine = replies.get(activity_id, [])
        outboxes[activity_id] = Outbox(
            replies=mine,
            conversations={
                c: conversations[c] for c in {r.conversation_id for r in mine} if c in conversations
            },
            in_reply_to=answered.get(source) if source is not None else None,
            reserved=mine[0].id if mine and mine[0].id in claimed else None,
        )
    return outboxes


async def give_back(session: AsyncSession, message_ids: list[int]) -> None:
    """sending → pending: replies reserved to be sent that were never handed to their
    channel (the sender was stopped first), for a later delivery to send."""
    await session.execute(
        update(Message)
        .where(Message.id.in_(message_ids), Message.delivery == Delivery.SENDING.value)
        .values(delivery=Delivery.PENDING.value, updated_at=utcnow())
        .execution_options(synchronize_session=False)
    )


_TABLE: Any = Message.__table__
# The statements of the batches, built once.
_PENDING = (
    select(Message)
    .where(
        any_id(Message.activity_id),
        or_(Message.delivery == Delivery.PENDING.value, any_id(Message.id, "claimed")),
    )
    .order_by(Message.activity_id, Message.part)
)
_RESERVE = (
    update(_TABLE)
    .where(any_id(_TABLE.c.id), _TABLE.c.delivery == Delivery.PENDING.value)
    .values(delivery=Delivery.SENDING.value, updated_at=bindparam("now"))
    .returning(_TABLE.c.id)
)
_CONVERSATIONS = select(Conversation).where(any_id(Conversation.id))
_ANSWERED = select(Message.id, Message.external_id).where(any_id(Message.id))
