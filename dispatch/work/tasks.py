"""Tasks: activities that external agents serve (an action with ``executor = "agent"``).

Such an activity passes the one gate every request passes (permission, approval), then waits
in the queue of the agents that serve its action (``waiting_for_agent``). An agent claims it
(``claimed``: exactly one of concurrent claimants wins, for ``lease_s``, renewed by each of its
calls on the task), may ask the requester questions (their answer is attached to the task),
and hands work in (``in_review``); a person reviews it: approve (``completed``: the requester
gets the result on their channel, in their language), request changes (``changes_requested``:
back to the agent while its lease holds, else to the queue) or reject (``rejected``). A lease
that lapses puts the task back in the queue, or fails it after ``max_attempts``; an agent whose
lease lapsed is fenced off. Every transition is one conditional write and its event, in one
transaction (:class:`~dispatch.record.activities.ActivityLog` owns the events)."""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import enum
import functools
from collections.abc import Callable
from typing import Any

import msgspec
from sqlalchemy import ColumnElement, and_, case, delete, func, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from dispatch.infra.clean import clean_json
from dispatch.infra.errors import ConflictError, ForbiddenError, NotFoundError, Unprocessable
from dispatch.infra.queue import JobQueue
from dispatch.infra.routing import ChannelRouting
from dispatch.language.i18n import language_of, say
from dispatch.policy.catalog import Catalog, PayloadError
from dispatch.policy.permissions import may_request, requester_role
from dispatch.policy.plans import Plan, PlanError, plan_workflow, read_plan
from dispatch.policy.specs import ActionSpec, FollowUpSpec, ReviewSpec
from dispatch.record.activities import (
    COMPLETE_WORK,
    EXPIRE_REVIEW,
    GIVE_UP,
    HAND_IN,
    LAPSE,
    REJECT_WORK,
    RELEASE_TASK,
    SEND_BACK,
    SEND_BACK_TO_QUEUE,
    ActivityLog,
    Move,
    Opening,
)
from dispatch.record.artifacts import ArtifactType, Checked, check_artifact
from dispatch.record.db import planned_for_values
from dispatch.record.models import (
    AGENT_QUESTION,
    TAKEOVER,
    Activity,
    ActivityEvent,
    ActivityStatus,
    Artifact,
    ConversationState,
    CouncilStep,
    Message,
    ReviewVote,
    User,
    utcnow,
)
from dispatch.record.outbox import add_reply
from dispatch.work.approvals import ApprovalService
from dispatch.work.runs import open_plan_run

__all__ = [
    "AgentCaller",
    "ArtifactView",
    "CouncilStepView",
    "ReviewDecision",
    "TaskService",
    "TaskSummary",
    "TaskView",
]

S = ActivityStatus
HELD = (S.CLAIMED.value, S.CHANGES_REQUESTED.value)
"""An agent holds the task (its lease running)."""
OPEN = (S.WAITING_FOR_AGENT.value, *HELD, S.IN_REVIEW.value)
_PRIORITY = {"critical": 0, "high": 1, "normal": 2, "low": 3}
NOTE_KINDS = ("agent_message", "requester_answered", "changes_requested", "review_rejected")
MAX_MESSAGE_CHARS = 4000
QUEUE_LIMIT = 100


class AgentCaller(msgspec.Struct, frozen=True, kw_only=True):
    """An external agent: its token, its name, the actions (``agent.action``) it serves."""

    token_id: int
    name: str
    serves: tuple[str, ...]

    def may_serve(self, agent: str, action: str) -> bool:
        return f"{agent}.{action}" in self.serves

    @property
    def actor(self) -> str:
        return f"agent:{self.token_id}"


class ReviewDecision(enum.StrEnum):
    APPROVE = "approve"
    REQUEST_CHANGES = "request_changes"
    REJECT = "reject"


class ArtifactView(msgspec.Struct, frozen=True, kw_only=True):
    id: int
    type: str
    title: str
    size_bytes: int
    summary: dict[str, Any]
    round: int
    created_at: dt.datetime
    content: str | None = None
    """The whole artifact (in a task's view; not in listings)."""


class TaskNote(msgspec.Struct, frozen=True, kw_only=True):
    """Something said about the task: an agent's message, the requester's answer, a reviewer's
    comment."""

    kind: str
    text: str
    by: str
    at: dt.datetime


class Line(msgspec.Struct, frozen=True, kw_only=True):
    """A message of the requester's conversation."""

    direction: str
    text: str
    author: str | None
    at: dt.datetime


class CouncilStepView(msgspec.Struct, frozen=True, kw_only=True):
    """One answered step of a council's run (a draft, a critique of ``target``'s proposal, a
    revision, a check, a judge's scores, the architect's pick): what a reviewer weighs."""

    round: int
    step: str
    member: str
    target: str
    ok: bool
    text: str
    data: dict[str, Any]
    error: str | None
    tokens: int
    latency_ms: float


class TaskSummary(msgspec.Struct, frozen=True, kw_only=True):
    id: int
    action: str
    """``agent.action`` of the catalog."""
    title: str
    request_text: str | None
    requester: str | None
    channel: str | None
    language: str | None
    payload: dict[str, Any]
    status: str
    priority: str
    attempts: int
    """Claims so far."""
    created_at: dt.datetime
    lease_expires_at: dt.datetime | None = None
    held_by_you: bool = False


