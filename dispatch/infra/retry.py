"""The one retry policy, by tenacity: exponential backoff from a first delay, with jitter so
retries from many workers spread out, capped; a hint (a provider's own ``retry_after``) wins
when there is one. Every retry loop (a channel's send, an ``http_call`` action, the LLM) and
every job's deferral use it; tests switch its sleeping off with :func:`sleeping`.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import Callable, Iterator

import tenacity

__all__ = ["RetryPolicy", "sleeping"]

_sleep: Callable[[float], object] = asyncio.sleep


async def _nap(seconds: float) -> None:
    await _sleep(seconds)  # type: ignore[misc]


@contextlib.contextmanager
def sleeping(*, on: bool) -> Iterator[None]:
    """Retries sleep (the default) or not at all (``on=False``), for tests."""
    global _sleep  # noqa: PLW0603 - one switch for the whole process, as stamina's testing mode
    before = _sleep

    async def not_at_all(_seconds: float) -> None:
        await asyncio.sleep(0)

    _sleep = asyncio.sleep if on else not_at_all
    try:
        yield
    finally:
        _sleep = before


@dataclasses.dataclass(frozen=True)
class RetryPolicy:
    """``retries`` more attempts after the first, the first waiting about ``first_s``, each
    next about twice as long (plus up to ``first_s`` of jitter), never more than ``max_s``."""

    retries: int
    first_s: float
    max_s: float = 60.0
    within_s: float | None = None
    """No retry starts this long after the first attempt did (None: no such limit)."""

    def _wait(self) -> tenacity.wait_exponential_jitter:
        return tenacity.wait_exponential_jitter(
            multiplier=self.first_s, max=self.max_s, jitter=self.first_s
        )

    def delay_s(self, retry: int) -> float:
        """How long to wait before retry number ``retry`` (1 for the first): a job's deferral."""
        state = tenacity.RetryCallState(None, None, (), {})  # type: ignore[arg-type]
        state.attempt_number = retry
        return float(self._wait()(state))

    def attempts(
        self,
        retry_on: Callable[[BaseException], bool],
        hint_s: Callable[[BaseException], float | None] = lambda _exc: None,
    ) -> tenacity.AsyncRetrying:
        """``async for attempt in policy.attempts(...): with attempt: ...``: a failure that
        ``retry_on`` accepts is tried again after the policy's wait (or ``hint_s`` of it, when
        that says); the last failure is raised as it was."""
        wait = self._wait()

        def waited(state: tenacity.RetryCallState) -> float:
            failed = state.outcome.exception() if state.outcome else None
            hinted = hint_s(failed) if failed is not None else None
            return wait(state) if hinted is None else hinted

        stop: tenacity.stop.stop_base = tenacity.stop_after_attempt(self.retries + 1)
        if self.within_s is not None:
            stop = stop | tenacity.stop_after_delay(self.within_s)
        return tenacity.AsyncRetrying(
            stop=stop,
            wait=waited,
            retry=tenacity.retry_if_exception(retry_on),
            reraise=True,
            sleep=_nap,
        )
