"""A source's lane (admission of its queries, first come first served, bounded by its
wait limit and the call's deadline; a slot held until the run and its calls are over) and
the daemon worker threads under it."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import pytest

from connectors.workers import WorkerThreads
from fabric.errors import DeadlineExceeded, SourceUnavailable
from fabric.query.lanes import SourceLane, Ticket, awaitable

WAIT = 10.0


def run(coro: Any) -> Any:
    return asyncio.run(asyncio.wait_for(coro, 30))


def far() -> float:
    return time.monotonic() + 60


def test_worker_threads_are_daemons_bounded_in_number_and_serve_in_order() -> None:
    workers = WorkerThreads(2, name="test-lane")
    release = threading.Event()
    order: list[int] = []

    def work(n: int) -> None:
        release.wait(WAIT)
        order.append(n)

    try:
        futures = [workers.submit(work, n) for n in range(5)]
        deadline = time.monotonic() + WAIT
        while workers.busy < 2:  # both threads have taken a call
            assert time.monotonic() < deadline
            time.sleep(0.001)
        assert workers.threads == 2 and workers.queued == 3
        assert all(t.daemon for t in threading.enumerate() if t.name.startswith("test-lane"))
        release.set()
        for future in futures:
            future.result(WAIT)
        assert sorted(order) == list(range(5))
    finally:
        workers.shutdown(wait=True)
    one = WorkerThreads(1, name="test-order")
    order.clear()
    try:
        for future in [one.submit(order.append, n) for n in range(5)]:
            future.result(WAIT)
        assert order == list(range(5))
    finally:
        one.shutdown(wait=True)


def test_shutdown_waits_for_a_stuck_call_only_up_to_its_bound() -> None:
    workers = WorkerThreads(1, name="test-stuck", join_timeout=0.2)
    stuck = threading.Event()
    workers.submit(stuck.wait, WAIT)
    started = time.monotonic()
    workers.shutdown(wait=True)
    assert time.monotonic() - started < 2.0
    with pytest.raises(RuntimeError):
        workers.submit(print)
    stuck.set()


def test_queries_past_the_slots_wait_first_come_first_served() -> None:
    lane = SourceLane("test", slots=1, wait_limit=None)

    async def scenario() -> list[int]:
        first = await lane.admit(far())
        admitted: list[int] = []

        async def wait_turn(n: int) -> Ticket:
            ticket = await lane.admit(far())
            admitted.append(n)
            return ticket

        waiters = [asyncio.ensure_future(wait_turn(n)) for n in range(3)]
        while lane.waiting < 3:
            await asyncio.sleep(0)
        assert lane.running == 1 and not admitted
        first.release()
        for n, waiter in enumerate(waiters):
            ticket = await waiter
            assert admitted[-1] == n and lane.running == 1
            ticket.release()
        return admitted

    assert run(scenario()) == [0, 1, 2]
    assert lane.running == 0 and lane.waiting == 0


def test_the_wait_is_bounded_by_the_sources_wait_limit_then_the_deadline() -> None:
    refused: list[int] = []
    lane = SourceLane("test", slots=1, wait_limit=0.2, on_refused=lambda: refused.append(1))

    async def scenario() -> None:
        held = await lane.admit(far())
        with pytest.raises(SourceUnavailable, match=r"busy for 0\.2s"):
            await lane.admit(far())
        with pytest.raises(DeadlineExceeded):
            await lane.admit(time.monotonic() + 0.1)
        assert lane.waiting == 0  # both left the queue
        held.release()

    run(scenario())
    assert refused == [1] and lane.running == 0


def test_a_caller_that_goes_away_while_waiting_leaves_the_queue_and_takes_no_slot() -> None:
    lane = SourceLane("test", slots=1, wait_limit=None)

    async def scenario() -> None:
        held = await lane.admit(far())
        waiter = asyncio.ensure_future(lane.admit(far()))
        while not lane.waiting:
            await asyncio.sleep(0)
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        assert lane.waiting == 0
        held.release()
        assert lane.running == 0
        again = await lane.admit(far())  # the slot is free at once
        again.release()

    run(scenario())


def test_a_slot_is_held_until_the_run_and_its_calls_are_over() -> None:
    lane = SourceLane("test", slots=1, wait_limit=None)
    release = threading.Event()

    async def scenario() -> None:
        ticket = await lane.admit(far())
        call = ticket.submit(release.wait, WAIT)
        ticket.release()  # the run is closed, but its read still runs
        assert lane.running == 1
        release.set()
        assert await awaitable(call) is True
        while lane.running:
            await asyncio.sleep(0.01)

    run(scenario())
    lane.close()


def test_giving_up_on_an_awaited_call_does_not_cancel_it() -> None:
    workers = WorkerThreads(1, name="test-await")
    release = threading.Event()
    call = workers.submit(release.wait, WAIT)

    async def give_up() -> None:
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.05):
                await awaitable(call)

    run(give_up())
    assert not call.cancelled()
    release.set()
    assert call.result(WAIT) is True
    workers.shutdown(wait=True)