class TaskView(TaskSummary, frozen=True, kw_only=True):
    review_round: int
    conversation: list[Line]
    artifacts: list[ArtifactView]
    notes: list[TaskNote]
    council: list[CouncilStepView] = []
    """A council's steps, in order (empty for an agent's task; never shown to agents)."""


def _summary(row: Activity, found: _Found, me: int | None) -> dict[str, Any]:
    return dict(
        id=row.id,
        action=f"{row.agent_name}.{row.action_type}",
        title=row.action_description,
        request_text=found.texts.get(row.source_message_id or 0),
        requester=found.names.get(row.actor_user_id or 0),
        channel=row.source_channel,
        language=language_of(row.details),
        payload=row.details.get("payload") or {},
        status=row.status,
        priority=row.priority,
        attempts=found.claims.get(row.id, 0),
        created_at=row.created_at,
        lease_expires_at=row.lease_expires_at if row.status in HELD else None,
        held_by_you=me is not None and row.agent_token_id == me and row.status in OPEN,
    )


class _Found(msgspec.Struct, frozen=True, kw_only=True):
    """What a listing reads beside its tasks: request texts, requesters' names, claims."""

    texts: dict[int, str] = {}
    names: dict[int, str] = {}
    claims: dict[int, int] = {}


NOTHING = _Found()


