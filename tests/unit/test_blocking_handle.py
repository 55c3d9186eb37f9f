"""BlockingQueryHandle, driven by an in-memory driver double: the deadline gives
DeadlineExceeded, cancel gives Cancelled with the interrupt re-sent until the driver call
lets go, a query that does not let go has its connection cut off, the resource is
released exactly once, and driver errors are flagged."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Any, ClassVar

import pyarrow as pa
import pytest

from connectors.blocking import BlockingQueryHandle, DeadlineWatcher
from fabric.errors import (
    Cancelled,
    DeadlineExceeded,
    FabricError,
    InvalidArgument,
    SourceQueryError,
)

WAIT = 10.0  # seconds an event may take before the test fails (never slept)


class DriverError(Exception):
    """What the fake driver raises; `timeout` marks the source's own timeout."""

    def __init__(self, *, interrupted: bool = False, timeout: bool = False) -> None:
        super().__init__("value 42 echoed by the driver")
        self.interrupted = interrupted
        self.timeout = timeout


class FakeStatement:
    """The driver's side of one running query. `fetch` blocks until it has been
    interrupted `lets_go_after` times (or `finish` is called), like a driver call that
    only notices an interrupt that lands while it executes."""

    def __init__(self, lets_go_after: int = 1) -> None:
        self.lets_go_after = lets_go_after
        self.interrupts = 0
        self.given_back: list[bool] = []
        self.fetching = threading.Event()
        self._cond = threading.Condition()
        self._finished = False
        self.severed = False

    def interrupt(self) -> None:
        with self._cond:
            self.interrupts += 1
            self._cond.notify_all()

    def sever(self) -> None:
        """The connection is cut under the driver: a waiting call fails at once."""
        with self._cond:
            self.severed = True
            self._cond.notify_all()

    def finish(self) -> None:
        with self._cond:
            self._finished = True
            self._cond.notify_all()

    def fetch(self) -> list[int]:
        self.fetching.set()
        with self._cond:
            assert self._cond.wait_for(
                lambda: self._finished or self.severed or self.interrupts >= self.lets_go_after,
                timeout=WAIT,
            )
            if self._finished:
                return [1, 2, 3]
        raise DriverError(interrupted=True)


class FakeDeadlines(DeadlineWatcher):
    """A deadline watcher whose deadlines fire only when the test says so."""

    def __init__(self) -> None:
        super().__init__()
        self.entries: list[list[Any]] = []

    def add(self, delay: float, callback: Callable[[], None]) -> list[Any]:
        entry: list[Any] = [delay, 0, callback]
        self.entries.append(entry)
        return entry

    def remove(self, entry: list[Any]) -> None:
        entry[2] = None

    def fire(self) -> None:
        """Fire the deadlines due so far (one added while firing waits for the next)."""
        for entry in list(self.entries):
            callback, entry[2] = entry[2], None
            if callback is not None:
                callback()


class FakeHandle(BlockingQueryHandle[FakeStatement]):
    interrupt_every = 0.001
    interrupt_attempts: ClassVar[int | None] = None

    def __init__(self, statement: FakeStatement, timeout: float | None = None, **kw: Any) -> None:
        super().__init__(statement, timeout, **kw)
        self.statement = statement

    @property
    def reader(self) -> pa.RecordBatchReader:
        schema = pa.schema([("n", pa.int64())])
        return pa.RecordBatchReader.from_batches(schema, self._batches(schema))

    def _batches(self, schema: pa.Schema) -> Iterator[pa.RecordBatch]:
        ok = False
        try:
            self._enter()
            try:
                rows = self.statement.fetch()
            except Exception as exc:
                raise self._map(exc) from None
            finally:
                self._leave()
            self._finished = True
            yield pa.RecordBatch.from_pydict({"n": rows}, schema=schema)
            ok = True
        finally:
            self._release(ok=ok)

    def _send_interrupt(self, statement: FakeStatement) -> bool:
        statement.interrupt()
        return True

    def _give_back(self, statement: FakeStatement, *, ok: bool) -> None:
        statement.given_back.append(ok)

    def _is_source_timeout(self, exc: BaseException) -> bool:
        return isinstance(exc, DriverError) and exc.timeout

    def _translate_error(self, exc: BaseException) -> FabricError:
        return SourceQueryError("the source refused the query")


