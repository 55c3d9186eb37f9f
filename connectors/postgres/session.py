"""PostgreSQL session set-up: the settings every pooled connection and every query's
transaction get, and what the connector keeps per connection (prepared statements)."""

from __future__ import annotations

import math
from typing import Any

import psycopg
from cachetools import LRUCache
from psycopg.types.string import TextLoader

IDLE_IN_TRANSACTION_MS = 60_000
_PREPARE_AFTER = 2  # executions of the same statement on a connection before preparing it
_PREPARED_MAX = 128  # prepared statements kept per connection
_SEEN_MAX = 512

SESSION_LOCALS = (
    "SET LOCAL idle_in_transaction_session_timeout = {idle}; "
    "SET LOCAL TimeZone = 'UTC'; SET LOCAL DateStyle = 'ISO'; "
    "SET LOCAL IntervalStyle = 'iso_8601'; SET LOCAL bytea_output = 'hex'; "
    "SET LOCAL extra_float_digits = 1"
)
# The same settings for the whole session (plus read-only by default), applied once when
# a pooled connection is opened; each query's transaction sets them again (the guard or
# the SET LOCALs), so the session's values are only a default.
SESSION_SETTINGS = (
    "SET default_transaction_read_only = on; "
    f"SET idle_in_transaction_session_timeout = {IDLE_IN_TRANSACTION_MS}; "
    "SET TimeZone = 'UTC'; SET DateStyle = 'ISO'; SET IntervalStyle = 'iso_8601'; "
    "SET bytea_output = 'hex'; SET extra_float_digits = 1"
)


def _register_text_loaders(conn: psycopg.Connection[Any]) -> None:
    """Load every column as its text (psycopg's C text loader), for the cursor path."""
    adapters = conn.adapters
    for info in psycopg.postgres.types:
        adapters.register_loader(info.oid, TextLoader)
        if info.array_oid:
            adapters.register_loader(info.array_oid, TextLoader)


def configure_connection(conn: psycopg.Connection[Any]) -> None:
    """A new pooled connection: text loaders and the session settings."""
    _register_text_loaders(conn)
    conn.execute(SESSION_SETTINGS.encode())


def begin(conn: psycopg.Connection[Any], timeout: float | None) -> None:
    """Open the read-only transaction of the transaction paths, with its SET LOCALs."""
    statements = "BEGIN TRANSACTION READ ONLY; " + SESSION_LOCALS.format(
        idle=IDLE_IN_TRANSACTION_MS
    )
    if timeout is not None:
        statements += f"; SET LOCAL statement_timeout = {max(1, math.ceil(timeout * 1000))}"
    conn.execute(statements.encode())


StatementKey = tuple[bytes, tuple[int, ...]]
"""A parameterized statement on the server: its text and its parameter type OIDs."""


class _PreparedStatements(LRUCache[StatementKey, bytes]):
    """The statements prepared on one connection, least recently used evicted first; an
    evicted one's name goes to `stale`, to be deallocated by the next pipeline."""

    def __init__(self, stale: list[bytes]) -> None:
        super().__init__(_PREPARED_MAX)
        self._stale = stale

    def popitem(self) -> tuple[StatementKey, bytes]:
        key, name = super().popitem()
        self._stale.append(name)
        return key, name


class Session:
    """What the connector keeps per pooled connection: whether the guard statement is
    prepared there, and the query statements it prepared there."""

    __slots__ = ("counter", "guard", "prepared", "seen", "stale")

    def __init__(self) -> None:
        self.guard = False
        self.stale: list[bytes] = []  # evicted prepared statements, deallocated later
        self.seen: LRUCache[StatementKey, int] = LRUCache(_SEEN_MAX)  # executions so far
        self.prepared = _PreparedStatements(self.stale)
        self.counter = 0

    def mark_all_stale(self) -> None:
        """Forget the connection's prepared statements; the next query deallocates them
        all."""
        self.guard = False
        self.prepared.clear()
        self.seen.clear()
        self.stale[:] = [b"ALL"]

    def prepared_name(self, key: StatementKey) -> bytes | None:
        """The name of the statement on this connection: prepared already, or to prepare
        now (its second execution there); None to run it unprepared."""
        name = self.prepared.get(key)
        if name is not None:
            return name
        count = self.seen.pop(key, 0) + 1
        if count < _PREPARE_AFTER:
            self.seen[key] = count
            return None
        self.counter += 1
        return f"fabric_{self.counter}".encode()

    def remember_prepared(self, key: StatementKey, name: bytes) -> None:
        self.prepared[key] = name