class TaskService:
    def __init__(
        self,
        *,
        sessions: async_sessionmaker[AsyncSession],
        catalog: Catalog,
        queue: JobQueue,
        approvals: ApprovalService,
        routing: ChannelRouting,
        link: Callable[[int], str],
    ) -> None:
        self._sessions = sessions
        self._catalog = catalog
        self._queue = queue
        self._approvals = approvals
        self._routing = routing
        self._link = link
        """The address where an artifact is seen (the requester's link to a diff)."""

    # ---- reading -------------------------------------------------------------------------

    def _served(self, *, reviewable: bool = False) -> list[tuple[str, str, ActionSpec]]:
        """The actions agents serve (``reviewable``: and councils, whose work is reviewed the
        same way)."""
        return [
            (a, t, spec)
            for a, t, spec in self._catalog.actions()
            if spec.by_agent or (reviewable and spec.reviewable)
        ]

    async def queue(
        self, agent: AgentCaller | None, *, limit: int = QUEUE_LIMIT
    ) -> list[TaskSummary]:
        """What ``agent`` may claim (None: every waiting task), by priority, then age."""
        actions = [(a, t) for a, t, _ in self._served() if agent is None or agent.may_serve(a, t)]
        if not actions:
            return []
        rank = case(_PRIORITY, value=Activity.priority, else_=2)
        query = (
            select(Activity)
            .where(
                Activity.status == S.WAITING_FOR_AGENT.value,
                _of_actions(actions),
            )
            .order_by(rank, Activity.created_at, Activity.id)
            .limit(limit)
        )
        async with self._sessions() as session:
            await planned_for_values(session)
            rows = list(await session.scalars(query))
            found = await self._requests(session, rows)
        me = agent.token_id if agent else None
        return [TaskSummary(**_summary(r, found, me)) for r in rows]

    async def listing(
        self, *, status: str | None = None, limit: int = QUEUE_LIMIT
    ) -> list[TaskSummary]:
        """Every task (of an action agents or a council serve), newest first: the portal's
        and the operators' view."""
        actions = [(a, t) for a, t, _ in self._served(reviewable=True)]
        if not actions:
            return []
        query = (
            select(Activity).where(_of_actions(actions)).order_by(Activity.id.desc()).limit(limit)
        )
        if status is not None:
            query = query.where(Activity.status == status)
        async with self._sessions() as session:
            await planned_for_values(session)
            rows = list(await session.scalars(query))
            found = await self._requests(session, rows)
        return [TaskSummary(**_summary(r, found, None)) for r in rows]

    @staticmethod
    async def _requests(session: AsyncSession, rows: list[Activity]) -> _Found:
        message_ids = [r.source_message_id for r in rows if r.source_message_id]
        user_ids = [r.actor_user_id for r in rows if r.actor_user_id]
        texts: dict[int, str] = {}
        names: dict[int, str] = {}
        if message_ids:
            texts = {
                int(i): str(t)
                for i, t in await session.execute(
                    select(Message.id, Message.text).where(Message.id.in_(message_ids))
                )
            }
        if user_ids:
            names = {
                int(i): str(n)
                for i, n in await session.execute(
                    select(User.id, User.name).where(User.id.in_(user_ids))
                )
            }
        claims = {
            int(i): int(n)
            for i, n in await session.execute(
                select(ActivityEvent.activity_id, func.count())
                .where(
                    ActivityEvent.activity_id.in_([r.id for r in rows]),
                    ActivityEvent.kind == "claimed",
                )
                .group_by(ActivityEvent.activity_id)
            )
        }
        return _Found(texts=texts, names=names, claims=claims)

    async def get(self, task_id: int, agent: AgentCaller | None = None) -> TaskView:
        """One task, whole: its request, conversation, artifacts and what was said about it. An
        agent sees only the tasks of the actions it serves; the one that holds it renews its
        claim by reading it (any call on a task does)."""
        if agent is not None:
            with contextlib.suppress(ConflictError):
                await self._renew(agent, task_id, HELD)
        async with self._sessions() as session:
            row = await self._task(session, task_id, agent)
            found = await self._requests(session, [row])
            lines: list[Line] = []
            if row.conversation_id is not None:
                recent = await session.scalars(
                    select(Message)
                    .where(Message.conversation_id == row.conversation_id)
                    .order_by(Message.id.desc())
                    .limit(50)
                )
                lines = [
                    Line(
                        direction=m.direction,
                        text=m.text,
                        author=(m.raw or {}).get("author"),
                        at=m.received_at,
                    )
                    for m in reversed(list(recent))
                ]
            artifacts = [
                _artifact(a, whole=True)
                for a in await session.scalars(
                    select(Artifact).where(Artifact.activity_id == task_id).order_by(Artifact.id)
                )
            ]
            notes = [
                TaskNote(
                    kind=e.kind,
                    text=str(e.data.get("text") or e.data.get("comment") or ""),
                    by=e.actor,
                    at=e.at,
                )
                for e in await session.scalars(
                    select(ActivityEvent)
                    .where(ActivityEvent.activity_id == task_id, ActivityEvent.kind.in_(NOTE_KINDS))
                    .order_by(ActivityEvent.id)
                )
            ]
            by_council = agent is None and self._spec(row).by_council
            council = await _council_steps(session, task_id) if by_council else []
        me = agent.token_id if agent else None
        return TaskView(
            **_summary(row, found, me),
            review_round=row.review_round,
            conversation=lines,
            artifacts=artifacts,
            notes=notes,
            council=council,
        )

    async def released(self, artifact_id: int) -> tuple[str, bytes] | None:
        """(media type, bytes) of an artifact of a completed task, as its link shows it."""
        async with self._sessions() as session:
            found = await session.execute(
                select(Artifact)
                .join(Activity, Activity.id == Artifact.activity_id)
                .where(Artifact.id == artifact_id, Activity.status == S.COMPLETED.value)
            )
            artifact = found.scalar_one_or_none()
        if artifact is None:
            return None
        if artifact.type == ArtifactType.SCREENSHOT.value:
            media = str(artifact.summary.get("media_type") or "image/png")
            return media, base64.b64decode(artifact.content)
        return "text/plain; charset=utf-8", artifact.content.encode()

    async def _peek(self, task_id: int) -> Activity:
        async with self._sessions() as session:
            return await self._task(session, task_id, None)

    @staticmethod
    async def _votes(session: AsyncSession, row: Activity) -> int:
        """Decisions already given on the round in review."""
        return int(
            await session.scalar(
                select(func.count())
                .select_from(ReviewVote)
                .where(ReviewVote.activity_id == row.id, ReviewVote.round == row.review_round)
            )
            or 0
        )

    async def _task(
        self, session: AsyncSession, task_id: int, agent: AgentCaller | None, *, lock: bool = False
    ) -> Activity:
        query = select(Activity).where(Activity.id == task_id)
        if lock:
            query = query.with_for_update()
        row = await session.scalar(query)
        spec = self._catalog.action(row.agent_name, row.action_type) if row else None
        if (
            row is None
            or spec is None
            or not spec.reviewable
            or (agent is not None and not agent.may_serve(row.agent_name, row.action_type))
        ):
            raise NotFoundError(f"no task {task_id} among the tasks you may see")
        return row

    def _spec(self, row: Activity) -> ActionSpec:
        spec = self._catalog.action(row.agent_name, row.action_type)
        assert spec is not None  # checked by _task
        assert spec.reviewable
        return spec

    # ---- an agent's calls ----------------------------------------------------------------

    async def claim(self, agent: AgentCaller, task_id: int) -> TaskView:
        """Take a waiting task (or keep one already held: its lease renewed). Of concurrent
        claimants exactly one wins; the others are told the task's state, not its holder."""
        async with self._sessions.begin() as session:
            row = await self._task(session, task_id, agent)
            spec = self._spec(row)
            attempt = await ActivityLog.claim_task(
                session,
                task_id,
                token_id=agent.token_id,
                lease_s=spec.lease_s,
                actor=agent.actor,
                data={"agent": agent.name, "lease_s": spec.lease_s},
            )
        if attempt is None:
            await self._renew(agent, task_id, HELD)  # its own claim: renewed; else refused
        return await self.get(task_id, agent)

    async def _renew(self, agent: AgentCaller, task_id: int, statuses: tuple[str, ...]) -> Activity:
        """The task as ``agent`` holds it, its lease renewed; refused (409) if it does not."""
        async with self._sessions.begin() as session:
            return await self._held(session, agent, task_id, statuses)

    async def _held(
        self, session: AsyncSession, agent: AgentCaller, task_id: int, statuses: tuple[str, ...]
    ) -> Activity:
        """In ``session``'s transaction: the task, held by ``agent`` with a live lease in one
        of ``statuses``, its lease renewed (one conditional write: a lapsed or lost claim
        changes nothing). Refused with the task's state otherwise."""
        row = await self._task(session, task_id, agent)
        spec = self._spec(row)
        now = utcnow()
        renewed = await session.execute(
            update(Activity)
            .where(
                Activity.id == task_id,
                Activity.agent_token_id == agent.token_id,
                Activity.status.in_(statuses),
                Activity.lease_expires_at > now,
            )
            .values(lease_expires_at=now + dt.timedelta(seconds=spec.lease_s))
            .execution_options(synchronize_session=False)
        )
        if renewed.rowcount != 1:  # type: ignore[attr-defined]
            raise ConflictError(_why_not(row, agent, now), extra={"status": row.status})
        # A question it asked waits as long as its claim does.
        await session.execute(
            update(ConversationState)
            .where(
                ConversationState.kind == AGENT_QUESTION,
                ConversationState.question_activity_id == task_id,
            )
            .values(expires_at=now + dt.timedelta(seconds=spec.lease_s))
            .execution_options(synchronize_session=False)
        )
        await session.refresh(row)
        return row

    async def submit(
        self,
        agent: AgentCaller,
        task_id: int,
        *,
        content: str,
        kind: str,
        title: str = "",
        idempotency_key: str | None = None,
    ) -> ArtifactView:
        """Hand work in: checked (type, size, a diff that is one), stored, and the task goes
        to review (or, with no review, to the requester). A retry with the same
        ``idempotency_key`` is the same artifact."""
        if idempotency_key is not None:
            async with self._sessions() as session:
                await self._task(session, task_id, agent)
                found = await session.scalar(
                    select(Artifact).where(
                        Artifact.activity_id == task_id,
                        Artifact.idempotency_key == idempotency_key,
                    )
                )
            if found is not None:
                row = await self._peek(task_id)
                current = row.review_round + (1 if row.status in HELD else 0)
                if found.review_round != current:
                    raise ConflictError(
                        f"idempotency_key: used for round {found.review_round}'s hand-in; "
                        "this round needs a key of its own",
                        extra={"field": "idempotency_key"},
                    )
                return _artifact(found)
        if len(title) > 200:
            raise Unprocessable("title: at most 200 characters", extra={"field": "title"})
        async with self._sessions.begin() as session:
            row = await self._task(session, task_id, agent)
            checked = self._checked(row, kind, content)
            row = await self._held(session, agent, task_id, (*HELD, S.IN_REVIEW.value))
            spec = self._spec(row)
            first = row.status in HELD  # this hand-in opens a review round
            if not first and await self._votes(session, row):
                raise ConflictError(
                    f"task {task_id}'s review has begun: what is handed in now would not be what "
                    "the reviewers saw; wait for their decision",
                    extra={"status": row.status},
                )
            round_now = row.review_round + 1 if first else row.review_round
            artifact = Artifact(
                activity_id=task_id,
                agent_token_id=agent.token_id,
                type=checked.type.value,
                title=title.strip(),
                content=checked.content,
                size_bytes=checked.size_bytes,
                summary=checked.summary,
                review_round=round_now,
                idempotency_key=idempotency_key,
            )
            session.add(artifact)
            try:
                await session.flush()
            except IntegrityError:
                raise ConflictError(
                    "that idempotency key was just used by another submit; retry to read it"
                ) from None
            ActivityLog.add_event(
                session,
                task_id,
                "artifact_submitted",
                actor=agent.actor,
                data={"artifact_id": artifact.id, "type": artifact.type, "round": round_now},
            )
            if first:
                await self._hand_in(session, row, spec, round_now, agent)
            view = _artifact(artifact)
            done = row.status == S.COMPLETED.value
        await self._queue.try_enqueue(self._queue.enqueue_run, task_id)
        if done:
            await self._wake_follow_up(task_id)
        return view

    def read_plan(self, spec: ActionSpec, text: str) -> Plan:
        """The plan ``text`` holds, checked against the action's roles and the catalog;
        :class:`PlanError` says what is wrong."""
        assert spec.plan is not None  # checked when the catalog loaded
        plan = read_plan(text, spec.plan)
        plan_workflow(plan, spec.plan, self._catalog.known, self._catalog.validate_payload)
        return plan

    def _checked(self, row: Activity, kind: str, content: str) -> Checked:
        """What an agent hands in, checked (type, size, a diff that is one; a plan that is
        one where the action's answer is a plan): 422 says what is wrong."""
        spec = self._spec(row)
        checked = check_artifact(kind, content, spec.artifacts)
        self._check_plan(spec, checked.type.value, content)
        return checked

    def _check_plan(self, spec: ActionSpec, kind: str, content: str) -> None:
        """An action whose answer is a plan takes a plan, as text: 422 says what is wrong."""
        if spec.produces != "plan":
            return
        if kind != ArtifactType.TEXT.value:
            raise Unprocessable(
                "type: this task's answer is a plan, handed in as text (JSON)",
                extra={"field": "type"},
            )
        try:
            self.read_plan(spec, content)
        except PlanError as exc:
            raise Unprocessable(f"content: {exc}", extra={"field": "content"}) from None

    async def _hand_in(
        self,
        session: AsyncSession,
        row: Activity,
        spec: ActionSpec,
        round_now: int,
        agent: AgentCaller,
    ) -> None:
        review = spec.reviewed
        if review is None:
            row.review_round = round_now
            await self._complete(session, row, round_now, actor=agent.actor)
            return
        row.review_round = round_now
        await _moved(session, row, HAND_IN, actor=agent.actor, data={"round": round_now})
        row.expires_at = utcnow() + dt.timedelta(seconds=review.ttl_s)  # (after the move)
        await self._tell_reviewers(session, row, spec, review)

    async def _tell_reviewers(
        self, session: AsyncSession, row: Activity, spec: ActionSpec, review: ReviewSpec
    ) -> None:
        who = await session.scalar(select(User.name).where(User.id == row.actor_user_id))
        link = f"/portal/reviews/{row.id}"
        told = await self._approvals.tell_roles(
            session,
            row.id,
            roles=review.reviewers,
            not_user=row.actor_user_id,  # (no one reviews what they asked for)
            text=lambda language: say(
                "task.review_asked",
                language,
                id=row.id,
                what=spec.words(language)[0],
                who=who or say("someone", language),
                link=link,
            ),
        )
        ActivityLog.add_event(session, row.id, "reviewers_told", data={"users": told})

    async def council_started(self, task_id: int, members: int) -> bool:
        """The requester is told, once, that a council works on their request; whether this
        call told them (their reply then waits to be sent)."""
        async with self._sessions.begin() as session:
            row = await self._task(session, task_id, None, lock=True)
            if row.conversation_id is None or row.source_channel is None:
                return False
            told = await session.scalar(
                select(ActivityEvent.id)
                .where(
                    ActivityEvent.activity_id == task_id, ActivityEvent.kind == "council_started"
                )
                .limit(1)
            )
            if told is not None:
                return False
            ActivityLog.add_event(session, task_id, "council_started", data={"members": members})
            await self._tell_requester(
                session,
                row,
                lambda language: say("task.council_working", language, id=task_id, members=members),
            )
        return True

    async def council_in_review(
        self, session: AsyncSession, task_id: int, text: str, summary: dict[str, Any]
    ) -> None:
        """A council's chosen proposal, in the transaction that moves its task to review: its
        artifact (of no agent) and the reviewers told, as for an agent's hand-in."""
        row = await self._task(session, task_id, None, lock=True)
        spec = self._spec(row)
        review = spec.reviewed
        if row.status != S.IN_REVIEW.value or review is None:
            return
        row.review_round += 1
        row.expires_at = utcnow() + dt.timedelta(seconds=review.ttl_s)
        checked = check_artifact("text", text, ("text",))
        artifact = Artifact(
            activity_id=task_id,
            agent_token_id=None,
            type=checked.type.value,
            title="The council's proposal",
            content=checked.content,
            size_bytes=checked.size_bytes,
            summary={**checked.summary, **summary},
            review_round=row.review_round,
        )
        session.add(artifact)
        await session.flush()
        ActivityLog.add_event(
            session,
            task_id,
            "artifact_submitted",
            data={"artifact_id": artifact.id, "type": "text", "round": row.review_round},
        )
        await self._tell_reviewers(session, row, spec, review)

    async def message(self, agent: AgentCaller, task_id: int, text: str) -> None:
        """Say ``text`` to the requester, on their channel, in order with the rest of their
        conversation; their next message is the answer, attached to the task."""
        text = text.strip()
        if not text or len(text) > MAX_MESSAGE_CHARS or "\x00" in text:
            raise Unprocessable(
                f"text: 1 to {MAX_MESSAGE_CHARS} characters, no NUL", extra={"field": "text"}
            )
        async with self._sessions.begin() as session:
            row = await self._held(session, agent, task_id, HELD)  # (in review: not its turn)
            if row.conversation_id is None or row.source_channel is None:
                raise ConflictError(
                    "this task came over the API: it has no conversation to write to"
                )
            await add_reply(
                session,
                activity_id=task_id,
                conversation_id=row.conversation_id,
                channel=row.source_channel,
                parts=self._routing.split(row.source_channel, text),
                author=agent.name,
            )
            ActivityLog.add_event(
                session, task_id, "agent_message", actor=agent.actor, data={"text": text}
            )
            await self._await_answer(session, row)
        await self._queue.try_enqueue(self._queue.enqueue_run, task_id)

    async def _await_answer(self, session: AsyncSession, row: Activity) -> None:
        """The conversation's next message answers the agent (not a new request); a person
        who took the conversation over keeps it."""
        assert row.conversation_id is not None
        state = await session.get(ConversationState, row.conversation_id, with_for_update=True)
        if state is not None and state.kind == TAKEOVER and state.expires_at > utcnow():
            return
        values: dict[str, Any] = {
            "kind": AGENT_QUESTION,
            "data": {},
            "question_activity_id": row.id,
            "attempts": 0,
            "expires_at": row.lease_expires_at or utcnow(),
        }
        if state is None:
            session.add(ConversationState(conversation_id=row.conversation_id, **values))
        else:
            for name, value in values.items():
                setattr(state, name, value)

    async def release(self, agent: AgentCaller, task_id: int, reason: str) -> TaskSummary:
        """Give the task back to the queue (for another agent)."""
        async with self._sessions.begin() as session:
            row = await self._held(session, agent, task_id, HELD)
            await _moved(
                session, row, RELEASE_TASK, actor=agent.actor, data={"reason": reason[:500]}
            )
            return TaskSummary(**_summary(row, NOTHING, agent.token_id))

    # ---- a person's review ---------------------------------------------------------------

    async def review(
        self,
        task_id: int,
        *,
        user_id: int,
        decision: ReviewDecision,
        comment: str,
        round_seen: int | None = None,
    ) -> TaskSummary:
        """A reviewer's decision on the round in review (once each per round; one rejection
        is final; ``quorum`` approvals complete it)."""
        comment = comment.strip()
        if decision != ReviewDecision.APPROVE and not comment:
            raise Unprocessable(
                "comment: say what to change, or why it is rejected", extra={"field": "comment"}
            )
        async with self._sessions.begin() as session:
            row = await self._task(session, task_id, None, lock=True)
            spec = self._spec(row)
            review = spec.reviewed or ReviewSpec()
            user = await session.get(User, user_id)
            _may_decide(row, spec, review, user, decision, round_seen)
            actor = f"user:{user_id}"
            session.add(
                ReviewVote(
                    activity_id=task_id,
                    round=row.review_round,
                    user_id=user_id,
                    decision=decision.value,
                    comment=comment,
                )
            )
            try:
                await session.flush()
            except IntegrityError:
                raise ConflictError(
                    f"you already decided on this round of task {task_id}'s review"
                ) from None
            if decision == ReviewDecision.REJECT:
                await _moved(
                    session,
                    row,
                    REJECT_WORK,
                    actor=actor,
                    data={"comment": comment, "text": comment},
                )
                await self._tell_requester(
                    session,
                    row,
                    lambda language: say("task.rejected", language, id=row.id, reason=comment),
                )
            elif decision == ReviewDecision.REQUEST_CHANGES:
                await self._send_back(session, row, actor, comment)
            else:
                approvals = await session.scalar(
                    select(func.count())
                    .select_from(ReviewVote)
                    .where(
                        ReviewVote.activity_id == task_id,
                        ReviewVote.round == row.review_round,
                        ReviewVote.decision == ReviewDecision.APPROVE.value,
                    )
                )
                if int(approvals or 0) >= review.quorum:
                    await self._complete(session, row, row.review_round, actor=actor)
                else:
                    ActivityLog.add_event(
                        session,
                        task_id,
                        "review_vote",
                        actor=actor,
                        data={"approvals": int(approvals or 0), "quorum": review.quorum},
                    )
            summary = TaskSummary(**_summary(row, NOTHING, None))
        await self._queue.try_enqueue(self._queue.enqueue_run, task_id)
        if summary.status == S.COMPLETED.value:
            await self._wake_follow_up(task_id)
        return summary

    async def _send_back(
        self, session: AsyncSession, row: Activity, actor: str, comment: str
    ) -> None:
        """Changes requested: to the agent that holds it while its lease runs, else to the
        queue (the comment stays with the task for whoever claims it)."""
        holds = row.lease_expires_at is not None and row.lease_expires_at > utcnow()
        move = SEND_BACK if holds and row.agent_token_id is not None else SEND_BACK_TO_QUEUE
        await _moved(session, row, move, actor=actor, data={"comment": comment, "text": comment})

    async def _complete(
        self, session: AsyncSession, row: Activity, round_now: int, *, actor: str
    ) -> None:
        """Approved (or needing no review): completed, and the requester gets the work."""
        artifacts = list(
            await session.scalars(
                select(Artifact)
                .where(Artifact.activity_id == row.id, Artifact.review_round == round_now)
                .order_by(Artifact.id)
            )
        )
        result = {
            "artifacts": [a.id for a in artifacts],
            "round": round_now,
        }
        row.details = {**row.details, "result": result}
        await _moved(session, row, COMPLETE_WORK, actor=actor, data={"round": round_now})
        # A screenshot goes as media where the channel carries media (its link, which shows
        # the image to whoever holds it).
        media = [
            {"url": self._link(a.id), "content_type": str(a.summary.get("media_type"))}
            for a in artifacts
            if a.type == ArtifactType.SCREENSHOT.value
        ]
        spec = self._spec(row)
        plan = (
            await self._run_plan(session, row, spec, artifacts) if spec.produces == "plan" else None
        )
        if plan is not None:
            # The requester hears that the plan runs (its text is in the run, and its end is
            # told), not its JSON.
            await self._tell_requester(
                session,
                row,
                lambda language: say(
                    "workflow.started",
                    language,
                    workflow=f"{row.agent_name}.{row.action_type}",
                    id=row.id,
                    count=len(plan.tasks),
                    steps=", ".join(t.id for t in plan.tasks),
                ),
            )
        else:
            await self._tell_requester(
                session,
                row,
                lambda language: _result_text(row.id, artifacts, language, self._link),
                media=media,
            )
        if spec.on_approve is not None:
            await self._follow_up(session, row, spec.on_approve)

    async def _run_plan(
        self, session: AsyncSession, row: Activity, spec: ActionSpec, artifacts: list[Artifact]
    ) -> Plan:
        """The approved plan becomes a workflow run (advanced once the job that sees this
        task completed runs); a plan the catalog no longer fits is refused (409: the decision
        is not taken)."""
        texts = [a for a in artifacts if a.type == ArtifactType.TEXT.value]
        try:
            if not texts:
                raise PlanError("no plan was handed in")
            plan = self.read_plan(spec, texts[-1].content)
        except PlanError as exc:
            # (the catalog changed since it was handed in): nothing is approved; it stays in
            # review, for a reviewer to reject
            raise ConflictError(
                f"this plan no longer fits the catalog ({exc}): reject it", extra={"plan": str(exc)}
            ) from None
        await open_plan_run(session, row, plan)
        return plan

    async def _follow_up(self, session: AsyncSession, row: Activity, follow: FollowUpSpec) -> None:
        """The action an approved task starts, with its payload, through the same checks as
        any request (its schema, the requester's permission): queued to run, or ``pending``
        until someone runs it (``auto_run = false``). Refused: an event says why."""
        target = self._catalog.action(follow.agent, follow.action)
        assert target is not None  # checked when the catalog loaded
        _, role, active = await requester_role(session, row.actor_user_id, row.details)
        try:
            payload = self._catalog.validate_payload(
                follow.agent, follow.action, row.details.get("payload") or {}
            )
        except PayloadError as exc:
            ActivityLog.add_event(session, row.id, "follow_up_refused", data={"reason": str(exc)})
            return
        if not may_request(role, active, target):
            ActivityLog.add_event(
                session, row.id, "follow_up_refused", data={"reason": "not allowed"}
            )
            return
        provenance = {**(row.details.get("provenance") or {}), "follow_up_of": row.id}
        opened = await ActivityLog.open(
            session,
            Opening(
                agent=follow.agent,
                action_type=follow.action,
                description=target.description,
                details={"payload": clean_json(payload), "provenance": provenance},
                status=S.QUEUED if follow.auto_run else S.PENDING,
                actor=f"user:{row.actor_user_id}" if row.actor_user_id else "system",
                actor_user_id=row.actor_user_id,
                source_channel=row.source_channel,
                conversation_id=row.conversation_id,
                priority=target.priority.value,
            ),
        )
        row.details = {**row.details, "follow_up": opened.id}
        ActivityLog.add_event(
            session,
            row.id,
            "follow_up",
            data={"activity_id": opened.id, "auto_run": follow.auto_run},
        )

    async def _wake_follow_up(self, task_id: int) -> None:
        """Queue the follow-up an approval just opened (recovery would, later)."""
        async with self._sessions() as session:
            details = await session.scalar(select(Activity.details).where(Activity.id == task_id))
            follow = (details or {}).get("follow_up")
            status = await session.scalar(select(Activity.status).where(Activity.id == follow))
        if follow is not None and status == S.QUEUED.value:
            await self._queue.try_enqueue(self._queue.enqueue_run, int(follow))

    async def _tell_requester(
        self,
        session: AsyncSession,
        row: Activity,
        text: Callable[[str | None], str],
        *,
        media: list[dict[str, Any]] | None = None,
    ) -> None:
        if row.conversation_id is None or row.source_channel is None:
            return
        await add_reply(
            session,
            activity_id=row.id,
            conversation_id=row.conversation_id,
            channel=row.source_channel,
            parts=self._routing.split(row.source_channel, text(language_of(row.details))),
            media=media or None,
        )

    # ---- recovery ------------------------------------------------------------------------

    async def lapse(self, *, limit: int = 100) -> list[int]:
        """Claims whose lease lapsed go back to the queue, or fail once ``max_attempts``
        claims lapsed (the requester told); reviews nobody decided in time expire. The
        tasks moved (to wake, so their replies go out)."""
        now = utcnow()
        moved: list[int] = []
        async with self._sessions.begin() as session:
            await planned_for_values(session)
            rows = list(
                await session.scalars(
                    select(Activity)
                    .where(
                        (Activity.status.in_(HELD) & (Activity.lease_expires_at < now))
                        | ((Activity.status == S.IN_REVIEW.value) & (Activity.expires_at < now))
                    )
                    .order_by(Activity.id)
                    .limit(limit)
                    .with_for_update(skip_locked=True)
                )
            )
            for row in rows:
                spec = self._catalog.action(row.agent_name, row.action_type)
                if spec is None or not spec.reviewable:
                    continue
                moved.append(row.id)
                if row.status == S.IN_REVIEW.value:
                    await _moved(session, row, EXPIRE_REVIEW)
                    await self._tell_requester(
                        session,
                        row,
                        functools.partial(say, "task.review_expired", id=row.id),
                    )
                    continue
                lapsed = 1 + int(
                    await session.scalar(
                        select(func.count())
                        .select_from(ActivityEvent)
                        .where(
                            ActivityEvent.activity_id == row.id,
                            ActivityEvent.kind == "lease_lapsed",
                        )
                    )
                    or 0
                )
                data = {"agent_token_id": row.agent_token_id, "lapsed": lapsed}
                if lapsed >= spec.max_attempts:
                    error = {"reason": "agents_gave_up", "message": f"{lapsed} claims lapsed"}
                    ActivityLog.add_event(session, row.id, "lease_lapsed", data=data)
                    await _moved(session, row, GIVE_UP, data=data, details={"error": error})
                    await self._tell_requester(
                        session,
                        row,
                        functools.partial(say, "task.failed_attempts", id=row.id, attempts=lapsed),
                    )
                else:
                    await _moved(session, row, LAPSE, data=data)
        for task_id in moved:
            await self._queue.try_enqueue(self._queue.enqueue_run, task_id)
        return moved


