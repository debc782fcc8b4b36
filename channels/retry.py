"""The one retry loop of every channel's send.

An attempt either settles (:class:`~dispatch.record.messages.Delivered`, sent or failed for good) or
asks to be tried again (:class:`TryAgain`: a rate limit, a 5xx, a connection that never reached
the provider). Retries wait the provider's ``retry_after`` when it gives one, else back off
exponentially with jitter; a wait longer than allowed, or one retry too many, fails the send with
the last reason. An attempt whose outcome is unknown (a timeout after the request left) must
settle as failed itself: retrying it could send the message twice.
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
from collections.abc import Awaitable, Callable

from dispatch.infra.backoff import backoff
from dispatch.record.messages import Delivered
from dispatch.record.models import Delivery

__all__ = ["TryAgain", "unknown_outcome", "with_retries"]


@dataclasses.dataclass(frozen=True)
class TryAgain:
    """The provider refused this attempt for now."""

    reason: str
    after_s: float | None = None
    """The provider's own ``retry_after``; None: back off exponentially."""


async def with_retries(
    attempt: Callable[[], Awaitable[Delivered | TryAgain]],
    *,
    retries: int,
    backoff_s: float,
    max_wait_s: float = math.inf,
) -> Delivered:
    """Run ``attempt`` until it settles, at most ``retries`` times more."""
    retry = 0
    while True:
        outcome = await attempt()
        if isinstance(outcome, Delivered):
            return outcome
        wait_s = outcome.after_s
        if retry == retries or (wait_s is not None and wait_s > max_wait_s):
            return Delivered(status=Delivery.FAILED.value, error=outcome.reason)
        if wait_s is None:
            await backoff(retry, backoff_s)
        else:
            await asyncio.sleep(wait_s)
        retry += 1


def unknown_outcome(exc: BaseException) -> Delivered:
    """A send whose request may have reached the provider (a timeout after it left): failed,
    and never retried, since a retry could deliver the message twice."""
    return Delivered(
        status=Delivery.FAILED.value, error=f"outcome unknown, not retried ({type(exc).__name__})"
    )
