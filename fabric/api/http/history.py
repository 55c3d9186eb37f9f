"""Each caller's recent queries, in memory: SQL shape (literals masked), timing, rows,
outcome; never a parameter value or a row. Bounded per caller and in callers."""

from __future__ import annotations

import datetime as dt
import threading
from collections import deque
from dataclasses import asdict, dataclass
from typing import Any

from cachetools import LRUCache

from fabric.clock import SYSTEM_CLOCK, WallClock
from fabric.context import RequestContext
from fabric.observability.logging import mask_literals

ENTRIES_PER_CALLER = 100
CALLERS = 1_000


@dataclass(frozen=True, slots=True)
class HistoryEntry:
    at: str
    connection: str
    sql_shape: str
    rows: int
    elapsed_ms: float
    from_cache: bool
    status: str
    """`ok`, or the error code the query ended with."""

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


class QueryHistory:
    def __init__(
        self,
        *,
        per_caller: int = ENTRIES_PER_CALLER,
        callers: int = CALLERS,
        clock: WallClock = SYSTEM_CLOCK,
    ) -> None:
        self._per_caller = per_caller
        self._entries: LRUCache[tuple[str, str], deque[HistoryEntry]] = LRUCache(maxsize=callers)
        self._lock = threading.Lock()
        self._clock = clock

    def record(
        self,
        ctx: RequestContext,
        connection: str,
        sql: str,
        *,
        rows: int,
        elapsed_ms: float,
        from_cache: bool,
        status: str,
    ) -> None:
        at = dt.datetime.fromtimestamp(self._clock.time(), dt.UTC).isoformat(
            timespec="milliseconds"
        )
        entry = HistoryEntry(
            at, connection, mask_literals(sql), rows, round(elapsed_ms, 3), from_cache, status
        )
        key = (ctx.tenant, ctx.principal)
        with self._lock:
            entries = self._entries.get(key)
            if entries is None:
                entries = deque(maxlen=self._per_caller)
                self._entries[key] = entries
            entries.append(entry)

    def of(self, ctx: RequestContext) -> list[HistoryEntry]:
        """The caller's entries, newest first."""
        with self._lock:
            entries = self._entries.get((ctx.tenant, ctx.principal))
            return list(reversed(entries)) if entries is not None else []
