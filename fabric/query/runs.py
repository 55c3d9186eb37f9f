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
    reading past max_rows means truncated) and encodes IPC messages, filling a cache
    builder when the result is cacheable."""

    def __init__(
        self,
        handle: QueryHandle,
        max_rows: int,
        max_message_bytes: int,
        builder: ResultBuilder | None,
        *,
        budget: Budget,
        submit: Submit,
        release: Callable[[], None],
    ) -> None:
        self.handle = handle
        self.budget = budget
        self.submit = submit
        """Runs a blocking call of this query on its source's lane."""
        self._release = release
        self._reader = handle.reader
        self.chunker = IpcChunker.shared(handle.schema, max_message_bytes)
        self.builder = builder
        self.max_rows = max_rows
        self.rows = 0
        self.truncated = False
        self.finished = False
        self.exhausted = False
        """Every row has been read (the source was closed at once)."""
        self.closed = False

    @property
    def schema(self) -> pa.Schema:
        return self.chunker.schema

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
                self.truncated = True
                self.finished = True
                batch = batch.slice(0, remaining)
            if limit is not None and batch.num_rows > limit:
                self._pending, self._has_pending = batch.slice(limit), True
                batch = batch.slice(0, limit)
            if batch.num_rows:
                self.rows += batch.num_rows
                return self.chunker.to_wire(batch)
        return None

    _pending: pa.RecordBatch | None = None
    _has_pending = False

    def _next_from_source(self) -> pa.RecordBatch | None:
        try:
            return self._reader.read_next_batch()
        except StopIteration:
            return None

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
    `submit` and `budget` say where and how long a page's read runs (None: the pages
    are in memory)."""

    def __init__(
        self,
        schema: pa.Schema,
        read: Callable[[int], pa.RecordBatch | None],
        close: Callable[[], None],
        on_done: Callable[[], Summary],
        *,
        submit: Submit | None = None,
        budget: Budget | None = None,
    ) -> None:
        self.schema = schema
        self._read = read
        self._close = close
        self._on_done = on_done
        self.submit = submit
        self.budget = budget
        self.done = False

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
        return encode_page(self.schema, batches), rows, summary

    def close(self) -> None:
        self._close()


class PendingStart:
    """A query being started in a worker thread, and whether its caller is still there:
    a start abandoned before it began never runs; one abandoned while it runs learns so
    as soon as its source run exists."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.run: SourceRun | None = None
        self._began = False
        self._abandoned = False

    def begin(self) -> bool:
        """In the worker, first: whether to start at all (the caller is still there)."""
        with self._lock:
            self._began = not self._abandoned
            return self._began

    def opened(self, run: SourceRun) -> bool:
        """In the worker: the run exists; False when the caller has gone meanwhile (the
        worker then stops it)."""
        with self._lock:
            self.run = run
            return not self._abandoned

    def abandon(self) -> SourceRun | None:
        """The caller has gone: the run, when it exists already (to cancel)."""
        with self._lock:
            self._abandoned = True
            return self.run


def cached_pager(reader: pa.RecordBatchReader, rows: int, started: float) -> PagedResult:
    """A cached result paged like a live one: the same page sizes, nothing read twice."""
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

    return PagedResult(
        reader.schema, read, reader.close, lambda: Summary(rows, False, True, elapsed_us(started))
    )