async def _moved(
    session: AsyncSession,
    row: Activity,
    move: Move,
    *,
    actor: str = "system",
    data: dict[str, Any] | None = None,
    details: dict[str, Any] | None = None,
) -> None:
    """The activity owner's move, and the end of any question its agent still waits an answer
    to: from now on, the requester's next message is theirs again (a new request)."""
    ActivityLog.move(session, row, move, actor=actor, data=data, details=details)
    if row.conversation_id is not None:
        await session.execute(
            delete(ConversationState).where(
                ConversationState.conversation_id == row.conversation_id,
                ConversationState.kind == AGENT_QUESTION,
                ConversationState.question_activity_id == row.id,
            )
        )


async def _council_steps(session: AsyncSession, task_id: int) -> list[CouncilStepView]:
    rows = await session.scalars(
        select(CouncilStep)
        .where(CouncilStep.activity_id == task_id)
        .order_by(CouncilStep.round, CouncilStep.id)
    )
    return msgspec.convert(list(rows), list[CouncilStepView], from_attributes=True)


def _may_decide(  # noqa: PLR0917 - what a decision is checked against
    row: Activity,
    spec: ActionSpec,
    review: ReviewSpec,
    user: User | None,
    decision: ReviewDecision,
    round_seen: int | None,
) -> None:
    """Refuse a decision that may not be made: not a reviewer, nothing in review, a round the
    reviewer did not see, their own request, changes asked of a council."""
    if user is None or not user.active or user.role not in review.reviewers:
        raise ForbiddenError(f"only {', '.join(review.reviewers)} review this task's work")
    if row.status != S.IN_REVIEW.value:
        raise ConflictError(
            f"task {row.id} is {row.status}: there is nothing to review now",
            extra={"status": row.status},
        )
    if round_seen is not None and round_seen != row.review_round:
        raise ConflictError(
            f"task {row.id} is in round {row.review_round} of its review, not {round_seen}: "
            "read it again before deciding",
            extra={"status": row.status, "round": row.review_round},
        )
    if row.actor_user_id == user.id:
        raise ForbiddenError("a person does not review the work they asked for")
    if decision == ReviewDecision.REQUEST_CHANGES and spec.by_council:
        raise Unprocessable(
            "decision: a council's proposal is approved or rejected (it has no one to send "
            "changes to)",
            extra={"field": "decision"},
        )


