"""Group commit: callers of one moment share a flush; one bad item fails alone; an outage
fails the batch; a stopped flush lets no caller hang."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from dispatch.infra.group import GroupCommit


class Recorder:
    def __init__(self, *, bad: int | None = None, outage: bool = False) -> None:
        self.batches: list[list[int]] = []
        self.bad, self.outage = bad, outage

    async def flush(self, items: Sequence[int]) -> list[int]:
        self.batches.append(list(items))
        await asyncio.sleep(0.01)  # a transaction's round trips
        if self.outage:
            raise ConnectionRefusedError("database down")
        if self.bad in items:
            raise ValueError(f"item {self.bad} is bad")
        return [i * 10 for i in items]


async def test_callers_of_one_moment_share_a_flush_and_get_their_own_outcome() -> None:
    recorder = Recorder()
    group: GroupCommit[int, int] = GroupCommit(recorder.flush, name="test", flushes=1)
    outcomes = await asyncio.gather(*(group.submit(i) for i in range(50)))
    assert outcomes == [i * 10 for i in range(50)]
    assert recorder.batches == [list(range(50))]


async def test_while_one_batch_is_written_the_next_fills() -> None:
    recorder = Recorder()
    group: GroupCommit[int, int] = GroupCommit(recorder.flush, name="test", flushes=1)
    first = asyncio.ensure_future(group.submit(0))
    await asyncio.sleep(0.002)  # the first batch is being written
    rest = await asyncio.gather(*(group.submit(i) for i in range(1, 30)))
    assert await first == 0
    assert rest == [i * 10 for i in range(1, 30)]
    assert recorder.batches == [[0], list(range(1, 30))]


async def test_a_batch_is_capped() -> None:
    recorder = Recorder()
    group: GroupCommit[int, int] = GroupCommit(recorder.flush, name="test", max_batch=8, flushes=1)
    await asyncio.gather(*(group.submit(i) for i in range(20)))
    assert [len(b) for b in recorder.batches] == [8, 8, 4]


async def test_one_bad_item_fails_alone() -> None:
    recorder = Recorder(bad=3)
    group: GroupCommit[int, int] = GroupCommit(recorder.flush, name="test", flushes=1)
    outcomes = await asyncio.gather(*(group.submit(i) for i in range(6)), return_exceptions=True)
    assert [o for i, o in enumerate(outcomes) if i != 3] == [0, 10, 20, 40, 50]
    assert isinstance(outcomes[3], ValueError)
    assert recorder.batches[0] == list(range(6))  # then one by one
    assert sorted(b[0] for b in recorder.batches[1:]) == list(range(6))


async def test_an_outage_fails_the_whole_batch_at_once() -> None:
    recorder = Recorder(outage=True)
    group: GroupCommit[int, int] = GroupCommit(recorder.flush, name="test", flushes=1)
    outcomes = await asyncio.gather(*(group.submit(i) for i in range(5)), return_exceptions=True)
    assert all(isinstance(o, ConnectionRefusedError) for o in outcomes)
    assert recorder.batches == [list(range(5))]  # not tried again one by one


async def test_a_stopped_flush_leaves_no_caller_waiting() -> None:
    started = asyncio.Event()

    async def slow(items: Sequence[int]) -> list[int]:
        started.set()
        await asyncio.sleep(60)
        return list(items)

    group: GroupCommit[int, int] = GroupCommit(slow, name="test", flushes=1)
    first = asyncio.ensure_future(group.submit(1))
    await started.wait()
    waiting = asyncio.ensure_future(group.submit(2))
    await asyncio.sleep(0)
    for task in asyncio.all_tasks():
        if task.get_name() == "switchboard-test":
            task.cancel()
    for caller in (first, waiting):
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(caller, timeout=5)
