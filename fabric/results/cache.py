"""The result cache: complete results, as their serialized IPC messages, under a byte budget.

A hit replays the stored messages (schema, batches, end-of-stream) without re-encoding.
Each entry has its own lifetime, chosen by the query and capped by the gateway; expired
entries are never served and are dropped as soon as the cache notices (on access, on every
put, and by ``purge_expired``), so rows do not outlive the lifetime they were cached for.

Budget: the bytes held (``CachedResult.nbytes`` summed) never exceed ``max_bytes``, not
even between an eviction and an insertion: room is made first, then the entry goes in.
A result larger than the whole budget is refused without evicting anything for it.
Results still being streamed (``ResultBuilder``) are not part of that budget: each builder
has its own cap and lets go of everything the moment it goes over.

The gateway's memory budget (``fabric.results.memory``) counts all of it: what builders
collect (together never more than ``max_bytes``: what the cache could keep at once), the
entries held, and entries evicted while a caller still sends them (``lease``: the bytes
stay counted until the last such caller is done). A builder the memory budget has no
room for lets go of what it holds, and its result streams through uncached.

Keys: (tenant, stage, connection, catalog version, compiled statement, parameter values).
Tenant and stage are always part of the key, so two tenants or stages never share an
entry even for the same text; a catalog change moves the version and so misses.

Purges and in-flight fills: a result computed before its connection was purged must not be
stored after the purge. ``epoch()`` taken before the query runs, passed to ``put``, makes
the cache refuse such stale results (counted in ``rejected_stale``).

Why its own and not ``cachetools.TLRUCache`` (which the plain LRUs elsewhere use): the
cache must refuse an entry larger than the whole budget without evicting anything for
it, refuse a result filled before a purge (the epoch), purge by tenant and connection,
and count every eviction, expiry and refusal for the metrics that prove the data rules.
TLRUCache has no hook for the refusals or the purges, and its counting would have to
wrap every path.

Thread-safe: one ``threading.Lock`` around a few dictionary operations; no call made under
the lock blocks or allocates much, so calling from the event loop is fine.
"""

from __future__ import annotations

import datetime as dt
import heapq
import threading
import uuid
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import pyarrow as pa

from fabric.clock import SYSTEM_CLOCK, Clock
from fabric.errors import InvalidArgument
from fabric.results.memory import MemoryBudget, MemoryCharge, unlimited_budget

__all__ = [
    "ENTRY_OVERHEAD",
    "MESSAGE_OVERHEAD",
    "CacheStats",
    "CachedResult",
    "ResultBuilder",
    "ResultCache",
    "ResultKey",
    "canonical_params",
]

ENTRY_OVERHEAD = 512
"""Bytes charged per entry besides its messages: key, schema object, bookkeeping. An
estimate; it keeps a flood of tiny entries from being free."""

MESSAGE_OVERHEAD = 40
"""Bytes charged per message: the ``bytes`` object header and its slot in the tuple."""

# Scalar parameter types whose repr() is a faithful, address-free rendering of the value.
# bool is listed before int only for clarity: lookups use the exact type.
_SCALAR_TYPES: frozenset[type] = frozenset(
    {
        type(None),
        bool,
        int,
        float,
        str,
        bytes,
        Decimal,
        dt.date,
        dt.datetime,
        dt.time,
        dt.timedelta,
        uuid.UUID,
    }
)


def _canonical_value(value: object) -> str:
    """A type-tagged text for ``value``: equal only for values of the same type and repr.

    The exact type is part of the text (``int:1``, ``float:1.0``, ``bool:True``,
    ``str:'1'``), so values that compare equal in Python (1 == 1.0 == True) or that render
    alike never share a key. Containers are tagged element by element. Types outside the
    known set are refused: a default repr carries an object address, which can be reused
    by a different value and make two different queries share a result.
    """
    kind = type(value)
    if kind in _SCALAR_TYPES:
        return f"{kind.__name__}:{value!r}"
    if isinstance(value, list | tuple) and kind in (list, tuple):
        items = ",".join(_canonical_value(v) for v in value)
        return f"{kind.__name__}[{items}]"
    raise TypeError(kind.__name__)


def canonical_params(params: Mapping[str, Any]) -> tuple[tuple[str, str, str], ...]:
    """``(name, type name, type-tagged value text)`` per parameter, sorted by name."""
    out: list[tuple[str, str, str]] = []
    for name in sorted(params):
        value = params[name]
        try:
            text = _canonical_value(value)
        except TypeError as exc:
            # Name the parameter and the type, never the value.
            raise InvalidArgument(
                f"parameter {name!r} has type {exc.args[0]}, which cannot be part of a "
                "result cache key; pass a number, string, bytes, boolean, decimal, "
                "date/time, UUID, null, or a list of these"
            ) from None
        out.append((name, type(value).__name__, text))
    return tuple(out)


