"""A query's run at its source, seen from the engine: its time budget (`Budget`),
reading, limiting and encoding its batches (`SourceRun`), paging through them
(`PagedResult`), and a start still in a worker thread (`PendingStart`)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, TypeVar

import pyarrow as pa

from connectors import QueryHandle
from fabric.clock import elapsed_us
from fabric.errors import DeadlineExceeded
from fabric.query.revocation import Ticket
from fabric.results.cache import ResultBuilder
from fabric.results.ipc import IpcChunker, encode_page

T = TypeVar("T")
Submit = Callable[..., "Future[Any]"]
"""Runs a blocking call of a query on its source's lane (`Ticket.submit`)."""


@dataclass(frozen=True, slots=True)
class Budget:
    """How long a query may take, from its start: `seconds`, until `until` (monotonic)."""

    seconds: float
    until: float

    @staticmethod
    def of(seconds: float) -> Budget:
        return Budget(seconds, time.monotonic() + seconds)

    def remaining(self) -> float:
        """Seconds left; DeadlineExceeded when none are."""
        left = self.until - time.monotonic()
        if left <= 0:
            raise DeadlineExceeded(
                f"the query's timeout of {self.seconds:g}s passed before it could start at "
                "its source; try again, narrow it or raise the timeout"
            )
        return left

    @property
    def expired(self) -> bool:
        return time.monotonic() >= self.until

    def overrun(self) -> DeadlineExceeded:
        """The error of a call whose source did not answer within the budget."""
        return DeadlineExceeded(
            f"the query ran past its timeout of {self.seconds:g}s: its source did not "
            "answer in time, and the query is being stopped there; try again later, narrow "
            "it or raise the timeout"
        )


@dataclass(frozen=True, slots=True)
class Summary:
    rows: int
    truncated: bool
    from_cache: bool
    elapsed_us: int


class SourceRun:
    """One query running at its source. Blocking methods; called from worker threads, one
    call at a time. Enforces max_rows (the compiler asked the source for one row more, so
    reading past max_rows means truncated) and max_bytes (the Arrow data of the rows sent,
    counted batch by batch as they arrive: the rows that fit are sent, and the source is
    read no further), and encodes IPC messages, filling a cache builder when the result
    is cacheable."""

    def __init__(
        self,
        handle: QueryHandle,
        max_rows: int,
        max_bytes: int,
        max_message_bytes: int,
        builder: ResultBuilder | None,
        *,
        budget: Budget,
        submit: Submit,
        release: Callable[[], None],
    ) -> None:
        self.handle = handle
        self._max_message_bytes = max_message_bytes
        self._chunker: IpcChunker | None = None
        self.budget = budget
        self.submit = submit
        """Runs a blocking call of this query on its source's lane."""
        self._release = release
        self.builder = builder
        self.max_rows = max_rows
        self.max_bytes = max_bytes
        self.rows = 0
        self.bytes = 0
        """Arrow data bytes of the rows sent so far."""
        self.truncated_by: str | None = None
        """`rows` or `bytes` once a cap cut the result short."""
        self.finished = False
        self.exhausted = False
        """Every row has been read (the source was closed at once)."""
        self.closed = False
        self.largest_batch = 0
        """Bytes of the largest batch the source handed over (what one batch in flight
        costs; the engine sizes the query's memory reservation on it)."""

    @property
    def chunker(self) -> IpcChunker:
        """The result's encoder, made on first use: a connector may run its query when
        its reader is first asked for, and by then the run exists, so a caller that goes
        away can cancel it (see PendingStart)."""
        if self._chunker is None:
            self._chunker = IpcChunker.shared(self.handle.schema, self._max_message_bytes)
        return self._chunker

    @property
    def schema(self) -> pa.Schema:
        return self.chunker.schema

    @property
    def truncated(self) -> bool:
        return self.truncated_by is not None

    def _keep(self, message: bytes) -> bytes:
        if self.builder is not None and self.builder.active:
            self.builder.add(message)
        return message

    def header(self) -> bytes:
        return self._keep(self.chunker.schema_message())

    def trailer(self) -> bytes:
        return self._keep(self.chunker.end_of_stream())

    def read_batch(self, limit: int | None = None) -> pa.RecordBatch | None:
        """The next non-empty batch (at most `limit` rows, the rest kept for later), or
        None at the end."""
        while not self.finished:
            batch = self._pending if self._has_pending else self._next_from_source()
            self._has_pending = False
            if batch is None:
                self.finished = True
                return None
            remaining = self.max_rows - self.rows
            if batch.num_rows > remaining:
                self.truncated_by = "rows"
                self.finished = True
                batch = batch.slice(0, remaining)
            if limit is not None and batch.num_rows > limit:
                self._pending, self._has_pending = batch.slice(limit), True
                batch = batch.slice(0, limit)
            batch = self._within_bytes(batch)
            if batch.num_rows:
                self.rows += batch.num_rows
                return self.chunker.to_wire(batch)
        return None

    def _within_bytes(self, batch: pa.RecordBatch) -> pa.RecordBatch:
        """`batch`, or the most rows of it that keep the result within max_bytes; when
        rows are left out the result ends here, truncated."""
        room = self.max_bytes - self.bytes
        size = batch.nbytes
        if size <= room:
            self.bytes += size
            return batch
        # The longest prefix that fits (`nbytes` of a slice counts only its rows).
        low, high = 0, batch.num_rows
        while low < high:
            middle = (low + high + 1) // 2
            if batch.slice(0, middle).nbytes <= room:
                low = middle
            else:
                high = middle - 1
        self.truncated_by = "bytes"
        self.finished = True
        self._pending, self._has_pending = None, False
        kept = batch.slice(0, low)
        self.bytes += kept.nbytes
        return kept

    _pending: pa.RecordBatch | None = None
    _has_pending = False

    def _next_from_source(self) -> pa.RecordBatch | None:
        try:
            batch = self.handle.reader.read_next_batch()
        except StopIteration:
            return None
        size = batch.get_total_buffer_size()
        if size > self.largest_batch:
            self.largest_batch = size
        return batch

    def read_messages(self, min_bytes: int) -> list[bytes] | None:
        """The next batches as IPC messages, read on until at least `min_bytes` are ready
        or the source ends; None when nothing was left. At the end the source is closed
        in the same call: a small result costs one thread hop, not one more to find out
        that it has ended."""
        messages: list[bytes] = []
        size = 0
        while size < min_bytes and not self.exhausted:
            batch = self.read_batch()
            if batch is None:
                self.exhausted = True
                self.close()
                break
            for message in self.chunker.batch_messages(batch):
                messages.append(self._keep(message))
                size += len(message)
        return messages if messages else None

    def cancel(self) -> None:
        self.handle.cancel()

    def close(self) -> None:
        """Close the handle (its source is released) and give the query's slot back;
        idempotent, and safe while another thread reads (the handle's contract)."""
        if not self.closed:
            self.closed = True
            try:
                self.handle.close()
            finally:
                self._release()


