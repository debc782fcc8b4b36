"""The one dispatch service every entry point uses.

``ingest`` stores a message and hands it to the queue (milliseconds, on the request path);
``dispatch_message`` (in a job) parses it → checks permission → writes the activity and its first
event → enqueues the run. Nothing here knows which channel or transport is in use.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from collections.abc import Sequence
from typing import Any, Literal

import msgspec
from sqlalchemy import bindparam, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.orm import aliased

from dispatch.infra.errors import RateLimited
from dispatch.infra.queue import JobQueue
from dispatch.infra.routing import ChannelRouting
from dispatch.infra.throttle import Throttle, ThrottleSettings
from dispatch.language.i18n import language_of, say, spoken
from dispatch.policy.catalog import Catalog
from dispatch.policy.control import NOTICE_ACTION, SYSTEM_AGENT
from dispatch.policy.permissions import may_request
from dispatch.policy.specs import ActionSpec
from dispatch.record.activities import ActivityLog, ActivityView, Opening
from dispatch.record.claims import MESSAGES
from dispatch.record.delivery import Deliveries
from dispatch.record.inbound import Accepted
from dispatch.record.intake import Arrival, Intake
from dispatch.record.messages import InboundMessage, StatusReport
from dispatch.record.models import (
    AGENT_QUESTION,
    UNDISPATCHED,
    Activity,
    ActivityStatus,
    ConversationState,
    Direction,
    Message,
    MessageState,
    User,
    utcnow,
)
from dispatch.record.outbox import add_reply, reply_text
from dispatch.record.store import MessageStore, conversation_language
from dispatch.record.turns import Turns
from dispatch.understanding.clarify import Clarifier, Pending
from dispatch.understanding.intents import Intent
from dispatch.understanding.interpret import Interpreter
from dispatch.work.approvals import ApprovalService
from dispatch.work.batched import Ask, BatchDispatcher, Claimed, Dispatched, details_of, opening_of
from dispatch.work.takeover import TAKEOVER

__all__ = [
    "MAX_DISPATCH_ATTEMPTS",
    "Claimed",
    "DispatchFailed",
    "DispatchService",
    "Dispatched",
    "slow_down",
]

log = logging.getLogger("switchboard.dispatch")

StateChange = Literal["keep", "clear"] | tuple[Pending, int]
"""What recording a message does to its conversation's open question (see
dispatch.understanding.clarify)."""
_Taken = tuple[Message, User | None, ConversationState | None, int]
"""A message claimed to be understood, its sender, its conversation's open question, and the
claim's attempt number."""


def slow_down(language: str | None) -> str:
    """What a sender over their rate is told, in their language."""
    return say("slow_down", language)


MAX_DISPATCH_ATTEMPTS = 3
"""Interpretations of one message before it ends ``failed``."""


def _earlier() -> Any:
    """An earlier message of the same conversation as message ``:turn_of`` still awaits its
    dispatch (built once: building it costs more than running it)."""
    earlier, this = aliased(Message), aliased(Message)
    turn_of: Any = bindparam("turn_of")
    return (
        select(earlier.id)
        .join(this, this.conversation_id == earlier.conversation_id)
        .where(
            this.id == turn_of,
            earlier.direction == Direction.INBOUND.value,
            earlier.state.in_([s.value for s in UNDISPATCHED]),
            earlier.id < turn_of,
        )
        .exists()
    )


_EARLIER = _earlier()


def _sender(message: InboundMessage) -> str:
    return ":".join(message.identity)


def _not_dispatched(message: InboundMessage, accepted: Accepted) -> None:
    log.info(
        "message stored, not dispatched",
        extra={"reason": message.ignored or "duplicate", "message_id": accepted.message_id},
    )


def _taken_over(state: ConversationState | None) -> bool:
    return state is not None and state.kind == TAKEOVER and state.expires_at > utcnow()


