"""The one retry loop of every channel's send.

An attempt either settles (:class:`~dispatch.record.messages.Delivered`, sent or failed for good) or
asks to be tried again (:class:`TryAgain`: a rate limit, a 5xx, a connection that never reached
the provider). Retries wait the provider's ``retry_after`` when it gives one, else back off
exponentially with jitter; a wait longer than allowed, or one retry too many, fails the send with
the last reason. An attempt whose outcome is unknown (a timeout after the request left) must
settle as failed itself: retrying it could send the message twice.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Awaitable, Callable

from dispatch.infra.retry import RetryPolicy
from dispatch.record.messages import Delivered
from dispatch.record.models import Delivery

__all__ = ["TryAgain", "unknown_outcome", "with_retries"]


@dataclasses.dataclass(frozen=True)
class TryAgain:
    """The provider refused this attempt for now."""

    reason: str
    after_s: float | None = None
    """The provider's own ``retry_after``; None: back off exponentially."""


class _Refused(Exception):
    def __init__(self, outcome: TryAgain) -> None:
        super().__init__(outcome.reason)
        self.outcome = outcome


async def with_retries(
    attempt: Callable[[], Awaitable[Delivered | TryAgain]],
    *,
    retries: int,
    backoff_s: float,
    max_wait_s: float = math.inf,
) -> Delivered:
    """Run ``attempt`` until it settles, at most ``retries`` times more (the one retry policy,
    :class:`~dispatch.infra.retry.RetryPolicy`; the provider's ``retry_after`` when it gives
    one, unless that is longer than ``max_wait_s``)."""

    def again(exc: BaseException) -> bool:
        if not isinstance(exc, _Refused):
            return False
        after_s = exc.outcome.after_s
        return after_s is None or after_s <= max_wait_s

    def after_s(exc: BaseException) -> float | None:
        return exc.outcome.after_s if isinstance(exc, _Refused) else None

    try:
        async for trying in RetryPolicy(retries, backoff_s).attempts(again, after_s):
            with trying:
                outcome = await attempt()
                if isinstance(outcome, TryAgain):
                    raise _Refused(outcome)
                return outcome
    except _Refused as refused:
        return Delivered(status=Delivery.FAILED.value, error=refused.outcome.reason)
    raise AssertionError("the retry loop ended without an outcome")  # pragma: no cover


def unknown_outcome(exc: BaseException) -> Delivered:
    """A send whose request may have reached the provider (a timeout after it left): failed,
    and never retried, since a retry could deliver the message twice."""
    return Delivered(
        status=Delivery.FAILED.value, error=f"outcome unknown, not retried ({type(exc).__name__})"
    )
