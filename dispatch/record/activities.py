"""The activity log: activities, their state machine, and the append-only events beside them.

An activity is opened in one place, :meth:`ActivityLog.open` (its row and its first event,
together), whatever asked for it: chat, the operator API, a workflow step, a takeover, the
system agent; the set-based worker opens the ordinary messages' many at once with the same row
and events (:class:`ManyActivities`, both from ``_opened``), and ends their runs together.
Every state change is a conditional UPDATE that only succeeds from the expected
states and writes its event in the same transaction (:meth:`ActivityLog.claim`,
:meth:`ActivityLog.finish`): two workers can never both move an activity, and the events always
agree with the row.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import enum
import os
import socket
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any, cast

import msgspec
from sqlalchemy import ColumnElement, Integer, func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from dispatch.infra.group import GroupCommit
from dispatch.record.claims import ACTIVITIES
from dispatch.record.db import planned_for_values
from dispatch.record.models import (
    Activity,
    ActivityEvent,
    ActivityStatus,
    Delivery,
    Message,
    User,
    utcnow,
)
from dispatch.record.outbox import (
    Outbox,
    Reply,
    add_replies,
    add_reply,
    give_back,
    reserve_outboxes,
)
from dispatch.record.rows import ID, JSON_ROW, KEY, TIME, BatchStatement

__all__ = [
    "SENDING_HEARTBEAT_S",
    "SENDING_STALE",
    "ActivityLog",
    "ActivityView",
    "Ending",
    "EventView",
    "ManyActivities",
    "Move",
    "Opening",
    "Renewal",
    "event_row",
]

SENDING_HEARTBEAT_S = 5.0
"""How often a sender marks the reply it is handing to a channel as still being sent."""
SENDING_STALE = dt.timedelta(seconds=6 * SENDING_HEARTBEAT_S)
"""A reply in ``sending`` with no heartbeat for this long was left by a sender that died: it
stops holding back its conversation, and recovery resolves it (never sent again)."""

RUNNER = f"{socket.gethostname()}:{os.getpid()}"
"""Which process runs an activity (in its ``started`` event): the worker, for an audit."""


class EventView(msgspec.Struct, frozen=True, kw_only=True):
    id: int
    kind: str
    status: str | None
    actor: str
    """Who did it, as recorded (``user:12``, ``system``, ``token:3``...)."""
    data: dict[str, Any]
    at: dt.datetime
    actor_name: str | None = None
    """A user actor's name, as people know them (in an activity's whole story)."""


USER_ACTOR = "user:"
"""An event's actor that is a person: ``user:<id>``."""


def _user_of(actor: str) -> int | None:
    rest = actor.removeprefix(USER_ACTOR)
    return int(rest) if rest != actor and rest.isdigit() else None


async def _user_names(
    session: AsyncSession, requester: int | None, events: Iterable[ActivityEvent]
) -> dict[int, str]:
    """The names of an activity's requester and of the people in its events, in one read."""
    ids = {i for i in [requester, *(_user_of(e.actor) for e in events)] if i is not None}
    if not ids:
        return {}
    rows = await session.execute(select(User.id, User.name).where(User.id.in_(ids)))
    return {int(user_id): str(name) for user_id, name in rows}


