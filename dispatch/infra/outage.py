"""Telling a dependency's outage (the database, Redis) from a mistake: the former is answered
"unavailable, try again" (503), the latter is a bug (500) or the caller's (4xx)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, TypeVar

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from sqlalchemy.exc import DBAPIError, DisconnectionError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError

from dispatch.infra.retry import RetryPolicy

__all__ = ["LoopLate", "Outage", "is_overload", "is_unavailable"]

log = logging.getLogger("switchboard.outage")
T = TypeVar("T")

_DOWN = (
    OSError,  # refused, reset, unreachable
    TimeoutError,  # connecting or a statement's answer took too long
    OperationalError,
    InterfaceError,
    DisconnectionError,
    RedisConnectionError,
    RedisTimeoutError,
)


LATE_SHARE = 0.25
"""Woken later than this share of a call's timeout, the process itself was the delay."""


class LoopLate(Exception):
    """A call ran out of time while this process's event loop was too busy to read its answer:
    our own load, not the dependency's outage."""


def _causes(exc: BaseException) -> Iterator[BaseException]:
    seen: BaseException | None = exc
    for _ in range(10):
        if seen is None:
            return
        yield seen
        seen = seen.__cause__ or seen.__context__


def is_overload(exc: BaseException) -> bool:
    """Whether ``exc`` says this process had more to do than it could in time: every database
    connection of its pool was busy for the pool's whole timeout. That is our own queue, not
    the database refusing or hanging (which fail the connections themselves)."""
    return any(isinstance(cause, PoolTimeoutError | LoopLate) for cause in _causes(exc))


def is_unavailable(exc: BaseException) -> bool:
    """Whether ``exc`` (or what caused it) says a dependency is down, not that a request or
    Switchboard is wrong (nor that it is only busy: :func:`is_overload`)."""
    if is_overload(exc):
        return False
    seen: BaseException | None = exc
    for _ in range(10):
        if seen is None:
            return False
        if isinstance(seen, _DOWN) or (
            isinstance(seen, DBAPIError) and seen.connection_invalidated
        ):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


class Outage:
    """A dependency that callers can carry on without (Redis: the work is in the database), as
    they see it fail and recover.

    The logs get one warning when calls start failing and one when it answers again, instead of
    a line or a traceback per call; what is not an outage (:func:`is_unavailable`) is logged
    every time with its traceback, since that is a bug to see.

    It is also a circuit breaker: while it is down, :meth:`call` does not try it, except for
    one probe at a time after a pause (about 1 s, doubling up to 5 s: :attr:`PROBES`), so that
    while it hangs, requests do not each wait for its timeout: webhooks are acknowledged all the
    same.
    """

    PROBES = RetryPolicy(retries=0, first_s=1.0, max_s=5.0)
    """The pause before each probe while it is down (the one retry policy's delays; it is
    probed for as long as it stays down)."""

    def __init__(self, what: str, *, timeout_s: float | None = None) -> None:
        self._what = what
        self._timeout_s = timeout_s
        self._since: float | None = None
        self._last_failure = 0.0
        self._failures = 0
        self._pause_s = 0.0
        self._probing = False
        self._abandoned: set[asyncio.Future[Any]] = set()

    def down(self) -> bool:
        """Whether callers should not try it now (down, and no probe due)."""
        if self._since is None:
            return False
        return self._probing or time.monotonic() - self._last_failure < self._pause_s

    def failed(self, exc: BaseException, meanwhile: str, **extra: Any) -> None:
        if not is_unavailable(exc):
            log.error("%s failed; %s", self._what, meanwhile, exc_info=exc, extra=extra)
            return
        self._failures += 1
        self._pause_s = self.PROBES.delay_s(self._failures)
        self._last_failure = time.monotonic()
        if self._since is None:
            self._since = self._last_failure
            log.warning(
                "%s unreachable (%s: %s); %s",
                self._what,
                type(exc).__name__,
                exc,
                meanwhile,
                extra=extra,
            )

    async def call(
        self,
        attempt: Callable[[], Awaitable[T]],
        fallback: Callable[[], Awaitable[T]],
        meanwhile: str,
        **extra: Any,
    ) -> T:
        """``attempt()``; ``fallback()`` instead while down, or when the attempt fails or takes
        over ``timeout_s`` (all of it: a client's own timeouts apply per step, and its steps
        may queue, e.g. behind a connection pool's lock while a connection attempt hangs)."""
        if self.down():
            return await fallback()
        probe = self._since is not None
        self._probing = probe
        try:
            result = await self._bounded(attempt)
        except LoopLate:
            # The time ran out in our own queue, not at the server: nothing to open the
            # breaker for (every caller would then skip a dependency that is fine).
            log.info("%s call not answered in time while this process was busy", self._what)
            return await fallback()
        except Exception as exc:
            self.failed(exc, meanwhile, **extra)
            return await fallback()
        finally:
            if probe:
                self._probing = False
        self.answered()
        return result

    async def _bounded(self, attempt: Callable[[], Awaitable[T]]) -> T:
        """``attempt()``, given up after ``timeout_s`` without waiting for its clean-up: a
        cancelled client call may clean up by talking to the server again (redis-py's
        pipeline sends UNWATCH on exit), which, on a frozen server, waits out one more
        timeout. The abandoned call ends by itself in the background."""
        if self._timeout_s is None:
            return await attempt()
        task = asyncio.ensure_future(attempt())
        started = time.monotonic()
        try:
            done, _ = await asyncio.wait({task}, timeout=self._timeout_s)
        except asyncio.CancelledError:
            task.cancel()
            raise
        if done:
            return task.result()
        task.cancel()
        self._abandoned.add(task)
        task.add_done_callback(self._forget)
        late_s = time.monotonic() - started - self._timeout_s
        if late_s > self._timeout_s * LATE_SHARE:
            # Woken this late, the loop was busy: the answer may have been waiting to be read.
            raise LoopLate(f"this process woke {late_s:.2f} s late for {self._what}'s answer")
        raise TimeoutError(f"{self._what} did not answer within {self._timeout_s:g} s")

    def _forget(self, task: asyncio.Future[Any]) -> None:
        self._abandoned.discard(task)
        if not task.cancelled():
            task.exception()  # retrieved: its outage is already reported

    def answered(self) -> None:
        if self._since is not None:
            log.warning(
                "%s reachable again after %.1f s", self._what, time.monotonic() - self._since
            )
            self._since = None
            self._failures = 0
