"""Each source's own lane: admission of its queries, and the threads their driver calls use.

A source can only run so many queries at once (its connection pool's size). Its lane
admits that many (`slots`); a query past them waits for a slot on the event loop, not
in a thread, first come first served, for at most the source's wait limit (its
`pool_timeout`) and never past the call's deadline. An admitted query holds its slot
(`Ticket`) until its source run is closed and no driver call of it is still running; it
submits its blocking calls through the ticket to the lane's own threads, as many as
slots, so an admitted query never waits for a thread and a source that stops answering
holds only its own lane's threads. Lanes are made per connector on first use and kept
as long as the connector lives.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable
from concurrent.futures import Executor, Future
from typing import Any, TypeVar

from connectors import Connector
from connectors.workers import WorkerThreads
from fabric.errors import DeadlineExceeded, SourceUnavailable

T = TypeVar("T")


class Ticket:
    """An admitted query's slot in its lane: given back once the query's run is
    `release`d and every call submitted through it has returned."""

    __slots__ = ("_holds", "_lane", "_lock", "_released")

    def __init__(self, lane: SourceLane) -> None:
        self._lane = lane
        self._lock = threading.Lock()
        self._holds = 1  # the run itself
        self._released = False

    def submit(self, fn: Callable[..., T], *args: Any) -> Future[T]:
        """Run a blocking call of this query on the lane's threads."""
        with self._lock:
            self._holds += 1
        try:
            future = self._lane.threads.submit(fn, *args)
        except BaseException:
            self._drop()
            raise
        future.add_done_callback(lambda _: self._drop())
        return future

    def release(self) -> None:
        """The query's run is over (idempotent); the slot is free once its calls are."""
        with self._lock:
            if self._released:
                return
            self._released = True
        self._drop()

    def _drop(self) -> None:
        with self._lock:
            self._holds -= 1
            free = self._holds == 0
        if free:
            self._lane._free_slot()


class _Waiter:
    __slots__ = ("future", "loop", "ticket")

    def __init__(self, loop: asyncio.AbstractEventLoop, future: asyncio.Future[None]) -> None:
        self.loop = loop
        self.future = future
        self.ticket: Ticket | None = None


class SourceLane:
    """One source's slots and threads; see the module docstring."""

    def __init__(
        self,
        name: str,
        slots: int,
        wait_limit: float | None,
        on_refused: Callable[[], None] = lambda: None,
    ) -> None:
        self.name = name
        self.slots = slots
        self.wait_limit = wait_limit
        self.threads: Executor = WorkerThreads(slots, name=f"fabric-{name}")
        self._on_refused = on_refused
        self._lock = threading.Lock()
        self._free = slots
        self._waiters: deque[_Waiter] = deque()

    @property
    def running(self) -> int:
        with self._lock:
            return self.slots - self._free

    @property
    def waiting(self) -> int:
        with self._lock:
            return len(self._waiters)

    async def admit(self, until: float) -> Ticket:
        """A slot, at once when one is free and nobody waits, else after the queries
        ahead; SourceUnavailable after the wait limit, DeadlineExceeded at `until`
        (monotonic). A caller that goes away while waiting leaves the queue."""
        with self._lock:
            if self._free > 0 and not self._waiters:
                self._free -= 1
                return Ticket(self)
            loop = asyncio.get_running_loop()
            waiter = _Waiter(loop, loop.create_future())
            self._waiters.append(waiter)
        now = time.monotonic()
        limit = until - now
        refused = self.wait_limit is not None and self.wait_limit < limit
        if refused:
            limit = self.wait_limit or 0.0
        try:
            async with asyncio.timeout(max(0.0, limit)):
                await asyncio.shield(waiter.future)
        except BaseException as exc:
            with self._lock:
                ticket = waiter.ticket
                if ticket is None:
                    self._waiters.remove(waiter)
            if ticket is not None:
                ticket.release()  # granted as the wait ended: give it straight back
            if isinstance(exc, TimeoutError):
                if refused:
                    self._on_refused()
                    raise SourceUnavailable(
                        f"every one of the {self.slots} connections of this source stayed "
                        f"busy for {self.wait_limit:g}s; try again later or raise its pool_max"
                    ) from None
                raise DeadlineExceeded(
                    "the call's deadline passed while it waited for a connection to its "
                    "source (every one was busy)"
                ) from None
            raise
        assert waiter.ticket is not None
        return waiter.ticket

    def _free_slot(self) -> None:
        with self._lock:
            if not self._waiters:
                self._free += 1
                return
            waiter = self._waiters.popleft()
            ticket = waiter.ticket = Ticket(self)
        try:
            waiter.loop.call_soon_threadsafe(_wake, waiter.future)
        except RuntimeError:
            ticket.release()  # the waiter's event loop is gone: the slot goes on

    def close(self) -> None:
        """Take no more calls; running ones are not waited for (threads are daemons)."""
        self.threads.shutdown(wait=False)


def _wake(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


class Lanes:
    """The lane of each connector, made on first use (`of`)."""

    def __init__(self, max_slots: int) -> None:
        self.max_slots = max_slots
        self._lock = threading.Lock()
        self._lanes: weakref.WeakKeyDictionary[Connector, SourceLane] = weakref.WeakKeyDictionary()
        self.refused = 0
        """Queries that waited for a slot past their source's wait limit."""

    def of(self, connector: Connector) -> SourceLane:
        with self._lock:
            lane = self._lanes.get(connector)
            if lane is None:
                bound = connector.max_concurrent_queries
                slots = min(bound, self.max_slots) if bound else self.max_slots
                lane = SourceLane(
                    connector.kind, slots, connector.connection_wait, self._count_refused
                )
                self._lanes[connector] = lane
            return lane

    def _count_refused(self) -> None:
        with self._lock:
            self.refused += 1

    def all(self) -> list[SourceLane]:
        with self._lock:
            return list(self._lanes.values())

    def snapshot(self) -> dict[str, float]:
        lanes = self.all()
        return {
            "source_queries_running": sum(lane.running for lane in lanes),
            "source_queries_waiting": sum(lane.waiting for lane in lanes),
            "source_queries_refused": self.refused,
        }

    def close(self) -> None:
        for lane in self.all():
            lane.close()


def awaitable(future: Future[T]) -> asyncio.Future[T]:
    """An event-loop future that takes on the outcome of `future` (a call running in a
    thread). Unlike `asyncio.wrap_future`, giving up on it (a caller cancelled, a
    deadline) never cancels the call, and a call that ends after the loop has closed is
    simply not reported."""
    loop = asyncio.get_running_loop()
    waiter: asyncio.Future[T] = loop.create_future()

    def done(finished: Future[T]) -> None:
        # A closed loop: nobody waits any more.
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(_copy_outcome, finished, waiter)

    future.add_done_callback(done)
    return waiter


def _copy_outcome(finished: Future[T], waiter: asyncio.Future[T]) -> None:
    if waiter.done():
        return
    if finished.cancelled():
        waiter.cancel()
        return
    error = finished.exception()
    if error is not None:
        waiter.set_exception(error)
    else:
        waiter.set_result(finished.result())
