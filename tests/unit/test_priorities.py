"""Priorities in the queue: a critical or high run goes ahead of normal ones queued earlier."""

from __future__ import annotations

from dispatch.infra.constants import run_job_id
from dispatch.infra.queue import AHEAD_S, count_waiting, due_at, oldest_waiting
from workers.inprocess import InProcessQueue


async def test_the_in_process_queue_takes_prioritized_runs_first() -> None:
    queue = InProcessQueue("p", concurrency=1)  # not started: nothing takes the jobs yet
    await queue.enqueue_run(1)
    await queue.enqueue_run(2, priority="low")
    await queue.enqueue_run(3, priority="high")
    await queue.enqueue_run(4, priority="critical")
    await queue.enqueue_run(5)
    order = []
    while not queue._queue.empty():
        _, _, (_, job_id, _) = queue._queue.get_nowait()
        order.append(job_id)
    assert order == [run_job_id("p", n) for n in (4, 3, 1, 2, 5)]


def test_a_prioritized_jobs_wait_is_counted_from_when_it_was_queued() -> None:
    now = 1_800_000_000.0
    queued = now - 30
    for lead in AHEAD_S.values():
        assert due_at(queued - lead, now) == queued
    assert due_at(queued, now) == queued
    depth = count_waiting(
        [("p:run:1", due_at(queued - AHEAD_S["critical"], now)), ("p:run:2", now - 5)], now
    )
    assert depth.oldest_waiting_s == 30
    assert depth.waiting == {"run_activity": 2}
    taken = count_waiting([("p:run:1", now - 30), ("p:run:2", now - 5)], now, {"p:run:1"})
    assert (taken.waiting, taken.running, taken.oldest_waiting_s) == ({"run_activity": 1}, 1, 5)


def test_every_job_is_counted_under_its_kind() -> None:
    from dispatch.infra.constants import AGAIN, job_kind, recover_job_id

    # arq names a unique cron job's run after its due time: ``<name>:<ms>``.
    assert job_kind(f"{recover_job_id('p')}:1800000000000") == "recover"
    assert job_kind(recover_job_id("p")) == "recover"
    assert job_kind("p:msg:7") == "dispatch_message"
    assert job_kind(f"p:run:7{AGAIN}") == "run_activity"
    assert job_kind("p:batch:3") == "dispatch_batch"
    assert job_kind("someone-elses") == "other"


def test_the_oldest_waiting_job_is_one_due_and_not_taken() -> None:
    now = 1_000_000.0
    jobs = [("p:batch:1", now - 90), ("p:batch:2", now - 30), ("p:msg:3", now + 5)]
    assert oldest_waiting(jobs, now) == now - 90
    # A job a worker holds (or died holding) does not count; one deferred is not due yet.
    assert oldest_waiting(jobs, now, {"p:batch:1"}) == now - 30
    assert oldest_waiting(jobs, now, {"p:batch:1", "p:batch:2"}) is None
