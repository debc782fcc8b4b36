"""The job bodies, shared by the arq worker and the in-process runner.

Every job is safe to run twice, and at the same time on two workers: it re-reads the database,
claims what it works on with a conditional update (the attempt number fences every later
write), and replies through the at-most-once reservation.

An ordinary message takes one job: ``dispatch_message`` interprets it and, when it is its
conversation's turn, runs the activity in the same job, then carries the conversation on (the
next activity that was waiting runs in this job too, a few at most, then in a job of its own).
What has to wait is woken when what held it back ends: the next message when this one is
dispatched, the next activity when this one finishes, or goes to wait for a person.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, Literal

import msgspec

from dispatch.infra.logs import bind
from dispatch.infra.queue import RetryLater
from dispatch.infra.retry import RetryPolicy
from dispatch.language.i18n import language_of
from dispatch.policy.permissions import acting_role, may_request, requester_role
from dispatch.record.activities import Ending
from dispatch.record.models import ActivityStatus as S
from dispatch.record.models import utcnow
from dispatch.record.outbox import Outbox, reply_text
from dispatch.work.runs import run_of
from dispatch.work.service import MAX_DISPATCH_ATTEMPTS, Claimed, Dispatched, DispatchFailed
from workers.lease import Lease, LeaseLost, RunCancelled
from workers.registry import Handler, HandlerContext, HandlerResult, UnknownAction

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncSession

    from dispatch.policy.specs import ActionSpec
    from dispatch.record.activities import ActivityView
    from workers.runtime import Runtime

__all__ = ["JobOutcome", "dispatch_batch", "dispatch_message", "run_activity"]

log = logging.getLogger("switchboard.jobs")

INLINE_RUNS = 8
"""Activities one job runs for its conversation before handing the rest to a job of their own
(so a busy conversation does not hold a worker's slot for long)."""
DISPATCH_RETRIES = RetryPolicy(retries=MAX_DISPATCH_ATTEMPTS - 1, first_s=1.0, max_s=10.0)
"""When a message's dispatch is tried again (about 1 s, then 2 s, with jitter): the one retry
policy; the attempts are counted by the message's claim, the last ends it."""


class JobOutcome(msgspec.Struct, frozen=True, kw_only=True):
    """What a job did (arq keeps no result: this is what it logs)."""

    outcome: str
    message_id: int | None = None
    activity_id: int | None = None
    ran: int = 0
    """Activities run (claimed and executed) by this job."""
    following: int | None = None
    """The conversation's next message, for the caller to dispatch next."""


async def dispatch_batch(runtime: Runtime, messages: Sequence[tuple[int, int]]) -> JobOutcome:
    """Dispatch newly stored messages ((conversation id, message id)): each conversation's in
    order, conversations side by side (no conversation waits for another's)."""
    conversations: dict[int, list[int]] = {}
    for conversation_id, message_id in messages:
        conversations.setdefault(conversation_id, []).append(message_id)
    # A task group, not gather: a stopping worker cancels the job, and each conversation's run
    # gives its activity back before the job ends (gather ends at the first to finish, and the
    # worker would close the database under the others' give-backs).
    async with asyncio.TaskGroup() as group:
        runs = [group.create_task(_in_order(runtime, ids)) for ids in conversations.values()]
    return JobOutcome(outcome="dispatched", ran=sum(run.result() for run in runs))


async def _in_order(runtime: Runtime, message_ids: list[int]) -> int:
    """One conversation's messages of a batch, one after the other, then (a few at most) the
    ones that came after the batch, before waking a job for the rest. One that fails stops the
    rest: they wait for it, and its retry (or recovery) wakes them."""
    ran = 0
    pending = list(message_ids)
    carried = 0
    async with runtime.slots:
        while pending:
            message_id = pending.pop(0)
            carry = not pending and carried < INLINE_RUNS
            after: After = "leave" if pending else "return" if carry else "wake"
            try:
                done = await dispatch_message(runtime, message_id, after=after)
            except RetryLater as later:
                retry = functools.partial(
                    runtime.queue.enqueue_dispatch, message_id, defer_s=later.defer_s
                )
                await runtime.queue.attempt(retry)
                return ran
            except Exception:
                log.exception(
                    "dispatch failed; recovery re-drives it", extra={"message_id": message_id}
                )
                return ran
            ran += done.ran
            if done.following is not None:
                pending.append(done.following)
                carried += 1
    return ran


After = Literal["wake", "return", "leave"]


async def dispatch_message(
    runtime: Runtime, message_id: int, *, after: After = "wake"
) -> JobOutcome:
    """Dispatch a stored message and run its activity when it is its turn. ``after``: what
    becomes of the conversation's next message awaiting dispatch once this one is understood:
    woken (a job of its own), returned (``following``: the caller dispatches it next), or
    left (the caller has it already)."""
    bind(message_id=message_id)
    try:
        dispatched = await runtime.dispatcher.dispatch_message(
            message_id,
            lease_s=runtime.settings.worker.lease_s,
            look_ahead=after != "leave",
            claim=True,
        )
    except DispatchFailed as failed:
        defer_s = DISPATCH_RETRIES.delay_s(failed.attempt)
        raise RetryLater(defer_s, str(failed)) from failed
    if dispatched is None:
        return JobOutcome(outcome="missing", message_id=message_id)
    following = None
    if (
        after != "leave"
        and dispatched.outcome in {"recorded", "failed", "held"}
        and dispatched.conversation_id is not None
    ):
        # Later messages of the conversation waited for this one to be understood.
        following = dispatched.following
        if not dispatched.looked_ahead:
            following = await runtime.turns.next_undispatched(
                dispatched.conversation_id, after_id=message_id
            )
        if following is not None and after == "wake":
            await runtime.queue.try_enqueue(runtime.queue.enqueue_dispatch, following)
            following = None
    ran = 0
    if dispatched.activity_id is not None and _ours_to_advance(dispatched):
        ran = await _advance(runtime, dispatched.activity_id, dispatched.running)
    return JobOutcome(
        outcome=dispatched.outcome,
        message_id=message_id,
        activity_id=dispatched.activity_id,
        ran=ran,
        following=following,
    )


def _ours_to_advance(dispatched: Dispatched) -> bool:
    """Whether this job carries the message's activity on. One it recorded, yes. One recorded
    before (this job's message was taken by the job of an earlier one of its conversation, or
    this is a retry): only while it is still queued, as a retried job finds it when the job
    that recorded it died before running it. Running or ended, whoever holds it carries it on,
    and should they die, recovery does (their lease, their unsent replies); stepping it here
    would only read it again."""
    return dispatched.outcome != "existing" or dispatched.status == S.QUEUED.value


async def run_activity(runtime: Runtime, activity_id: int) -> JobOutcome:
    """Run an activity if it is its turn, send what it owes, and carry its conversation on."""
    ran = await _advance(runtime, activity_id)
    return JobOutcome(outcome="advanced", activity_id=activity_id, ran=ran)


async def _advance(runtime: Runtime, activity_id: int, running: Claimed | None = None) -> int:
    """Step this activity (``running``: already claimed for this job), then the ones its end
    lets run, a few in this job; returns runs."""
    ran = 0
    current: int | None = activity_id
    for _ in range(INLINE_RUNS):
        if current is None:
            return ran
        step = await _step(runtime, current, running)
        running = None
        ran += step.ran
        if step.held:
            return ran
        current = step.following
    if current is not None:
        await runtime.queue.try_enqueue(runtime.queue.enqueue_run, current)
    return ran


class _Step(msgspec.Struct, frozen=True, kw_only=True):
    held: bool
    """Not this job's to continue: held back by something earlier, or running elsewhere."""
    following: int | None = None
    """The next activity of the conversation, now that this one holds nothing back."""
    ran: int = 0


class _Ended(msgspec.Struct, frozen=True, kw_only=True):
    activity: ActivityView
    """As it ended."""
    outbox: Outbox
    """Its replies, reserved for this job to send."""


async def _step(runtime: Runtime, activity_id: int, running: Claimed | None = None) -> _Step:
    bind(activity_id=activity_id)
    activities = runtime.activities
    ran = 0
    activity: ActivityView | None
    ended: _Ended | None = None
    if running is not None:
        # Claimed as it was recorded, its requester's permission checked then.
        ended = await _execute(
            runtime,
            running.activity,
            running.attempt,
            time.monotonic(),
            role=(running.role, running.active),
        )
        activity = ended.activity if ended else await activities.get(activity_id)
        ran = 1
    else:
        activity = await activities.get(activity_id)
    if activity is None:
        log.warning("run of unknown activity", extra={"activity_id": activity_id})
        return _Step(held=True)
    if running is None and activity.status in (S.QUEUED, S.IN_PROGRESS):
        action = runtime.catalog.action(activity.agent_name, activity.action_type)
        overtakes = action is not None and action.overtakes
        if await runtime.turns.blocker(activity, overtakes=overtakes) is not None:
            return _Step(held=True)  # what holds it back wakes it when it ends
        claimed_at = time.monotonic()
        taken = await activities.take(activity_id, lease_s=runtime.settings.worker.lease_s)
        if taken is None:
            return _Step(held=True)  # running elsewhere; that job carries the conversation on
        attempt, stop_asked = taken
        if stop_asked and activity.cancel_requested_at is None:
            activity = msgspec.structs.replace(activity, cancel_requested_at=utcnow())
        ended = await _execute(runtime, activity, attempt, claimed_at)
        ran = 1
        activity = ended.activity if ended else await activities.get(activity_id)
        assert activity is not None
    held = activity.status in (S.QUEUED, S.IN_PROGRESS)  # given back, or taken over
    turn = None
    if not held and activity.conversation_id is not None and activity.order_key is not None:
        # Finished, or waiting for a person (approval, RUN): either way it holds nothing back
        # once its replies are out; the last one's record looks up what waits behind it.
        turn = (activity.conversation_id, activity.order_key)
    delivered = await runtime.replies.deliver(activity, ended.outbox if ended else None, turn=turn)
    if held:
        return _Step(held=True, ran=ran)  # another run follows
    run_id = run_of(
        activity.agent_name,
        activity.id,
        activity.workflow_run_id,
        runtime.catalog.action(activity.agent_name, activity.action_type),
    )
    if run_id is not None and S(activity.status).is_terminal:
        await runtime.workflows.advance(run_id)  # what its end lets run, or the run's end
    following = delivered.following
    if turn is not None and not delivered.looked:
        following = await runtime.turns.next_in_conversation(*turn)
    return _Step(held=False, following=following, ran=ran)


async def _execute(
    runtime: Runtime,
    activity: ActivityView,
    attempt: int,
    claimed_at: float,
    *,
    role: tuple[str | None, bool] | None = None,
) -> _Ended | None:
    """Resolve, re-check (unless ``role``: (role, active) just checked), run under the lease
    with a timeout, and persist the result (only if this attempt still holds the claim).
    Returns the activity as it ended with its replies to send, or None if this attempt's
    result did not count."""
    started = time.perf_counter()
    action = runtime.catalog.action(activity.agent_name, activity.action_type)
    handler: Handler | None = None  # None: external agents serve it
    try:
        if action is None or not action.by_agent:
            action, handler = runtime.handlers.resolve(
                runtime.catalog, activity.agent_name, activity.action_type
            )
    except UnknownAction as exc:
        return await _fail(
            runtime, activity, attempt, reason="unknown_action", message=str(exc), started=started
        )

    role_now, active = role or await _role_of(runtime, activity)
    if not may_request(role_now, active, action):
        return await _fail(
            runtime,
            activity,
            attempt,
            reason="forbidden",
            message="not allowed any more",
            started=started,
        )

    if activity.cancel_requested_at is not None:
        return await _cancelled(runtime, activity, attempt, started=started)  # before it ran
    if handler is None:
        return await _to_agents(runtime, activity, attempt, action)
    return await _run_handler(runtime, activity, attempt, claimed_at, action, handler, role_now)


async def _to_review(  # noqa: PLR0917 - one run's end
    runtime: Runtime,
    activity: ActivityView,
    attempt: int,
    result: HandlerResult,
    details: dict[str, Any],
    duration_ms: float,
) -> _Ended | None:
    """A council's proposal goes to a person's review before the requester gets it (its text
    only in the review's artifact: no one reads it before it is released), in the transaction
    that ends the run: never in review without it."""
    return await _finish(
        runtime,
        activity,
        attempt,
        S.IN_REVIEW,
        details={**details, "result": {"data": result.data}},
        metrics={**activity.metrics, "duration_ms": duration_ms},
        data={"attempt": attempt},
        also=functools.partial(
            runtime.tasks.council_in_review,
            task_id=activity.id,
            text=result.text,
            summary=result.data,
        ),
    )


async def _to_agents(
    runtime: Runtime, activity: ActivityView, attempt: int, action: ActionSpec
) -> _Ended | None:
    """An action external agents serve (its permission checked): it goes to the queue they
    claim from (``waiting_for_agent``) and the requester is told; the tasks service carries
    it on from there."""
    return await _finish(
        runtime,
        activity,
        attempt,
        S.WAITING_FOR_AGENT,
        details=activity.details,
        metrics=activity.metrics,
        data={"lease_s": action.lease_s, "max_attempts": action.max_attempts},
    )


async def _run_handler(  # noqa: PLR0917 - one run's parts
    runtime: Runtime,
    activity: ActivityView,
    attempt: int,
    claimed_at: float,
    action: ActionSpec,
    handler: Handler,
    role_now: str | None,
) -> _Ended | None:
    """The handler under the lease, with its timeout; its end persisted."""
    started = time.perf_counter()
    lease = Lease(
        runtime.activities,
        activity.id,
        attempt=attempt,
        lease_s=runtime.settings.worker.lease_s,
        claimed_at=claimed_at,
    )
    try:
        payload = runtime.catalog.validate_payload(
            activity.agent_name, activity.action_type, activity.details.get("payload") or {}
        )
        ctx = HandlerContext(
            activity=activity,
            action=action,
            payload=payload,
            catalog=runtime.catalog,
            activities=runtime.activities,
            http=runtime.http,
            role=role_now,
            approvals=runtime.approvals,
            workflows=runtime.workflows,
            buttons=runtime.channels.buttons(activity.source_channel or ""),
        )
        result = await lease.run(_ran(runtime, ctx, handler), timeout_s=action.timeout_s)
    except LeaseLost:
        log.warning("run stopped: its lease was lost", extra={"attempt": attempt})
        return None
    except RunCancelled:
        return await _cancelled(runtime, activity, attempt, started=started)
    except asyncio.CancelledError:
        # The worker is stopping: give the activity back to be run at once elsewhere.
        await asyncio.shield(
            runtime.activities.release(activity.id, attempt=attempt, reason="worker stopping")
        )
        raise
    except (TimeoutError, Unavailable) as exc:  # (unavailable: nothing was asked of anyone)
        reason, message = _why_not(exc, action)
        return await _fail(
            runtime, activity, attempt, reason=reason, message=message, started=started
        )
    except Exception as exc:
        log.exception("handler failed", extra={"activity_id": activity.id})
        message = str(exc) or type(exc).__name__
        return await _fail(
            runtime, activity, attempt, reason="handler_error", message=message, started=started
        )

    duration_ms = round((time.perf_counter() - started) * 1000, 3)
    result_doc: dict[str, Any] = {"text": result.text, "data": result.data}
    if result.media:
        result_doc["media"] = msgspec.to_builtins(result.media)
    if result.choices:
        result_doc["choices"] = msgspec.to_builtins(result.choices)
    details = {**activity.details, "result": result_doc}
    if action.by_council and action.reviewed is not None:
        return await _to_review(runtime, activity, attempt, result, details, duration_ms)
    return await _finish(
        runtime,
        activity,
        attempt,
        S.COMPLETED,
        details=details,
        metrics={**activity.metrics, "duration_ms": duration_ms},
        data={"duration_ms": duration_ms, "handler": handler.name, "attempt": attempt},
    )


def _why_not(exc: Exception, action: ActionSpec) -> tuple[str, str]:
    """(reason, message) of a run that timed out or could not run here."""
    if isinstance(exc, TimeoutError):
        return "timeout", f"no answer within {action.timeout_s:g} s"
    return "unavailable", str(exc)


class Unavailable(Exception):
    """What the action needs is not set up in this deployment (a council's provider)."""


async def _ran(runtime: Runtime, ctx: HandlerContext, handler: Handler) -> HandlerResult:
    """The handler's run; a council's requester hears at once (and once) that it is at work:
    it takes minutes (under the lease, as the run is)."""
    council = ctx.action.council if ctx.action.by_council else None
    if council is not None:
        missing = runtime.providers.missing(council.providers())
        if missing:
            raise Unavailable(
                f"no provider {', '.join(missing)} here"
                + (" (set SWITCHBOARD_LLM_BASE_URL)" if "default" in missing else "")
            )
        members = 1 if council.baseline else len(council.members)
        if await runtime.tasks.council_started(ctx.activity.id, members):
            await runtime.replies.deliver(ctx.activity)
    return await handler.run(ctx)


async def _cancelled(
    runtime: Runtime, activity: ActivityView, attempt: int, *, started: float
) -> _Ended | None:
    """Stopped at an operator's request: it ends ``cancelled`` and its requester is told."""
    duration_ms = round((time.perf_counter() - started) * 1000, 3)
    error = {"reason": "cancelled", "message": "stopped at an operator's request"}
    return await _finish(
        runtime,
        activity,
        attempt,
        S.CANCELLED,
        details={**activity.details, "error": error},
        metrics={**activity.metrics, "duration_ms": duration_ms},
        data={**error, "attempt": attempt},
    )


async def _fail(
    runtime: Runtime,
    activity: ActivityView,
    attempt: int,
    *,
    reason: str,
    message: str,
    started: float,
) -> _Ended | None:
    duration_ms = round((time.perf_counter() - started) * 1000, 3)
    error = {"reason": reason, "message": message}
    return await _finish(
        runtime,
        activity,
        attempt,
        S.FAILED,
        details={**activity.details, "error": error},
        metrics={**activity.metrics, "duration_ms": duration_ms},
        data={**error, "attempt": attempt},
    )


async def _finish(
    runtime: Runtime,
    activity: ActivityView,
    attempt: int,
    to: S,
    *,
    details: dict[str, Any],
    metrics: dict[str, Any],
    data: dict[str, Any],
    also: Callable[[AsyncSession], Awaitable[None]] | None = None,
) -> _Ended | None:
    """Persist the run's end with its reply, reserved to be sent at once (and ``also``, in
    the same transaction); the activity as it ended, or None if this attempt no longer held
    it (its result is discarded)."""
    ending = Ending(
        to=to,
        attempt=attempt,
        kind=to.value,
        details=details,
        metrics=metrics,
        reply=_reply_parts(runtime, activity, to, details),
        data=data,
    )
    outbox = await runtime.activities.finish(activity, ending, reserve=True, also=also)
    if outbox is None:
        return None
    ended = msgspec.structs.replace(
        activity, status=to.value, details=details, metrics=metrics, completed_at=utcnow()
    )
    return _Ended(activity=ended, outbox=outbox)


def _reply_parts(
    runtime: Runtime, activity: ActivityView, status: S, details: dict[str, Any]
) -> list[str]:
    text = reply_text(activity.id, status.value, details, language_of(activity.details))
    if text is None or activity.source_channel is None:
        return []
    return runtime.channels.split(activity.source_channel, text)


async def _role_of(runtime: Runtime, activity: ActivityView) -> tuple[str | None, bool]:
    if activity.actor_user_id is None:
        return acting_role(activity.details), True
    async with runtime.sessions() as session:
        _, role, active = await requester_role(session, activity.actor_user_id, activity.details)
    return role, active
