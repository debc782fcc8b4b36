"""The one dispatch service every entry point uses.

``ingest`` stores a message and hands it to the queue (milliseconds, on the request path);
``dispatch_message`` (in a job) parses it → checks permission → writes the activity and its first
event → enqueues the run. Nothing here knows which channel or transport is in use.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Sequence
from typing import Any, Literal

import msgspec
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from dispatch.activities import ActivityLog
from dispatch.approvals import ApprovalService, expiry
from dispatch.catalog import Catalog
from dispatch.claims import MESSAGES
from dispatch.clarify import Clarifier, Pending
from dispatch.control import NOTICE_ACTION, SYSTEM_AGENT
from dispatch.errors import RateLimited
from dispatch.intents import Intent
from dispatch.interpret import Interpreter
from dispatch.messages import InboundMessage, StatusReport
from dispatch.models import (
    UNDISPATCHED,
    Activity,
    ActivityStatus,
    ConversationState,
    Message,
    MessageState,
    User,
    utcnow,
)
from dispatch.outbox import add_reply, reply_text
from dispatch.permissions import may_request
from dispatch.queue import JobQueue
from dispatch.routing import ChannelRouting
from dispatch.store import Accepted, MessageStore
from dispatch.throttle import Throttle, ThrottleSettings

__all__ = ["MAX_DISPATCH_ATTEMPTS", "DispatchFailed", "DispatchService", "Dispatched"]

log = logging.getLogger("switchboard.dispatch")

StateChange = Literal["keep", "clear"] | tuple[Pending, int]
"""What recording a message does to its conversation's open question (see dispatch.clarify)."""


SLOW_DOWN = (
    "You're sending messages faster than I can read them; I'll take the next ones in a moment. "
    "/ Vas demasiado rápido; leeré los siguientes mensajes en un momento."
)
MAX_DISPATCH_ATTEMPTS = 3
"""Interpretations of one message before it ends ``failed``."""


class Dispatched(msgspec.Struct, frozen=True, kw_only=True):
    """What dispatching a message did: ``recorded`` its activity (``created``), found it
    already there, or recorded nothing yet (``waiting`` for an earlier message, ``busy`` being
    dispatched elsewhere, ``ignored``) or for good (``failed``)."""

    activity_id: int | None = None
    status: str | None = None
    created: bool = False
    outcome: str = "recorded"
    conversation_id: int | None = None


class ClaimLost(Exception):
    """The message's claim passed to another attempt: this one records nothing."""


