"""The job bodies, shared by the arq worker and the in-process runner.

Every job is safe to run twice (arq is at-least-once): it re-reads the database, claims the
activity with a conditional update, and replies through the at-most-once reservation.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any

import msgspec

from dispatch.models import ActivityStatus as S
from dispatch.models import User
from dispatch.outbox import reply_text
from dispatch.permissions import may_request
from gateway.logging import bind
from workers.registry import HandlerContext, UnknownAction

if TYPE_CHECKING:
    from dispatch.activities import ActivityView
    from gateway.services import Services

__all__ = ["dispatch_message", "run_activity"]

log = logging.getLogger("switchboard.jobs")


async def dispatch_message(services: Services, message_id: int) -> dict[str, Any]:
    bind(message_id=message_id)
    dispatched = await services.dispatcher.dispatch_message(message_id)
    if dispatched is None:
        return {"message_id": message_id, "outcome": "missing"}
    return {"message_id": message_id, "activity_id": dispatched.activity_id, "outcome": "ok"}


async def run_activity(services: Services, activity_id: int) -> dict[str, Any]:
    """Run one activity if it is its conversation's turn; then reply and wake the next one."""
    bind(activity_id=activity_id)
    activities = services.activities
    activity = await activities.get(activity_id)
    if activity is None:
        log.warning("run of unknown activity", extra={"activity_id": activity_id})
        return {"activity_id": activity_id, "outcome": "missing"}
    blocker = await activities.blocker(activity)
    if blocker is not None:
        # Its turn comes when the blocker finishes: that run enqueues this one.
        return {"activity_id": activity_id, "outcome": "waiting", "behind": blocker}

    outcome = "already_finished"
    runnable = activity.status in (S.QUEUED, S.IN_PROGRESS)
    if runnable:
        action = services.catalog.action(activity.agent_name, activity.action_type)
        timeout_s = action.timeout_s if action else 30.0
        if not await activities.claim(
            activity_id, lease_s=timeout_s + services.settings.worker.lease_grace_s
        ):
            return {"activity_id": activity_id, "outcome": "claimed_elsewhere"}
        outcome = await _execute(services, activity)
        activity = await activities.get(activity_id)
        assert activity is not None

    sent = await services.replies.deliver(activity)
    if not runnable and not S(activity.status).is_terminal:
        # Waiting for a human (approval, or a RUN): what it had to say meanwhile (approval
        # requests, decisions so far) is sent, and the conversation moves on without it.
        return {
            "activity_id": activity_id,
            "outcome": f"not_runnable:{activity.status}",
            "replied": sent,
        }
    if activity.conversation_id is not None and activity.order_key is not None:
        following = await activities.next_in_conversation(
            activity.conversation_id, activity.order_key
        )
        if following is not None:
            await services.queue.enqueue_run(following, reason=f"after:{activity_id}")
    return {"activity_id": activity_id, "outcome": outcome, "replied": sent}


async def _execute(services: Services, activity: ActivityView) -> str:
    """Resolve, re-check, run with a timeout, and persist the result or the error."""
    activities = services.activities
    started = time.perf_counter()
    try:
        action, handler = services.handlers.resolve(
            services.catalog, activity.agent_name, activity.action_type
        )
    except UnknownAction as exc:
        await _fail(services, activity, "unknown_action", str(exc), started)
        return "failed"

    role, active = await _role_of(services, activity.actor_user_id)
    if not may_request(role, active, action):
        await _fail(services, activity, "forbidden", "not allowed any more", started)
        return "failed"

    payload = activity.details.get("payload") or {}
    try:
        payload = services.catalog.validate_payload(
            activity.agent_name, activity.action_type, payload
        )
        ctx = HandlerContext(
            activity=activity,
            action=action,
            payload=payload,
            catalog=services.catalog,
            activities=activities,
            http=services.http,
            role=role,
            approvals=services.approvals,
        )
        result = await asyncio.wait_for(handler.run(ctx), timeout=action.timeout_s)
    except TimeoutError:
        await _fail(
            services, activity, "timeout", f"no answer within {action.timeout_s:g} s", started
        )
        return "failed"
    except Exception as exc:
        log.exception("handler failed", extra={"activity_id": activity.id})
        await _fail(services, activity, "handler_error", str(exc) or type(exc).__name__, started)
        return "failed"

    duration_ms = round((time.perf_counter() - started) * 1000, 3)
    result_doc: dict[str, Any] = {"text": result.text, "data": result.data}
    if result.media:
        result_doc["media"] = msgspec.to_builtins(result.media)
    if result.choices:
        result_doc["choices"] = msgspec.to_builtins(result.choices)
    details = {**activity.details, "result": result_doc}
    moved = await activities.finish(
        activity,
        S.COMPLETED,
        kind="completed",
        details=details,
        metrics={**activity.metrics, "duration_ms": duration_ms},
        reply=_reply_parts(services, activity, S.COMPLETED, details),
        data={"duration_ms": duration_ms, "handler": handler.name},
    )
    return "completed" if moved else "lost_claim"


async def _fail(
    services: Services, activity: ActivityView, reason: str, message: str, started: float
) -> None:
    duration_ms = round((time.perf_counter() - started) * 1000, 3)
    error = {"reason": reason, "message": message}
    details = {**activity.details, "error": error}
    await services.activities.finish(
        activity,
        S.FAILED,
        kind="failed",
        details=details,
        metrics={**activity.metrics, "duration_ms": duration_ms},
        reply=_reply_parts(services, activity, S.FAILED, details),
        data=error,
    )


def _reply_parts(
    services: Services, activity: ActivityView, status: S, details: dict[str, Any]
) -> list[str]:
    text = reply_text(activity.id, status.value, details)
    if text is None or activity.source_channel is None:
        return []
    return services.channels.split(activity.source_channel, text)


async def _role_of(services: Services, user_id: int | None) -> tuple[str | None, bool]:
    if user_id is None:
        return None, True
    async with services.sessions() as session:
        user = await session.get(User, user_id)
    return (user.role, user.active) if user else (None, False)
