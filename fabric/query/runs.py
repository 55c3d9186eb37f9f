"""A query's run at its source, seen from the engine: reading, limiting and encoding its
batches (`SourceRun`), paging through them (`PagedResult`), and a start still in a
worker thread (`PendingStart`)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from dataclasses import dataclass

import pyarrow as pa

from connectors import QueryHandle
from fabric.clock import elapsed_us
from fabric.query.revocation import Ticket
from fabric.results.cache import ResultBuilder
from fabric.results.ipc import IpcChunker, encode_page


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
    ) -> None:
        self.handle = handle
        self._max_message_bytes = max_message_bytes
        self._chunker: IpcChunker | None = None
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
        if not self.closed:
            self.closed = True
            self.handle.close()


class PagedResult:
    """The payload of an open statement: the rest of a result, read page by page.
    `after_page` runs after each page but the last (reading ahead of the caller);
    `holds_source` says whether the result still holds its source connection."""

    def __init__(
        self,
        schema: pa.Schema,
        read: Callable[[int], pa.RecordBatch | None],
        close: Callable[[], None],
        on_done: Callable[[], Summary],
        after_page: Callable[[], None] | None = None,
        holds_source: Callable[[], bool] = lambda: False,
    ) -> None:
        self.schema = schema
        self._read = read
        self._close = close
        self._on_done = on_done
        self._after_page = after_page
        self.holds_source = holds_source
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
    """A query being started in a worker thread, seen from the event loop. The loop is
    woken when the source run exists only if a caller that went away is waiting for it
    (to cancel it): the usual start costs no wake-up besides its result."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.run: SourceRun | None = None
        self._opened: asyncio.Event | None = None

    def opened(self, run: SourceRun, loop: asyncio.AbstractEventLoop) -> None:
        """In the worker: the run exists."""
        with self._lock:
            self.run = run
            waiting = self._opened
        if waiting is not None:
            loop.call_soon_threadsafe(waiting.set)

    def watch(self) -> asyncio.Event:
        """On the loop: an event set once the run exists (already set if it does)."""
        event = asyncio.Event()
        with self._lock:
            self._opened = event
            if self.run is not None:
                event.set()
        return event


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
