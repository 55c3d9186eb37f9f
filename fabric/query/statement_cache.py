"""The compiled-statement cache: SQL text to CompiledStatement, per connection and version.

A hit is one dictionary lookup on a tuple of strings and ints, under a lock: no parsing.
The catalog version is part of the key, so a selection or schema change misses at once;
so is the catalog's stage (`CatalogSnapshot.stage`): two stages may map one entity to
different physical tables at the same catalog version, and must not share a statement;
`purge_connection` drops a connection's entries when the platform updates or deletes it.
Compiles run outside the lock, so a slow compile never blocks hits on other statements;
two threads missing on the same key may both compile, and the first stored result wins.
Rejections are not cached: they are cheap to redo and carry no state worth keeping.
"""

from __future__ import annotations

import threading

from cachetools import LRUCache

from connectors.base import ParamStyle
from fabric.errors import InternalError
from fabric.model import CatalogSnapshot
from fabric.query.compiler import CompiledStatement, StatementCompiler

__all__ = ["StatementCache"]

# (tenant, connection, catalog version, stage ("" for a stage-less snapshot), dialect,
#  param style, max_rows, sql text)
_Key = tuple[str, str, int, str, str, str, int, str]


class StatementCache:
    """A thread-safe LRU of compiled statements."""

    def __init__(self, compiler: StatementCompiler, max_entries: int = 4096) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be positive")
        self.compiler = compiler
        self.max_entries = max_entries
        self.hits = 0
        self.misses = 0
        self._entries: LRUCache[_Key, CompiledStatement] = LRUCache(maxsize=max_entries)
        # Keys per (tenant, connection), so a purge does not scan the whole cache.
        self._by_connection: dict[tuple[str, str], set[_Key]] = {}
        self._lock = threading.Lock()

    @property
    def size(self) -> int:
        with self._lock:
            return len(self._entries)

    def lookup(
        self,
        *,
        tenant: str,
        connection: str,
        sql: str,
        catalog: CatalogSnapshot,
        dialect: str,
        param_style: ParamStyle,
        max_rows: int,
    ) -> CompiledStatement | None:
        """The compiled statement for this text if it is cached (counted as a hit), else
        None (not counted: the compile that follows counts the miss). Never compiles."""
        return self._hit(_key(tenant, connection, sql, catalog, dialect, param_style, max_rows))

    def _hit(self, key: _Key) -> CompiledStatement | None:
        """The cached statement (now the most recently used, counted as a hit), or None."""
        with self._lock:
            found = self._entries.get(key)
            if found is not None:
                self.hits += 1
            return found

    def get_or_compile(
        self,
        *,
        tenant: str,
        connection: str,
        sql: str,
        catalog: CatalogSnapshot,
        dialect: str,
        param_style: ParamStyle,
        max_rows: int,
    ) -> CompiledStatement:
        """The compiled statement for this text, compiling it on a miss.

        Raises QueryRejected (not cached) when the compiler refuses the text.
        """
        key = _key(tenant, connection, sql, catalog, dialect, param_style, max_rows)
        found = self._hit(key)
        if found is not None:
            return found
        with self._lock:
            self.misses += 1
        compiled = self.compiler.compile(
            sql, catalog, dialect=dialect, param_style=param_style, max_rows=max_rows
        )
        with self._lock:
            existing = self._entries.get(key)
            if existing is not None:
                return existing  # another thread compiled it meanwhile; share one object
            if len(self._entries) >= self.max_entries:
                # Evicted here rather than by the cache itself, so its key leaves the
                # per-connection index with it.
                old_key, _ = self._entries.popitem()
                self._forget(old_key)
            self._entries[key] = compiled
            self._by_connection.setdefault((tenant, connection), set()).add(key)
        return compiled

    def purge_connection(self, tenant: str, connection: str) -> int:
        """Drop every entry of one connection (all versions); return how many."""
        with self._lock:
            keys = self._by_connection.pop((tenant, connection), set())
            for key in keys:
                self._entries.pop(key, None)
            return len(keys)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._by_connection.clear()

    def _forget(self, key: _Key) -> None:
        owner = (key[0], key[1])
        keys = self._by_connection.get(owner)
        if keys is not None:
            keys.discard(key)
            if not keys:
                del self._by_connection[owner]


def _key(
    tenant: str,
    connection: str,
    sql: str,
    catalog: CatalogSnapshot,
    dialect: str,
    param_style: ParamStyle,
    max_rows: int,
) -> _Key:
    if catalog.tenant != tenant or catalog.connection != connection:
        # A snapshot of another connection would compile against the wrong selection.
        raise InternalError("catalog snapshot does not belong to this tenant and connection")
    return (
        tenant,
        connection,
        catalog.version,
        catalog.stage or "",
        dialect,
        param_style.value,
        max_rows,
        sql,
    )