def _held_for(state: ConversationState | None) -> MessageState | None:
    """Whom the conversation's next message is for, if not the bot: a person who took it over
    (``human``), or an external agent waiting for the answer to its question (``agent``)."""
    if state is None or state.expires_at <= utcnow():
        return None
    return {TAKEOVER: MessageState.HUMAN, AGENT_QUESTION: MessageState.AGENT}.get(state.kind)


class ClaimLost(Exception):
    """The message's claim passed to another attempt: this one records nothing."""


class DispatchFailed(Exception):
    """An attempt to dispatch a message failed; it is given back to be tried again."""

    def __init__(self, attempt: int, reason: str) -> None:
        super().__init__(reason)
        self.attempt = attempt


async def _language(
    session: AsyncSession, message: Message, user: User | None, intent: Intent, change: StateChange
) -> tuple[str | None, StateChange]:
    """The language the sender is answered in (theirs if chosen, else what they wrote in, else
    their conversation's), and an open question's change carrying it (its answer, "12", is
    read in the asker's language). What the message showed is remembered as the
    conversation's language."""
    earlier = (intent.provenance.get("original") or {}).get("language")
    chosen = user.language if user is not None else None
    shown = chosen or spoken(message.text, message.raw, earlier)
    language = await conversation_language(session, message.conversation_id, shown)
    if language is not None and isinstance(change, tuple):
        pending, attempts = change
        kept = {**pending.provenance, "language": language}
        change = (msgspec.structs.replace(pending, provenance=kept), attempts)
    return language, change


async def _free_to_run(session: AsyncSession, message: Message, action: ActionSpec) -> bool:
    """Whether the message's activity may run at once: it overtakes, or nothing earlier of its
    conversation holds it back (:meth:`Turns.blocking`)."""
    return action.overtakes or (
        await Turns.blocking(session, message.conversation_id, message.id) is None
    )


