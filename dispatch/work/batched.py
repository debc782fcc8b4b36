"""Dispatch in batches: the ordinary messages of many conversations, a few statements.

Messages asked to be dispatched at about the same time (a job's batch, every conversation's
next message) are taken together (:class:`~dispatch.infra.group.GroupCommit`): one statement
reads them with their senders, one claims those whose turn it is, the rules interpret them
(microseconds), one statement writes their activities, one their events, one finds what holds
each back, one each conversation's next message.

Only the ordinary message goes this way: its conversation has nothing open (no question, no
person holding it), the rules settle it, and its requester may run it at once without an
approval. Anything else is left to :class:`~dispatch.work.service.DispatchService`'s own path,
message by message (it comes back None), which handles every case. Both claim the message the
same way (its turn, no one holding it), so either may take any message.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol

import msgspec
from sqlalchemy import bindparam, exists, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.orm import aliased

from dispatch.infra.group import GroupCommit
from dispatch.language.i18n import spoken
from dispatch.policy.catalog import Catalog
from dispatch.policy.permissions import may_request
from dispatch.policy.specs import ActionSpec
from dispatch.record.activities import ActivityView, ManyActivities, Opening
from dispatch.record.models import (
    UNDISPATCHED,
    Activity,
    ActivityStatus,
    Conversation,
    ConversationState,
    Direction,
    Message,
    MessageState,
    User,
    utcnow,
)
from dispatch.record.rows import ID, KEY, BatchStatement, any_id
from dispatch.record.turns import Turns
from dispatch.understanding.intents import Intent
from dispatch.work.approvals import expiry

__all__ = ["Ask", "BatchDispatcher", "Claimed", "Dispatched", "details_of", "opening_of"]

log = logging.getLogger("switchboard.dispatch")


class Claimed(msgspec.Struct, frozen=True, kw_only=True):
    """An activity claimed to run as it was recorded, its requester's permission checked."""

    activity: ActivityView
    attempt: int
    role: str | None
    active: bool


class Dispatched(msgspec.Struct, frozen=True, kw_only=True):
    """What dispatching a message did: ``recorded`` its activity (``created``), found it
    already there, or recorded nothing yet (``waiting`` for an earlier message, ``busy`` being
    dispatched elsewhere, ``ignored``) or for good (``failed``)."""

    activity_id: int | None = None
    status: str | None = None
    created: bool = False
    outcome: str = "recorded"
    conversation_id: int | None = None
    running: Claimed | None = None
    """The activity, claimed to run at once by the caller."""
    looked_ahead: bool = False
    following: int | None = None
    """If ``looked_ahead``: the conversation's next message awaiting its dispatch."""


class Ask(msgspec.Struct, frozen=True):
    """A message to dispatch: with ``lease_s``, its activity claimed to run at once if it
    may; with ``look_ahead``, the conversation's next message to dispatch found too."""

    message_id: int
    lease_s: float | None
    look_ahead: bool


class Source(Protocol):
    """What an activity opened for a message takes from it."""

    @property
    def id(self) -> int: ...
    @property
    def user_id(self) -> int | None: ...
    @property
    def channel(self) -> str: ...
    @property
    def conversation_id(self) -> int: ...
    @property
    def received_at(self) -> Any: ...


def details_of(intent: Intent, provenance: dict[str, Any], *, allowed: bool) -> dict[str, Any]:
    """A chat request's details: its payload and where it came from, and why it was refused."""
    details: dict[str, Any] = {"payload": intent.payload, "provenance": provenance}
    if not allowed:
        details["error"] = {
            "reason": "forbidden",
            "message": f"you may not run {intent.agent}.{intent.action_type}",
        }
    return details


def opening_of(
    message: Source,
    intent: Intent,
    action: ActionSpec | None,
    details: dict[str, Any],
    status: ActivityStatus,
    *,
    lease_s: float | None,
) -> Opening:
    """The activity a chat message asks for, as it is opened (running here with ``lease_s``)."""
    approval = action.approval if action is not None else None
    return Opening(
        agent=intent.agent,
        action_type=intent.action_type,
        description=action.description if action else "",
        details=details,
        status=status,
        event_data={"payload": intent.payload, "provenance": details["provenance"]},
        actor=f"user:{message.user_id}" if message.user_id else "system",
        actor_user_id=message.user_id,
        source_message_id=message.id,
        source_channel=message.channel,
        conversation_id=message.conversation_id,
        order_key=message.id,
        priority=(action.priority if action else "normal"),
        completed_at=message.received_at if status == ActivityStatus.FAILED else None,
        expires_at=expiry(approval)
        if approval is not None and status == ActivityStatus.AWAITING_APPROVAL
        else None,
        lease_s=lease_s,
    )


