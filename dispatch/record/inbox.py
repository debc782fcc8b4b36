"""The portal's inbox: conversations as a support lead works them — who, where, the last thing
said, how long the person has waited, whether they asked for a person, who has it — and the
person behind one. Every query is bounded by the page it reads (``limit`` conversations)."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import enum
import logging
from collections.abc import AsyncIterator

import msgspec
from sqlalchemy import case, func, literal, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from dispatch.record.db import planned_for_values
from dispatch.record.models import (
    STAFF,
    TAKEOVER,
    Activity,
    ActivityEvent,
    Conversation,
    ConversationRead,
    ConversationState,
    Direction,
    Message,
    User,
    UserIdentity,
    utcnow,
)

__all__ = [
    "UNREAD_COUNTED",
    "ChangeHub",
    "ChangeWatch",
    "Changes",
    "Inbox",
    "InboxPeople",
    "InboxRow",
    "InboxView",
    "Person",
    "Recent",
]

ASKED_FOR_PERSON = "human"
"""The system action a "I want a person" message becomes."""
UNREAD_COUNTED = 100
"""Unread messages are counted up to this many (the portal shows "99+"): a long conversation
costs no more to list than a short one."""


class InboxView(enum.StrEnum):
    ALL = "all"
    MINE = "mine"
    UNASSIGNED = "unassigned"


class InboxPeople(enum.StrEnum):
    VISITORS = "visitors"
    """The people the product serves: guests, customers, anyone who is not staff."""
    STAFF = "staff"
    """Supervisors', operators' and admins' own conversations with the bot."""
    EVERYONE = "everyone"


class InboxRow(msgspec.Struct, frozen=True, kw_only=True):
    id: int
    channel: str
    name: str
    """Who the person is, as people see them (their name, never a web session's key)."""
    user_id: int | None
    language: str | None
    last_text: str
    last_direction: str | None
    last_at: dt.datetime | None
    last_message_id: int
    unread: int
    """Messages the person sent after what the caller has read (up to ``UNREAD_COUNTED``)."""
    waiting_since: dt.datetime | None
    """When the person wrote last, if nothing has answered them since."""
    wants_person: bool
    """They asked for a person, and no one has taken the conversation over since."""
    taken_over: bool
    assignee_user_id: int | None
    assignee_name: str | None


class Recent(msgspec.Struct, frozen=True, kw_only=True):
    id: int
    action: str
    status: str
    created_at: dt.datetime


class Person(msgspec.Struct, frozen=True, kw_only=True):
    user_id: int | None
    name: str
    role: str | None
    language: str | None
    identities: list[tuple[str, str]]
    """(channel kind, address); a web chat session's key is a credential: never shown."""
    recent: list[Recent]


def _shown_name(user: User | None, conversation: Conversation) -> str:
    if user is not None:
        return user.name
    return "web visitor" if conversation.channel == "webchat" else conversation.key


