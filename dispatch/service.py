"""The one dispatch service every entry point uses.

``ingest`` stores a message and hands it to the queue (milliseconds, on the request path);
``dispatch_message`` (in a job) parses it → checks permission → writes the activity and its first
event → enqueues the run. Nothing here knows which channel or transport is in use.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Callable
from typing import Any, Literal

import msgspec
from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from channels.messages import InboundMessage
from dispatch.activities import ActivityLog
from dispatch.approvals import ApprovalService, expiry
from dispatch.catalog import Catalog
from dispatch.clarify import Clarifier, Pending
from dispatch.intents import Intent
from dispatch.interpret import Interpreter
from dispatch.models import (
    Activity,
    ActivityStatus,
    ConversationState,
    Direction,
    Message,
    MessageState,
    User,
    utcnow,
)
from dispatch.outbox import add_reply, reply_text
from dispatch.permissions import may_request
from dispatch.queue import JobQueue
from dispatch.store import Accepted, MessageStore

__all__ = ["DispatchService", "Dispatched"]

log = logging.getLogger("switchboard.dispatch")

StateChange = Literal["keep", "clear"] | tuple[Pending, int]
"""What recording a message does to its conversation's open question (see dispatch.clarify)."""


class Dispatched(msgspec.Struct, frozen=True, kw_only=True):
    activity_id: int
    status: str
    created: bool