class PagedResult:
    """The payload of an open statement: the rest of a result, read page by page.
    `after_page` runs after each page but the last (reading ahead of the caller);
    `holds_source` says whether the result still holds its source connection. `submit`
    and `budget` say where and how long a page's read runs while it does (None: the
    pages are in memory)."""

    def __init__(
        self,
        schema: pa.Schema,
        read: Callable[[int], pa.RecordBatch | None],
        close: Callable[[], None],
        on_done: Callable[[], Summary],
        after_page: Callable[[], None] | None = None,
        holds_source: Callable[[], bool] = lambda: False,
        *,
        submit: Submit | None = None,
        budget: Budget | None = None,
    ) -> None:
        self.schema = schema
        self._read = read
        self._close = close
        self._on_done = on_done
        self._after_page = after_page
        self.holds_source = holds_source
        self.submit = submit
        self.budget = budget
        self.done = False
        self.ticket: Ticket | None = None
        """What the statement was allowed when it was compiled (checked on every page)."""

    def next_page(self, page_rows: int) -> tuple[bytes, int, Summary | None]:
        batches: list[pa.RecordBatch] = []
        rows = 0
        while rows < page_rows:
            batch = self._read(page_rows - rows)
            if batch is None:
                self.done = True
                break
            batches.append(batch)
            rows += batch.num_rows
        summary = self._on_done() if self.done else None
        page = encode_page(self.schema, batches)
        if not self.done and self._after_page is not None:
            self._after_page()
        return page, rows, summary

    def close(self) -> None:
        self._close()


class PendingStart:
    """A query being started in a worker thread, and whether its caller is still there:
    a start abandoned before it began never runs; one abandoned while it runs learns so
    as soon as its source run exists."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.run: SourceRun | None = None
        self.handle: QueryHandle | None = None
        """The query's handle while its connector is still starting it (announced by a
        blocking connector before the query is sent; `announcing_handles`)."""
        self._began = False
        self._abandoned = False

    def begin(self) -> bool:
        """In the worker, first: whether to start at all (the caller is still there)."""
        with self._lock:
            self._began = not self._abandoned
            return self._began

    def starting(self, handle: QueryHandle) -> None:
        """In the worker, from inside the connector's `execute`: the query's handle exists
        (its start may wait at the source); a caller gone already cancels it at once."""
        with self._lock:
            self.handle = handle
            abandoned = self._abandoned
        if abandoned:
            handle.cancel()

    def opened(self, run: SourceRun) -> bool:
        """In the worker: the run exists; False when the caller has gone meanwhile (the
        worker then stops it)."""
        with self._lock:
            self.run = run
            return not self._abandoned

    def abandon(self) -> SourceRun | QueryHandle | None:
        """The caller has gone: what to cancel, when it exists already (the run, else the
        handle of a start still waiting at the source)."""
        with self._lock:
            self._abandoned = True
            return self.run if self.run is not None else self.handle


def cached_pager(
    reader: pa.RecordBatchReader,
    rows: int,
    started: float,
    release: Callable[[], None] | None = None,
) -> PagedResult:
    """A cached result paged like a live one: the same page sizes, nothing read twice.
    `release` runs when the pager is closed (the cached entry is no longer read)."""
    state: dict[str, pa.RecordBatch | None] = {"rest": None}

    def read(limit: int) -> pa.RecordBatch | None:
        batch = state["rest"]
        state["rest"] = None
        if batch is None:
            try:
                batch = reader.read_next_batch()
            except StopIteration:
                return None
        if batch.num_rows > limit:
            state["rest"] = batch.slice(limit)
            batch = batch.slice(0, limit)
        return batch

    released = False

    def close() -> None:
        nonlocal released
        reader.close()
        if release is not None and not released:
            released = True
            release()

    return PagedResult(
        reader.schema, read, close, lambda: Summary(rows, False, True, elapsed_us(started))
    )
