"""DuckDB connector: a database file opened read-only, results streamed as Arrow.

One DuckDB database connection per connector (opened on first use); every query runs on
its own `.cursor()` (a connection to the same database instance, so queries run in
parallel threads) and streams through DuckDB's own Arrow export (`to_arrow_reader`), so
no Python object is built per row. The session time zone is UTC, so TIMESTAMPTZ comes
out as timestamp[us, tz=UTC] like the PostgreSQL connector's.

DuckDB has no statement timeout: the shared deadline watcher (`connectors.blocking`)
interrupts the cursor when the timeout passes, and `QueryHandle.cancel` interrupts it at
once, every 50 ms while a call into DuckDB is in flight (an interrupt that lands just
before DuckDB starts executing is otherwise lost); the interrupt is reported as
DeadlineExceeded or Cancelled according to which of the two fired. Arrow types in
`introspect` are the ones DuckDB's Arrow export gives for the table (read from a
`LIMIT 0` query), so discovery and execution always agree.

DuckDB errors are mapped by exception class only: their messages echo values (a failed
cast names the string it could not convert), so they are never passed on.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any, ClassVar

import duckdb
import pyarrow as pa

from connectors.base import (
    Connector,
    ConnectorConfig,
    ParamStyle,
    QueryHandle,
    check_execute_arguments,
)
from connectors.batches import slices
from connectors.blocking import BlockingQueryHandle
from connectors.discovery import TableAssembler
from fabric.errors import (
    Cancelled,
    FabricError,
    InternalError,
    InvalidArgument,
    SourceQueryError,
    SourceUnavailable,
)
from fabric.model import ColumnInfo, TableInfo, TableKind

SYSTEM_SCHEMAS = ("information_schema", "pg_catalog")
SYSTEM_CATALOGS = ("system", "temp")


def _quote(identifier: str) -> str:
    return '"' + identifier.replace('"', '""') + '"'


def _map_duckdb_error(exc: BaseException) -> FabricError:
    if isinstance(exc, FabricError):
        return exc
    name = type(exc).__name__
    if isinstance(exc, duckdb.IOException | duckdb.ConnectionException):
        return SourceUnavailable(
            f"the DuckDB database cannot be opened or read ({name}); check that the file "
            "exists and is readable"
        )
    if isinstance(exc, duckdb.InvalidInputException) and "read-only" in str(exc):
        return SourceQueryError(
            f"the source refused the query: the database is opened read-only (DuckDB {name})",
            sqlstate="25006",
        )
    if isinstance(exc, duckdb.Error):
        return SourceQueryError(f"the source refused the query (DuckDB {name})")
    if isinstance(exc, TypeError | ValueError):
        return InvalidArgument(
            "the parameters do not match the statement (one value per placeholder, of a "
            "supported type)"
        )
    return InternalError(f"unexpected error in the DuckDB connector ({name})")


class _DuckDBHandle(BlockingQueryHandle[duckdb.DuckDBPyConnection]):
    """A query on its own cursor; releasing it closes the cursor."""

    cancelled_message = "the query was cancelled; DuckDB interrupted it"
    deadline_action = "was interrupted"
    interrupt_every = 0.05
    interrupt_attempts = None

    def __init__(
        self,
        cursor: duckdb.DuckDBPyConnection,
        sql: str,
        params: Sequence[Any],
        timeout: float | None,
        batch_rows: int,
        on_close: Callable[[_DuckDBHandle], None],
    ) -> None:
        self._batch_rows = batch_rows
        self._on_close = on_close
        super().__init__(cursor, timeout)
        try:
            relation = cursor.sql(sql, params=list(params) if params else None)
            if relation is None:
                raise SourceQueryError("the statement returns no rows; only queries can be run")
        except BaseException as exc:
            mapped = self._map(exc)
            self.close()
            raise mapped from None
        self._relation: duckdb.DuckDBPyRelation | None = relation
        self._reader: pa.RecordBatchReader | None = None

    @property
    def reader(self) -> pa.RecordBatchReader:
        """Built on first access: DuckDB runs the query until its first rows here, in the
        reading thread, so `cancel` from another thread can interrupt it."""
        with self._lock:
            if self._reader is not None:
                return self._reader
            relation = self._relation
        try:
            if relation is None:
                raise Cancelled("the query handle was closed")
            self._enter()
            try:
                source = relation.to_arrow_reader(self._batch_rows)
            finally:
                self._leave()
        except BaseException as exc:
            mapped = self._map(exc)
            self._release(ok=False)
            raise mapped from None
        self._relation = None
        self._source = source
        reader = pa.RecordBatchReader.from_batches(source.schema, self._batches())
        with self._lock:
            self._reader = reader
        return reader

    def _send_interrupt(self, cursor: duckdb.DuckDBPyConnection) -> bool:
        with contextlib.suppress(duckdb.Error):
            cursor.interrupt()
        return True

    def _give_back(self, cursor: duckdb.DuckDBPyConnection, *, ok: bool) -> None:
        with contextlib.suppress(duckdb.Error):
            cursor.close()
        self._on_close(self)

    def _translate_error(self, exc: BaseException) -> FabricError:
        if isinstance(exc, duckdb.InterruptException):
            return Cancelled("the query was interrupted at the source")
        return _map_duckdb_error(exc)

    def _batches(self) -> Iterator[pa.RecordBatch]:
        try:
            while True:
                self._check()
                try:
                    self._enter()
                    try:
                        batch = self._source.read_next_batch()
                    finally:
                        self._leave()
                except StopIteration:
                    break
                except Exception as exc:
                    raise self._map(exc) from None
                self._check()
                yield from slices(batch, self._batch_rows)
        finally:
            self._release(ok=True)


class DuckDBConnector(Connector):
    """DuckDB through its Python API. Settings: `path` (a database file, opened read-only;
    `:memory:` gives an empty in-memory database, for tests and demos)."""

    kind: ClassVar[str] = "duckdb"
    dialect: ClassVar[str] = "duckdb"
    param_style: ClassVar[ParamStyle] = ParamStyle.QMARK

    def __init__(self, config: ConnectorConfig) -> None:
        super().__init__(config)
        path = config.get_str("path")
        if not path:
            raise InvalidArgument("a DuckDB connection needs the `path` of its database file")
        self._path = path
        self._db: duckdb.DuckDBPyConnection | None = None
        self._handles: set[_DuckDBHandle] = set()
        self._lock = threading.Lock()
        self._closed = False

    def _cursor(self) -> duckdb.DuckDBPyConnection:
        with self._lock:
            if self._closed:
                raise SourceUnavailable("the DuckDB connector is closed")
            if self._db is None:
                try:
                    if self._path == ":memory:":
                        db = duckdb.connect(":memory:")
                    else:
                        if not os.path.exists(self._path):
                            raise SourceUnavailable(
                                "the DuckDB database file does not exist; check the `path` setting"
                            )
                        db = duckdb.connect(self._path, read_only=True)
                    db.execute("SET GLOBAL TimeZone = 'UTC'")
                except duckdb.Error as exc:
                    raise _map_duckdb_error(exc) from None
                self._db = db
            return self._db.cursor()

    def test(self) -> None:
        cursor = self._cursor()
        try:
            cursor.execute("SELECT 1").fetchall()
        except duckdb.Error as exc:
            raise _map_duckdb_error(exc) from None
        finally:
            cursor.close()

    def introspect(self, schemas: Sequence[str] | None = None) -> list[TableInfo]:
        cursor = self._cursor()
        try:
            return self._introspect(cursor, schemas)
        except duckdb.Error as exc:
            raise _map_duckdb_error(exc) from None
        finally:
            cursor.close()

    def _introspect(
        self, cursor: duckdb.DuckDBPyConnection, schemas: Sequence[str] | None
    ) -> list[TableInfo]:
        relations = cursor.execute(
            """
            SELECT schema_name, table_name, 'table' AS kind FROM duckdb_tables()
            WHERE database_name = current_database() AND NOT internal
            UNION ALL
            SELECT schema_name, view_name, 'view' FROM duckdb_views()
            WHERE database_name = current_database() AND NOT internal
            ORDER BY 1, 2
            """
        ).fetchall()
        wanted = set(schemas) if schemas is not None else None
        kinds = {
            (schema, table): TableKind.VIEW if kind == "view" else TableKind.TABLE
            for schema, table, kind in relations
            if schema not in SYSTEM_SCHEMAS and (wanted is None or schema in wanted)
        }
        column_rows = cursor.execute(
            """
            SELECT schema_name, table_name, column_name, data_type, is_nullable
            FROM duckdb_columns() WHERE database_name = current_database() AND NOT internal
            ORDER BY schema_name, table_name, column_index
            """
        ).fetchall()
        constraint_rows = cursor.execute(
            """
            SELECT schema_name, table_name, constraint_type, constraint_name,
                   constraint_column_names, referenced_table, referenced_column_names
            FROM duckdb_constraints()
            WHERE database_name = current_database()
              AND constraint_type IN ('PRIMARY KEY', 'FOREIGN KEY')
            ORDER BY schema_name, table_name, constraint_index
            """
        ).fetchall()
        tables = TableAssembler()
        arrow_types: dict[tuple[str, str], dict[str, pa.DataType] | None] = {}
        for schema, table, name, data_type, nullable in column_rows:
            key = (schema, table)
            if key not in kinds:
                continue
            if key not in arrow_types:
                arrow_types[key] = self._arrow_types(cursor, schema, table)
            types = arrow_types[key]
            column = ColumnInfo(name, data_type, types.get(name) if types else None, bool(nullable))
            tables.add_column(schema, table, kinds[key], column)
        for schema, table, ctype, cname, cols, ref_table, ref_cols in constraint_rows:
            if ctype == "PRIMARY KEY":
                for column_name in cols:
                    tables.add_primary_key_column(schema, table, column_name)
                continue
            for column_name, referenced in zip(cols, ref_cols, strict=True):
                # DuckDB keys stay within one schema
                tables.add_foreign_key_column(
                    schema, table, cname, column_name, schema, ref_table, referenced
                )
        return tables.tables()

    @staticmethod
    def _arrow_types(
        cursor: duckdb.DuckDBPyConnection, schema: str, table: str
    ) -> dict[str, pa.DataType] | None:
        """The Arrow types DuckDB's own export gives this table's columns; None when it
        cannot (a broken view, a type Arrow cannot carry): those columns show unsupported."""
        try:
            reader = cursor.sql(
                f"SELECT * FROM {_quote(schema)}.{_quote(table)} LIMIT 0"
            ).to_arrow_reader(1)
            return {field.name: field.type for field in reader.schema}
        except (duckdb.Error, pa.ArrowException):
            return None

    def execute(
        self,
        sql: str,
        params: Sequence[Any] = (),
        *,
        timeout: float | None = None,
        batch_rows: int = 65_536,
    ) -> QueryHandle:
        check_execute_arguments(timeout, batch_rows)
        handle = _DuckDBHandle(self._cursor(), sql, params, timeout, batch_rows, self._forget)
        with self._lock:
            if not handle._released.is_set():
                self._handles.add(handle)
        return handle

    def _forget(self, handle: _DuckDBHandle) -> None:
        with self._lock:
            self._handles.discard(handle)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            db, self._db = self._db, None
            handles = list(self._handles)
        for handle in handles:
            handle.close()
        if db is not None:
            # a query still finishing holds the database; it closes with that query
            with contextlib.suppress(duckdb.Error):
                db.close()