Reader = Callable[[Any], Awaitable[tuple[Intent, Any] | None]]
"""How a message is read: by the rules alone, its conversation holding nothing open (the
intent, and what becomes of the conversation's state: ``keep`` when nothing is asked); None
where the LLM is to read it."""


class _Row(msgspec.Struct, frozen=True, kw_only=True):
    """A message read for the batch, with its sender and conversation."""

    id: int
    conversation_id: int
    user_id: int | None
    channel: str
    text: str
    raw: dict[str, Any]
    received_at: Any
    role: str | None
    active: bool
    chosen: str | None
    """The language its sender chose."""
    remembered: str | None
    """Its conversation's language, as remembered."""


class _Understood(msgspec.Struct, frozen=True, kw_only=True):
    row: _Row
    intent: Intent
    action: ActionSpec
    parse_us: float


def _load() -> Any:
    """The messages of a batch still to dispatch, whose conversations hold nothing open."""
    return (
        select(
            Message.id,
            Message.conversation_id,
            Message.user_id,
            Message.channel,
            Message.text,
            Message.raw,
            Message.received_at,
            User.role,
            User.active,
            User.language,
            Conversation.language,
        )
        .join(Conversation, Conversation.id == Message.conversation_id)
        .outerjoin(User, User.id == Message.user_id)
        .where(
            any_id(Message.id),
            Message.direction == Direction.INBOUND.value,
            Message.state == MessageState.RECEIVED.value,
            ~exists().where(ConversationState.conversation_id == Message.conversation_id),
        )
    )


def _claim() -> Any:
    """Claim and mark dispatched, in the transaction that records their activities, the
    messages whose turn it is (no earlier one of their conversation awaits its dispatch)."""
    earlier = aliased(Message)
    table: Any = Message.__table__
    return (
        update(table)
        .where(
            any_id(table.c.id),
            table.c.state == MessageState.RECEIVED.value,
            ~exists().where(
                earlier.conversation_id == table.c.conversation_id,
                earlier.direction == Direction.INBOUND.value,
                earlier.state.in_([s.value for s in UNDISPATCHED]),
                earlier.id < table.c.id,
            ),
        )
        .values(
            state=MessageState.DISPATCHED.value,
            dispatch_attempts=table.c.dispatch_attempts + 1,
            claimed_until=None,
            updated_at=_NOW,
        )
        .returning(table.c.id)
    )


def _existing() -> Any:
    return select(
        Activity.source_message_id, Activity.id, Activity.status, Activity.conversation_id
    ).where(any_id(Activity.source_message_id))


_SHOWN = (("cid", ID), ("language", KEY))
_REMEMBER = BatchStatement(
    "shown",
    _SHOWN,
    lambda w: (
        f"""
        UPDATE conversations SET language = w.language
        FROM {w}
        WHERE conversations.id = w.cid
          AND (conversations.language IS NULL OR conversations.language <> w.language)"""  # noqa: S608 - no value in it: all bound
    ),
)
"""Each conversation's language ({conversation: language}), as its latest message showed it."""


_NOW: Any = bindparam("now")
_LOAD, _CLAIM, _EXISTING = _load(), _claim(), _existing()