def read_in_thread(handle: FakeHandle) -> tuple[threading.Thread, list[BaseException]]:
    errors: list[BaseException] = []

    def read() -> None:
        try:
            handle.reader.read_all()
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=read)
    thread.start()
    return thread, errors


@pytest.fixture
def join_interrupt_threads() -> Callable[[], None]:
    """Waits for the interrupt threads this test started (not other tests' ones)."""
    earlier = set(threading.enumerate())

    def join() -> None:
        for thread in threading.enumerate():
            if thread.name == "fabric-query-interrupt" and thread not in earlier:
                thread.join(timeout=WAIT)
                assert not thread.is_alive()

    return join


def test_a_query_that_finishes_is_given_back_for_reuse_once() -> None:
    statement = FakeStatement()
    statement.finish()
    handle = FakeHandle(statement)
    assert handle.reader.read_all().column("n").to_pylist() == [1, 2, 3]
    handle.close()
    handle.close()
    handle.cancel()
    assert statement.given_back == [True]
    assert statement.interrupts == 0


def test_the_deadline_interrupts_and_reading_raises_deadline_exceeded(
    join_interrupt_threads: Callable[[], None],
) -> None:
    deadlines = FakeDeadlines()
    statement = FakeStatement()
    handle = FakeHandle(statement, timeout=2.5, deadlines=deadlines)
    thread, errors = read_in_thread(handle)
    assert statement.fetching.wait(WAIT)
    deadlines.fire()
    thread.join(WAIT)
    assert len(errors) == 1 and isinstance(errors[0], DeadlineExceeded)
    assert "2.5s" in str(errors[0]) and "42" not in str(errors[0])
    assert statement.interrupts >= 1
    assert statement.given_back == [False]
    join_interrupt_threads()


def test_cancel_re_sends_the_interrupt_until_the_driver_call_lets_go(
    join_interrupt_threads: Callable[[], None],
) -> None:
    statement = FakeStatement(lets_go_after=5)  # the first four interrupts are "lost"
    handle = FakeHandle(statement)
    thread, errors = read_in_thread(handle)
    assert statement.fetching.wait(WAIT)
    handle.cancel()
    thread.join(WAIT)
    assert len(errors) == 1 and isinstance(errors[0], Cancelled)
    join_interrupt_threads()
    assert statement.interrupts >= 5
    assert statement.given_back == [False]
    interrupts = statement.interrupts
    handle.cancel()
    handle.close()
    assert statement.interrupts == interrupts  # released: nothing more is sent
    assert statement.given_back == [False]


def test_re_sending_stops_after_the_configured_attempts(
    join_interrupt_threads: Callable[[], None],
) -> None:
    class Bounded(FakeHandle):
        interrupt_attempts = 2

    statement = FakeStatement(lets_go_after=100)
    handle = Bounded(statement)
    thread, _ = read_in_thread(handle)
    assert statement.fetching.wait(WAIT)
    handle.cancel()
    join_interrupt_threads()
    assert statement.interrupts == 3  # the first, then two more
    statement.finish()
    thread.join(WAIT)
    assert statement.given_back == [False]  # interrupted: its state is unsure


def test_close_while_a_thread_reads_interrupts_and_that_thread_releases(
    join_interrupt_threads: Callable[[], None],
) -> None:
    statement = FakeStatement()
    handle = FakeHandle(statement)
    thread, errors = read_in_thread(handle)
    assert statement.fetching.wait(WAIT)
    handle.close()
    thread.join(WAIT)
    assert len(errors) == 1 and isinstance(errors[0], Cancelled)
    assert "closed" in str(errors[0])
    assert statement.given_back == [False]
    join_interrupt_threads()


