"""The outage breaker: a dependency that hangs costs a caller one timeout at most, and only
until a call has failed; each outage is logged once, when it starts and when it ends."""

from __future__ import annotations

import asyncio
import logging
import time

import pytest

from dispatch.infra.outage import Outage
from dispatch.infra.retry import RetryPolicy


async def _fallback() -> str:
    return "fallback"


async def test_a_hanging_call_whose_clean_up_also_hangs_costs_one_timeout() -> None:
    outage = Outage("Redis", timeout_s=0.2)
    cleaned = asyncio.Event()

    async def hangs() -> str:
        try:
            await asyncio.sleep(60)
        finally:  # like redis-py's pipeline sending UNWATCH to a frozen server on exit
            await asyncio.sleep(1.0)
            cleaned.set()
        return "answer"

    started = time.monotonic()
    assert await outage.call(hangs, _fallback, "going on without it") == "fallback"
    assert time.monotonic() - started < 0.9  # the timeout, not the timeout and the clean-up
    assert outage.down()
    await asyncio.wait_for(cleaned.wait(), 5)  # the abandoned call still cleans up


async def test_while_down_callers_skip_it_and_one_probe_at_a_time_finds_it_back(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(Outage, "PROBES", RetryPolicy(retries=0, first_s=0.1, max_s=0.1))
    outage = Outage("Redis", timeout_s=1.0)
    calls = 0
    healthy = False
    release = asyncio.Event()

    async def attempt() -> str:
        nonlocal calls
        calls += 1
        if not healthy:
            raise ConnectionRefusedError("refused")
        await release.wait()
        return "answer"

    with caplog.at_level(logging.WARNING, logger="switchboard.outage"):
        for _ in range(3):  # the first fails; the next two skip it
            assert await outage.call(attempt, _fallback, "going on without it") == "fallback"
        assert calls == 1
        await asyncio.sleep(0.15)  # a probe is due
        healthy = True
        probe = asyncio.create_task(outage.call(attempt, _fallback, "going on without it"))
        await asyncio.sleep(0.05)
        # While the probe is out, nobody else tries.
        assert await outage.call(attempt, _fallback, "going on without it") == "fallback"
        assert calls == 2
        release.set()
        assert await probe == "answer"
        assert not outage.down()
        assert await outage.call(attempt, _fallback, "going on without it") == "answer"
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2, lines
    assert lines[0].startswith("Redis unreachable (ConnectionRefusedError: refused)")
    assert lines[1].startswith("Redis reachable again after")
    assert all(r.exc_info is None for r in caplog.records)  # an outage is not a bug


async def test_what_is_not_an_outage_is_logged_with_its_traceback_every_time(
    caplog: pytest.LogCaptureFixture,
) -> None:
    outage = Outage("Redis", timeout_s=1.0)

    async def buggy() -> str:
        raise KeyError("oops")

    with caplog.at_level(logging.ERROR, logger="switchboard.outage"):
        for _ in range(2):
            assert await outage.call(buggy, _fallback, "going on without it") == "fallback"
    assert [r.exc_info is not None for r in caplog.records] == [True, True]
    assert not outage.down()


async def test_a_timeout_the_process_itself_caused_does_not_open_the_breaker() -> None:
    """The answer was there in time, but the event loop was too busy to read it (our own load):
    the caller goes on without it this once, and the dependency is not marked down."""
    outage = Outage("Redis", timeout_s=0.2)

    async def answers_late_but_alive() -> str:
        await asyncio.sleep(0.3)
        return "answer"

    async def hog() -> None:
        await asyncio.sleep(0.01)
        time.sleep(0.5)  # noqa: ASYNC251 - the point: a loop too busy to read anything

    hogging = asyncio.ensure_future(hog())
    got = await outage.call(answers_late_but_alive, _fallback, "going on without it")
    await hogging
    assert got == "fallback"
    assert not outage.down()


async def test_a_server_that_does_not_answer_still_opens_it() -> None:
    outage = Outage("Redis", timeout_s=0.1)

    async def hangs() -> str:
        await asyncio.sleep(60)
        return "answer"

    assert await outage.call(hangs, _fallback, "going on without it") == "fallback"
    assert outage.down()