class BatchDispatcher:
    """The ordinary messages of many conversations, dispatched together."""

    def __init__(
        self,
        *,
        sessions: async_sessionmaker[AsyncSession],
        catalog: Catalog,
        read: Reader,
    ) -> None:
        self._sessions = sessions
        self._catalog = catalog
        self._read = read
        self._group: GroupCommit[Ask, Dispatched | None] = GroupCommit(
            self._dispatch, name="dispatch"
        )

    async def dispatch(self, ask: Ask) -> Dispatched | None:
        """The message dispatched with others asked for now; None: not an ordinary one (or
        not now), for the caller's own path."""
        return await self._group.submit(ask)

    async def close(self) -> None:
        await self._group.close()

    async def _dispatch(self, asks: Sequence[Ask]) -> list[Dispatched | None]:
        # A message asked for twice at once (its own job and its conversation's look-ahead)
        # is dispatched for the first asker only: the others take the message's own path,
        # which finds it taken (one claim, one run).
        by_id: dict[int, Ask] = {}
        for ask in asks:
            by_id.setdefault(ask.message_id, ask)
        async with self._sessions.begin() as session:
            loaded = await session.execute(_LOAD, {"ids": sorted(by_id)})
            rows = [_Row(**dict(zip(_ROW_FIELDS, values, strict=True))) for values in loaded]
            # Dispatched already (by a job of this conversation's earlier message, or a
            # retry): what became of it, as the message's own path would say.
            done = await self._existing(session, set(by_id) - {row.id for row in rows})
            understood = {u.row.id: u for row in rows if (u := await self._understand(row))}
            if not understood:
                return self._answers(asks, by_id, done)
            claimed = set(
                await session.scalars(_CLAIM, {"ids": sorted(understood), "now": utcnow()})
            )
            ours = [understood[i] for i in sorted(claimed)]
            languages = await self._languages(session, ours)
            waits = {
                u.row.conversation_id: u.row.id
                for u in ours
                if by_id[u.row.id].lease_s is not None and not u.action.overtakes
            }
            held = await Turns.blockers(session, waits)
            openings = [self._opening(u, languages[u.row.id], by_id[u.row.id], held) for u in ours]
            opened = await ManyActivities.open(session, openings)
            looking = sorted({u.row.conversation_id for u in ours if by_id[u.row.id].look_ahead})
            following = await Turns.firsts(session, looking) if looking else {}
        for u, activity in zip(ours, opened, strict=True):
            ask = by_id[u.row.id]
            log.info(
                "activity recorded",
                extra={
                    "activity_id": activity.id,
                    "message_id": u.row.id,
                    "status": activity.status,
                },
            )
            running = activity.status == ActivityStatus.IN_PROGRESS
            done[u.row.id] = Dispatched(
                activity_id=activity.id,
                status=activity.status,
                created=True,
                conversation_id=u.row.conversation_id,
                running=Claimed(activity=activity, attempt=1, role=u.row.role, active=u.row.active)
                if running
                else None,
                looked_ahead=ask.look_ahead,
                following=following.get(u.row.conversation_id) if ask.look_ahead else None,
            )
        return self._answers(asks, by_id, done)

    @staticmethod
    def _answers(
        asks: Sequence[Ask], first: dict[int, Ask], done: dict[int, Dispatched]
    ) -> list[Dispatched | None]:
        """Each ask's outcome, in order: its message's for its first asker, None for others."""
        return [done.get(a.message_id) if first[a.message_id] is a else None for a in asks]

    @staticmethod
    async def _existing(session: AsyncSession, message_ids: set[int]) -> dict[int, Dispatched]:
        """The messages among these whose activity is recorded already."""
        if not message_ids:
            return {}
        found = await session.execute(_EXISTING, {"ids": sorted(message_ids)})
        return {
            int(message_id): Dispatched(
                activity_id=int(activity_id),
                status=str(status),
                outcome="existing",
                conversation_id=conversation_id,
            )
            for message_id, activity_id, status, conversation_id in found
        }

    async def _understand(self, row: _Row) -> _Understood | None:
        """The rules' reading of an ordinary message; None: not one (the LLM is to read it,
        a question is to be asked, it is refused or needs an approval)."""
        started = time.perf_counter()
        read = await self._read(row)
        if read is None:
            return None
        intent, change = read
        action = self._catalog.action(intent.agent, intent.action_type)
        if change != "keep" or action is None or action.approval is not None:
            return None
        if not may_request(row.role, row.active, action):
            return None
        parse_us = round((time.perf_counter() - started) * 1e6, 1)
        return _Understood(row=row, intent=intent, action=action, parse_us=parse_us)

    @staticmethod
    async def _languages(session: AsyncSession, ours: list[_Understood]) -> dict[int, str | None]:
        """Each message's language (its sender's choice, else what it shows, else its
        conversation's); what a message showed is remembered as its conversation's."""
        languages: dict[int, str | None] = {}
        remember: dict[int, str] = {}  # (the latest message of a conversation last)
        for u in ours:
            earlier = (u.intent.provenance.get("original") or {}).get("language")
            shown = u.row.chosen or spoken(u.row.text, u.row.raw, earlier)
            languages[u.row.id] = shown or u.row.remembered
            if shown is not None and shown != u.row.remembered:
                remember[u.row.conversation_id] = shown
        if remember:
            statement, params = _REMEMBER(session, sorted(remember.items()))
            await session.execute(statement, params)
        return languages

    @staticmethod
    def _opening(u: _Understood, language: str | None, ask: Ask, held: dict[int, str]) -> Opening:
        provenance = {
            **u.intent.provenance,
            "matched": u.intent.matched,
            "parse_us": u.parse_us,
            "language": language,
        }
        details = details_of(u.intent, provenance, allowed=True)
        run_here = ask.lease_s is not None and (
            u.action.overtakes or u.row.conversation_id not in held
        )
        return opening_of(
            u.row,
            u.intent,
            u.action,
            details,
            ActivityStatus.QUEUED,
            lease_s=ask.lease_s if run_here else None,
        )


_ROW_FIELDS = [f.name for f in msgspec.structs.fields(_Row)]
