"""A source's lane (its own threads, as many as its connections; an admission held until
the query, its run and its calls are over) and the daemon worker threads under it."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any, cast

import pytest

from connectors import Connector
from connectors.workers import WorkerThreads
from fabric.errors import ResourceExhausted
from fabric.query.admission import Admission, AdmissionLimits, Claim
from fabric.query.lanes import Lanes, SourceLane, awaitable
from fabric.results.memory import MemoryBudget

WAIT = 10.0
MIB = 1 << 20
SOURCE = object()


class Sized:
    """What a lane reads of a connector: its kind and how many queries it runs at once."""

    kind = "test"

    def __init__(self, capacity: int | None) -> None:
        self.capacity = capacity


def run(coro: Any) -> Any:
    return asyncio.run(asyncio.wait_for(coro, 30))


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


def test_an_admission_is_held_until_the_query_its_run_and_its_calls_are_over() -> None:
    """A call stuck at a frozen source keeps its query's slot: the next query is not
    admitted only to wait for the lane's thread."""
    admission = Admission(
        AdmissionLimits(tenant_queries=10, principal_queries=10, short_reserve=0, max_wait=0.2),
        MemoryBudget(MIB),
    )
    lane = SourceLane("test", threads=1)
    release = threading.Event()
    claim = Claim("acme", "app", SOURCE, 1, False, 0)

    async def scenario() -> None:
        admitted = await admission.admit(claim)
        calls = lane.hold(admitted.release)
        run_closed = calls.hold()
        call = calls.submit(release.wait, WAIT)
        calls.release()  # the query is over ...
        run_closed()  # ... and its run closed, but its read still runs
        run_closed()  # (giving a hold back twice counts once)
        assert admission.running == 1
        with pytest.raises(ResourceExhausted):
            await admission.admit(claim)
        release.set()
        assert await awaitable(call) is True
        while admission.running:
            await asyncio.sleep(0.01)
        again = await admission.admit(claim)  # the slot is free
        again.release()

    run(scenario())
    assert admission.running == 0
    lane.close()


def test_a_lane_freed_once_never_frees_again() -> None:
    freed: list[int] = []
    lane = SourceLane("test", threads=1)
    calls = lane.hold(lambda: freed.append(1))
    calls.release()
    calls.release()
    assert freed == [1]
    # a buffered page read after the source ended goes through the lane without
    # giving the admission back a second time
    assert calls.submit(lambda: 7).result(WAIT) == 7
    assert freed == [1]
    lane.close()


def test_each_source_gets_as_many_threads_as_connections() -> None:
    lanes = Lanes(default_threads=16)
    pooled, unpooled = cast(Connector, Sized(2)), cast(Connector, Sized(None))
    assert lanes.of(pooled).max_threads == 2
    assert lanes.of(unpooled).max_threads == 16
    assert lanes.of(pooled) is lanes.of(pooled)
    assert lanes.of(pooled).threads is not lanes.of(unpooled).threads
    lanes.close()


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
