"""The connector contract: every external system plugs in behind this one class.

A connector is configuration (a frozen, validated `ConnectorConfig`; the password is
handed over already resolved from the secret store, never read from the environment)
plus state it builds from it (a pool, a client). Capabilities are class constants with
a docstring each; optional abilities default to "not supported".
"""

from __future__ import annotations

import abc
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, ClassVar

import pyarrow as pa

from fabric.errors import DeadlineExceeded, InvalidArgument
from fabric.model import SettingValue, TableInfo


class ParamStyle(StrEnum):
    """How a connector's driver expects bound parameters in the SQL text. The compiler
    emits these placeholders; the engine passes values positionally, in placeholder order."""

    QMARK = "qmark"
    """`?` (DuckDB)."""
    FORMAT = "format"
    """`%s`, with a literal `%` written `%%` (psycopg, pymssql, PyMySQL)."""


@dataclass(frozen=True, slots=True)
class ConnectorConfig:
    """Frozen settings of one connection in one stage.

    `settings` holds non-secret values (host, port, database, user, path, options);
    `password` is the resolved secret, kept out of repr so it never reaches a log.
    """

    settings: Mapping[str, SettingValue]
    password: str | None = field(default=None, repr=False)

    def get_str(self, key: str, default: str | None = None) -> str | None:
        value = self.settings.get(key, default)
        return None if value is None else str(value)

    def get_int(self, key: str, default: int | None = None) -> int | None:
        value = self.settings.get(key, default)
        if value is None:
            return None
        if isinstance(value, bool):
            raise ValueError(f"setting {key!r} must be an integer")
        return int(value)


class QueryHandle(abc.ABC):
    """One running query. `reader` streams its result; `cancel` may be called from any
    thread while another thread reads, after which reading raises `Cancelled` (or
    `DeadlineExceeded` when the timeout fired) and the source has stopped the query.
    `close` is idempotent and returns every resource (connection to its pool)."""

    buffered: ClassVar[bool] = False
    """Every row is in memory and the source is released: reading does no I/O, so the
    engine may read it on the event loop."""

    @property
    @abc.abstractmethod
    def reader(self) -> pa.RecordBatchReader: ...

    @property
    def schema(self) -> pa.Schema:
        """The result's schema. A connector that hands every result of a statement the
        same schema object should return that object: the engine keeps per-schema work
        (the IPC schema message) keyed on its identity."""
        return self.reader.schema

    @abc.abstractmethod
    def cancel(self) -> None: ...

    @abc.abstractmethod
    def close(self) -> None: ...

    def __enter__(self) -> QueryHandle:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class BufferedHandle(QueryHandle):
    """A result whole in memory, its source already released (`buffered`)."""

    buffered: ClassVar[bool] = True

    def __init__(self, schema: pa.Schema, batches: Sequence[pa.RecordBatch]) -> None:
        self._schema = schema
        self._batches = list(batches)
        self._reader: pa.RecordBatchReader | None = None

    @property
    def reader(self) -> pa.RecordBatchReader:
        if self._reader is None:
            self._reader = pa.RecordBatchReader.from_batches(self._schema, self._batches)
        return self._reader

    @property
    def schema(self) -> pa.Schema:
        return self._schema

    def cancel(self) -> None:
        """Nothing runs at the source any more."""

    def close(self) -> None:
        self._batches = []  # drop the rows at once
        self._reader = None


@dataclass(frozen=True, slots=True)
class PoolStats:
    """A connector's pool now: connections lent to queries, idle in the pool, and
    callers waiting for one."""

    in_use: int
    idle: int
    waiting: int


class Connector(abc.ABC):
    kind: ClassVar[str]
    """The connection kind this connector serves (`duckdb`, `postgres`, ...)."""
    dialect: ClassVar[str]
    """The sqlglot dialect the compiler generates for this source."""
    param_style: ClassVar[ParamStyle]
    """Placeholder style of the driver."""

    def __init__(self, config: ConnectorConfig) -> None:
        self.config = config

    @abc.abstractmethod
    def test(self) -> None:
        """Open a real connection and run a trivial query; raise a FabricError if not."""

    @abc.abstractmethod
    def introspect(self, schemas: Sequence[str] | None = None) -> list[TableInfo]:
        """Tables and views with columns (source type, Arrow type, nullability), primary
        keys and foreign keys (composite keys whole, in key order). System schemas are
        never listed. `schemas` restricts the search; None means every user schema."""

    @abc.abstractmethod
    def execute(
        self,
        sql: str,
        params: Sequence[Any] = (),
        *,
        timeout: float | None = None,
        batch_rows: int = 65_536,
    ) -> QueryHandle:
        """Start a read-only query with bound parameters (never interpolated) and return
        its handle. `timeout` (seconds) bounds the whole query at the source; when it
        passes, reading raises DeadlineExceeded. Batches hold at most `batch_rows` rows.
        Errors are FabricErrors whose messages carry no row or parameter value."""

    @property
    def capacity(self) -> int | None:
        """Queries this connector runs at once: its pool's size; None when it has no bound
        of its own. The engine admits no more than this many at a time and keeps some of
        them for queries proven short, so long scans cannot take every connection."""
        return None

    def pool_stats(self) -> PoolStats | None:
        """Its pool's figures (metrics); None for a connector without a pool."""
        return None

    async def execute_small(
        self,
        sql: str,
        params: Sequence[Any] = (),
        *,
        timeout: float | None = None,
        max_rows: int,
    ) -> QueryHandle | None:
        """Run a query the compiler proved returns at most `max_rows` rows (a lookup by
        primary key) from the event loop, without blocking it, and return its handle,
        usually `buffered` (the whole result). None when this connector, statement or
        moment cannot: the engine then calls `execute` in a worker thread, which must
        give the same result. A caller that goes away cancels the query at the source.
        The default is None: every source but PostgreSQL answers through a blocking
        driver."""
        return None

    @abc.abstractmethod
    def close(self) -> None:
        """Release pools and clients; idempotent."""


def check_execute_arguments(timeout: float | None, batch_rows: int) -> None:
    """The argument checks every `Connector.execute` starts with."""
    if batch_rows < 1:
        raise InvalidArgument("batch_rows must be at least 1")
    if timeout is not None and timeout <= 0:
        raise DeadlineExceeded("the query's deadline had already passed")
