"""Every queue name, job-id shape and pub/sub channel, in one place."""

from __future__ import annotations

__all__ = [
    "AGAIN",
    "DISPATCH_BATCH",
    "DISPATCH_MESSAGE",
    "RUN_ACTIVITY",
    "batch_job_id",
    "dispatch_job_id",
    "job_kind",
    "queue_name",
    "recover_job_id",
    "reply_channel",
    "run_job_id",
    "worker_key",
]

DISPATCH_MESSAGE = "dispatch_message"
DISPATCH_BATCH = "dispatch_batch"
RUN_ACTIVITY = "run_activity"


def queue_name(prefix: str) -> str:
    return f"{prefix}:queue"


def dispatch_job_id(prefix: str, message_id: int) -> str:
    """Deterministic: enqueuing it while it is queued or running is a no-op (see
    ``JobQueue.wake``); once it has run, it may be enqueued again."""
    return f"{prefix}:msg:{message_id}"


def batch_job_id(prefix: str, first_message_id: int) -> str:
    """Unique: a stored message is queued in a batch once, and its id names its batch only."""
    return f"{prefix}:batch:{first_message_id}"


def run_job_id(prefix: str, activity_id: int) -> str:
    return f"{prefix}:run:{activity_id}"


AGAIN = ":again"
"""Suffix of the one extra run a wake asks for when the job is running at that moment."""


def recover_job_id(prefix: str) -> str:
    return f"{prefix}:recover"


_KINDS = {"msg": DISPATCH_MESSAGE, "batch": DISPATCH_BATCH, "run": RUN_ACTIVITY}


def job_kind(job_id: str) -> str:
    """What a queued job does, from its id (``recover``, or ``other`` for an id not ours)."""
    parts = job_id.removesuffix(AGAIN).split(":")
    if "recover" in parts[-2:]:  # arq names a cron job's run ``<name>:<due time in ms>``
        return "recover"
    return _KINDS.get(parts[-2], "other") if len(parts) >= 2 else "other"


def worker_key(prefix: str, worker_id: str) -> str:
    """A worker's heartbeat (expires unless renewed)."""
    return f"{prefix}:worker:{worker_id}"


def reply_channel(prefix: str, channel: str, conversation_key: str) -> str:
    return f"{prefix}:reply:{channel}:{conversation_key}"