class ActivityView(msgspec.Struct, frozen=True, kw_only=True):
    """An activity as the API and handlers see it."""

    id: int
    agent_name: str
    action_type: str
    action_description: str
    details: dict[str, Any]
    status: str
    metrics: dict[str, Any]
    actor_user_id: int | None
    source_message_id: int | None
    source_channel: str | None
    conversation_id: int | None
    order_key: int | None
    priority: str
    visible_to_client: bool
    attempts: int
    created_at: dt.datetime
    started_at: dt.datetime | None
    completed_at: dt.datetime | None
    cancel_requested_at: dt.datetime | None = None
    """Set while it runs: an operator asked for it to be stopped."""
    actor_name: str | None = None
    """The requester's name (in listings)."""
    request_text: str | None = None
    """What the requester wrote, for a request that came as a message (in listings)."""
    workflow_run_id: int | None = None
    """Set on a workflow's step: the run it belongs to (its step: ``workflow_step``)."""
    workflow_step: str | None = None
    events: list[EventView] = []

    @classmethod
    def of(cls, row: Activity, events: Iterable[ActivityEvent] = ()) -> ActivityView:
        return cls(
            id=row.id,
            agent_name=row.agent_name,
            action_type=row.action_type,
            action_description=row.action_description,
            details=row.details,
            status=row.status,
            metrics=row.metrics,
            actor_user_id=row.actor_user_id,
            source_message_id=row.source_message_id,
            source_channel=row.source_channel,
            conversation_id=row.conversation_id,
            order_key=row.order_key,
            priority=row.priority,
            visible_to_client=row.visible_to_client,
            attempts=row.attempts,
            created_at=row.created_at,
            started_at=row.started_at,
            completed_at=row.completed_at,
            cancel_requested_at=row.cancel_requested_at,
            workflow_run_id=row.workflow_run_id,
            workflow_step=row.workflow_step,
            events=[
                EventView(
                    id=e.id, kind=e.kind, status=e.status, actor=e.actor, data=e.data, at=e.at
                )
                for e in events
            ],
        )


class Ending(msgspec.Struct, frozen=True, kw_only=True):
    """How an attempt ends its activity: the status it moves to, the event (``kind``, with
    ``data``), the result's ``details`` and ``metrics``, and the reply's parts to send."""

    to: ActivityStatus
    attempt: int
    kind: str
    details: dict[str, Any]
    metrics: dict[str, Any]
    reply: list[str]
    data: dict[str, Any] | None = None


class Renewal(enum.StrEnum):
    HELD = "held"
    CANCEL = "cancel"
    """Held, and an operator asked for the run to stop."""
    LOST = "lost"