class DispatchService:
    def __init__(
        self,
        *,
        sessions: async_sessionmaker[AsyncSession],
        store: MessageStore,
        activities: ActivityLog,
        catalog: Catalog,
        interpreter: Interpreter,
        queue: JobQueue,
        split: Callable[[str, str], list[str]],
        history_turns: int = 6,
        clarify_timeout_s: float = 600.0,
        approvals: ApprovalService,
    ) -> None:
        self._sessions = sessions
        self._store = store
        self._activities = activities
        self._catalog = catalog
        self._interpreter = interpreter
        self._queue = queue
        self._split = split
        self._history_turns = history_turns
        self._clarifier = Clarifier(catalog)
        self._clarify_timeout_s = clarify_timeout_s
        self._approvals = approvals

    async def ingest(self, message: InboundMessage) -> Accepted:
        """Store first, then queue the parsing; a duplicate is accepted and queues nothing."""
        accepted = await self._store.accept(message)
        if message.ignored:
            log.info("message stored, not dispatched", extra={"reason": message.ignored})
            return accepted
        if accepted.duplicate:
            log.info(
                "duplicate message ignored",
                extra={"channel": message.channel, "external_id": message.external_id},
            )
            return accepted
        try:
            await self._queue.enqueue_dispatch(accepted.message_id)
        except Exception:
            # Stored is accepted: the provider gets its 2xx, and recovery dispatches the
            # message from the database once the queue is back.
            log.exception(
                "enqueue failed; recovery will re-drive", extra={"message_id": accepted.message_id}
            )
        return accepted

    async def dispatch_message(self, message_id: int) -> Dispatched | None:
        """Turn a stored message into its activity (once) and enqueue it.

        Safe to call any number of times: the activity is unique per source message, and a
        message already dispatched only has its activity re-enqueued if it is still waiting.
        """
        async with self._sessions() as session:
            message = await session.get(Message, message_id)
            if message is None:
                log.warning("dispatch of unknown message", extra={"message_id": message_id})
                return None
            existing = await self._activity_of(session, message_id)
            user = await session.get(User, message.user_id) if message.user_id else None
            # A message is understood in the light of the ones before it (an open question):
            # earlier messages of the conversation are dispatched first.
            earlier = [] if existing is not None else await self._earlier(session, message)
            state = None if earlier else await self._state(session, message)
        if existing is not None:
            activity_id, status = existing
            # Re-driven: the run job is idempotent and also sends a reply still owed.
            await self._queue.enqueue_run(activity_id)
            return Dispatched(activity_id=activity_id, status=status, created=False)

        if earlier:
            for earlier_id in earlier:
                await self.dispatch_message(earlier_id)
            async with self._sessions() as session:
                state = await self._state(session, message)
        started = time.perf_counter()
        intent, change = await self._understand(message, user, state)
        parse_us = round((time.perf_counter() - started) * 1e6, 1)
        try:
            dispatched = await self._record(message, intent, parse_us, change)
        except IntegrityError:
            # A concurrent run of this job recorded it first.
            async with self._sessions() as session:
                again = await self._activity_of(session, message_id)
            if again is None:
                raise
            return Dispatched(activity_id=again[0], status=again[1], created=False)
        # Also for an activity refused at dispatch: its run job sends the refusal, in order.
        await self._queue.enqueue_run(dispatched.activity_id)
        return dispatched

    @staticmethod
    async def _earlier(session: AsyncSession, message: Message) -> list[int]:
        """Earlier messages of the conversation not dispatched yet, oldest first."""
        earlier = await session.scalars(
            select(Message.id)
            .where(
                Message.conversation_id == message.conversation_id,
                Message.direction == Direction.INBOUND.value,
                Message.state == MessageState.RECEIVED.value,
                Message.id < message.id,
            )
            .order_by(Message.id)
        )
        return list(earlier)

    @staticmethod
    async def _state(session: AsyncSession, message: Message) -> ConversationState | None:
        return await session.get(ConversationState, message.conversation_id)

    async def _understand(
        self, message: Message, user: User | None, state: ConversationState | None
    ) -> tuple[Intent, StateChange]:
        """Rules, then the LLM; or the answer to the question the conversation has open."""
        resolution = None
        if state is not None and state.expires_at > utcnow():
            pending = msgspec.convert(state.data, Pending)
            parsed = self._interpreter.rules(message.text)
            resolution = self._clarifier.resume(pending, state.attempts, message.text, parsed)
        intent = resolution.intent if resolution is not None else None
        if intent is None:

            async def history() -> list[tuple[str, str]]:
                return await self._store.history(
                    message.conversation_id, before_id=message.id, limit=self._history_turns
                )

            intent = await self._interpreter.interpret(
                message.text,
                role=user.role if user else None,
                active=user.active if user else True,
                history=history,
            )
        elif resolution is not None and resolution.state == "keep":
            return intent, "keep"
        elif resolution is not None and isinstance(resolution.state, Pending):
            return intent, (resolution.state, resolution.attempts)  # asked again
        intent, pending_now = self._clarifier.settle(intent)
        if pending_now is not None:
            return intent, (pending_now, 0)
        return intent, "keep" if state is None else "clear"

    async def _change_state(
        self, session: AsyncSession, conversation_id: int, change: StateChange, activity_id: int
    ) -> None:
        if change == "keep":
            return
        state = await session.get(ConversationState, conversation_id)
        if change == "clear":
            if state is not None:
                await session.delete(state)
            return
        pending, attempts = change
        values: dict[str, Any] = {
            "kind": pending.kind,
            "data": msgspec.to_builtins(pending),
            "question_activity_id": activity_id,
            "attempts": attempts,
            "expires_at": utcnow() + dt.timedelta(seconds=self._clarify_timeout_s),
        }
        if state is None:
            session.add(ConversationState(conversation_id=conversation_id, **values))
        else:
            for name, value in values.items():
                setattr(state, name, value)

    async def _activity_of(self, session: AsyncSession, message_id: int) -> tuple[int, str] | None:
        row = (
            await session.execute(
                select(Activity.id, Activity.status).where(Activity.source_message_id == message_id)
            )
        ).one_or_none()
        return None if row is None else (int(row[0]), str(row[1]))

    async def _record(
        self, message: Message, intent: Intent, parse_us: float, change: StateChange
    ) -> Dispatched:
        action = self._catalog.action(intent.agent, intent.action_type)
        async with self._sessions.begin() as session:
            user = await session.get(User, message.user_id) if message.user_id else None
            role = user.role if user else None
            allowed = action is not None and may_request(
                role, user.active if user else True, action
            )
            provenance: dict[str, Any] = {
                **intent.provenance,
                "matched": intent.matched,
                "parse_us": parse_us,
            }
            details: dict[str, Any] = {"payload": intent.payload, "provenance": provenance}
            status = ActivityStatus.QUEUED if allowed else ActivityStatus.FAILED
            if not allowed:
                details["error"] = {
                    "reason": "forbidden",
                    "message": f"you may not run {intent.agent}.{intent.action_type}",
                }
            approval = action.approval if allowed and action is not None else None
            if approval is not None:
                status = ActivityStatus.AWAITING_APPROVAL
            activity = Activity(
                agent_name=intent.agent,
                action_type=intent.action_type,
                action_description=action.description if action else "",
                details=details,
                status=status.value,
                actor_user_id=message.user_id,
                source_message_id=message.id,
                source_channel=message.channel,
                conversation_id=message.conversation_id,
                order_key=message.id,
                priority=(action.priority if action else "normal"),
                completed_at=None if allowed else message.received_at,
                expires_at=expiry(approval) if approval is not None else None,
            )
            session.add(activity)
            await session.flush()
            self._activities.add_event(
                session,
                activity.id,
                "created",
                status=status.value,
                actor=f"user:{message.user_id}" if message.user_id else "system",
                data={"payload": intent.payload, "provenance": provenance},
            )
            if approval is not None and action is not None:
                asked = await self._approvals.request(session, activity, action, user)
                if not asked:
                    status = ActivityStatus.FAILED
                    details = {
                        **details,
                        "error": {
                            "reason": "no_approver",
                            "message": "no one who may approve this request can be reached",
                        },
                    }
                    activity.status = status.value
                    activity.details = details
                    activity.completed_at = utcnow()
            if status == ActivityStatus.FAILED:
                self._activities.add_event(
                    session,
                    activity.id,
                    "denied" if not allowed else "failed",
                    status=status.value,
                    data=details["error"],
                )
                text = reply_text(activity.id, status.value, details)
                await add_reply(
                    session,
                    activity_id=activity.id,
                    conversation_id=message.conversation_id,
                    channel=message.channel,
                    parts=self._split(message.channel, text) if text else [],
                )
            await self._change_state(session, message.conversation_id, change, activity.id)
            await session.execute(
                update(Message)
                .where(Message.id == message.id)
                .values(state=MessageState.DISPATCHED.value)
            )
            log.info(
                "activity recorded",
                extra={
                    "activity_id": activity.id,
                    "message_id": message.id,
                    "agent": intent.agent,
                    "action_type": intent.action_type,
                    "status": status.value,
                },
            )
            return Dispatched(activity_id=activity.id, status=status.value, created=True)
