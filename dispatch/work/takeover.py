"""Human takeover: a supervisor takes a conversation over from the bot, answers the user on
their own channel, and hands it back.

A takeover is an activity of the ``system`` agent (``takeover``) on the conversation, recorded
as it starts: its events are the takeover, every message the user writes meanwhile (the bot
keeps them, ``human``, and does nothing else with them; ``dispatch.work.service``), every message
the supervisor sends, and the hand-back. The supervisor's messages are that activity's replies,
so they go out once each, with their delivery status, like any reply. While it lasts, the
conversation's state is ``takeover`` (what an open question would be), read with every message
at no extra cost.
"""

from __future__ import annotations

import datetime as dt
import logging

import msgspec
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from dispatch.infra.errors import ConflictError, InvalidInput, NotFoundError
from dispatch.infra.queue import JobQueue
from dispatch.infra.routing import ChannelRouting
from dispatch.language.i18n import say
from dispatch.record.activities import ActivityLog, Opening
from dispatch.record.models import (
    STAFF,
    TAKEOVER,
    Activity,
    ActivityStatus,
    Conversation,
    ConversationState,
    Role,
    User,
    utcnow,
)
from dispatch.record.outbox import add_reply

__all__ = ["TAKEOVER", "Takeover", "Takeovers"]

log = logging.getLogger("switchboard.takeover")

LASTS = dt.timedelta(days=30)
"""A takeover nobody handed back ends by itself after this."""
MAX_TEXT_CHARS = 4000


class Takeover(msgspec.Struct, frozen=True, kw_only=True):
    conversation_id: int
    activity_id: int
    """The takeover's activity: its events are the takeover's record."""
    by: int
    """The supervisor's user id."""
    active: bool