class Inbox:
    def __init__(self, sessions: async_sessionmaker[AsyncSession]) -> None:
        self._sessions = sessions

    async def rows(
        self,
        *,
        view: InboxView,
        me: int | None,
        people: InboxPeople = InboxPeople.VISITORS,
        channel: str | None = None,
        limit: int = 50,
    ) -> list[InboxRow]:
        """The conversations people wrote in last, those asking for a person first; unread
        counts are ``me``'s."""
        query = select(Conversation)
        if people != InboxPeople.EVERYONE:
            owner = select(User.id).where(User.id == Conversation.user_id, User.role.in_(STAFF))
            query = query.where(owner.exists() if people == InboxPeople.STAFF else ~owner.exists())
        if view == InboxView.MINE:
            query = query.where(Conversation.assignee_user_id == me)
        elif view == InboxView.UNASSIGNED:
            query = query.where(Conversation.assignee_user_id.is_(None))
        if channel is not None:
            query = query.where(Conversation.channel == channel)
        async with self._sessions() as session:
            await planned_for_values(session)
            # Those written in, newest first, then those no one wrote in (newest first): each
            # read along the inbox's index, not by sorting every conversation.
            newest = Conversation.last_inbound_at.desc(), Conversation.id.desc()
            conversations = list(
                await session.scalars(
                    query.where(Conversation.last_inbound_at.is_not(None))
                    .order_by(*newest)
                    .limit(limit)
                )
            )
            if len(conversations) < limit:
                conversations += await session.scalars(
                    query.where(Conversation.last_inbound_at.is_(None))
                    .order_by(Conversation.id.desc())
                    .limit(limit - len(conversations))
                )
            ids = [c.id for c in conversations]
            if not ids:
                return []
            last = await self._last_messages(session, ids)
            unread = await self._unread(session, ids, me)
            wants, taken = await self._person_asked(session, ids)
            named = await self._users(
                session,
                {c.user_id for c in conversations} | {c.assignee_user_id for c in conversations},
            )
        rows = [
            self._row(
                c,
                last.get(c.id),
                unread=unread.get(c.id, 0),
                wants=c.id in wants,
                taken=c.id in taken,
                people=named,
            )
            for c in conversations
        ]
        return sorted(rows, key=lambda r: not r.wants_person)  # stable: otherwise newest first

    @staticmethod
    def _row(
        c: Conversation,
        last: Message | None,
        *,
        unread: int,
        wants: bool,
        taken: bool,
        people: dict[int, User],
    ) -> InboxRow:
        waiting = last is not None and last.direction == Direction.INBOUND.value
        assignee = people.get(c.assignee_user_id) if c.assignee_user_id else None
        return InboxRow(
            id=c.id,
            channel=c.channel,
            name=_shown_name(people.get(c.user_id) if c.user_id else None, c),
            user_id=c.user_id,
            language=c.language,
            last_text=last.text if last is not None else "",
            last_direction=last.direction if last is not None else None,
            last_at=last.received_at if last is not None else None,
            last_message_id=last.id if last is not None else 0,
            unread=unread,
            waiting_since=last.received_at if waiting and last is not None else None,
            wants_person=wants and not taken,
            taken_over=taken,
            assignee_user_id=c.assignee_user_id,
            assignee_name=assignee.name if assignee else None,
        )

    @staticmethod
    async def _last_messages(session: AsyncSession, ids: list[int]) -> dict[int, Message]:
        newest = (
            select(func.max(Message.id))
            .where(Message.conversation_id.in_(ids))
            .group_by(Message.conversation_id)
        )
        found = await session.scalars(select(Message).where(Message.id.in_(newest)))
        return {m.conversation_id: m for m in found}

    @staticmethod
    async def _unread(session: AsyncSession, ids: list[int], me: int | None) -> dict[int, int]:
        """Per conversation, what its person wrote after ``me``'s read mark, counted up to
        ``UNREAD_COUNTED`` (each count reads at most that many index entries)."""
        mark = (
            select(ConversationRead.last_read_message_id)
            .where(
                ConversationRead.conversation_id == Conversation.id,
                ConversationRead.user_id == me,
            )
            .scalar_subquery()
        )
        after = (
            select(literal(1))
            .where(
                Message.conversation_id == Conversation.id,
                Message.direction == Direction.INBOUND.value,
                Message.id > func.coalesce(mark, 0),
            )
            .limit(UNREAD_COUNTED)
            .correlate(Conversation)
            .subquery()
        )
        counted = select(func.count()).select_from(after).scalar_subquery()
        rows = await session.execute(
            select(Conversation.id, counted).where(Conversation.id.in_(ids))
        )
        return {int(c): int(n) for c, n in rows}

    @staticmethod
    async def _person_asked(session: AsyncSession, ids: list[int]) -> tuple[set[int], set[int]]:
        """(conversations whose latest call for a person came after their latest takeover,
        conversations taken over now)."""
        latest = await session.execute(
            select(Activity.conversation_id, Activity.action_type, func.max(Activity.id))
            .where(
                Activity.conversation_id.in_(ids),
                Activity.agent_name == "system",
                Activity.action_type.in_([ASKED_FOR_PERSON, TAKEOVER]),
            )
            .group_by(Activity.conversation_id, Activity.action_type)
        )
        asked: dict[int, int] = {}
        took: dict[int, int] = {}
        for conversation_id, action, newest in latest:
            if conversation_id is not None and newest is not None:
                (asked if action == ASKED_FOR_PERSON else took)[int(conversation_id)] = int(newest)
        taken = set(
            await session.scalars(
                select(ConversationState.conversation_id).where(
                    ConversationState.conversation_id.in_(ids),
                    ConversationState.kind == TAKEOVER,
                    ConversationState.expires_at > utcnow(),
                )
            )
        )
        wants = {c for c, a in asked.items() if a > took.get(c, 0)}
        return wants, taken

    @staticmethod
    async def _users(session: AsyncSession, ids: set[int | None]) -> dict[int, User]:
        wanted = [i for i in ids if i is not None]
        if not wanted:
            return {}
        return {u.id: u for u in await session.scalars(select(User).where(User.id.in_(wanted)))}

    async def person(self, conversation_id: int) -> Person | None:
        """Who is behind a conversation: their name, addresses, language, latest requests."""
        async with self._sessions() as session:
            conversation = await session.get(Conversation, conversation_id)
            if conversation is None:
                return None
            user = await session.get(User, conversation.user_id) if conversation.user_id else None
            identities: list[tuple[str, str]] = []
            recent: list[Recent] = []
            if user is not None:
                identities = [
                    (i.channel, i.address)
                    for i in await session.scalars(
                        select(UserIdentity)
                        .where(UserIdentity.user_id == user.id, UserIdentity.channel != "webchat")
                        .order_by(UserIdentity.id)
                    )
                ]
                recent = [
                    Recent(
                        id=a.id,
                        action=a.action_description or f"{a.agent_name}.{a.action_type}",
                        status=a.status,
                        created_at=a.created_at,
                    )
                    for a in await session.scalars(
                        select(Activity)
                        .where(
                            Activity.actor_user_id == user.id,
                            Activity.workflow_run_id.is_(None),  # a run's steps: its start is
                        )
                        .order_by(Activity.id.desc())
                        .limit(5)
                    )
                ]
        return Person(
            user_id=user.id if user else None,
            name=_shown_name(user, conversation),
            role=user.role if user else None,
            language=(user.language if user else None) or conversation.language,
            identities=identities,
            recent=recent,
        )

    async def read(self, conversation_id: int, user_id: int, message_id: int | None) -> int | None:
        """``user_id`` has read the conversation up to ``message_id`` (None: to its latest
        message); a mark never moves back. The mark now, or None if there is no conversation."""
        async with self._sessions.begin() as session:
            if await session.get(Conversation, conversation_id) is None:
                return None
            newest = select(func.max(Message.id)).where(Message.conversation_id == conversation_id)
            if message_id is not None:  # no further than what exists: later messages are unread
                newest = newest.where(Message.id <= message_id)
            upto = int(await session.scalar(newest) or 0)
            dialect = session.get_bind().dialect.name
            insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
            statement = insert(ConversationRead).values(
                user_id=user_id,
                conversation_id=conversation_id,
                last_read_message_id=upto,
                read_at=utcnow(),
            )
            kept = ConversationRead.last_read_message_id
            statement = statement.on_conflict_do_update(
                index_elements=[ConversationRead.user_id, ConversationRead.conversation_id],
                set_={
                    "last_read_message_id": case(
                        (
                            statement.excluded.last_read_message_id > kept,
                            statement.excluded.last_read_message_id,
                        ),
                        else_=kept,
                    ),
                    "read_at": statement.excluded.read_at,
                },
            )
            await session.execute(statement)
            mark = await session.scalar(
                select(ConversationRead.last_read_message_id).where(
                    ConversationRead.user_id == user_id,
                    ConversationRead.conversation_id == conversation_id,
                )
            )
        return int(mark or 0)

    async def assign(self, conversation_id: int, user_id: int | None) -> bool:
        """Assign the conversation to ``user_id`` (None: to no one); False if there is none."""
        async with self._sessions.begin() as session:
            conversation = await session.get(Conversation, conversation_id, with_for_update=True)
            if conversation is None:
                return False
            conversation.assignee_user_id = user_id
            return True


