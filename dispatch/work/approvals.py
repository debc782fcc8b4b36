"""The human approval gate: who is asked, what a decision does, and expiry.

An action whose catalog entry has an ``[approval]`` table is recorded ``awaiting_approval``; every
eligible approver is sent the request on their channel, with its code (the activity id) and,
where the channel has them, two buttons. A decision counts only from a verified identity of an
eligible approver, once per approver (a unique row), only while the activity awaits approval
and has not expired; it is taken under a lock on the activity row, so concurrent decisions are
serialized and an approval can never run the action twice. Every decision, counted or refused,
is an event. Messages to approvers and to the requester are outbound rows of the activity,
written in the deciding transaction and sent at most once by ``workers.replies``.
"""

from __future__ import annotations

import datetime as dt
import enum
import logging
from collections.abc import Callable
from typing import Any

import msgspec
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from dispatch.infra.queue import JobQueue
from dispatch.infra.routing import ChannelRouting, reaching
from dispatch.infra.sql import insert_or_get
from dispatch.language.i18n import language_of, say, status_word
from dispatch.policy.catalog import Catalog
from dispatch.policy.specs import ActionSpec, ApprovalSpec
from dispatch.record.activities import (
    EXPIRE,
    GRANT,
    GRANT_AND_QUEUE,
    REJECT,
    RUN,
    ActivityLog,
)
from dispatch.record.db import planned_for_values
from dispatch.record.messages import Choice
from dispatch.record.models import (
    Activity,
    ActivityEvent,
    Approval,
    Conversation,
    User,
    UserIdentity,
    utcnow,
)
from dispatch.record.models import ActivityStatus as S
from dispatch.record.outbox import add_reply, payload_text

__all__ = ["ApprovalService", "Decision", "Outcome"]

log = logging.getLogger("switchboard.approvals")

CALL_AGAIN_AFTER = dt.timedelta(minutes=10)
"""A conversation's call for a person pages the staff at most once in this long."""


class Reach(msgspec.Struct, frozen=True, kw_only=True):
    """Where a person is messaged (a channel, a conversation of theirs) and in what language."""

    user: User
    channel: str
    conversation_id: int
    language: str | None


class Decision(enum.StrEnum):
    APPROVE = "approve"
    REJECT = "reject"


class Outcome(msgspec.Struct, frozen=True, kw_only=True):
    """What a decision (or a run request) did, for the person who made it."""

    text: str
    applied: bool
    status: str | None = None
    code: int | None = None


