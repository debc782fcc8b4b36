"""Workflow runs: one activity per step, each created and queued once its dependencies completed.

A run is a catalog workflow's, or an approved plan's (:mod:`dispatch.policy.plans`: its tasks
are the steps, each served by the action its role maps to): the same machinery carries both.

A run is opened by the handler of its starting request (``workflows.<name>``, whose activity's
id is the run's id) and advanced whenever one of its activities ends (the job that saw it end,
or recovery): in one transaction holding the run's row, every step whose dependencies all
completed gets its activity (payload filled from the input and earlier results, then checked
against the action's schema, the requester's permission and the action's approval policy), a
step behind one that failed is skipped, and once nothing is left to run the run ends
``completed`` or ``failed`` with its reason, and a requester who asked from chat is told.
Advancing is idempotent: the database says what exists, and one activity per (run, step).
"""

from __future__ import annotations

import datetime as dt
import functools
import logging
from typing import Any

import msgspec
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from dispatch.infra.clean import clean_json
from dispatch.infra.queue import JobQueue
from dispatch.infra.routing import ChannelRouting
from dispatch.infra.sql import insert_ignore
from dispatch.language.i18n import language_of, say, status_word
from dispatch.policy.catalog import Catalog, PayloadError
from dispatch.policy.permissions import may_request, requester_role
from dispatch.policy.plans import Plan, PlanError, plan_workflow
from dispatch.policy.specs import ActionSpec, StepSpec
from dispatch.policy.workflows import WORKFLOWS_AGENT, TemplateError, Workflow, fill
from dispatch.record.activities import ActivityLog, Opening
from dispatch.record.db import planned_for_values
from dispatch.record.models import (
    TERMINAL_STATUSES,
    Activity,
    ActivityStatus,
    User,
    WorkflowRun,
    WorkflowStatus,
    utcnow,
)
from dispatch.record.outbox import add_reply
from dispatch.work.approvals import ApprovalService, expiry

__all__ = ["RunView", "StepView", "WorkflowRuns", "open_plan_run", "run_of"]

log = logging.getLogger("switchboard.workflows")

WAITING = "waiting"
"""A step whose dependencies have not all completed yet."""
SKIPPED = "skipped"
"""A step behind one that failed (or was skipped): it never runs."""
_READY = "ready"
_ADVANCE_TRIES = 3


