"""Executing an action over the API: the same gate as chat, without a message.

An operator, a script or a ChatGPT Action names an action (or writes what it wants, read by the
same rules and LLM as a chat message); the catalog, the payload schema, the caller's permission
and the action's approval policy decide, exactly as for a message. The activity is recorded
with its ``created`` event, queued for a worker (or sent for approval) and, if the caller
waits, answered with its result. An idempotency key makes a retried call the same activity.
"""

from __future__ import annotations

import asyncio
import enum
import functools
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Annotated, Any, TypeVar

import msgspec
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from dispatch.infra.clean import clean_json, clean_text
from dispatch.infra.errors import ConflictError, ForbiddenError, NotFoundError, Unprocessable
from dispatch.infra.queue import JobQueue
from dispatch.policy.catalog import Catalog, PayloadError
from dispatch.policy.permissions import may_request
from dispatch.policy.specs import ActionSpec
from dispatch.policy.workflows import WORKFLOWS_AGENT
from dispatch.record.activities import ActivityLog, ActivityView, Opening
from dispatch.record.models import (
    TERMINAL_STATUSES,
    Activity,
    ActivityStatus,
    Priority,
    User,
    utcnow,
)
from dispatch.understanding.interpret import Interpreter
from dispatch.work.approvals import ApprovalService, expiry
from dispatch.work.runs import RunView, WorkflowRuns

__all__ = ["MAX_WAIT_S", "AuditNote", "EndedStatus", "ExecuteRequest", "Executed", "Executor"]

log = logging.getLogger("switchboard.execution")

T = TypeVar("T")

MAX_WAIT_S = 30.0
"""The longest a caller may wait for a result (``sync``)."""
_POLL_S = 0.05
_SETTLED = {
    *(status.value for status in TERMINAL_STATUSES),
    ActivityStatus.AWAITING_APPROVAL.value,
    ActivityStatus.PENDING.value,
}
"""Where a waiting caller stops waiting: the activity ended, or waits for a person."""
_RETRYABLE = {
    ActivityStatus.FAILED.value,
    ActivityStatus.CANCELLED.value,
    ActivityStatus.EXPIRED.value,
}