def test_close_before_reading_releases_at_once_and_reading_then_says_closed() -> None:
    deadlines = FakeDeadlines()
    statement = FakeStatement()
    handle = FakeHandle(statement, timeout=1.0, deadlines=deadlines)
    handle.close()
    assert statement.given_back == [True]  # nothing was started: reusable
    assert deadlines.entries[0][2] is None  # the deadline is gone
    with pytest.raises(Cancelled, match="closed"):
        handle.reader.read_all()
    assert statement.interrupts == 0 and statement.given_back == [True]


def test_a_cancel_after_the_deadline_keeps_the_deadline_error(
    join_interrupt_threads: Callable[[], None],
) -> None:
    deadlines = FakeDeadlines()
    handle = FakeHandle(FakeStatement(), timeout=1.0, deadlines=deadlines)
    deadlines.fire()
    handle.cancel()
    with pytest.raises(DeadlineExceeded):
        handle.reader.read_all()
    join_interrupt_threads()


def test_errors_are_flagged_by_why_the_query_stopped() -> None:
    handle = FakeHandle(FakeStatement(), timeout=1.0, deadlines=FakeDeadlines())
    plain = handle._map(DriverError())
    assert isinstance(plain, SourceQueryError) and "42" not in str(plain)
    own = InvalidArgument("bad parameters")
    assert handle._map(own) is own
    source_timeout = handle._map(DriverError(timeout=True))
    assert isinstance(source_timeout, DeadlineExceeded)
    # the source's timeout is remembered: whatever fails next reads as the deadline
    assert isinstance(handle._map(DriverError()), DeadlineExceeded)


def test_a_source_timeout_without_a_query_timeout_is_the_drivers_error() -> None:
    handle = FakeHandle(FakeStatement())
    assert isinstance(handle._map(DriverError(timeout=True)), SourceQueryError)
    handle.cancel()
    assert isinstance(handle._map(DriverError()), Cancelled)


class SeveringHandle(FakeHandle):
    """A source whose interrupt never lands (it stopped answering); its connection can
    be cut off."""

    sever_after = 0.5

    def _sever(self, statement: FakeStatement) -> bool:
        statement.sever()
        return True


def test_a_query_that_does_not_let_go_after_the_deadline_has_its_connection_cut_off(
    join_interrupt_threads: Callable[[], None],
) -> None:
    deadlines = FakeDeadlines()
    statement = FakeStatement(lets_go_after=10**9)  # no interrupt ever reaches it
    handle = SeveringHandle(statement, timeout=1.0, deadlines=deadlines)
    thread, errors = read_in_thread(handle)
    assert statement.fetching.wait(WAIT)
    deadlines.fire()  # the query's deadline: interrupts start, the cut-off is armed
    assert not statement.severed
    deadlines.fire()  # the cut-off's time comes: the reading thread is freed
    thread.join(WAIT)
    assert statement.severed
    assert len(errors) == 1 and isinstance(errors[0], DeadlineExceeded)
    assert statement.given_back == [False]  # discarded, never reused
    join_interrupt_threads()


def test_a_query_that_lets_go_in_time_keeps_its_connection(
    join_interrupt_threads: Callable[[], None],
) -> None:
    deadlines = FakeDeadlines()
    statement = FakeStatement()
    handle = SeveringHandle(statement, timeout=1.0, deadlines=deadlines)
    thread, errors = read_in_thread(handle)
    assert statement.fetching.wait(WAIT)
    handle.cancel()
    thread.join(WAIT)
    deadlines.fire()  # the cut-off comes after the query let go: nothing to cut
    assert not statement.severed
    assert len(errors) == 1 and isinstance(errors[0], Cancelled)
    join_interrupt_threads()
