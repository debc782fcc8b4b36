"""Every queue name, job-id shape and pub/sub channel, in one place."""

from __future__ import annotations

__all__ = [
    "DISPATCH_MESSAGE",
    "RUN_ACTIVITY",
    "dispatch_job_id",
    "queue_name",
    "reply_channel",
    "run_job_id",
]

DISPATCH_MESSAGE = "dispatch_message"
RUN_ACTIVITY = "run_activity"


def queue_name(prefix: str) -> str:
    return f"{prefix}:queue"


def dispatch_job_id(prefix: str, message_id: int, reason: str = "") -> str:
    base = f"{prefix}:msg:{message_id}"
    return f"{base}:{reason}" if reason else base


def run_job_id(prefix: str, activity_id: int, reason: str = "") -> str:
    """Deterministic: a second enqueue with the same reason is a no-op in arq.

    ``reason`` distinguishes a deliberate re-drive (the activity before it finished, recovery)
    from the first enqueue; the activity's claim in the database still lets only one run.
    """
    base = f"{prefix}:run:{activity_id}"
    return f"{base}:{reason}" if reason else base


def reply_channel(prefix: str, channel: str, conversation_key: str) -> str:
    return f"{prefix}:reply:{channel}:{conversation_key}"