def _of_actions(actions: list[tuple[str, str]]) -> ColumnElement[bool]:
    """Activities of one of ``actions`` ((agent, action) pairs)."""
    return or_(*(and_(Activity.agent_name == a, Activity.action_type == t) for a, t in actions))


def _why_not(row: Activity, agent: AgentCaller, now: dt.datetime) -> str:
    """Why ``agent`` cannot act on the task: its state, never who holds it."""
    if row.status in HELD or row.status == S.IN_REVIEW.value:
        if row.agent_token_id != agent.token_id:
            return f"task {row.id} is {row.status} by another agent"
        if row.lease_expires_at is not None and row.lease_expires_at <= now:
            return f"your claim on task {row.id} lapsed; claim it again if it is waiting"
        return f"task {row.id} is {row.status}: not now"
    if row.status == S.WAITING_FOR_AGENT.value:
        return f"task {row.id} is waiting: claim it first"
    return f"task {row.id} is {row.status}"


def _artifact(a: Artifact, *, whole: bool = False) -> ArtifactView:
    return ArtifactView(
        id=a.id,
        type=a.type,
        title=a.title,
        size_bytes=a.size_bytes,
        summary=a.summary,
        round=a.review_round,
        created_at=a.created_at,
        content=a.content if whole else None,
    )


def _result_text(
    task_id: int, artifacts: list[Artifact], language: str | None, link: Callable[[int], str]
) -> str:
    """What the requester gets: a diff's files and lines with a link to see it, else the
    text (or code) handed in, else that it is done."""
    for a in artifacts:
        if a.type == ArtifactType.DIFF.value:
            files = a.summary.get("files") or []
            return say(
                "task.diff_done",
                language,
                id=task_id,
                files=len(files),
                added=a.summary.get("added", 0),
                removed=a.summary.get("removed", 0),
                link=link(a.id),
            )
    for a in artifacts:
        if a.type in (ArtifactType.TEXT.value, ArtifactType.CODE.value):
            return a.content
    return say("task.done", language, id=task_id)