class ActivityFilter(msgspec.Struct, frozen=True, kw_only=True):
    """Which activities a listing shows (every field optional, all must hold)."""

    agent: str | None = None
    action_type: str | None = None
    status: ActivityStatus | None = None
    actor_user_id: int | None = None
    channel: str | None = None
    since: dt.datetime | None = None
    """Created at or after."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class Opening:
    """An activity as it is opened: what its row starts with, and its first event."""

    agent: str
    action_type: str
    description: str
    details: dict[str, Any]
    status: ActivityStatus
    event: str = "created"
    """Its first event (``created``; a takeover's is ``taken_over``)."""
    event_data: dict[str, Any] | None = None
    actor: str = "system"
    """Who the first event names: ``user:3``, an API caller, ``system``."""
    actor_user_id: int | None = None
    source_message_id: int | None = None
    source_channel: str | None = None
    conversation_id: int | None = None
    order_key: int | None = None
    priority: str = "normal"
    expires_at: dt.datetime | None = None
    completed_at: dt.datetime | None = None
    idempotency_key: str | None = None
    workflow_run_id: int | None = None
    workflow_step: str | None = None
    lease_s: float | None = None
    """Opened already running here (its first attempt, leased this long): ``in_progress``."""


@dataclasses.dataclass(frozen=True)
class Move:
    """A named move of an activity a transaction holds locked: from which statuses, to which,
    and the event it writes (see :meth:`ActivityLog.move`)."""

    event: str
    to: ActivityStatus
    source: frozenset[ActivityStatus]


_ASKING = frozenset({ActivityStatus.AWAITING_APPROVAL})
REJECT = Move("rejected", ActivityStatus.REJECTED, _ASKING)
GRANT_AND_QUEUE = Move("approval_granted", ActivityStatus.QUEUED, _ASKING)
GRANT = Move("approval_granted", ActivityStatus.PENDING, _ASKING)
"""Approved, waiting for someone to ask it to run (``auto_run = false``)."""
RUN = Move("run_requested", ActivityStatus.QUEUED, frozenset({ActivityStatus.PENDING}))
EXPIRE = Move("expired", ActivityStatus.EXPIRED, _ASKING)


# A task's moves (an action external agents serve; see dispatch.work.tasks).
_HELD_BY_AGENT = frozenset({ActivityStatus.CLAIMED, ActivityStatus.CHANGES_REQUESTED})
_REVIEWING = frozenset({ActivityStatus.IN_REVIEW})
HAND_IN = Move("in_review", ActivityStatus.IN_REVIEW, _HELD_BY_AGENT)
RELEASE_TASK = Move("released", ActivityStatus.WAITING_FOR_AGENT, _HELD_BY_AGENT)
LAPSE = Move("lease_lapsed", ActivityStatus.WAITING_FOR_AGENT, _HELD_BY_AGENT)
GIVE_UP = Move("failed", ActivityStatus.FAILED, _HELD_BY_AGENT)
COMPLETE_WORK = Move("completed", ActivityStatus.COMPLETED, _HELD_BY_AGENT | _REVIEWING)
"""Approved, or handed in where no one reviews."""
REJECT_WORK = Move("review_rejected", ActivityStatus.REJECTED, _REVIEWING)
SEND_BACK = Move("changes_requested", ActivityStatus.CHANGES_REQUESTED, _REVIEWING)
"""Changes requested, to the agent whose claim still holds."""
SEND_BACK_TO_QUEUE = Move("changes_requested", ActivityStatus.WAITING_FOR_AGENT, _REVIEWING)
EXPIRE_REVIEW = Move("review_expired", ActivityStatus.EXPIRED, _REVIEWING)


class MoveRefused(RuntimeError):
    """A move from a status it does not start from: the caller read the row wrong."""


_VIEWED = frozenset(f.name for f in msgspec.structs.fields(ActivityView))
"""What of an opened row its view shows."""


def _opened(opening: Opening, now: dt.datetime) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """An activity's row as it is opened, and its first events (``started`` too, opened
    running)."""
    running = opening.lease_s is not None
    row: dict[str, Any] = {
        "agent_name": opening.agent,
        "action_type": opening.action_type,
        "action_description": opening.description,
        "details": opening.details,
        "status": (ActivityStatus.IN_PROGRESS if running else opening.status).value,
        "metrics": {},
        "attempts": 1 if running else 0,
        "started_at": now if running else None,
        "lease_expires_at": now + dt.timedelta(seconds=opening.lease_s or 0) if running else None,
        "actor_user_id": opening.actor_user_id,
        "source_message_id": opening.source_message_id,
        "source_channel": opening.source_channel,
        "conversation_id": opening.conversation_id,
        "order_key": opening.order_key,
        "priority": opening.priority,
        "visible_to_client": True,
        "expires_at": opening.expires_at,
        "created_at": now,
        "completed_at": opening.completed_at,
        "idempotency_key": opening.idempotency_key,
        "workflow_run_id": opening.workflow_run_id,
        "workflow_step": opening.workflow_step,
    }
    events = [
        {
            "kind": opening.event,
            "status": opening.status.value,
            "actor": opening.actor,
            "data": opening.event_data or {},
        }
    ]
    if running:
        events.append(
            {
                "kind": "started",
                "status": ActivityStatus.IN_PROGRESS.value,
                "actor": "system",
                "data": {"attempt": 1, "runner": RUNNER},
            }
        )
    return row, events


def event_row(
    activity_id: int, kind: str, status: str | None, data: dict[str, Any] | None, at: dt.datetime
) -> dict[str, Any]:
    """An event as a row, for :meth:`ManyActivities.append`."""
    return {
        "activity_id": activity_id,
        "kind": kind,
        "status": status,
        "actor": "system",
        "data": data or {},
        "at": at,
    }


_ENDED = (
    ("id", ID),
    ("attempt", Integer()),
    ("status", KEY),
    ("details", JSON_ROW),
    ("metrics", JSON_ROW),
    ("completed_at", TIME),
)
_FENCED_END = BatchStatement(
    "ended",
    _ENDED,
    lambda w: (
        f"""
        UPDATE agent_activities SET status = w.status, details = w.details,
            metrics = w.metrics, completed_at = w.completed_at, lease_expires_at = NULL
        FROM {w}
        WHERE agent_activities.id = w.id
          AND agent_activities.status = '{ActivityStatus.IN_PROGRESS.value}'
          AND agent_activities.attempts = w.attempt
        RETURNING agent_activities.id, agent_activities.attempts"""  # noqa: S608 - no value in it: all bound
    ),
)
"""The statement ending many runs, each only if its attempt still holds it (``RETURNING`` the
ids it ended)."""


_EVENT = (
    ("activity_id", ID),
    ("kind", KEY),
    ("status", KEY),
    ("actor", KEY),
    ("data", JSON_ROW),
    ("at", TIME),
)
_APPEND = BatchStatement(
    "events",
    _EVENT,
    lambda w: (
        f"""
        INSERT INTO activity_events ({", ".join(name for name, _ in _EVENT)})
        SELECT {", ".join(f"w.{name}" for name, _ in _EVENT)}
        FROM {w} WHERE true ORDER BY w.n"""  # noqa: S608 - no value in it: all bound
    ),
)
"""The statement appending events in their order."""


class ManyActivities:
    """Many activities at once, in the caller's transaction: opened, ended, their events
    appended, each in a few statements whatever their number (the set-based worker's steps;
    :class:`ActivityLog` does the same for one)."""

    @staticmethod
    async def open(session: AsyncSession, openings: Sequence[Opening]) -> list[ActivityView]:
        """:meth:`ActivityLog.open` for many activities: two statements, whatever their number."""
        if not openings:
            return []
        now = utcnow()
        opened = [_opened(o, now) for o in openings]
        table: Any = Activity.__table__
        rows = [row for row, _ in opened]
        if session.get_bind().dialect.name == "postgresql":
            statement = insert(table).returning(table.c.id, sort_by_parameter_order=True)
            ids = list(await session.scalars(statement, rows))
        else:
            # (SQLite would insert them one by one to keep the order: one writer at a time,
            # ids are drawn in the order of the rows of one statement.)
            ids = sorted(await session.scalars(insert(table).returning(table.c.id), rows))
        await ManyActivities.append(
            session,
            [
                {"activity_id": activity_id, "at": now, **event}
                for activity_id, (_, events) in zip(ids, opened, strict=True)
                for event in events
            ],
        )
        return [
            ActivityView(id=int(activity_id), **{k: v for k, v in row.items() if k in _VIEWED})
            for activity_id, (row, _) in zip(ids, opened, strict=True)
        ]

    @classmethod
    async def finish(
        cls, session: AsyncSession, ends: Sequence[tuple[ActivityView, Ending]]
    ) -> list[Outbox | None]:
        """:meth:`ActivityLog.finish` with ``reserve`` for many runs, in ``session``'s
        transaction, a few statements whatever their number: each one's outbox, or None where
        its attempt no longer held it (its result discarded, an event says so)."""
        now = utcnow()
        # One end per attempt (an attempt is one run: two ends of it would be one too many);
        # a second is refused as stale.
        firsts: dict[tuple[int, int], int] = {}
        for n, (activity, ending) in enumerate(ends):
            firsts.setdefault((activity.id, ending.attempt), n)
        rows = [
            (
                a.id,
                e.attempt,
                e.to.value,
                e.details,
                e.metrics,
                now if e.to.is_terminal else None,  # (one handed to agents goes on)
            )
            for n, (a, e) in enumerate(ends)
            if firsts[a.id, e.attempt] == n
        ]
        statement, params = _FENCED_END(session, rows)
        ended = {(int(i), int(attempt)) for i, attempt in await session.execute(statement, params)}
        events: list[dict[str, Any]] = []
        replies: list[tuple[ActivityView, Ending]] = []
        won = {firsts[key] for key in ended}
        for n, (activity, ending) in enumerate(ends):
            if n in won:
                events.append(
                    event_row(activity.id, ending.kind, ending.to.value, ending.data, now)
                )
                if ending.reply and activity.conversation_id and activity.source_channel:
                    replies.append((activity, ending))
            else:
                stale = {"attempt": ending.attempt, "discarded": ending.kind, "runner": RUNNER}
                events.append(event_row(activity.id, "stale_result", None, stale, now))
        await cls.append(session, events)
        claimed = await add_replies(
            session,
            [
                Reply(
                    activity_id=a.id,
                    conversation_id=cast(int, a.conversation_id),
                    channel=cast(str, a.source_channel),
                    parts=e.reply,
                    media=(e.details.get("result") or {}).get("media"),
                    choices=(e.details.get("result") or {}).get("choices"),
                )
                for a, e in replies
            ],
            reserve=True,
        )
        outboxes = await reserve_outboxes(
            session,
            {a.id: a.source_message_id for n, (a, _) in enumerate(ends) if n in won},
            claimed,
        )
        return [outboxes.get(a.id) if n in won else None for n, (a, _) in enumerate(ends)]

    @staticmethod
    async def append(session: AsyncSession, events: Sequence[dict[str, Any]]) -> None:
        """Append events (rows as :func:`event_row` makes them) in one statement, one execution
        whatever their number (a list of parameter sets would be one execution a row)."""
        if events:
            statement, params = _APPEND(session, [tuple(e[n] for n, _ in _EVENT) for e in events])
            await session.execute(statement, params)


class ActivityLog:
    def __init__(self, sessions: async_sessionmaker[AsyncSession]) -> None:
        self._sessions = sessions
        self._finishing: GroupCommit[tuple[ActivityView, Ending], Outbox | None] = GroupCommit(
            self._finish_many, name="finish"
        )
        self._releasing: set[asyncio.Future[None]] = set()

    async def close(self) -> None:
        """Let the runs being finished commit (and what their stopped callers reserved be
        given back)."""
        await self._finishing.close()
        if self._releasing:
            await asyncio.gather(*self._releasing, return_exceptions=True)

    @classmethod
    def move(
        cls,
        session: AsyncSession,
        activity: Activity,
        move: Move,
        *,
        actor: str = "system",
        data: dict[str, Any] | None = None,
        details: dict[str, Any] | None = None,
    ) -> None:
        """Move ``activity`` (locked by ``session``'s transaction) as ``move`` says, with its
        event: an ended one gets its end time, one no longer waiting for approval no expiry;
        ``details`` are merged into its own."""
        if ActivityStatus(activity.status) not in move.source:
            raise MoveRefused(f"activity {activity.id} is {activity.status}: no {move.event}")
        activity.status = move.to.value
        if move.to.is_terminal:
            activity.completed_at = utcnow()
            activity.lease_expires_at = None
            activity.expires_at = None
        else:  # no move leads back to awaiting approval: its expiry is over
            activity.expires_at = None
        if move.to == ActivityStatus.WAITING_FOR_AGENT:  # back in the queue: no one holds it
            activity.agent_token_id = None
            activity.lease_expires_at = None
        if details:
            activity.details = {**activity.details, **details}
        cls.add_event(
            session, activity.id, move.event, status=move.to.value, actor=actor, data=data
        )

    @classmethod
    async def open(cls, session: AsyncSession, opening: Opening) -> Activity:
        """The one place an activity is created: its row and its first event (and, opened
        running, its ``started`` event), in ``session``'s transaction. (Many at once, as
        they are read back: :meth:`open_many`; both write what :func:`_opened` says.)"""
        row, events = _opened(opening, utcnow())
        activity = Activity(**row)
        session.add(activity)
        await session.flush()
        for event in events:
            session.add(ActivityEvent(activity_id=activity.id, **event))
        return activity

    @staticmethod
    def add_event(
        session: AsyncSession,
        activity_id: int,
        kind: str,
        *,
        status: str | None = None,
        actor: str = "system",
        data: dict[str, Any] | None = None,
    ) -> None:
        session.add(
            ActivityEvent(
                activity_id=activity_id, kind=kind, status=status, actor=actor, data=data or {}
            )
        )

    async def get(self, activity_id: int, *, with_events: bool = False) -> ActivityView | None:
        async with self._sessions() as session:
            row = await session.get(Activity, activity_id)
            if row is None:
                return None
            events: list[ActivityEvent] = []
            if with_events:
                events = list(
                    (
                        await session.execute(
                            select(ActivityEvent)
                            .where(ActivityEvent.activity_id == activity_id)
                            .order_by(ActivityEvent.id)
                        )
                    ).scalars()
                )
                # Who asked, what they wrote and who did what, as a reader of its whole story
                # wants them: people by their names.
                named = await _user_names(session, row.actor_user_id, events)
                text = await session.scalar(
                    select(Message.text).where(Message.id == row.source_message_id)
                )
                view = ActivityView.of(row, events)
                return msgspec.structs.replace(
                    view,
                    actor_name=named.get(row.actor_user_id or 0),
                    request_text=text,
                    events=[
                        msgspec.structs.replace(e, actor_name=named.get(_user_of(e.actor) or 0))
                        for e in view.events
                    ],
                )
            return ActivityView.of(row, events)

    async def finish(
        self,
        activity: ActivityView,
        ending: Ending,
        *,
        reserve: bool = False,
        also: Callable[[AsyncSession], Awaitable[None]] | None = None,
    ) -> Outbox | None:
        """in_progress → completed/failed with its result, event and reply, in one
        transaction; only for the attempt that holds the claim (a stale attempt's result is
        refused: None, and an event says so).

        With ``reserve``, for a caller that hands the reply over at once, the activity's
        replies still to send are read back in the same transaction, the first claimed
        (``sending``, see :func:`~dispatch.record.outbox.reserve_outboxes`): the outbox returned;
        without, they stay pending (an empty outbox). ``also`` writes what goes with this end
        in the same transaction (a council's proposal, with its review).

        Runs ending at about the same time, their replies reserved, end together
        (:meth:`finish_many`)."""
        if reserve and also is None:
            return await self._finish_together(activity, ending)
        async with self._sessions.begin() as session:
            if not await self._finish_in(session, activity, ending):
                return None
            if also is not None:
                await also(session)
            if not reserve:
                return Outbox(replies=[], conversations={})
            outboxes = await reserve_outboxes(session, {activity.id: activity.source_message_id})
            return outboxes[activity.id]

    async def _finish_together(self, activity: ActivityView, ending: Ending) -> Outbox | None:
        """:meth:`finish` with the other runs ending now. Its caller stopped meanwhile (the
        worker is stopping) may leave the end to commit without it: the reply it reserved is
        then given back, to be sent by whoever carries the activity on."""
        ended = asyncio.ensure_future(self._finishing.submit((activity, ending)))
        try:
            return await asyncio.shield(ended)
        except asyncio.CancelledError:
            task = asyncio.ensure_future(self._give_back(ended))
            self._releasing.add(task)
            task.add_done_callback(self._releasing.discard)
            raise

    async def _give_back(self, ended: asyncio.Future[Outbox | None]) -> None:
        outbox = await ended
        if outbox is not None and outbox.reserved is not None:
            async with self._sessions.begin() as session:
                await give_back(session, [outbox.reserved])

    async def _finish_many(
        self, ends: Sequence[tuple[ActivityView, Ending]]
    ) -> list[Outbox | None]:
        async with self._sessions.begin() as session:
            return await ManyActivities.finish(session, ends)

    async def _finish_in(
        self, session: AsyncSession, activity: ActivityView, ending: Ending
    ) -> bool:
        details = ending.details
        result = await session.execute(
            ACTIVITIES.update_held(
                activity.id,
                ending.attempt,
                status=ending.to.value,
                details=details,
                metrics=ending.metrics,
                # (an activity handed to external agents goes on: it has not ended)
                completed_at=utcnow() if ending.to.is_terminal else None,
                lease_expires_at=None,
            )
        )
        if result.rowcount != 1:  # type: ignore[attr-defined]
            self.add_event(
                session,
                activity.id,
                "stale_result",
                data={"attempt": ending.attempt, "discarded": ending.kind, "runner": RUNNER},
            )
            return False
        self.add_event(session, activity.id, ending.kind, status=ending.to.value, data=ending.data)
        await add_reply(
            session,
            activity_id=activity.id,
            conversation_id=activity.conversation_id,
            channel=activity.source_channel,
            parts=ending.reply,
            media=(details.get("result") or {}).get("media"),
            choices=(details.get("result") or {}).get("choices"),
        )
        return True

    async def page(
        self, where: ActivityFilter, *, before_id: int | None, limit: int
    ) -> list[ActivityView]:
        """Activities ``where`` holds for, newest first, older than ``before_id`` (the last
        one of the page before), without their events."""
        conditions: list[ColumnElement[bool]] = []
        if where.agent is not None:
            conditions.append(Activity.agent_name == where.agent)
        if where.action_type is not None:
            conditions.append(Activity.action_type == where.action_type)
        if where.status is not None:
            conditions.append(Activity.status == where.status.value)
        if where.actor_user_id is not None:
            conditions.append(Activity.actor_user_id == where.actor_user_id)
        if where.channel is not None:
            conditions.append(Activity.source_channel == where.channel)
        if where.since is not None:
            conditions.append(Activity.created_at >= where.since)
        if before_id is not None:
            conditions.append(Activity.id < before_id)
        async with self._sessions() as session:
            await planned_for_values(session)
            rows = await session.execute(
                select(Activity, User.name, Message.text)
                .outerjoin(User, User.id == Activity.actor_user_id)
                .outerjoin(Message, Message.id == Activity.source_message_id)
                .where(*conditions)
                .order_by(Activity.id.desc())
                .limit(limit)
            )
            return [
                msgspec.structs.replace(ActivityView.of(row), actor_name=name, request_text=text)
                for row, name, text in rows
            ]

    async def cancel(
        self,
        activity_id: int,
        *,
        actor: str,
        notice: Callable[[str], list[str]] | None = None,
    ) -> bool:
        """Withdraw an activity that has not started; False if it already has (or is done).
        ``notice``: what its requester is told, cut for their channel (a reply queued in the
        same transaction)."""
        waiting = [
            ActivityStatus.PENDING.value,
            ActivityStatus.QUEUED.value,
            ActivityStatus.AWAITING_APPROVAL.value,
        ]
        async with self._sessions.begin() as session:
            result = await session.execute(
                update(Activity)
                .where(Activity.id == activity_id, Activity.status.in_(waiting))
                .values(status=ActivityStatus.CANCELLED.value, completed_at=utcnow())
                .returning(Activity.conversation_id, Activity.source_channel)
                .execution_options(synchronize_session=False)
            )
            row = result.one_or_none()
            if row is None:
                return False
            self.add_event(
                session,
                activity_id,
                "cancelled",
                status=ActivityStatus.CANCELLED.value,
                actor=actor,
            )
            conversation_id, channel = row
            # What it had yet to say (an approval request not yet sent) is withdrawn with it.
            await session.execute(
                update(Message)
                .where(
                    Message.activity_id == activity_id,
                    Message.delivery == Delivery.PENDING.value,
                )
                .values(
                    delivery=Delivery.FAILED.value,
                    delivery_error="withdrawn: the request was cancelled",
                    updated_at=utcnow(),
                )
                .execution_options(synchronize_session=False)
            )
            if notice is not None and channel is not None:
                await add_reply(
                    session,
                    activity_id=activity_id,
                    conversation_id=conversation_id,
                    channel=channel,
                    parts=notice(channel),
                )
            return True

    @classmethod
    async def claim_task(
        cls,
        session: AsyncSession,
        task_id: int,
        *,
        token_id: int,
        lease_s: float,
        actor: str,
        data: dict[str, Any],
    ) -> int | None:
        """An agent takes a waiting task: one conditional write (of concurrent claimants
        exactly one wins) and its ``claimed`` event; the claim's number, or None."""
        now = utcnow()
        taken = await session.execute(
            update(Activity)
            .where(
                Activity.id == task_id, Activity.status == ActivityStatus.WAITING_FOR_AGENT.value
            )
            .values(
                status=ActivityStatus.CLAIMED.value,
                attempts=Activity.attempts + 1,
                agent_token_id=token_id,
                lease_expires_at=now + dt.timedelta(seconds=lease_s),
                started_at=func.coalesce(Activity.started_at, now),
            )
            .returning(Activity.attempts)
            .execution_options(synchronize_session=False)
        )
        attempt = taken.scalar_one_or_none()
        if attempt is not None:
            cls.add_event(
                session,
                task_id,
                "claimed",
                status=ActivityStatus.CLAIMED.value,
                actor=actor,
                data={**data, "attempt": int(attempt)},
            )
        return None if attempt is None else int(attempt)

    async def claim(self, activity_id: int, *, lease_s: float) -> int | None:
        """Take an activity to run: from ``queued``, or from an ``in_progress`` whose lease ran
        out (its worker died or stalled). Exactly one of any number of concurrent callers wins,
        and gets the attempt number: the fencing token every later write must carry."""
        taken = await self.take(activity_id, lease_s=lease_s)
        return None if taken is None else taken[0]

    async def take(self, activity_id: int, *, lease_s: float) -> tuple[int, bool] | None:
        """:meth:`claim`, also saying whether an operator has asked for it to stop (then it
        is not to run: it ends ``cancelled``)."""
        async with self._sessions.begin() as session:
            result = await session.execute(
                ACTIVITIES.claim(activity_id, lease_s=lease_s, started_at=utcnow()).returning(
                    Activity.cancel_requested_at
                )
            )
            row = result.one_or_none()
            if row is None:
                return None
            # Both columns: the claim's own RETURNING (attempts), then this one.
            attempt, stop_asked = cast("tuple[int, dt.datetime | None]", tuple(row))
            self.add_event(
                session,
                activity_id,
                "started",
                status=ActivityStatus.IN_PROGRESS.value,
                data={"attempt": attempt, "runner": RUNNER},
            )
            return int(attempt), stop_asked is not None

    async def renew(self, activity_id: int, *, attempt: int, lease_s: float) -> Renewal:
        """Extend the lease of a run that is alive: ``held``, or ``cancel`` if an operator
        asked for it to stop; ``lost`` once the claim is someone else's."""
        async with self._sessions.begin() as session:
            result = await session.execute(
                ACTIVITIES.update_held(
                    activity_id,
                    attempt,
                    lease_expires_at=utcnow() + dt.timedelta(seconds=lease_s),
                ).returning(Activity.cancel_requested_at)
            )
            row = result.one_or_none()
        if row is None:
            return Renewal.LOST
        return Renewal.HELD if row[0] is None else Renewal.CANCEL

    async def request_cancel(self, activity_id: int, *, actor: str) -> bool:
        """Ask for a running activity to be stopped (its worker does at its next lease
        renewal, and it ends ``cancelled``); False if it is not running, or already asked."""
        async with self._sessions.begin() as session:
            result = await session.execute(
                update(Activity)
                .where(
                    Activity.id == activity_id,
                    Activity.status == ActivityStatus.IN_PROGRESS.value,
                    Activity.cancel_requested_at.is_(None),
                )
                .values(cancel_requested_at=utcnow())
                .execution_options(synchronize_session=False)
            )
            if result.rowcount != 1:  # type: ignore[attr-defined]
                return False
            self.add_event(session, activity_id, "cancel_requested", actor=actor)
            return True

    async def release(self, activity_id: int, *, attempt: int, reason: str) -> bool:
        """Give an unfinished run back (its worker is stopping): queued again at once, for
        another worker, instead of after its lease."""
        async with self._sessions.begin() as session:
            result = await session.execute(
                ACTIVITIES.update_held(
                    activity_id,
                    attempt,
                    status=ActivityStatus.QUEUED.value,
                    lease_expires_at=None,
                )
            )
            if result.rowcount != 1:  # type: ignore[attr-defined]
                return False
            self.add_event(
                session,
                activity_id,
                "released",
                status=ActivityStatus.QUEUED.value,
                data={"attempt": attempt, "reason": reason, "runner": RUNNER},
            )
            return True

    async def count_completed(self, agent: str, action_type: str) -> int:
        """How many activities of this action completed (the ledger numbers its entries)."""
        async with self._sessions() as session:
            found = await session.scalar(
                select(func.count())
                .select_from(Activity)
                .where(
                    Activity.agent_name == agent,
                    Activity.action_type == action_type,
                    Activity.status == ActivityStatus.COMPLETED.value,
                )
            )
        return int(found or 0)