class ApprovalService:
    def __init__(
        self,
        *,
        sessions: async_sessionmaker[AsyncSession],
        catalog: Catalog,
        queue: JobQueue,
        routing: ChannelRouting,
    ) -> None:
        self._sessions = sessions
        self._catalog = catalog
        self._queue = queue
        self._routing = routing

    # -- asking ---------------------------------------------------------------------------

    async def gate(
        self, session: AsyncSession, activity: Activity, action: ActionSpec, requester: User | None
    ) -> bool:
        """In the transaction recording ``activity``: ask its approvers. With none to ask now
        it waits all the same (a supervisor decides in the portal or over the API, or it
        expires), and the requester is told so. Whether anyone was asked."""
        return bool(await self.request(session, activity, action, requester))

    async def request(
        self, session: AsyncSession, activity: Activity, action: ActionSpec, requester: User | None
    ) -> int:
        """In the dispatch transaction: ask every eligible approver; returns how many."""
        approval = action.approval
        assert approval is not None
        requester_id = requester.id if requester else None
        approvers = await self._approvers(session, approval, requester_id)
        targets = [t for t in [await self._reach(session, user) for user in approvers] if t]
        expires = activity.expires_at
        minutes = round((expires - utcnow()).total_seconds() / 60) if expires else 0
        payload = activity.details.get("payload") or {}
        code = activity.id

        def text(language: str | None) -> str:
            details = payload_text(payload)
            return say(
                "approval.request",
                language,
                id=code,
                what=action.words(language)[0],
                who=requester.name if requester else say("someone", language),
                where=activity.source_channel or say("the_api", language),
                details=say("approval.details", language, details=details) if payload else "",
                minutes=minutes,
            )

        def choices(language: str | None) -> list[Any]:
            return [
                msgspec.to_builtins(
                    Choice(
                        label=say("approval.approve_button", language, id=code), text=f"YES {code}"
                    )
                ),
                msgspec.to_builtins(
                    Choice(
                        label=say("approval.reject_button", language, id=code), text=f"NO {code}"
                    )
                ),
            ]

        await self._send(session, activity.id, targets, text, choices)
        ActivityLog.add_event(
            session,
            activity.id,
            "approval_requested",
            status=activity.status,
            data={
                "code": activity.id,
                "approver_roles": list(approval.approvers),
                "quorum": approval.quorum,
                "auto_run": approval.auto_run,
                "expires_at": expires.isoformat() if expires else None,
                "notified": [{"user_id": t.user.id, "channel": t.channel} for t in targets],
            },
        )
        language = language_of(activity.details)
        needed = (
            say("approval.quorum", language, quorum=approval.quorum) if approval.quorum > 1 else ""
        )
        told = "approval.asked" if targets else "approval.waiting"
        what = action.words(language)[0]
        await self._tell_requester(
            session, activity, say(told, language, id=activity.id, what=what, needed=needed)
        )
        return len(targets)

    async def call_people(
        self,
        activity_id: int,
        *,
        roles: tuple[str, ...],
        text: Callable[[str | None, str | None], str],
    ) -> int:
        """Tell every active user of ``roles`` (on the channel that reaches them, as approval
        requests go; those who log in to the portal see it there, too) ``text``, as replies of
        activity ``activity_id``: once per activity
        however often this is called, and once per conversation in ``CALL_AGAIN_AFTER`` (a
        visitor saying "agent" again and again does not page everyone each time). Returns
        how many are (or were just) told. ``text(language, who)``: what to say in a person's
        language, about the requester (their name, if known)."""
        async with self._sessions.begin() as session:
            activity = await session.scalar(
                select(Activity).where(Activity.id == activity_id).with_for_update()
            )
            if activity is None:
                return 0
            recent = (
                select(ActivityEvent.data)
                .join(Activity, Activity.id == ActivityEvent.activity_id)
                .where(ActivityEvent.kind == "people_called")
                .order_by(ActivityEvent.id.desc())
                .limit(1)
            )
            if activity.conversation_id is not None:
                recent = recent.where(
                    Activity.conversation_id == activity.conversation_id,
                    ActivityEvent.at > utcnow() - CALL_AGAIN_AFTER,
                )
            else:
                recent = recent.where(ActivityEvent.activity_id == activity_id)
            called = await session.scalar(recent)
            if called is not None:
                return int(called.get("told", 0))
            people = list(
                await session.scalars(
                    select(User)
                    .where(User.active.is_(True), User.role.in_(roles))
                    .order_by(User.id)
                )
            )
            targets = [t for t in [await self._reach(session, user) for user in people] if t]
            # Who logs in to the portal sees the call there (a badge on the conversation, and
            # a browser notification): told too, though no channel reaches them.
            in_portal = [u.id for u in people if u.password_hash is not None]
            requester = activity.actor_user_id
            who = await session.scalar(select(User.name).where(User.id == requester))
            await self._send(session, activity_id, targets, lambda language: text(language, who))
            told = {t.user.id for t in targets} | set(in_portal)
            ActivityLog.add_event(
                session,
                activity_id,
                "people_called",
                data={
                    "told": len(told),
                    "users": [t.user.id for t in targets],
                    "portal": in_portal,
                },
            )
            return len(told)

    async def tell_roles(
        self,
        session: AsyncSession,
        activity_id: int,
        *,
        roles: tuple[str, ...],
        text: Callable[[str | None], str],
        not_user: int | None = None,
    ) -> list[int]:
        """Tell every active user of ``roles`` (but ``not_user``) ``text`` in their language,
        on the channel that reaches them, as replies of ``activity_id`` in ``session``'s
        transaction; the ids of those reached."""
        people = await session.scalars(
            select(User).where(User.active.is_(True), User.role.in_(roles)).order_by(User.id)
        )
        targets = [
            t
            for t in [await self._reach(session, u) for u in people if u.id != not_user]
            if t is not None
        ]
        await self._send(session, activity_id, targets, text)
        return [t.user.id for t in targets]

    async def _send(
        self,
        session: AsyncSession,
        activity_id: int,
        targets: list[Reach],
        text: Callable[[str | None], str],
        choices: Callable[[str | None], list[Any]] | None = None,
    ) -> None:
        """``text`` (and ``choices``), in each one's language, to everyone :meth:`_reach`
        found, as replies of activity ``activity_id``."""
        for target in targets:
            await add_reply(
                session,
                activity_id=activity_id,
                conversation_id=target.conversation_id,
                channel=target.channel,
                parts=self._routing.split(target.channel, text(target.language)),
                choices=choices(target.language) if choices else None,
            )

    async def _approvers(
        self, session: AsyncSession, approval: ApprovalSpec, requester_id: int | None
    ) -> list[User]:
        users = await session.scalars(
            select(User)
            .where(User.active.is_(True), User.role.in_(approval.approvers))
            .order_by(User.id)
        )
        return [u for u in users if approval.self_approval or u.id != requester_id]

    async def _reach(self, session: AsyncSession, user: User) -> Reach | None:
        """Where this person is messaged, if anywhere: the configured channel they last wrote
        from, else the first configured channel that reaches one of their addresses (in the
        registry's order of preference); in their language (chosen, else that conversation's)."""
        identities = list(
            await session.scalars(select(UserIdentity).where(UserIdentity.user_id == user.id))
        )
        order = self._routing.channels()
        candidates = [
            (channel, identity.address)
            for identity in identities
            for channel in reaching(self._routing, identity.channel)
        ]
        if not candidates:
            return None
        seen = {
            (c.channel, c.key): c
            for c in await session.scalars(
                select(Conversation).where(
                    Conversation.key.in_({address for _, address in candidates}),
                    Conversation.channel.in_({channel for channel, _ in candidates}),
                )
            )
        }

        def rank(candidate: tuple[str, str]) -> tuple[float, int]:
            found = seen.get(candidate)
            last = found.last_inbound_at if found else None
            return (-(last.timestamp() if last else 0.0), order.index(candidate[0]))

        channel, address = min(candidates, key=rank)
        conversation_id, _ = await insert_or_get(
            session,
            Conversation.__table__,  # type: ignore[arg-type]
            {"channel": channel, "key": address, "user_id": user.id},
            ("channel", "key"),
        )
        known = seen.get((channel, address))
        language = user.language or (known.language if known else None)
        return Reach(user=user, channel=channel, conversation_id=conversation_id, language=language)

    # -- deciding -------------------------------------------------------------------------

    async def decide(
        self,
        *,
        user_id: int | None,
        code: int,
        decision: Decision,
        channel: str,
        language: str | None = None,
    ) -> Outcome:
        """``user_id``'s decision on request ``code``, told to them in their language (chosen,
        else ``language``: the one they write in)."""
        try:
            outcome, changed = await self._decide(user_id, code, decision, channel, language)
        except IntegrityError:
            # The same approver decided twice at the same moment: the other one counted.
            text = say("decision.already", language, id=code)
            return Outcome(text=text, applied=False)
        if changed:
            # Delivers what the requester is told and, once approved, runs the action.
            await self._queue.enqueue_run(code)
        log.info(
            "decision",
            extra={"activity_id": code, "decision": decision.value, "applied": outcome.applied},
        )
        return outcome

    async def _decide(
        self, user_id: int | None, code: int, decision: Decision, channel: str, language: str | None
    ) -> tuple[Outcome, bool]:
        async with self._sessions.begin() as session:
            found = await self._locked(session, code)
            user = await session.get(User, user_id) if user_id is not None else None
            language = (user.language if user else None) or language
            nothing = Outcome(
                text=say("decision.nothing", language, id=code), applied=False, code=code
            )
            if found is None:
                return nothing, False
            activity, approval = found
            actor = f"user:{user_id}" if user_id is not None else "anonymous"
            refusal = await self._refusal(session, activity, approval, user, language)
            if refusal is not None:
                reason, text, changed = refusal
                ActivityLog.add_event(
                    session,
                    code,
                    "decision_refused",
                    status=activity.status,
                    actor=actor,
                    data={"decision": decision.value, "channel": channel, "reason": reason},
                )
                if text is None:  # not theirs to decide: the same answer as an unknown code
                    return nothing, changed
                return Outcome(text=text, applied=False, status=activity.status, code=code), changed
            assert user is not None
            session.add(
                Approval(
                    activity_id=code, approver_user_id=user.id, decision=decision, channel=channel
                )
            )
            await session.flush()
            return await self._apply(
                session,
                activity,
                approval=approval,
                user=user,
                decision=decision,
                channel=channel,
                language=language,
            )

    async def _apply(
        self,
        session: AsyncSession,
        activity: Activity,
        *,
        approval: ApprovalSpec,
        user: User,
        decision: Decision,
        channel: str,
        language: str | None,
    ) -> tuple[Outcome, bool]:
        """The decision applied; what the decider is told is in ``language``, what the
        requester is told in theirs."""
        code = activity.id
        actor = f"user:{user.id}"
        base = {"code": code, "channel": channel, "approver": user.name, "role": user.role}
        if decision == Decision.REJECT:
            ActivityLog.move(session, activity, REJECT, actor=actor, data=base)
            await self._tell_requester(
                session,
                activity,
                say("approval.rejected", language_of(activity.details), id=code, who=user.name),
            )
            return Outcome(
                text=say("decision.rejected", language, id=code),
                applied=True,
                status=activity.status,
                code=code,
            ), True
        approvals = int(
            await session.scalar(
                select(func.count())
                .select_from(Approval)
                .where(Approval.activity_id == code, Approval.decision == Decision.APPROVE.value)
            )
            or 0
        )
        counted = {**base, "approvals": approvals, "quorum": approval.quorum}
        ActivityLog.add_event(
            session, code, "approved", status=activity.status, actor=actor, data=counted
        )
        return await self._approved(
            session, activity, approval, user=user, approvals=approvals, language=language
        )

    async def _approved(
        self,
        session: AsyncSession,
        activity: Activity,
        approval: ApprovalSpec,
        *,
        user: User,
        approvals: int,
        language: str | None,
    ) -> tuple[Outcome, bool]:
        """An approval counted: short of the quorum, the requester hears of it; at the quorum,
        the request is granted (and queued if it runs at once)."""
        code = activity.id
        if approvals < approval.quorum:
            await self._tell_requester(
                session,
                activity,
                say(
                    "approval.partial",
                    language_of(activity.details),
                    who=user.name,
                    id=code,
                    approvals=approvals,
                    quorum=approval.quorum,
                ),
            )
            return Outcome(
                text=say(
                    "decision.counted",
                    language,
                    id=code,
                    approvals=approvals,
                    quorum=approval.quorum,
                ),
                applied=True,
                status=activity.status,
                code=code,
            ), True
        ActivityLog.move(
            session,
            activity,
            GRANT_AND_QUEUE if approval.auto_run else GRANT,
            actor=f"user:{user.id}",
            data={"approvals": approvals, "auto_run": approval.auto_run},
        )
        asked_in = language_of(activity.details)
        then = say(
            "approval.runs" if approval.auto_run else "approval.waits_run", asked_in, id=code
        )
        await self._tell_requester(
            session,
            activity,
            say("approval.approved", asked_in, id=code, who=user.name, then=then),
        )
        verb = say(
            "decision.runs_now" if approval.auto_run else "decision.send_run", language, id=code
        )
        return Outcome(
            text=say("decision.approved", language, id=code, then=verb),
            applied=True,
            status=activity.status,
            code=code,
        ), True

    async def run(
        self, *, user_id: int | None, code: int, channel: str, language: str | None = None
    ) -> Outcome:
        """Run an approved request that waits for it (``auto_run = false``); told to the user
        in their language (chosen, else ``language``)."""
        async with self._sessions.begin() as session:
            found = await self._locked(session, code)
            user = await session.get(User, user_id) if user_id is not None else None
            language = (user.language if user else None) or language
            nothing = Outcome(text=say("run.nothing", language, id=code), applied=False)
            if found is None or user is None or not user.active:
                return nothing
            activity, approval = found
            is_requester = activity.actor_user_id == user.id
            if not is_requester and user.role not in approval.approvers:
                return nothing
            if activity.status != S.PENDING:
                return Outcome(
                    text=say(
                        "run.not_pending",
                        language,
                        id=code,
                        status=status_word(activity.status, language),
                    ),
                    applied=False,
                    status=activity.status,
                    code=code,
                )
            ActivityLog.move(
                session,
                activity,
                RUN,
                actor=f"user:{user.id}",
                data={"code": code, "channel": channel},
            )
        await self._queue.enqueue_run(code)
        return Outcome(
            text=say("run.started", language, id=code),
            applied=True,
            status=S.QUEUED.value,
            code=code,
        )

    async def pending_for(self, user_id: int) -> list[int]:
        """Codes awaiting this user's decision (eligible, not yet decided, not expired)."""
        async with self._sessions() as session:
            user = await session.get(User, user_id)
            if user is None or not user.active:
                return []
            decided = select(Approval.activity_id).where(Approval.approver_user_id == user_id)
            rows = await session.scalars(
                select(Activity)
                .where(
                    Activity.status == S.AWAITING_APPROVAL.value,
                    Activity.expires_at > utcnow(),
                    Activity.id.not_in(decided),
                )
                .order_by(Activity.id)
            )
            codes = []
            for activity in rows:
                action = self._catalog.action(activity.agent_name, activity.action_type)
                if (
                    action
                    and action.approval
                    and self._eligibility(user, activity, action.approval) is None
                ):
                    codes.append(activity.id)
            return codes

    # -- expiry ---------------------------------------------------------------------------

    async def expire_due(self, *, limit: int = 200) -> list[int]:
        """Move requests whose approval time ran out to ``expired``, telling the requester."""
        async with self._sessions() as session:
            await planned_for_values(session)
            due = list(
                await session.scalars(
                    select(Activity.id)
                    .where(
                        Activity.status == S.AWAITING_APPROVAL.value,
                        Activity.expires_at <= utcnow(),
                    )
                    .order_by(Activity.id)
                    .limit(limit)
                )
            )
        expired = []
        for code in due:
            async with self._sessions.begin() as session:
                found = await self._locked(session, code)
                if found is None:
                    continue
                activity, _ = found
                if activity.status == S.AWAITING_APPROVAL and await self._expire(session, activity):
                    expired.append(code)
        for code in expired:
            await self._queue.enqueue_run(code)
        return expired

    async def _expire(self, session: AsyncSession, activity: Activity) -> bool:
        if activity.expires_at is None or activity.expires_at > utcnow():
            return False
        ActivityLog.move(
            session, activity, EXPIRE, data={"expires_at": activity.expires_at.isoformat()}
        )
        await self._tell_requester(
            session,
            activity,
            say("approval.expired", language_of(activity.details), id=activity.id),
        )
        return True

    # -- helpers --------------------------------------------------------------------------

    async def _locked(
        self, session: AsyncSession, code: int
    ) -> tuple[Activity, ApprovalSpec] | None:
        activity = await session.scalar(
            select(Activity).where(Activity.id == code).with_for_update()
        )
        if activity is None:
            return None
        action = self._catalog.action(activity.agent_name, activity.action_type)
        if action is None or action.approval is None:
            return None
        return activity, action.approval

    @staticmethod
    def _eligibility(user: User | None, activity: Activity, approval: ApprovalSpec) -> str | None:
        """None if ``user`` may decide on ``activity``; else why not."""
        if user is None:
            return "unknown_user"
        if not user.active:
            return "inactive"
        if user.role not in approval.approvers:
            return "not_an_approver"
        if activity.actor_user_id == user.id and not approval.self_approval:
            return "own_request"
        return None

    async def _refusal(
        self,
        session: AsyncSession,
        activity: Activity,
        approval: ApprovalSpec,
        user: User | None,
        language: str | None,
    ) -> tuple[str, str | None, bool] | None:
        """Why this decision does not count: (reason, what to tell the decider, whether the
        record changed); None if it counts."""
        code = activity.id
        why = self._eligibility(user, activity, approval)
        if why is not None:
            return why, None, False
        if activity.status != S.AWAITING_APPROVAL:
            status = status_word(activity.status, language)
            return (
                "not_awaiting",
                say("decision.not_awaiting", language, id=code, status=status),
                False,
            )
        if activity.expires_at is not None and activity.expires_at <= utcnow():
            await self._expire(session, activity)  # news for the requester
            return "expired", say("decision.expired", language, id=code), True
        assert user is not None
        already = await session.scalar(
            select(Approval.decision).where(
                Approval.activity_id == code, Approval.approver_user_id == user.id
            )
        )
        if already is not None:
            text = say("decision.already_as", language, id=code, decision=already)
            return "already_decided", text, False
        return None

    async def _tell_requester(self, session: AsyncSession, activity: Activity, text: str) -> None:
        channel = activity.source_channel
        if channel is None or activity.conversation_id is None:
            return
        await add_reply(
            session,
            activity_id=activity.id,
            conversation_id=activity.conversation_id,
            channel=channel,
            parts=self._routing.split(channel, text),
        )


def expiry(approval: ApprovalSpec, now: dt.datetime | None = None) -> dt.datetime:
    return (now or utcnow()) + dt.timedelta(seconds=approval.ttl_s)