class DispatchService:
    def __init__(
        self,
        *,
        sessions: async_sessionmaker[AsyncSession],
        store: MessageStore,
        deliveries: Deliveries,
        turns: Turns,
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
        self._deliveries = deliveries
        self._turns = turns
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
        self._intake = Intake(store, backlog=limits.conversation_backlog, after=self._after_stored)
        self._batched = BatchDispatcher(
            sessions=sessions,
            catalog=catalog,
            read=lambda message: self._understand(message, None, None, llm=False),
        )
        self._in_flight: dict[tuple[str, str], asyncio.Future[Accepted]] = {}
        """A client's message being stored now, by (channel, id): its copies wait for it."""

    async def ingest(self, message: InboundMessage, *, client: bool = False) -> Accepted:
        """Store first, then queue the parsing; a duplicate is accepted and queues nothing.

        A sender over their rate, or a conversation owing too many messages, is held back: a
        ``client`` (REST, web chat) is refused (:class:`RateLimited`, nothing stored); a
        verified provider's message is stored but not acted on (:meth:`ingest_all`). The sender
        is told to slow down, once per window.
        """
        if not client:
            return (await self.ingest_all(message.channel, [message]))[0]
        # A repeat of what is stored, or of what is being stored right now, is answered as
        # such before any limit: a retry is not new traffic, and must not spend the sender's
        # burst either. Copies arriving together wait for the first one's outcome.
        key = (message.channel, message.external_id)
        if (first := self._in_flight.get(key)) is not None:
            accepted = await asyncio.shield(first)
            return msgspec.structs.replace(accepted, duplicate=True)
        self._in_flight[key] = outcome = asyncio.get_running_loop().create_future()
        try:
            accepted = await self._ingest_client(message)
        except BaseException as exc:
            outcome.set_exception(exc)
            outcome.exception()  # retrieved here: the copies waiting (if any) raise it too
            raise
        else:
            outcome.set_result(accepted)
            return accepted
        finally:
            del self._in_flight[key]

    async def _ingest_client(self, message: InboundMessage) -> Accepted:
        if (repeated := await self._store.stored(message)) is not None:
            _not_dispatched(message, repeated)
            return repeated
        wait_s = await self._over_rate(_sender(message)) if not message.ignored else 0.0
        if wait_s > 0:
            raise RateLimited(
                f"slow down: a sender may send {self._limits.sender_rate_per_s:g} messages per "
                "second",
                retry_after_s=wait_s,
            )
        accepted = await self._store.accept(
            message, backlog=self._limits.conversation_backlog, refuse=True
        )
        if message.ignored or accepted.duplicate:
            _not_dispatched(message, accepted)
            return accepted
        # Stored is accepted: if the queue is down, recovery dispatches the message from the
        # database once it is back.
        await self._queue.try_enqueue(
            self._queue.enqueue_dispatch, accepted.message_id, message_id=accepted.message_id
        )
        return accepted

    async def new_chat_wait_s(self, address: str) -> float:
        """Seconds until ``address`` may start another conversation (0: now, and it counts)."""
        per_min = self._limits.new_chats_per_address_per_min
        return await self._throttle.take(
            f"new-chat:{address}", rate_per_s=per_min / 60, burst=per_min
        )

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
            shown = spoken(message.text, message.raw)
            text = slow_down(await conversation_language(session, accepted.conversation_id, shown))
            activity_id = await self._answer_sender(
                session,
                message_id=accepted.message_id,
                user_id=accepted.user_id,
                channel=message.channel,
                conversation_id=accepted.conversation_id,
                action_type=NOTICE_ACTION,
                description="Tell the sender to slow down",
                status=ActivityStatus.COMPLETED,
                details={"result": {"text": text}},
                event=("slow_down", {"sender": key}),
                text=text,
            )
        await self._queue.try_enqueue(self._queue.enqueue_run, activity_id)

    async def ingest_all(
        self,
        channel: str,
        messages: Sequence[InboundMessage],
        statuses: Sequence[StatusReport] = (),
    ) -> list[Accepted]:
        """What one verified webhook call carried: every message stored (with other requests'
        in one transaction, see :mod:`dispatch.record.intake`) and queued after the commit, every
        delivery report applied to our message on ``channel``. A sender over their rate is
        kept but not acted on."""
        arrivals = [
            Arrival(
                message=message,
                over_rate=message.ignored is None and await self._over_rate(_sender(message)) > 0,
            )
            for message in messages
        ]
        accepted = await self._intake.submit(arrivals) if arrivals else []
        for report in statuses:
            await self._deliveries.apply_status(channel, report)
        return accepted

    async def _after_stored(self, stored: Sequence[tuple[Arrival, Accepted]]) -> None:
        """Once a batch is committed: queue the new messages to act on (a few per job), tell
        senders held back to slow down."""
        ready: list[tuple[int, int]] = []
        for arrival, accepted in stored:
            message = arrival.message
            if message.ignored or accepted.duplicate:
                _not_dispatched(message, accepted)
            elif accepted.over_backlog or accepted.over_rate:
                await self._slow_down(_sender(message), message, accepted)
            else:
                ready.append((accepted.conversation_id, accepted.message_id))
        if ready:
            await self._queue.attempt(lambda: self._queue.enqueue_dispatches(ready))

    async def close(self) -> None:
        """Let what is being stored commit and be queued, and what is dispatched commit."""
        await self._intake.close()
        await self._batched.close()

    async def dispatch_message(
        self, message_id: int, *, lease_s: float, look_ahead: bool = False, claim: bool = False
    ) -> Dispatched | None:
        """Turn a stored message into its activity, once, in its conversation's order.

        With ``claim``, the activity comes back claimed to run (``running``) if it may run now;
        with ``look_ahead`` the conversation's next message to dispatch (``following``): the
        usual message costs two transactions to here.

        Safe to call any number of times, from any number of workers: the message is claimed
        (one interpretation at a time, fenced by the attempt number), an earlier message of the
        conversation still awaiting its dispatch makes this one wait (that one's dispatch wakes
        it), and an attempt that fails gives the message back until the last, which ends it
        ``failed`` with a reply telling the sender. Raises :class:`DispatchFailed` for an
        attempt to retry later.
        """
        try:
            # The ordinary message, with the others of this moment; else on its own below.
            ask = Ask(message_id, lease_s if claim else None, look_ahead)
            if (done := await self._batched.dispatch(ask)) is not None:
                return done
        except Exception:
            log.warning(
                "dispatch in a batch failed", exc_info=True, extra={"message_id": message_id}
            )
        try:
            taken = await self._dispatch_at_once(
                message_id, lease_s=lease_s, claim=claim, look_ahead=look_ahead
            )
        except Exception:
            # Tried again step by step, where a failing attempt is counted and given back.
            log.warning(
                "dispatch in one transaction failed",
                exc_info=True,
                extra={"message_id": message_id},
            )
            taken = await self._claim_message(message_id, lease_s=lease_s)
        if isinstance(taken, tuple):
            return await self._dispatch_claimed(
                *taken, lease_s=lease_s if claim else None, look_ahead=look_ahead
            )
        return taken

    async def _dispatch_at_once(
        self, message_id: int, *, lease_s: float, claim: bool, look_ahead: bool
    ) -> Dispatched | _Taken | None:
        """The usual message in one transaction: claimed (its turn, no one holds it), loaded,
        understood by the rules and recorded, or found not to be dispatched now. One the LLM
        is to read comes back claimed (committed) to be understood outside any transaction;
        None: no such message."""
        async with self._sessions.begin() as session:
            taken = await self._take(session, message_id, lease_s=lease_s)
            if not isinstance(taken, tuple):
                return taken
            message, user, state, attempt = taken
            if _held_for(state) is not None and (
                held := await self._held(session, message, attempt, look_ahead=look_ahead)
            ):
                return held
            started = time.perf_counter()
            understood = await self._understand(message, user, state, llm=False)
            if understood is None:
                return taken
            parse_us = round((time.perf_counter() - started) * 1e6, 1)
            return await self._record_in(
                session,
                message,
                user,
                understood,
                parse_us=parse_us,
                attempt=attempt,
                lease_s=lease_s if claim else None,
                look_ahead=look_ahead,
            )

    async def _claim_message(
        self, message_id: int, *, lease_s: float
    ) -> _Taken | Dispatched | None:
        async with self._sessions.begin() as session:
            return await self._take(session, message_id, lease_s=lease_s)

    async def _take(
        self, session: AsyncSession, message_id: int, *, lease_s: float
    ) -> _Taken | Dispatched | None:
        """Claim the message if it is its turn and no one holds it, and load what
        understanding it needs (sender, the conversation's open question); or why it is not
        to be dispatched now (None: no such message)."""
        attempt = await session.scalar(
            MESSAGES.claim(message_id, lease_s=lease_s).where(~_EARLIER), {"turn_of": message_id}
        )
        if attempt is None:
            return await self._not_now(session, message_id)
        message = await session.get(Message, message_id)
        assert message is not None
        user = await session.get(User, message.user_id) if message.user_id else None
        return message, user, await self._state(session, message), int(attempt)

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
        kind, data = event
        activity = await ActivityLog.open(
            session,
            Opening(
                agent=SYSTEM_AGENT,
                action_type=action_type,
                description=description,
                details=details,
                status=status,
                event=kind,
                event_data=data,
                actor_user_id=user_id,
                source_message_id=message_id,
                source_channel=channel,
                conversation_id=conversation_id,
                order_key=message_id,
                completed_at=utcnow(),
            ),
        )
        reply = text or reply_text(activity.id, status.value, details) or ""
        await add_reply(
            session,
            activity_id=activity.id,
            conversation_id=conversation_id,
            channel=channel,
            parts=self._routing.split(channel, reply) if reply else [],
        )
        return activity.id

    async def _held(
        self, session: AsyncSession, message: Message, attempt: int, *, look_ahead: bool
    ) -> Dispatched | None:
        """If a person has the conversation now, or an external agent waits for the answer to
        its question (the state read under its lock, so a takeover or hand-back committing at
        this moment is waited for): the message kept for them (``human``) with an event on
        the takeover, or attached to the agent's task (``agent``; the question is then
        answered); the bot does nothing with it. None: the bot goes on."""
        state = await session.get(
            ConversationState, message.conversation_id, with_for_update=True, populate_existing=True
        )
        kept = _held_for(state)
        if state is None or kept is None:
            return None
        held = await session.execute(
            MESSAGES.update_held(message.id, attempt, state=kept.value, claimed_until=None)
        )
        if held.rowcount != 1:  # type: ignore[attr-defined]
            return Dispatched(outcome="busy", conversation_id=message.conversation_id)
        if state.question_activity_id is not None:
            self._activities.add_event(
                session,
                state.question_activity_id,
                "user_message" if kept == MessageState.HUMAN else "requester_answered",
                actor=f"user:{message.user_id}" if message.user_id else "system",
                data={"message_id": message.id, "text": message.text[:2000]},
            )
        if kept == MessageState.AGENT:
            await session.delete(state)  # answered: the next message is the bot's again
        following = None
        if look_ahead:
            following = await Turns.next_undispatched_in(
                session, message.conversation_id, after_id=message.id
            )
        return Dispatched(
            outcome="held",
            conversation_id=message.conversation_id,
            looked_ahead=look_ahead,
            following=following,
        )

    async def _not_now(self, session: AsyncSession, message_id: int) -> Dispatched | None:
        """Why a message that could not be claimed is not to be interpreted now (None: there
        is no such message)."""
        message = await session.get(Message, message_id)
        if message is None:
            log.warning("dispatch of unknown message", extra={"message_id": message_id})
            return None
        existing = await self._activity_of(session, message_id)
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
        if await Turns.earlier_undispatched_in(session, message):
            # Understood in the light of the ones before it (an open question): they go first.
            return Dispatched(outcome="waiting", conversation_id=message.conversation_id)
        return Dispatched(outcome="busy", conversation_id=message.conversation_id)

    async def _dispatch_claimed(
        self,
        message: Message,
        user: User | None,
        state: ConversationState | None,
        attempt: int,
        *,
        lease_s: float | None,
        look_ahead: bool,
    ) -> Dispatched:
        if _held_for(state) is not None:
            async with self._sessions.begin() as session:
                held = await self._held(session, message, attempt, look_ahead=look_ahead)
            if held is not None:
                return held
        try:
            started = time.perf_counter()
            understood = await self._understand(message, user, state)
            assert understood is not None  # the LLM asked where the rules did not settle it
            parse_us = round((time.perf_counter() - started) * 1e6, 1)
            return await self._record(
                message,
                understood,
                parse_us=parse_us,
                attempt=attempt,
                lease_s=lease_s,
                look_ahead=look_ahead,
            )
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
            await self._turns.release_message(message.id, attempt=attempt)
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
        self,
        message: Message,
        user: User | None,
        state: ConversationState | None,
        *,
        llm: bool = True,
    ) -> tuple[Intent, StateChange] | None:
        """Rules, then the LLM; or the answer to the question the conversation has open.
        Without ``llm``: None where the LLM would be asked."""
        resolution = None
        if state is not None and state.kind != TAKEOVER and state.expires_at > utcnow():
            pending = msgspec.convert(state.data, Pending)
            parsed = self._interpreter.rules(message.text)
            resolution = self._clarifier.resume(pending, state.attempts, message.text, parsed)
        intent = resolution.intent if resolution is not None else None
        if resolution is not None and intent is not None:
            if resolution.state == "keep":
                return intent, "keep"
            if isinstance(resolution.state, Pending):
                return intent, (resolution.state, resolution.attempts)  # asked again
        if intent is None:
            intent = self._interpreter.decided(message.text)
        if intent is None:
            if not llm:
                return None

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
        if _taken_over(state):
            return  # a person took the conversation over meanwhile: their state stays
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
        understood: tuple[Intent, StateChange],
        *,
        parse_us: float,
        attempt: int,
        lease_s: float | None = None,
        look_ahead: bool = False,
    ) -> Dispatched:
        """Record the message's activity in a transaction of its own (the sender read again:
        the LLM may have taken its time)."""
        async with self._sessions.begin() as session:
            # Taken over while the LLM read it: the person has it now.
            if held := await self._held(session, message, attempt, look_ahead=look_ahead):
                return held
            user = await session.get(User, message.user_id) if message.user_id else None
            return await self._record_in(
                session,
                message,
                user,
                understood,
                parse_us=parse_us,
                attempt=attempt,
                lease_s=lease_s,
                look_ahead=look_ahead,
            )

    @staticmethod
    async def _fence(session: AsyncSession, message: Message, attempt: int) -> None:
        """Only the attempt holding the message's claim records its activity."""
        claimed = await session.execute(
            MESSAGES.update_held(
                message.id, attempt, state=MessageState.DISPATCHED.value, claimed_until=None
            )
        )
        if claimed.rowcount != 1:  # type: ignore[attr-defined]
            raise ClaimLost(message.id)

    async def _tell_failed(
        self, session: AsyncSession, activity: Activity, message: Message
    ) -> None:
        """The sender is told why their request failed (refused, no one to approve it)."""
        details = activity.details
        text = reply_text(activity.id, activity.status, details, language_of(details))
        await add_reply(
            session,
            activity_id=activity.id,
            conversation_id=message.conversation_id,
            channel=message.channel,
            parts=self._routing.split(message.channel, text) if text else [],
        )

    async def _record_in(
        self,
        session: AsyncSession,
        message: Message,
        user: User | None,
        understood: tuple[Intent, StateChange],
        *,
        parse_us: float,
        attempt: int,
        lease_s: float | None,
        look_ahead: bool,
    ) -> Dispatched:
        """Record the message's activity (fenced by its claim); with ``lease_s``, claim it to
        run at once if nothing earlier holds it back (:meth:`Turns.blocking`)."""
        intent, change = understood
        action = self._catalog.action(intent.agent, intent.action_type)
        await self._fence(session, message, attempt)
        role = user.role if user else None
        allowed = action is not None and may_request(role, user.active if user else True, action)
        language, change = await _language(session, message, user, intent, change)
        provenance: dict[str, Any] = {
            **intent.provenance,
            "matched": intent.matched,
            "parse_us": parse_us,
            "language": language,
        }
        details = details_of(intent, provenance, allowed=allowed)
        approval = action.approval if allowed and action is not None else None
        status = (
            ActivityStatus.FAILED
            if not allowed
            else ActivityStatus.AWAITING_APPROVAL
            if approval is not None
            else ActivityStatus.QUEUED
        )
        run_here = (
            lease_s is not None
            and action is not None
            and status == ActivityStatus.QUEUED
            and await _free_to_run(session, message, action)
        )
        opening = opening_of(
            message, intent, action, details, status, lease_s=lease_s if run_here else None
        )
        activity = await ActivityLog.open(session, opening)
        if approval is not None and action is not None:
            await self._approvals.gate(session, activity, action, user)  # may fail: no one to ask
        if not allowed:
            self._activities.add_event(
                session, activity.id, "denied", status=status.value, data=details["error"]
            )
        if activity.status == ActivityStatus.FAILED:
            await self._tell_failed(session, activity, message)
        await self._change_state(session, message.conversation_id, change, activity.id)
        log.info(
            "activity recorded",
            extra={"activity_id": activity.id, "message_id": message.id, "status": activity.status},
        )
        following = (
            await Turns.next_undispatched_in(session, message.conversation_id, after_id=message.id)
            if look_ahead
            else None
        )
        running = Claimed(
            activity=ActivityView.of(activity),
            attempt=1,
            role=role,
            active=user.active if user else True,
        )
        return Dispatched(
            activity_id=activity.id,
            status=activity.status,
            created=True,
            conversation_id=message.conversation_id,
            running=running if run_here else None,
            looked_ahead=look_ahead,
            following=following,
        )
