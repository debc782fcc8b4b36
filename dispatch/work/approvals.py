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
from typing import Any

import msgspec
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from dispatch.infra.queue import JobQueue
from dispatch.infra.routing import ChannelRouting, reaching
from dispatch.infra.sql import insert_or_get
from dispatch.language.i18n import language_of, say
from dispatch.policy.catalog import Catalog
from dispatch.policy.specs import ActionSpec, ApprovalSpec
from dispatch.record.activities import (
    EXPIRE,
    GRANT,
    GRANT_AND_QUEUE,
    NO_ONE_TO_ASK,
    REJECT,
    RUN,
    ActivityLog,
)
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

__all__ = ["NO_APPROVER", "ApprovalService", "Decision", "Outcome"]

NO_APPROVER = {
    "reason": "no_approver",
    "message": "no one who may approve this request can be reached",
}
"""Why a request that needs an approval no one can give fails at once."""

log = logging.getLogger("switchboard.approvals")

CALL_AGAIN_AFTER = dt.timedelta(minutes=10)
"""A conversation's call for a person pages the staff at most once in this long."""

_UNCHANGED = "your decision changes nothing."


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
        """In the transaction recording ``activity``: ask its approvers; with none to ask, it
        fails at once (``no_approver``, with its event). Whether anyone was asked."""
        if await self.request(session, activity, action, requester):
            return True
        ActivityLog.move(
            session, activity, NO_ONE_TO_ASK, data=NO_APPROVER, details={"error": NO_APPROVER}
        )
        return False

    async def request(
        self, session: AsyncSession, activity: Activity, action: ActionSpec, requester: User | None
    ) -> int:
        """In the dispatch transaction: ask every eligible approver; returns how many."""
        approval = action.approval
        assert approval is not None
        requester_id = requester.id if requester else None
        approvers = await self._approvers(session, approval, requester_id)
        targets = [t for t in [await self._reach(session, user) for user in approvers] if t]
        who = requester.name if requester else "someone"
        expires = activity.expires_at
        minutes = round((expires - utcnow()).total_seconds() / 60) if expires else 0
        payload = activity.details.get("payload") or {}
        details = f"\nDetails: {payload_text(payload)}" if payload else ""
        text = (
            f"Approval needed for request #{activity.id}: {action.description}, asked by {who} "
            f"on {activity.source_channel or 'the API'}.{details}\n"
            f"Reply YES {activity.id} to approve or NO {activity.id} to reject "
            f"(expires in {minutes} min)."
        )
        choices = [
            msgspec.to_builtins(Choice(label=f"Approve #{activity.id}", text=f"YES {activity.id}")),
            msgspec.to_builtins(Choice(label=f"Reject #{activity.id}", text=f"NO {activity.id}")),
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
                "notified": [{"user_id": u.id, "channel": c} for u, c, _ in targets],
            },
        )
        if targets:
            language = language_of(activity.details)
            needed = (
                say("approval.quorum", language, quorum=approval.quorum)
                if approval.quorum > 1
                else ""
            )
            what = action.words(language)[0]
            await self._tell_requester(
                session,
                activity,
                say("approval.asked", language, id=activity.id, what=what, needed=needed),
            )
        return len(targets)

    async def call_people(self, activity_id: int, *, roles: tuple[str, ...], text: str) -> int:
        """Tell every active user of ``roles`` (on the channel that reaches them, as approval
        requests go) ``text``, as replies of activity ``activity_id``: once per activity
        however often this is called, and once per conversation in ``CALL_AGAIN_AFTER`` (a
        visitor saying "agent" again and again does not page everyone each time). Returns
        how many are (or were just) told."""
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
            people = await session.scalars(
                select(User).where(User.active.is_(True), User.role.in_(roles)).order_by(User.id)
            )
            targets = [t for t in [await self._reach(session, user) for user in people] if t]
            await self._send(session, activity_id, targets, text)
            ActivityLog.add_event(
                session,
                activity_id,
                "people_called",
                data={"told": len(targets), "users": [u.id for u, _, _ in targets]},
            )
            return len(targets)

    async def _send(
        self,
        session: AsyncSession,
        activity_id: int,
        targets: list[tuple[User, str, int]],
        text: str,
        choices: list[Any] | None = None,
    ) -> None:
        """``text`` to each (user, channel, conversation) :meth:`_reach` found, as replies of
        activity ``activity_id``."""
        for _user, channel, conversation_id in targets:
            await add_reply(
                session,
                activity_id=activity_id,
                conversation_id=conversation_id,
                channel=channel,
                parts=self._routing.split(channel, text),
                choices=choices,
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

    async def _reach(self, session: AsyncSession, user: User) -> tuple[User, str, int] | None:
        """(user, channel, conversation id) where this approver is messaged, if anywhere: the
        configured channel they last wrote from, else the first configured channel that reaches
        one of their addresses (in the registry's order of preference)."""
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
            (c.channel, c.key): c.last_inbound_at
            for c in await session.scalars(
                select(Conversation).where(
                    Conversation.key.in_({address for _, address in candidates}),
                    Conversation.channel.in_({channel for channel, _ in candidates}),
                )
            )
        }

        def rank(candidate: tuple[str, str]) -> tuple[float, int]:
            last = seen.get(candidate)
            return (-(last.timestamp() if last else 0.0), order.index(candidate[0]))

        channel, address = min(candidates, key=rank)
        conversation_id, _ = await insert_or_get(
            session,
            Conversation.__table__,  # type: ignore[arg-type]
            {"channel": channel, "key": address, "user_id": user.id},
            ("channel", "key"),
        )
        return user, channel, conversation_id

    # -- deciding -------------------------------------------------------------------------

    async def decide(
        self, *, user_id: int | None, code: int, decision: Decision, channel: str
    ) -> Outcome:
        try:
            outcome, changed = await self._decide(user_id, code, decision, channel)
        except IntegrityError:
            # The same approver decided twice at the same moment: the other one counted.
            return Outcome(text=f"You already decided on request #{code}.", applied=False)
        if changed:
            # Delivers what the requester is told and, once approved, runs the action.
            await self._queue.enqueue_run(code)
        log.info(
            "decision",
            extra={"activity_id": code, "decision": decision.value, "applied": outcome.applied},
        )
        return outcome

    async def _decide(
        self, user_id: int | None, code: int, decision: Decision, channel: str
    ) -> tuple[Outcome, bool]:
        async with self._sessions.begin() as session:
            found = await self._locked(session, code)
            user = await session.get(User, user_id) if user_id is not None else None
            nothing = Outcome(
                text=f"Nothing is awaiting your decision under {code}. / "
                f"No hay nada pendiente de tu decisión con el código {code}.",
                applied=False,
                code=code,
            )
            if found is None:
                return nothing, False
            activity, approval = found
            actor = f"user:{user_id}" if user_id is not None else "anonymous"
            refusal = await self._refusal(session, activity, approval, user)
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
                session, activity, approval=approval, user=user, decision=decision, channel=channel
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
    ) -> tuple[Outcome, bool]:
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
                text=f"Rejected request #{code}; the requester has been told.",
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
        if approvals < approval.quorum:
            await self._tell_requester(
                session,
                activity,
                f"{user.name} approved request #{code} ({approvals} of {approval.quorum} "
                "approvals).",
            )
            return Outcome(
                text=f"Your approval of request #{code} counts: {approvals} of {approval.quorum}.",
                applied=True,
                status=activity.status,
                code=code,
            ), True
        ActivityLog.move(
            session,
            activity,
            GRANT_AND_QUEUE if approval.auto_run else GRANT,
            actor=actor,
            data={"approvals": approvals, "auto_run": approval.auto_run},
        )
        language = language_of(activity.details)
        then = say(
            "approval.runs" if approval.auto_run else "approval.waits_run", language, id=code
        )
        await self._tell_requester(
            session,
            activity,
            say("approval.approved", language, id=code, who=user.name, then=then),
        )
        verb = "it runs now" if approval.auto_run else f"send RUN {code} to run it"
        return Outcome(
            text=f"Approved request #{code}; {verb}.",
            applied=True,
            status=activity.status,
            code=code,
        ), True

    async def run(self, *, user_id: int | None, code: int, channel: str) -> Outcome:
        """Run an approved request that waits for it (``auto_run = false``)."""
        async with self._sessions.begin() as session:
            found = await self._locked(session, code)
            user = await session.get(User, user_id) if user_id is not None else None
            nothing = Outcome(text=f"There is no request #{code} for you to run.", applied=False)
            if found is None or user is None or not user.active:
                return nothing
            activity, approval = found
            is_requester = activity.actor_user_id == user.id
            if not is_requester and user.role not in approval.approvers:
                return nothing
            if activity.status != S.PENDING:
                return Outcome(
                    text=f"Request #{code} is {activity.status}; only an approved request "
                    "waiting to run can be run.",
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
            text=f"Request #{code} is running.", applied=True, status=S.QUEUED.value, code=code
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
    ) -> tuple[str, str | None, bool] | None:
        """Why this decision does not count: (reason, what to tell the decider, whether the
        record changed); None if it counts."""
        code = activity.id
        why = self._eligibility(user, activity, approval)
        if why is not None:
            return why, None, False
        if activity.status != S.AWAITING_APPROVAL:
            return "not_awaiting", f"Request #{code} is {activity.status}; " + _UNCHANGED, False
        if activity.expires_at is not None and activity.expires_at <= utcnow():
            await self._expire(session, activity)  # news for the requester
            return (
                "expired",
                f"Request #{code} expired before your decision; nothing was done.",
                True,
            )
        assert user is not None
        already = await session.scalar(
            select(Approval.decision).where(
                Approval.activity_id == code, Approval.approver_user_id == user.id
            )
        )
        if already is not None:
            return "already_decided", f"You already decided on request #{code} ({already}).", False
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