@dataclass(frozen=True, slots=True)
class ResultKey:
    """Everything a result depends on. Build with ``ResultKey.build``."""

    tenant: str
    stage: str
    connection: str
    catalog_version: int
    statement: str
    """Fingerprint of the compiled statement (target dialect text, limits included)."""
    params: tuple[tuple[str, str, str], ...]
    """Canonical parameters: ``(name, type name, type-tagged value text)``, sorted."""

    @staticmethod
    def build(
        tenant: str,
        stage: str,
        connection: str,
        catalog_version: int,
        statement: str,
        params: Mapping[str, Any],
    ) -> ResultKey:
        """The key for one execution. Raises ``InvalidArgument`` for a parameter whose type
        cannot be keyed safely (the caller may then run the query uncached)."""
        return ResultKey(
            tenant, stage, connection, catalog_version, statement, canonical_params(params)
        )

    def __repr__(self) -> str:
        # Parameter values stay out of logs and tracebacks; names are enough to debug.
        names = ",".join(p[0] for p in self.params)
        return (
            f"ResultKey(tenant={self.tenant!r}, stage={self.stage!r}, "
            f"connection={self.connection!r}, catalog_version={self.catalog_version}, "
            f"statement={self.statement!r}, params=<{names}>)"
        )


@dataclass(frozen=True, slots=True)
class CachedResult:
    """A complete result: the IPC stream's messages in order (schema first, end-of-stream
    last), ready to be sent as they are."""

    messages: tuple[bytes, ...]
    rows: int
    nbytes: int
    """What the entry costs against the budget: message bytes plus fixed overheads."""
    schema: pa.Schema
    charge: MemoryCharge | None = field(default=None, compare=False, repr=False)
    """Its bytes on the gateway's memory budget (None: not counted there)."""

    @staticmethod
    def of(messages: Iterable[bytes], rows: int, schema: pa.Schema) -> CachedResult:
        held = tuple(messages)
        return CachedResult(held, rows, cost_of(held), schema)

    def __repr__(self) -> str:
        # Row values stay out of logs and tracebacks.
        return f"CachedResult(messages={len(self.messages)}, rows={self.rows}, bytes={self.nbytes})"


def cost_of(messages: Iterable[bytes]) -> int:
    """The budget cost of an entry made of ``messages``."""
    return ENTRY_OVERHEAD + sum(len(m) + MESSAGE_OVERHEAD for m in messages)


@dataclass(frozen=True, slots=True)
class CacheStats:
    hits: int
    misses: int
    puts: int
    evictions: int
    """Entries dropped to make room (least recently used first)."""
    expirations: int
    """Entries dropped because their lifetime ended."""
    purges: int
    """Entries dropped by ``purge_connection`` and ``clear``."""
    rejected_too_large: int
    rejected_stale: int
    """Results refused because their connection was purged while they were computed."""
    bytes_held: int
    entries: int


@dataclass(slots=True, eq=False)
class _Entry:
    result: CachedResult
    expires_at: float
    seq: int
    """Names the entry in the expiry heap, which holds no reference to the entry itself:
    a removed entry's rows are freed at once, not when its heap item comes up."""


class ResultBuilder:
    """Collects a result's messages while they stream to the caller, within a byte cap.

    Single-threaded (one per stream). Once the messages go over the cap, the builder
    drops everything it holds at once and ignores the rest, so a result too big to cache
    streams through without being held; ``finish`` then returns None.
    """

    __slots__ = ("_charge", "_done", "_max", "_messages", "_nbytes", "_overflowed", "_within")

    def __init__(
        self,
        max_bytes: int,
        charge: MemoryCharge | None = None,
        *,
        within: int | None = None,
    ) -> None:
        self._max = max_bytes
        self._messages: list[bytes] = []
        self._nbytes = ENTRY_OVERHEAD
        self._overflowed = False
        self._done = False
        self._charge = charge
        """What is held, on the memory budget (the builder overflows when it has no room)."""
        self._within = within
        """The most every builder together may hold (the cache's size)."""

    @property
    def active(self) -> bool:
        """Still collecting: not over the cap, not finished, not abandoned."""
        return not (self._overflowed or self._done)

    @property
    def nbytes(self) -> int:
        return self._nbytes if self.active else 0

    def add(self, message: bytes) -> bool:
        """Keep ``message``; False (and nothing held any more) once over the cap."""
        if not self.active:
            return False
        cost = len(message) + MESSAGE_OVERHEAD
        if not self._messages:
            cost += ENTRY_OVERHEAD
        self._nbytes += len(message) + MESSAGE_OVERHEAD
        if self._nbytes > self._max or (
            self._charge is not None and not self._charge.grow(cost, within=self._within)
        ):
            self._overflowed = True
            self._messages = []
            if self._charge is not None:
                self._charge.release()
            return False
        self._messages.append(message)
        return True

    def finish(self, rows: int, schema: pa.Schema) -> CachedResult | None:
        """The complete result, or None if it went over the cap or was abandoned."""
        if not self.active:
            return None
        self._done = True
        result = CachedResult(tuple(self._messages), rows, self._nbytes, schema, self._charge)
        self._messages = []
        return result

    def abandon(self) -> None:
        """Drop what is held (the query failed or was cancelled)."""
        if not self._done and self._charge is not None:
            self._charge.release()
        self._done = True
        self._messages = []