class Changes(msgspec.Struct, frozen=True, kw_only=True, tag="changed"):
    """What changed since a reader's marks: conversations with new messages or activity
    events, activities with new events, and the marks to resume from."""

    conversations: list[int]
    activities: list[int]
    last_message_id: int
    last_event_id: int


LOOK_BACK_IDS = 200
"""Ids are drawn at insert, not at commit: a reader looks this far behind its marks again, so a
row whose transaction committed after a later one's is still seen (each id announced once)."""
CHANGES_ROWS = 1000


class ChangeWatch:
    """One reader's view of what changed (the portal's live socket): rows after its marks, a
    few behind them again, each announced once."""

    def __init__(self, sessions: async_sessionmaker[AsyncSession], *, messages: int, events: int):
        self._sessions = sessions
        self.last_message_id = messages
        self.last_event_id = events
        self._seen: set[tuple[str, int]] = set()

    @classmethod
    async def now(cls, sessions: async_sessionmaker[AsyncSession]) -> ChangeWatch:
        """A watch from the current ends of both tables."""
        async with sessions() as session:
            messages = await session.scalar(select(func.max(Message.id))) or 0
            events = await session.scalar(select(func.max(ActivityEvent.id))) or 0
        return cls(sessions, messages=int(messages), events=int(events))

    async def poll(self) -> Changes | None:
        async with self._sessions() as session:
            messages = (
                await session.execute(
                    select(Message.id, Message.conversation_id)
                    .where(Message.id > self.last_message_id - LOOK_BACK_IDS)
                    .order_by(Message.id)
                    .limit(CHANGES_ROWS)
                )
            ).all()
            events = (
                await session.execute(
                    select(ActivityEvent.id, ActivityEvent.activity_id, Activity.conversation_id)
                    .join(Activity, Activity.id == ActivityEvent.activity_id)
                    .where(ActivityEvent.id > self.last_event_id - LOOK_BACK_IDS)
                    .order_by(ActivityEvent.id)
                    .limit(CHANGES_ROWS)
                )
            ).all()
        conversations: set[int] = set()
        activities: set[int] = set()
        for message_id, conversation_id in messages:
            if ("m", message_id) not in self._seen:
                self._seen.add(("m", message_id))
                conversations.add(int(conversation_id))
            self.last_message_id = max(self.last_message_id, int(message_id))
        for event_id, activity_id, of_conversation in events:
            if ("e", event_id) not in self._seen:
                self._seen.add(("e", event_id))
                activities.add(int(activity_id))
                if of_conversation is not None:
                    conversations.add(int(of_conversation))
            self.last_event_id = max(self.last_event_id, int(event_id))
        self._forget()
        if not conversations and not activities:
            return None
        return Changes(
            conversations=sorted(conversations),
            activities=sorted(activities),
            last_message_id=self.last_message_id,
            last_event_id=self.last_event_id,
        )

    def _forget(self) -> None:
        """Keep only the ids a later poll can still read again."""
        self._seen = {
            (kind, n)
            for kind, n in self._seen
            if n > (self.last_message_id if kind == "m" else self.last_event_id) - LOOK_BACK_IDS
        }