class Takeovers:
    def __init__(
        self,
        *,
        sessions: async_sessionmaker[AsyncSession],
        activities: ActivityLog,
        queue: JobQueue,
        routing: ChannelRouting,
    ) -> None:
        self._sessions = sessions
        self._activities = activities
        self._queue = queue
        self._routing = routing

    async def take(self, conversation_id: int, *, user_id: int) -> Takeover:
        """Stop the bot on this conversation; the user is told a person is answering. 409 if
        someone already has it, or it is a staff member's (their approvals must not wait)."""
        async with self._sessions.begin() as session:
            conversation = await self._conversation(session, conversation_id)
            owner = await session.get(User, conversation.user_id) if conversation.user_id else None
            if owner is not None and owner.role in STAFF:
                raise ConflictError(
                    f"conversation {conversation_id} is a {owner.role}'s; only a user's is "
                    "taken over",
                    extra={"role": owner.role},
                )
            state = await session.get(ConversationState, conversation_id, with_for_update=True)
            if state is not None and state.kind == TAKEOVER and state.expires_at > utcnow():
                raise ConflictError(
                    f"conversation {conversation_id} is taken over already",
                    extra={"by": state.data.get("by"), "activity_id": state.question_activity_id},
                )
            activity = await ActivityLog.open(
                session,
                Opening(
                    agent="system",
                    action_type=TAKEOVER,
                    description="A person answers instead of the bot",
                    details={"payload": {}, "result": {"text": "taken over"}, "by": user_id},
                    status=ActivityStatus.COMPLETED,
                    event="taken_over",
                    actor=f"user:{user_id}",
                    actor_user_id=user_id,
                    source_channel=conversation.channel,
                    conversation_id=conversation.id,
                    completed_at=utcnow(),
                ),
            )
            values = {
                "kind": TAKEOVER,
                "data": {"by": user_id},
                "question_activity_id": activity.id,
                "attempts": 0,
                "expires_at": utcnow() + LASTS,
            }
            conversation.assignee_user_id = user_id  # who takes it over has it
            if state is None:
                session.add(ConversationState(conversation_id=conversation_id, **values))
            else:  # an open question is dropped: the person asks what they need
                for name, value in values.items():
                    setattr(state, name, value)
            await self._tell(
                session, activity, conversation, say("takeover.start", conversation.language)
            )
            activity_id = activity.id
        log.info("conversation taken over", extra={"conversation_id": conversation_id})
        await self._queue.try_enqueue(self._queue.enqueue_run, activity_id)
        return Takeover(
            conversation_id=conversation_id, activity_id=activity_id, by=user_id, active=True
        )

    async def send(self, conversation_id: int, text: str, *, user_id: int) -> Takeover:
        """A supervisor's message to the user, on the conversation's channel. 409 unless the
        conversation is taken over."""
        text = text.strip()
        if not text or len(text) > MAX_TEXT_CHARS or "\x00" in text:
            raise InvalidInput(
                f"text: 1 to {MAX_TEXT_CHARS} characters, without NUL", extra={"field": "text"}
            )
        async with self._sessions.begin() as session:
            conversation = await self._conversation(session, conversation_id)
            activity = await self._current(session, conversation_id, user_id)
            self._activities.add_event(
                session, activity.id, "human_message", actor=f"user:{user_id}", data={"text": text}
            )
            author = await session.scalar(select(User.name).where(User.id == user_id))
            await self._tell(session, activity, conversation, text, author=author)
        await self._queue.try_enqueue(self._queue.enqueue_run, activity.id)
        return Takeover(
            conversation_id=conversation_id, activity_id=activity.id, by=user_id, active=True
        )

    async def hand_back(self, conversation_id: int, *, user_id: int) -> Takeover:
        """The bot answers again from the next message on; the user is told. 409 unless the
        conversation is taken over."""
        async with self._sessions.begin() as session:
            conversation = await self._conversation(session, conversation_id)
            activity = await self._current(session, conversation_id, user_id)
            state = await session.get(ConversationState, conversation_id)
            if state is not None:
                await session.delete(state)
            self._activities.add_event(session, activity.id, "handed_back", actor=f"user:{user_id}")
            await self._tell(
                session, activity, conversation, say("takeover.end", conversation.language)
            )
        await self._queue.try_enqueue(self._queue.enqueue_run, activity.id)
        return Takeover(
            conversation_id=conversation_id, activity_id=activity.id, by=user_id, active=False
        )

    async def current(self, conversation_id: int) -> Takeover | None:
        """The conversation's takeover, if a person has it now."""
        async with self._sessions() as session:
            await self._conversation(session, conversation_id)
            state = await session.get(ConversationState, conversation_id)
        if state is None or state.kind != TAKEOVER or state.question_activity_id is None:
            return None
        return Takeover(
            conversation_id=conversation_id,
            activity_id=state.question_activity_id,
            by=int(state.data.get("by") or 0),
            active=state.expires_at > utcnow(),
        )

    async def _current(self, session: AsyncSession, conversation_id: int, user_id: int) -> Activity:
        """The takeover's activity, if ``user_id`` holds it (an admin may act on anyone's)."""
        state = await session.get(ConversationState, conversation_id, with_for_update=True)
        if state is None or state.kind != TAKEOVER or state.question_activity_id is None:
            raise ConflictError(f"conversation {conversation_id} is not taken over")
        holder = state.data.get("by")
        if holder != user_id:
            acting = await session.get(User, user_id)
            if acting is None or acting.role != Role.ADMIN.value:
                raise ConflictError(
                    f"conversation {conversation_id} is taken over by user #{holder}",
                    extra={"by": holder},
                )
        activity = await session.scalar(
            select(Activity).where(Activity.id == state.question_activity_id).with_for_update()
        )
        if activity is None:
            raise ConflictError(f"conversation {conversation_id} is not taken over")
        return activity

    @staticmethod
    async def _conversation(session: AsyncSession, conversation_id: int) -> Conversation:
        conversation = await session.get(Conversation, conversation_id)
        if conversation is None:
            raise NotFoundError(f"no conversation {conversation_id}")
        return conversation

    async def _tell(
        self,
        session: AsyncSession,
        activity: Activity,
        conversation: Conversation,
        text: str,
        *,
        author: str | None = None,
    ) -> None:
        """``text`` to the conversation's person: from ``author`` (a supervisor's name), or
        from the bot."""
        await add_reply(
            session,
            activity_id=activity.id,
            conversation_id=conversation.id,
            channel=conversation.channel,
            parts=self._routing.split(conversation.channel, text),
            author=author,
        )