class ExecuteRequest(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """An action to run: ``agent``, ``action_type`` and ``payload``, or ``intent`` (free text,
    read as a chat message is)."""

    agent: Annotated[str, msgspec.Meta(min_length=1, max_length=100)] | None = None
    action_type: Annotated[str, msgspec.Meta(min_length=1, max_length=100)] | None = None
    payload: dict[str, Any] = {}
    intent: Annotated[str, msgspec.Meta(min_length=1, max_length=4000)] | None = None
    workflow: Annotated[str, msgspec.Meta(min_length=1, max_length=100)] | None = None
    """A workflow of the catalog to run (with ``input``) instead of one action."""
    input: dict[str, Any] = {}
    """The workflow's input."""
    priority: Priority | None = None
    """Default: the action's own."""
    sync: bool = False
    """Wait for the result (up to ``timeout_s``)."""
    timeout_s: Annotated[float, msgspec.Meta(gt=0, le=MAX_WAIT_S)] = 10.0
    idempotency_key: Annotated[str, msgspec.Meta(min_length=1, max_length=200)] | None = None
    """The same key again (from the same caller) answers with the same activity."""


class EndedStatus(enum.StrEnum):
    """How something recorded after the fact ended."""

    COMPLETED = ActivityStatus.COMPLETED.value
    FAILED = ActivityStatus.FAILED.value
    CANCELLED = ActivityStatus.CANCELLED.value


class AuditNote(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Something done outside Switchboard, recorded as an activity for the audit: no handler
    runs, and it is recorded as already ended (``status``)."""

    agent: Annotated[str, msgspec.Meta(min_length=1, max_length=100)]
    action_type: Annotated[str, msgspec.Meta(min_length=1, max_length=100)]
    status: EndedStatus
    description: Annotated[str, msgspec.Meta(max_length=1000)] = ""
    payload: dict[str, Any] = {}
    result: dict[str, Any] | None = None
    error: dict[str, Any] | None = None


class Executed(msgspec.Struct, frozen=True, kw_only=True):
    activity_id: int
    status: str
    created: bool
    """False: an earlier call with the same idempotency key made it."""
    result: dict[str, Any] | None = None
    error: dict[str, Any] | None = None
    warning: str | None = None
    activity_url: str
    workflow_run_url: str | None = None
    """Set for a workflow: its run (the run's id is this activity's)."""
    run: RunView | None = None
    """With ``sync``, a workflow's run as it stood when the wait ended."""

    @property
    def ended(self) -> bool:
        """Nothing more will happen: the action ended, or the workflow's run did."""
        if self.run is not None:
            return self.run.ended
        if self.workflow_run_url is not None and self.status == ActivityStatus.COMPLETED:
            return False  # its run goes on
        return ActivityStatus(self.status).is_terminal


class Caller(msgspec.Struct, frozen=True, kw_only=True):
    """Whom the action is run for: a user (their role), or a token acting for no one (the
    role it stands for)."""

    user_id: int | None
    role: str
    actor: str
    """As events name it."""


class Executor:
    def __init__(
        self,
        *,
        sessions: async_sessionmaker[AsyncSession],
        activities: ActivityLog,
        catalog: Catalog,
        interpreter: Interpreter,
        approvals: ApprovalService,
        queue: JobQueue,
        workflows: WorkflowRuns,
    ) -> None:
        self._sessions = sessions
        self._workflows = workflows
        self._activities = activities
        self._catalog = catalog
        self._interpreter = interpreter
        self._approvals = approvals
        self._queue = queue

    async def execute(
        self, request: ExecuteRequest, caller: Caller, *, retry_of: int | None = None
    ) -> Executed:
        """Record and queue (or send for approval) the action; wait for it with ``sync``.

        Raises :class:`Unprocessable` (naming the field) for an action or payload the catalog
        does not take, :class:`ForbiddenError` for one the caller may not run."""
        user, active = await self._user(caller)
        role = user.role if user else caller.role
        agent, action_type, payload = await self._intended(request, role, active)
        action = self._catalog.action(agent, action_type)
        if action is None or action.internal:
            raise Unprocessable(
                f"action_type: {agent}.{action_type} is not an action of the catalog",
                extra={"field": "action_type"},
            )
        try:
            payload = clean_json(self._catalog.validate_payload(agent, action_type, payload))
        except PayloadError as exc:
            where = "input" if agent == WORKFLOWS_AGENT else "payload"
            field = f"{where}.{exc.field}" if exc.field else where
            raise Unprocessable(f"{field}: {exc}", extra={"field": field}) from exc
        if not may_request(role, active, action):
            raise ForbiddenError(f"{caller.actor} may not run {agent}.{action_type}")
        key = (
            clean_text(f"{caller.actor}:{request.idempotency_key}")
            if request.idempotency_key
            else None
        )
        activity_id, created = await self._record(
            agent, action_type, payload, action, request, caller, user, key, retry_of
        )
        warning = None
        found = await self._activities.get(activity_id)
        assert found is not None
        if created:
            # Runs it, or delivers what it owes (the approvers' requests).
            wake = functools.partial(self._queue.enqueue_run, priority=found.priority)
            queued = await self._queue.try_enqueue(wake, activity_id)
            if not queued:
                warning = "the queue cannot be reached: recorded, and run once it is back"
        run = None
        if request.sync and warning is None:
            if agent == WORKFLOWS_AGENT:
                run = await self._wait_run(activity_id, request.timeout_s)
                found = await self._activities.get(activity_id) or found
            else:
                found = await self._wait(found, request.timeout_s) or found
        return _executed(found, created=created, warning=warning, run=run)

    async def retry(self, activity_id: int, caller: Caller) -> Executed:
        """A new attempt at a request that failed, was cancelled or expired: the same action
        and payload, through the same checks as :meth:`execute` for this caller, linked to the
        old one both ways (``retry_of`` on the new one, a ``retried`` event on the old)."""
        old = await self._activities.get(activity_id)
        if old is None:
            raise NotFoundError(f"no activity {activity_id}")
        if old.status not in _RETRYABLE:
            raise ConflictError(
                f"request #{activity_id} is {old.status}; only one that failed, was cancelled "
                "or expired can be retried",
                extra={"status": old.status},
            )
        request = ExecuteRequest(
            agent=old.agent_name,
            action_type=old.action_type,
            payload=old.details.get("payload") or {},
        )
        return await self.execute(request, caller, retry_of=old.id)

    async def note(self, note: AuditNote, caller: Caller) -> ActivityView:
        """Record ``note`` as an ended activity with its events (``created``, then its status),
        in one transaction; no handler runs and no one is told."""
        details: dict[str, Any] = {
            "payload": clean_json(note.payload),
            "provenance": {"api": caller.actor, "audit_only": True},
        }
        if note.result is not None:
            details["result"] = clean_json(note.result)
        if note.error is not None:
            details["error"] = clean_json(note.error)
        async with self._sessions.begin() as session:
            activity = await ActivityLog.open(
                session,
                Opening(
                    agent=clean_text(note.agent),
                    action_type=clean_text(note.action_type),
                    description=clean_text(note.description),
                    details=details,
                    status=ActivityStatus(note.status.value),
                    event_data={
                        "payload": details["payload"],
                        "channel": "api",
                        "audit_only": True,
                    },
                    actor=caller.actor,
                    actor_user_id=caller.user_id,
                    completed_at=utcnow(),
                ),
            )
            self._activities.add_event(
                session,
                activity.id,
                note.status.value,
                status=note.status.value,
                actor=caller.actor,
            )
            activity_id = activity.id
        found = await self._activities.get(activity_id, with_events=True)
        assert found is not None
        return found

    async def _user(self, caller: Caller) -> tuple[User | None, bool]:
        if caller.user_id is None:
            return None, True
        async with self._sessions() as session:
            user = await session.get(User, caller.user_id)
        return user, bool(user and user.active)

    def knows_workflow(self, name: str) -> bool:
        """Whether ``name`` is a workflow of the catalog."""
        return name in self._catalog.workflows

    async def _intended(
        self, request: ExecuteRequest, role: str | None, active: bool
    ) -> tuple[str, str, dict[str, Any]]:
        if request.workflow is not None:
            if request.agent or request.action_type or request.payload or request.intent:
                raise Unprocessable(
                    "workflow: give either workflow and input, or agent, action_type and payload",
                    extra={"field": "workflow"},
                )
            if request.workflow not in self._catalog.workflows:
                raise Unprocessable(
                    f"workflow: {request.workflow} is not a workflow of the catalog",
                    extra={"field": "workflow"},
                )
            return WORKFLOWS_AGENT, request.workflow, request.input
        if request.input:
            raise Unprocessable("input: only for a workflow", extra={"field": "input"})
        if request.intent is not None:
            if request.agent or request.action_type or request.payload:
                raise Unprocessable(
                    "intent: give either intent or agent, action_type and payload",
                    extra={"field": "intent"},
                )

            async def no_history() -> list[tuple[str, str]]:
                return []

            intent = await self._interpreter.interpret(
                request.intent, role=role, active=active, history=no_history
            )
            if not intent.matched:
                raise Unprocessable(
                    "intent: not understood as any action this caller may run",
                    extra={"field": "intent", "reason": intent.provenance.get("reason")},
                )
            if intent.missing:
                missing = ", ".join(intent.missing)
                raise Unprocessable(
                    f"intent: understood as {intent.agent}.{intent.action_type}, missing {missing}",
                    extra={"field": "intent", "missing": list(intent.missing)},
                )
            return intent.agent, intent.action_type, intent.payload
        for name in ("agent", "action_type"):
            if getattr(request, name) is None:
                raise Unprocessable(f"{name}: required (or give intent)", extra={"field": name})
        assert request.agent is not None
        assert request.action_type is not None
        return request.agent, request.action_type, request.payload

    async def _record(  # noqa: PLR0917 - the parts of one activity
        self,
        agent: str,
        action_type: str,
        payload: dict[str, Any],
        action: ActionSpec,
        request: ExecuteRequest,
        caller: Caller,
        user: User | None,
        key: str | None,
        retry_of: int | None,
    ) -> tuple[int, bool]:
        """The activity, with its ``created`` event (and approval request), in one
        transaction; an idempotency key already used answers with its activity."""
        if key is not None and (existing := await self._keyed(key)) is not None:
            return existing, False
        approval = action.approval
        status = ActivityStatus.AWAITING_APPROVAL if approval else ActivityStatus.QUEUED
        provenance: dict[str, Any] = {"api": caller.actor}
        if caller.user_id is None:
            provenance["role"] = caller.role  # what the worker checks again, as for a user
        details: dict[str, Any] = {"payload": payload, "provenance": provenance}
        if retry_of is not None:
            details["retry_of"] = retry_of
        try:
            async with self._sessions.begin() as session:
                activity = await ActivityLog.open(
                    session,
                    Opening(
                        agent=agent,
                        action_type=action_type,
                        description=action.description,
                        details=details,
                        status=status,
                        event_data={"payload": payload, "channel": "api", "retry_of": retry_of},
                        actor=caller.actor,
                        actor_user_id=caller.user_id,
                        priority=(request.priority or action.priority),
                        expires_at=expiry(approval) if approval is not None else None,
                        idempotency_key=key,
                    ),
                )
                if retry_of is not None:
                    self._activities.add_event(
                        session,
                        retry_of,
                        "retried",
                        actor=caller.actor,
                        data={"activity_id": activity.id},
                    )
                if approval is not None:
                    await self._approvals.gate(session, activity, action, user)
                return activity.id, True
        except IntegrityError:
            # The same key at the same moment: the other call's activity.
            if key is not None and (existing := await self._keyed(key)) is not None:
                return existing, False
            raise

    async def _keyed(self, key: str) -> int | None:
        async with self._sessions() as session:
            found = await session.scalar(select(Activity.id).where(Activity.idempotency_key == key))
        return None if found is None else int(found)

    async def _wait_run(self, run_id: int, timeout_s: float) -> RunView | None:
        return await _poll(lambda: self._workflows.get(run_id), lambda run: run.ended, timeout_s)

    async def _wait(self, activity: ActivityView, timeout_s: float) -> ActivityView | None:
        return await _poll(
            lambda: self._activities.get(activity.id),
            lambda found: found.status in _SETTLED,
            timeout_s,
            first=activity,
        )


async def _poll(
    read: Callable[[], Awaitable[T | None]],
    settled: Callable[[T], bool],
    timeout_s: float,
    *,
    first: T | None = None,
) -> T | None:
    """``read()`` every ``_POLL_S`` until what it reads is gone or ``settled``, for at most
    ``timeout_s`` (and :data:`MAX_WAIT_S`); what it read last. ``first``: what the caller
    has just read, to start from instead of reading it again."""
    deadline = time.monotonic() + min(timeout_s, MAX_WAIT_S)
    found = first if first is not None else await read()
    while not (found is None or settled(found) or time.monotonic() >= deadline):
        await asyncio.sleep(_POLL_S)
        found = await read()
    return found


def _executed(
    activity: ActivityView, *, created: bool, warning: str | None, run: RunView | None = None
) -> Executed:
    workflow = activity.agent_name == WORKFLOWS_AGENT
    return Executed(
        workflow_run_url=f"/api/v1/workflow-runs/{activity.id}" if workflow else None,
        run=run,
        activity_id=activity.id,
        status=activity.status,
        created=created,
        result=activity.details.get("result"),
        error=activity.details.get("error"),
        warning=warning,
        activity_url=f"/api/v1/activities/{activity.id}",
    )