class ResultCache:
    """LRU result cache with per-entry lifetimes and a hard byte budget; thread-safe."""

    def __init__(
        self,
        *,
        max_bytes: int,
        max_ttl: float,
        clock: Clock = SYSTEM_CLOCK,
        memory: MemoryBudget | None = None,
    ) -> None:
        if max_bytes <= 0:
            raise ValueError("max_bytes must be positive")
        if max_ttl < 0:
            raise ValueError("max_ttl must not be negative")
        self._max_bytes = max_bytes
        self._max_ttl = max_ttl
        self._clock = clock
        self._memory = memory if memory is not None else unlimited_budget()
        self._lock = threading.Lock()
        # Insertion/access order is recency order: first = least recently used.
        self._entries: OrderedDict[ResultKey, _Entry] = OrderedDict()
        # (expires_at, seq, key): the next entry to expire on top. Items of entries already
        # gone stay until popped (the seq no longer matches), and the heap is rebuilt when
        # they outnumber live entries, so expiry is O(log n) without a full scan.
        self._expiry: list[tuple[float, int, ResultKey]] = []
        self._seq = 0
        self._bytes = 0
        # Purge epochs (see module docstring).
        self._epoch = 0
        self._cleared_at = 0
        self._purged_at: dict[tuple[str, str], int] = {}
        self._hits = self._misses = self._puts = 0
        self._evictions = self._expirations = self._purges = 0
        self._rejected_too_large = self._rejected_stale = 0

    @property
    def max_bytes(self) -> int:
        return self._max_bytes

    @property
    def max_ttl(self) -> float:
        return self._max_ttl

    def builder(self, max_bytes: int | None = None) -> ResultBuilder:
        """A builder capped at ``max_bytes`` (and never above the cache's own budget),
        its bytes on the memory budget (all builders together within the cache's size)."""
        cap = self._max_bytes if max_bytes is None else min(max_bytes, self._max_bytes)
        return ResultBuilder(cap, self._memory.charge("building"), within=self._max_bytes)

    def epoch(self) -> int:
        """A token to take before running a query and pass to ``put`` with its result."""
        with self._lock:
            return self._epoch

    # -- lookups and inserts --------------------------------------------------------------

    def get(self, key: ResultKey) -> CachedResult | None:
        """The live entry for ``key``, now most recently used; None on a miss.

        An entry is live strictly before ``put time + ttl``: at that instant it is gone.
        """
        now = self._clock.monotonic()
        with self._lock:
            return self._live(key, now)

    def lease(self, key: ResultKey) -> CachedResult | None:
        """As ``get``, and the entry's bytes stay counted on the memory budget, even if it
        is evicted meanwhile, until ``done_reading`` (call it once the result is sent)."""
        now = self._clock.monotonic()
        with self._lock:
            result = self._live(key, now)
            if result is not None and result.charge is not None:
                result.charge.hold()
            return result

    @staticmethod
    def done_reading(result: CachedResult) -> None:
        if result.charge is not None:
            result.charge.drop()

    def put(
        self, key: ResultKey, result: CachedResult, ttl: float, *, epoch: int | None = None
    ) -> bool:
        """Store ``result`` for ``min(ttl, max_ttl)`` seconds; True if stored.

        Not stored: ttl <= 0 (after the cap); ``result.nbytes > max_bytes`` (counted in
        ``rejected_too_large``; nothing is evicted for it); ``epoch`` given and the key's
        connection purged (or the cache cleared) since it was taken. An entry already
        under ``key`` is replaced. The result's memory charge now belongs to the cache:
        counted as cached when stored, released when not.
        """
        stored = self._put(key, result, ttl, epoch)
        if result.charge is not None:
            if stored:
                result.charge.move("cached")
            else:
                result.charge.release()
        return stored

    def _put(self, key: ResultKey, result: CachedResult, ttl: float, epoch: int | None) -> bool:
        ttl = min(ttl, self._max_ttl)
        if not ttl > 0:  # also refuses NaN, which would never expire
            return False
        now = self._clock.monotonic()
        size = result.nbytes
        with self._lock:
            if size > self._max_bytes:
                self._rejected_too_large += 1
                return False
            if epoch is not None and self._purged_since(key, epoch):
                self._rejected_stale += 1
                return False
            old = self._entries.get(key)
            if old is not None:
                self._remove(key, old)
            self._expire(now)
            # Make room first, then insert: the budget holds at every instant.
            while self._bytes + size > self._max_bytes:
                lru_key, lru_entry = next(iter(self._entries.items()))
                self._remove(lru_key, lru_entry)
                self._evictions += 1
            self._seq += 1
            entry = _Entry(result, now + ttl, self._seq)
            self._entries[key] = entry
            self._bytes += size
            heapq.heappush(self._expiry, (entry.expires_at, entry.seq, key))
            self._puts += 1
            return True

    # -- purges ---------------------------------------------------------------------------

    def purge_connection(self, tenant: str, connection: str) -> int:
        """Drop every entry of ``connection`` (all stages, all catalog versions), and make
        results of it still being computed unstorable. Returns the number dropped."""
        with self._lock:
            self._epoch += 1
            self._purged_at[(tenant, connection)] = self._epoch
            doomed = [
                (k, e)
                for k, e in self._entries.items()
                if k.tenant == tenant and connection in _connections_of(k)
            ]
            for k, e in doomed:
                self._remove(k, e)
            self._purges += len(doomed)
            self._compact_expiry()
            return len(doomed)

    def purge_expired(self) -> int:
        """Drop every expired entry now; returns the number dropped."""
        now = self._clock.monotonic()
        with self._lock:
            return self._expire(now)

    def clear(self) -> int:
        """Drop everything; returns the number of entries dropped."""
        with self._lock:
            count = len(self._entries)
            for entry in self._entries.values():
                if entry.result.charge is not None:
                    entry.result.charge.retire()
            self._entries.clear()
            self._expiry.clear()
            self._bytes = 0
            self._purges += count
            self._epoch += 1
            self._cleared_at = self._epoch
            # Per-connection marks are all older than the clear now: it subsumes them.
            self._purged_at.clear()
            return count

    # -- introspection --------------------------------------------------------------------

    @property
    def stats(self) -> CacheStats:
        with self._lock:
            return CacheStats(
                hits=self._hits,
                misses=self._misses,
                puts=self._puts,
                evictions=self._evictions,
                expirations=self._expirations,
                purges=self._purges,
                rejected_too_large=self._rejected_too_large,
                rejected_stale=self._rejected_stale,
                bytes_held=self._bytes,
                entries=len(self._entries),
            )

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    # -- internals (lock held) ------------------------------------------------------------

    def _live(self, key: ResultKey, now: float) -> CachedResult | None:
        entry = self._entries.get(key)
        if entry is None:
            self._misses += 1
            return None
        if now >= entry.expires_at:
            self._remove(key, entry)
            self._expirations += 1
            self._misses += 1
            return None
        self._entries.move_to_end(key)
        self._hits += 1
        return entry.result

    def _remove(self, key: ResultKey, entry: _Entry) -> None:
        del self._entries[key]
        self._bytes -= entry.result.nbytes
        if entry.result.charge is not None:
            # Released once no caller still sends it.
            entry.result.charge.retire()
        # The heap item stays; it is recognised as stale when popped.

    def _expire(self, now: float) -> int:
        count = 0
        heap = self._expiry
        while heap and heap[0][0] <= now:
            _, seq, key = heapq.heappop(heap)
            entry = self._entries.get(key)
            if entry is not None and entry.seq == seq:
                self._remove(key, entry)
                count += 1
        self._expirations += count
        if len(heap) > 2 * len(self._entries) + 64:
            self._compact_expiry()
        return count

    def _compact_expiry(self) -> None:
        live = [item for item in self._expiry if self._is_live(item[1], item[2])]
        heapq.heapify(live)
        self._expiry = live

    def _is_live(self, seq: int, key: ResultKey) -> bool:
        entry = self._entries.get(key)
        return entry is not None and entry.seq == seq

    def _purged_since(self, key: ResultKey, epoch: int) -> bool:
        if self._cleared_at > epoch:
            return True
        return any(
            self._purged_at.get((key.tenant, name), 0) > epoch for name in _connections_of(key)
        )


COMPOSITE_SEPARATOR = "\x1f"
"""Separates the connections of a federated query's result key (no name holds it)."""


def _connections_of(key: ResultKey) -> list[str]:
    """The connections a result was read from: one, or a federated query's several."""
    if COMPOSITE_SEPARATOR in key.connection:
        return key.connection.split(COMPOSITE_SEPARATOR)
    return [key.connection]
