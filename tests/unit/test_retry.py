"""The one retry policy: exponential with jitter and a cap, a hint wins, sleeping can be off."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from dispatch.infra.retry import RetryPolicy, sleeping


def test_delays_double_with_jitter_and_stop_at_the_cap() -> None:
    policy = RetryPolicy(retries=5, first_s=1.0, max_s=5.0)
    for _ in range(200):
        first, second, third = (policy.delay_s(n) for n in (1, 2, 3))
        assert 1.0 <= first <= 2.0
        assert 2.0 <= second <= 3.0
        assert 4.0 <= third <= 5.0
        assert policy.delay_s(10) == 5.0
    spread = {round(policy.delay_s(1), 3) for _ in range(50)}
    assert len(spread) > 10  # jitter: many workers do not retry in step


async def _run(policy: RetryPolicy, failure: Callable[[int], Exception]) -> int:
    """Attempts under ``policy`` that each fail with ``failure(n)``; retried on ConnectionError."""
    calls = 0
    async for attempt in policy.attempts(lambda exc: isinstance(exc, ConnectionError)):
        with attempt:
            calls += 1
            raise failure(calls)
    return calls


async def test_a_failure_it_accepts_is_tried_again_and_the_last_one_raised() -> None:
    tries: list[int] = []

    def failure(n: int) -> Exception:
        tries.append(n)
        return ConnectionError(f"try {n}")

    with sleeping(on=False), pytest.raises(ConnectionError, match="try 3"):
        await _run(RetryPolicy(retries=2, first_s=30.0), failure)
    assert tries == [1, 2, 3]


async def test_what_it_does_not_accept_is_raised_at_once() -> None:
    tries: list[int] = []

    def failure(n: int) -> Exception:
        tries.append(n)
        return ValueError("final")

    with pytest.raises(ValueError, match="final"):
        await _run(RetryPolicy(retries=5, first_s=30.0), failure)
    assert tries == [1]


async def test_a_hint_is_waited_instead_of_the_backoff() -> None:
    started = time.monotonic()
    calls = 0
    async for attempt in RetryPolicy(retries=1, first_s=30.0).attempts(
        lambda exc: isinstance(exc, ConnectionError), lambda _exc: 0.05
    ):
        with attempt:
            calls += 1
            if calls == 1:
                raise ConnectionError("slow down")
    assert calls == 2
    assert 0.05 <= time.monotonic() - started < 5