class DispatchFailed(Exception):
    """An attempt to dispatch a message failed; it is given back to be tried again."""

    def __init__(self, attempt: int, reason: str) -> None:
        super().__init__(reason)
        self.attempt = attempt


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
        routing: ChannelRouting,
        history_turns: int = 6,
        clarify_timeout_s: float = 600.0,
        approvals: ApprovalService,
        throttle: Throttle,
        limits: ThrottleSettings,
    ) -> None:
        self._sessions = sessions
        self._store = store
        self._activities = activities
        self._catalog = catalog
        self._interpreter = interpreter
        self._queue = queue
        self._routing = routing
        self._history_turns = history_turns
        self._clarifier = Clarifier(catalog)
        self._clarify_timeout_s = clarify_timeout_s
        self._approvals = approvals
        self._throttle = throttle
        self._limits = limits

    async def ingest(self, message: InboundMessage, *, client: bool = False) -> Accepted:
        """Store first, then queue the parsing; a duplicate is accepted and queues nothing.

        A sender over their rate, or a conversation owing too many messages, is held back: a
        ``client`` (REST, web chat) is refused (:class:`RateLimited`, nothing stored); a
        verified provider's message is stored but not acted on. The sender is told to slow
        down, once per window.
        """
        key = ":".join(message.identity)
        wait_s = await self._over_rate(key) if client and not message.ignored else 0.0
        if wait_s > 0:
            raise RateLimited(
                f"slow down: a sender may send {self._limits.sender_rate_per_s:g} messages per "
                "second",
                retry_after_s=wait_s,
            )
        accepted = await self._store.accept(
            message, backlog=self._limits.conversation_backlog, refuse=client
        )
        if message.ignored or accepted.duplicate:
            log.info(
                "message stored, not dispatched",
                extra={"reason": message.ignored or "duplicate", "message_id": accepted.message_id},
            )
            return accepted
        held = accepted.over_backlog
        if not held and not client and await self._over_rate(key) > 0:
            held = await self._store.ignore(accepted.message_id, "sender rate limit")
        if held:
            await self._slow_down(key, message, accepted)
            return accepted
        # Stored is accepted: the provider gets its 2xx, and if the queue is down, recovery
        # dispatches the message from the database once it is back.
        await self._queue.try_enqueue(
            self._queue.enqueue_dispatch, accepted.message_id, message_id=accepted.message_id
        )
        return accepted

    async def _over_rate(self, key: str) -> float:
        """Seconds until this sender may send again (0: now, and a token is taken)."""
        limits = self._limits
        return await self._throttle.take(
            key, rate_per_s=limits.sender_rate_per_s, burst=limits.sender_burst
        )

    async def _slow_down(self, key: str, message: InboundMessage, accepted: Accepted) -> None:
        """Tell the sender, once per window, that what they send now is not acted on."""
        if not await self._throttle.first_in_window(key, window_s=self._limits.notice_window_s):
            return
        async with self._sessions.begin() as session:
            activity_id = await self._answer_sender(
                session,
                message_id=accepted.message_id,
                user_id=accepted.user_id,
                channel=message.channel,
                conversation_id=accepted.conversation_id,
                action_type=NOTICE_ACTION,
                description="Tell the sender to slow down",
                status=ActivityStatus.COMPLETED,
                details={"result": {"text": SLOW_DOWN}},
                event=("slow_down", {"sender": key}),
                text=SLOW_DOWN,
            )
        await self._queue.enqueue_run(activity_id)

    async def ingest_all(
        self,
        channel: str,
        messages: Sequence[InboundMessage],
        statuses: Sequence[StatusReport] = (),
    ) -> list[Accepted]:
        """What one verified webhook call carried: every message stored (and queued), every
        delivery report applied to our message on ``channel``."""
        accepted = [await self.ingest(message) for message in messages]
        for report in statuses:
            await self._store.apply_status(channel, report)
        return accepted

    async def dispatch_message(self, message_id: int, *, lease_s: float) -> Dispatched | None:
        """Turn a stored message into its activity, once, in its conversation's order.

        Safe to call any number of times, from any number of workers: the message is claimed
        (one interpretation at a time, fenced by the attempt number), an earlier message of the
        conversation still awaiting its dispatch makes this one wait (that one's dispatch wakes
        it), and an attempt that fails gives the message back until the last, which ends it
        ``failed`` with a reply telling the sender. Raises :class:`DispatchFailed` for an
        attempt to retry later.
        """
        async with self._sessions() as session:
            message = await session.get(Message, message_id)
            if message is None:
                log.warning("dispatch of unknown message", extra={"message_id": message_id})
                return None
            existing = await self._activity_of(session, message_id)
        not_now = await self._not_now(message, existing)
        if not_now is not None:
            return not_now
        attempt = await self._store.claim_message(message_id, lease_s=lease_s)
        if attempt is None:
            return Dispatched(outcome="busy", conversation_id=message.conversation_id)
        return await self._dispatch_claimed(message, attempt)

    async def _answer_sender(
        self,
        session: AsyncSession,
        *,
        message_id: int,
        user_id: int | None,
        channel: str,
        conversation_id: int,
        action_type: str,
        description: str,
        status: ActivityStatus,
        details: dict[str, Any],
        event: tuple[str, dict[str, Any]],
        text: str | None,
    ) -> int:
        """Record a finished activity of the system agent for a message, with its event and a
        reply to the sender (``text``, or what its status says); returns its id."""
        activity = Activity(
            agent_name=SYSTEM_AGENT,
            action_type=action_type,
            action_description=description,
            details=details,
            status=status.value,
            actor_user_id=user_id,
            source_message_id=message_id,
            source_channel=channel,
            conversation_id=conversation_id,
            order_key=message_id,
            completed_at=utcnow(),
        )
        session.add(activity)
        await session.flush()
        kind, data = event
        self._activities.add_event(session, activity.id, kind, status=status.value, data=data)
        reply = text or reply_text(activity.id, status.value, details) or ""
        await add_reply(
            session,
            activity_id=activity.id,
            conversation_id=conversation_id,
            channel=channel,
            parts=self._routing.split(channel, reply) if reply else [],
        )
        return activity.id

    async def _not_now(
        self, message: Message, existing: tuple[int, str] | None
    ) -> Dispatched | None:
        """Why this message is not to be interpreted now, if it is not."""
        if existing is not None:
            activity_id, status = existing
            return Dispatched(
                activity_id=activity_id,
                status=status,
                outcome="existing",
                conversation_id=message.conversation_id,
            )
        if message.state not in UNDISPATCHED:
            return Dispatched(outcome=str(message.state), conversation_id=message.conversation_id)
        if await self._store.earlier_undispatched(message):
            # Understood in the light of the ones before it (an open question): they go first.
            return Dispatched(outcome="waiting", conversation_id=message.conversation_id)
        return None

    async def _dispatch_claimed(self, message: Message, attempt: int) -> Dispatched:
        try:
            async with self._sessions() as session:
                user = await session.get(User, message.user_id) if message.user_id else None
                state = await self._state(session, message)
            started = time.perf_counter()
            intent, change = await self._understand(message, user, state)
            parse_us = round((time.perf_counter() - started) * 1e6, 1)
            return await self._record(message, intent, parse_us, change, attempt=attempt)
        except ClaimLost:
            return Dispatched(outcome="busy", conversation_id=message.conversation_id)
        except Exception as exc:
            if attempt >= MAX_DISPATCH_ATTEMPTS:
                log.exception("dispatch failed for good", extra={"message_id": message.id})
                return await self._give_up(message, attempt, exc)
            log.warning(
                "dispatch attempt failed; it will be retried",
                exc_info=True,
                extra={"message_id": message.id, "attempt": attempt},
            )
            await self._store.release_message(message.id, attempt=attempt)
            raise DispatchFailed(attempt, f"{type(exc).__name__}: {exc}") from exc

    async def _give_up(self, message: Message, attempt: int, exc: Exception) -> Dispatched:
        """The message ends ``failed``: a failed activity carries why, and the sender is told."""
        error = {
            "reason": "dispatch_failed",
            "message": f"{type(exc).__name__}: {exc}"[:500],
            "attempts": attempt,
        }
        async with self._sessions.begin() as session:
            moved = await session.execute(
                MESSAGES.update_held(
                    message.id, attempt, state=MessageState.FAILED.value, claimed_until=None
                )
            )
            if moved.rowcount != 1:  # type: ignore[attr-defined]
                return Dispatched(outcome="busy", conversation_id=message.conversation_id)
            activity_id = await self._answer_sender(
                session,
                message_id=message.id,
                user_id=message.user_id,
                channel=message.channel,
                conversation_id=message.conversation_id,
                action_type="help",
                description="Understand a message",
                status=ActivityStatus.FAILED,
                details={"error": error},
                event=("failed", error),
                text=None,
            )
        return Dispatched(
            activity_id=activity_id,
            status=ActivityStatus.FAILED.value,
            outcome="failed",
            conversation_id=message.conversation_id,
        )

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
        self,
        message: Message,
        intent: Intent,
        parse_us: float,
        change: StateChange,
        *,
        attempt: int,
    ) -> Dispatched:
        action = self._catalog.action(intent.agent, intent.action_type)
        async with self._sessions.begin() as session:
            # Fenced: only the attempt holding the message's claim records its activity.
            claimed = await session.execute(
                MESSAGES.update_held(
                    message.id, attempt, state=MessageState.DISPATCHED.value, claimed_until=None
                )
            )
            if claimed.rowcount != 1:  # type: ignore[attr-defined]
                raise ClaimLost(message.id)
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
                    parts=self._routing.split(message.channel, text) if text else [],
                )
            await self._change_state(session, message.conversation_id, change, activity.id)
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
            return Dispatched(
                activity_id=activity.id,
                status=status.value,
                created=True,
                conversation_id=message.conversation_id,
            )
