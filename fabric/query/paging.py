"""An open statement's rows read ahead of its caller, so that a statement idle between
pages does not hold a source connection.

When a statement opens, and after each page, its source run is read on into a buffer of
up to `limit` bytes. A result that fits (the usual paged result) is then read whole: its
source run is closed at once and its connection goes back to the pool, and the statement
holds only rows in memory, counted on the gateway's memory budget. A result larger than
the buffer keeps its source run between pages (`holds_source`); the engine counts such a
statement as a running query of its caller and gives it a shorter idle limit.

Why a buffer and not a reopen by keyset (re-running the query from the last key seen
for each page): a keyset needs a total order on a unique key, which only a query over
one entity ordered by its whole primary key has (joins, aggregates and DISTINCT have
none), and each page would be a new query against data that may have changed since the
last one: pages could repeat or skip rows. The buffer keeps one snapshot and every query
shape; its cost is memory, which the budget bounds, and a connection held by results too
large for it.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

import pyarrow as pa

from fabric.results.memory import MemoryCharge

__all__ = ["ReadAhead"]


class ReadAhead:
    """Batches of a source run, read ahead up to `limit` bytes. Blocking; called from
    worker threads, one call at a time (an open statement's lease). `source_ended` is
    called once, in the call that finds the source's end: close the run there."""

    def __init__(
        self,
        read_source: Callable[[], pa.RecordBatch | None],
        limit: int,
        charge: MemoryCharge,
        source_ended: Callable[[], None],
    ) -> None:
        self._read_source = read_source
        self._limit = limit
        self._charge = charge
        self._source_ended = source_ended
        self._batches: deque[tuple[pa.RecordBatch, int]] = deque()
        """(batch, bytes charged for it): a slice handed out leaves the rest charged,
        since it shares the batch's buffers."""
        self._buffered = 0
        self.source_done = False

    @property
    def holds_source(self) -> bool:
        """The source run is still open (its rows do not all fit in the buffer)."""
        return not self.source_done

    @property
    def buffered_bytes(self) -> int:
        return self._buffered

    def read(self, limit: int) -> pa.RecordBatch | None:
        """The next batch of at most `limit` rows: from the buffer, else from the source;
        None at the end."""
        if not self._batches:
            batch = self._next_from_source()
            if batch is None:
                return None
            if batch.num_rows <= limit:
                return batch
            self._keep(batch, force=True)
        batch, charged = self._batches[0]
        if batch.num_rows > limit:
            self._batches[0] = (batch.slice(limit), charged)
            return batch.slice(0, limit)
        self._batches.popleft()
        self._buffered -= charged
        self._charge.shrink(charged)
        return batch

    def fill(self) -> None:
        """Read the source on until the buffer holds `limit` bytes, the source ends (then
        it is closed), or the memory budget has no room."""
        while not self.source_done and self._buffered < self._limit:
            batch = self._next_from_source()
            if batch is None:
                return
            if not self._keep(batch, force=False):
                return

    def close(self) -> None:
        """Drop the buffered rows."""
        self._batches.clear()
        self._buffered = 0
        self._charge.release()

    def _keep(self, batch: pa.RecordBatch, *, force: bool) -> bool:
        """Buffer a batch read from the source; False when the budget had no room for it
        (it is kept all the same: it has been read, and nobody else has it)."""
        size = batch.get_total_buffer_size()
        fits = self._charge.grow(size)
        if not fits:
            self._charge.grow(size, force=True)
        self._batches.append((batch, size))
        self._buffered += size
        return fits or force

    def _next_from_source(self) -> pa.RecordBatch | None:
        if self.source_done:
            return None
        batch = self._read_source()
        if batch is None:
            self.source_done = True
            self._source_ended()
        return batch