class StepView(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    agent: str
    action: str
    depends_on: list[str]
    status: str
    """``waiting``, ``skipped``, or its activity's status."""
    activity_id: int | None = None
    result: dict[str, Any] | None = None
    error: dict[str, Any] | None = None


class RunView(msgspec.Struct, frozen=True, kw_only=True):
    id: int
    """The id of the request that started it (an activity)."""
    workflow: str
    status: str
    """``running``, ``completed`` or ``failed``; before it starts, its request's status
    (``queued``, ``awaiting_approval``; ``rejected``, ``expired``, ``cancelled`` if it never
    did)."""
    input: dict[str, Any]
    error: dict[str, Any] | None = None
    created_at: dt.datetime
    completed_at: dt.datetime | None = None
    steps: list[StepView]
    plan: dict[str, Any] | None = None
    """The approved plan its steps come from (None: a catalog workflow)."""

    @property
    def ended(self) -> bool:
        return self.status not in {
            WorkflowStatus.RUNNING,
            ActivityStatus.QUEUED,
            ActivityStatus.IN_PROGRESS,
            ActivityStatus.AWAITING_APPROVAL,
            ActivityStatus.PENDING,
        }


def run_of(
    agent: str, activity_id: int, step_run: int | None, action: ActionSpec | None = None
) -> int | None:
    """The run an activity moves when it ends: its own (a step), or the one it started (a
    workflow's request, or an approved plan's)."""
    if step_run is not None:
        return step_run
    starts = agent == WORKFLOWS_AGENT or (action is not None and action.produces == "plan")
    return activity_id if starts else None


async def open_plan_run(session: AsyncSession, start: Activity, plan: Plan) -> None:
    """The run of ``start``'s approved plan (once; in the caller's transaction, which moves
    ``start`` to completed): advanced when the job that sees it completed runs."""
    await insert_ignore(
        session,
        WorkflowRun.__table__,  # type: ignore[arg-type]
        {
            "id": start.id,
            "workflow": f"{start.agent_name}.{start.action_type}",
            "status": WorkflowStatus.RUNNING.value,
            "input": start.details.get("payload") or {},
            "plan": msgspec.to_builtins(plan),
            "created_at": utcnow(),
        },
        ["id"],
    )
    ActivityLog.add_event(
        session, start.id, "plan_approved", data={"run": start.id, "tasks": len(plan.tasks)}
    )


def _states(flow: Workflow, rows: dict[str, Activity]) -> dict[str, str]:
    """Each step's state, in dependency order: its activity's status, or waiting, ready or
    skipped from its dependencies'."""
    states: dict[str, str] = {}
    for step_id in flow.order:
        row = rows.get(step_id)
        if row is not None:
            states[step_id] = row.status
            continue
        deps = flow.steps[step_id].depends_on
        if any(_blocks(flow, dep, states[dep]) for dep in deps):
            states[step_id] = SKIPPED
        elif all(_lets_on(flow, dep, states[dep]) for dep in deps):
            states[step_id] = _READY
        else:
            states[step_id] = WAITING
    return states


def _ended(state: str) -> bool:
    return state == SKIPPED or state in TERMINAL_STATUSES


def _blocks(flow: Workflow, step_id: str, state: str) -> bool:
    """A dependency that stops its dependents: skipped, or ended short of completed and not
    marked ``on_failure = "continue"``."""
    if state == SKIPPED:
        return True
    return (
        _ended(state)
        and state != ActivityStatus.COMPLETED
        and flow.steps[step_id].on_failure == "stop"
    )


def _lets_on(flow: Workflow, step_id: str, state: str) -> bool:
    return state == ActivityStatus.COMPLETED or (
        _ended(state) and not _blocks(flow, step_id, state)
    )


def _scope(run: WorkflowRun, rows: dict[str, Activity]) -> dict[str, Any]:
    """What a step's payload templates may name: the run's input, and each earlier step's
    result, error, status and activity id."""
    return {
        "input": run.input,
        "run": {"id": run.id},
        "steps": {
            sid: {
                "result": row.details.get("result"),
                "error": row.details.get("error"),
                "status": row.status,
                "activity_id": row.id,
            }
            for sid, row in rows.items()
        },
    }


class WorkflowRuns:
    def __init__(
        self,
        *,
        sessions: async_sessionmaker[AsyncSession],
        activities: ActivityLog,
        catalog: Catalog,
        approvals: ApprovalService,
        queue: JobQueue,
        routing: ChannelRouting,
    ) -> None:
        self._sessions = sessions
        self._activities = activities
        self._catalog = catalog
        self._approvals = approvals
        self._queue = queue
        self._routing = routing

    async def open(self, activity_id: int, workflow: str, run_input: dict[str, Any]) -> None:
        """The run of the request ``activity_id`` (once, however often this is called). Its
        steps are created when the request has ended (:meth:`advance`)."""
        async with self._sessions.begin() as session:
            await insert_ignore(
                session,
                WorkflowRun.__table__,  # type: ignore[arg-type]
                {
                    "id": activity_id,
                    "workflow": workflow,
                    "status": WorkflowStatus.RUNNING.value,
                    "input": run_input,
                    "created_at": utcnow(),
                },
                ["id"],
            )

    async def advance(self, run_id: int) -> None:
        """Create and queue what the run's state lets run, or end it. Safe to call any time,
        from several processes at once."""
        woken: list[tuple[int, str]] = []
        for attempt in range(1, _ADVANCE_TRIES + 1):
            try:
                woken = await self._advance(run_id)
                break
            except IntegrityError:
                # Another process created one of these steps at the same moment: look again.
                if attempt == _ADVANCE_TRIES:
                    raise
        for activity_id, priority in woken:
            wake = functools.partial(self._queue.enqueue_run, priority=priority)
            await self._queue.try_enqueue(wake, activity_id)

    async def unfinished(self, *, limit: int = 500) -> list[int]:
        """Runs still running (for recovery to advance: an end whose job died)."""
        async with self._sessions() as session:
            await planned_for_values(session)
            rows = await session.scalars(
                select(WorkflowRun.id)
                .where(WorkflowRun.status == WorkflowStatus.RUNNING.value)
                .order_by(WorkflowRun.id)
                .limit(limit)
            )
            return [int(r) for r in rows]

    async def get(self, run_id: int) -> RunView | None:
        """The run started by request ``run_id`` with its steps, or None if that request did
        not start a workflow."""
        async with self._sessions() as session:
            start = await session.get(Activity, run_id)
            if start is None:
                return None
            run = await session.get(WorkflowRun, run_id)
            if start.agent_name != WORKFLOWS_AGENT and (run is None or run.plan is None):
                return None
            rows = await self._steps(session, run_id)
        found = self._flow(run) if run else self._catalog.workflows.get(start.action_type)
        flow = found if isinstance(found, Workflow) else None
        states = _states(flow, rows) if flow is not None else {}
        steps: list[StepView] = []
        for step_id in flow.order if flow else sorted(rows):
            row = rows.get(step_id)
            spec = flow.steps[step_id] if flow else None
            state = states.get(step_id, row.status if row else WAITING)
            steps.append(
                StepView(
                    id=step_id,
                    agent=spec.agent if spec else row.agent_name if row else "",
                    action=spec.action if spec else row.action_type if row else "",
                    depends_on=list(spec.depends_on) if spec else [],
                    status=WAITING if state == _READY else state,
                    activity_id=row.id if row else None,
                    result=row.details.get("result") if row else None,
                    error=row.details.get("error") if row else None,
                )
            )
        if run is None:
            # Not started: its request waits (queue, approval) or ended without starting it.
            status = start.status
            if status in {ActivityStatus.IN_PROGRESS, ActivityStatus.COMPLETED}:
                status = ActivityStatus.QUEUED.value
            return RunView(
                id=run_id,
                workflow=start.action_type,
                status=status,
                input=start.details.get("payload") or {},
                error=start.details.get("error"),
                created_at=start.created_at,
                completed_at=start.completed_at,
                steps=steps,
            )
        return RunView(
            id=run.id,
            workflow=run.workflow,
            status=run.status,
            input=run.input,
            error=run.error,
            created_at=run.created_at,
            completed_at=run.completed_at,
            steps=steps,
            plan=run.plan,
        )

    def _flow(self, run: WorkflowRun) -> Workflow | str:
        """The run's workflow: the catalog's, or its plan's checked against the catalog as it
        is now; else why there is none."""
        if run.plan is None:
            return self._catalog.workflows.get(run.workflow) or "no longer in the catalog"
        agent, _, action_name = run.workflow.partition(".")
        action = self._catalog.action(agent, action_name)
        if action is None or action.plan is None:
            return "the action that made the plan is no longer in the catalog"
        try:
            plan = msgspec.convert(run.plan, Plan)
            return plan_workflow(plan, action.plan, self._catalog.known)  # (schemas: per step)
        except (PlanError, msgspec.ValidationError) as exc:
            return f"the plan no longer fits the catalog: {exc}"

    @staticmethod
    async def _steps(session: AsyncSession, run_id: int) -> dict[str, Activity]:
        rows = await session.scalars(select(Activity).where(Activity.workflow_run_id == run_id))
        return {row.workflow_step: row for row in rows if row.workflow_step}

    async def _advance(self, run_id: int) -> list[tuple[int, str]]:
        async with self._sessions.begin() as session:
            run = await session.scalar(
                select(WorkflowRun).where(WorkflowRun.id == run_id).with_for_update()
            )
            if run is None or run.status != WorkflowStatus.RUNNING:
                return []
            start = await session.get(Activity, run_id)
            if start is None or start.status != ActivityStatus.COMPLETED:
                if start is not None and start.status in TERMINAL_STATUSES:
                    self._abandon(session, run, start)  # opened, then stopped before its end
                return []  # its request's own reply goes first; its end advances it
            flow = self._flow(run)
            if isinstance(flow, str):
                await self._end(session, run, start, None, {}, {}, why=flow)
                return [(start.id, start.priority)]
            rows = await self._steps(session, run_id)
            requester, role, active = await requester_role(
                session, start.actor_user_id, start.details
            )
            woken: list[tuple[int, str]] = []
            while ready := [s for s, st in _states(flow, rows).items() if st == _READY]:
                for step_id in ready:
                    row = await self._create(
                        session, run, start, flow, step_id, rows, (requester, role, active)
                    )
                    rows[step_id] = row
                    if not ActivityStatus(row.status).is_terminal:
                        woken.append((row.id, row.priority))
            states = _states(flow, rows)
            if all(_ended(state) for state in states.values()):
                await self._end(session, run, start, flow, rows, states)
                woken.append((start.id, start.priority))  # delivers its news to the requester
            return woken

    def _payload(
        self, step: StepSpec, scope: dict[str, Any] | None, language: str | None
    ) -> tuple[dict[str, Any], dict[str, Any] | None]:
        """A step's payload in the requester's ``language``, its templates filled from
        ``scope`` and checked against its action's schema; or why it could not be (the step
        fails with it)."""
        try:
            filled = (
                step.payload_in(language)
                if scope is None
                else fill(step.payload_in(language), scope)
            )
            return clean_json(self._catalog.validate_payload(step.agent, step.action, filled)), None
        except TemplateError as exc:
            return {}, {"reason": "template", "message": str(exc), "reference": exc.reference}
        except PayloadError as exc:
            return {}, {"reason": "payload", "message": str(exc), "field": exc.field}

    async def _create(  # noqa: PLR0917 - the parts of one step's activity
        self,
        session: AsyncSession,
        run: WorkflowRun,
        start: Activity,
        flow: Workflow,
        step_id: str,
        rows: dict[str, Activity],
        requester: tuple[User | None, str | None, bool],
    ) -> Activity:
        step = flow.steps[step_id]
        action = self._catalog.action(step.agent, step.action)
        assert action is not None  # checked when the catalog loaded
        user, role, active = requester
        scope = None if flow.literal else _scope(run, rows)  # (a plan's text is data)
        payload, error = self._payload(step, scope, language_of(start.details))
        if error is None and not may_request(role, active, action):
            who = user.name if user else role or "the requester"
            error = {"reason": "forbidden", "message": f"{who} may not run this action"}
        approval = action.approval if error is None else None
        status = (
            ActivityStatus.FAILED
            if error
            else ActivityStatus.AWAITING_APPROVAL
            if approval
            else ActivityStatus.QUEUED
        )
        provenance = {
            **(start.details.get("provenance") or {}),
            "workflow": run.workflow,
            "run": run.id,
            "step": step_id,
        }
        details: dict[str, Any] = {"payload": payload, "provenance": provenance}
        if error is not None:
            details["error"] = error
        row = await ActivityLog.open(
            session,
            Opening(
                agent=step.agent,
                action_type=step.action,
                description=action.description,
                details=details,
                status=status,
                event_data={
                    "payload": payload,
                    "channel": "workflow",
                    "run": run.id,
                    "step": step_id,
                },
                actor_user_id=start.actor_user_id,
                # The requester's channel, for who asked; no conversation: a step's result is
                # no reply of its own (the run's summary is).
                source_channel=start.source_channel,
                priority=(step.priority or action.priority).value,
                expires_at=expiry(approval) if approval is not None else None,
                completed_at=utcnow() if error else None,
                workflow_run_id=run.id,
                workflow_step=step_id,
            ),
        )
        if error is not None:
            self._activities.add_event(session, row.id, "failed", status=status.value, data=error)
        elif approval is not None:
            await self._approvals.gate(session, row, action, user)
        return row

    def _abandon(self, session: AsyncSession, run: WorkflowRun, start: Activity) -> None:
        """The run of a request that ended short of completing (opened, then its worker died
        and it was cancelled, or it failed on a later attempt): it fails, no step ever ran.
        Its requester was told of the request's end already."""
        run.status = WorkflowStatus.FAILED.value
        run.error = {
            "reason": "not_started",
            "status": start.status,
            "message": f"its request ended {start.status}",
        }
        run.completed_at = utcnow()
        self._activities.add_event(
            session,
            start.id,
            "workflow_failed",
            data={"run": run.id, "workflow": run.workflow, "error": run.error},
        )

    async def _end(  # noqa: PLR0917 - a run's parts
        self,
        session: AsyncSession,
        run: WorkflowRun,
        start: Activity,
        flow: Workflow | None,
        rows: dict[str, Activity],
        states: dict[str, str],
        *,
        why: str = "",
    ) -> None:
        error: dict[str, Any] | None = None
        if flow is None:
            error = {"reason": "unknown_workflow", "message": why or "no longer in the catalog"}
        else:
            failed = [s for s in flow.order if rows.get(s) and _blocks(flow, s, states[s])]
            if failed:
                first = rows[failed[0]]
                cause = (first.details.get("error") or {}).get("message") or first.status
                error = {
                    "reason": "step_failed",
                    "step": failed[0],
                    "status": first.status,
                    "message": cause,
                    "skipped": [s for s in flow.order if states[s] == SKIPPED],
                }
        run.status = (WorkflowStatus.FAILED if error else WorkflowStatus.COMPLETED).value
        run.error = error
        run.completed_at = utcnow()
        self._activities.add_event(
            session,
            start.id,
            f"workflow_{run.status}",
            data={"run": run.id, "workflow": run.workflow, "error": error},
        )
        log.info(
            "workflow run ended",
            extra={"run": run.id, "workflow": run.workflow, "status": run.status},
        )
        if start.conversation_id is not None and start.source_channel is not None:
            # Replies of one activity are numbered under its row's lock (recovery may be
            # writing a note for the request's own reply at this moment).
            await session.execute(
                select(Activity.id).where(Activity.id == start.id).with_for_update()
            )
            text = _summary(run, flow, rows, states, language_of(start.details))
            await add_reply(
                session,
                activity_id=start.id,
                conversation_id=start.conversation_id,
                channel=start.source_channel,
                parts=self._routing.split(start.source_channel, text),
            )


_SUMMARY_CHARS = 160


def _summary(
    run: WorkflowRun,
    flow: Workflow | None,
    rows: dict[str, Activity],
    states: dict[str, str],
    language: str | None,
) -> str:
    """What the requester is told when their run ends."""
    status = status_word(run.status, language)
    head = say("workflow.ended", language, id=run.id, workflow=run.workflow, status=status)
    if run.error and run.error.get("step"):
        head += say(
            "workflow.at_step", language, step=run.error["step"], message=run.error["message"]
        )
    lines = [head + "."]
    for step_id in flow.order if flow else ():
        row = rows.get(step_id)
        text = str(((row.details.get("result") or {}).get("text") or "") if row else "")
        if len(text) > _SUMMARY_CHARS:
            text = text[: _SUMMARY_CHARS - 1] + "…"
        state = status_word(states[step_id], language)
        lines.append(f"• {step_id}: {state}" + (f" — {text}" if text else ""))
    return "\n".join(lines)