log = logging.getLogger("switchboard.inbox")

HUB_QUEUE = 64
"""Frames a reader may fall behind by; past it, it is let go (it resumes from its marks)."""


class ChangeHub:
    """One watch of the record for every live reader of a process: however many portals are
    open, the database is read once per ``every_s`` (and not at all when none is). A reader
    subscribes, gets the marks to resume from, then each :class:`Changes` as it is found; one
    that falls ``HUB_QUEUE`` frames behind is let go (``None``) and resumes from its marks."""

    def __init__(self, sessions: async_sessionmaker[AsyncSession], *, every_s: float) -> None:
        self._sessions = sessions
        self._every_s = every_s
        self._readers: set[asyncio.Queue[Changes | None]] = set()
        self._watch: ChangeWatch | None = None
        self._task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()

    @property
    def readers(self) -> int:
        return len(self._readers)

    @contextlib.asynccontextmanager
    async def subscribe(self) -> AsyncIterator[tuple[Changes, asyncio.Queue[Changes | None]]]:
        """(the marks from which this reader sees every change, its queue of changes)."""
        queue: asyncio.Queue[Changes | None] = asyncio.Queue(HUB_QUEUE)
        async with self._lock:
            if self._watch is None:
                self._watch = await ChangeWatch.now(self._sessions)
            self._readers.add(queue)
            if self._task is None or self._task.done():
                self._task = asyncio.create_task(self._run(), name="portal-change-hub")
            marks = Changes(
                conversations=[],
                activities=[],
                last_message_id=self._watch.last_message_id,
                last_event_id=self._watch.last_event_id,
            )
        try:
            yield marks, queue
        finally:
            self._readers.discard(queue)

    async def _run(self) -> None:
        """Watch while anyone reads; stop (and forget the marks) when no one does (decided
        under the lock a subscriber takes: a newcomer either is seen or starts a new watch)."""
        while True:
            await asyncio.sleep(self._every_s)
            async with self._lock:
                if not self._readers or self._watch is None:
                    self._watch = None
                    self._task = None
                    return
                watch = self._watch
            try:
                changes = await watch.poll()
            except Exception:  # the database away for a moment: the next look retries
                log.warning("portal change watch failed; retrying", exc_info=True)
                continue
            if changes is not None:
                self._publish(changes)

    def _publish(self, changes: Changes) -> None:
        for queue in list(self._readers):
            try:
                queue.put_nowait(changes)
            except asyncio.QueueFull:  # too far behind: let it go, it resumes from its marks
                self._readers.discard(queue)
                with contextlib.suppress(asyncio.QueueFull):
                    queue.get_nowait()
                    queue.put_nowait(None)

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
