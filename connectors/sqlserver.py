"""SQL Server connector: pymssql (FreeTDS) with a bounded pool, results into Arrow.

Statements and parameters. The compiler emits T-SQL with FORMAT placeholders (`%s`, a
literal `%` written `%%`). pymssql itself only substitutes quoted values into the text,
which would make every parameter value a new plan and truncates datetimes to
milliseconds, so this connector instead turns the statement into
`EXEC sp_executesql N'<statement with @P1..@Pn>', N'@P1 BIGINT, ...', @P1 = ..., ...`:
the statement text never depends on the values (SQL Server reuses the plan), each value
travels as a typed literal of its declared type (`bind_statement`), and the number of
values must equal the number of placeholders.

Session. pymssql cannot send `ApplicationIntent=ReadOnly` semantics beyond routing
(`read_only=True` is passed: on an availability group it lands on a readable secondary)
and SQL Server has no read-only transaction, so every query runs inside
`BEGIN TRANSACTION` with `SET XACT_ABORT ON` and READ COMMITTED, and the transaction is
always rolled back. That undoes any write a statement could make, but not its side
effects while it runs (locks, sequences): the login should be read-only
(db_datareader) as defence in depth, and the compiler only emits single SELECTs.

Types. Result column types come from `sys.dm_exec_describe_first_result_set` for the
statement and its parameter declarations (cached per text: the text does not depend on
values); `introspect` maps the catalog views' types with the same function:

    bit                                  bool
    tinyint / smallint / int / bigint    uint8 / int16 / int32 / int64
    decimal(p, s) / numeric(p, s)        decimal128(p, s)
    money / smallmoney                   decimal128(19, 4) / decimal128(10, 4)
    float / real                         float64 / float32
    date                                 date32
    time(n)                              time64[us] (100 ns digits beyond us are cut by
                                         the driver)
    datetime / smalldatetime / datetime2 timestamp[us]
    datetimeoffset                       timestamp[us, tz=UTC] (the instant, in UTC)
    char / varchar / nchar / nvarchar /  utf8 (unicode kept: pymssql speaks UTF-8 with
    text / ntext / xml / sysname         the server)
    binary / varbinary / image /         binary
    rowversion / timestamp
    uniqueidentifier                     utf8 (canonical 36-character form)
    geometry / geography / hierarchyid   binary (the CLR serialization)
    sql_variant and anything else        not supported (shown, never dropped)

Timeouts, the watchdog and cancellation. FreeTDS enforces pymssql's `query_timeout`
per connection: every driver call on a lent-out connection is bounded by the query's
remaining time (or the `timeout` setting when the query has none). When it fires,
FreeTDS sends an attention (the server stops the query) and the call fails; the
connection is then discarded, never pooled: that is the watchdog for a server that
stopped answering (a dead peer cannot hang a reader longer than the timeout). An idle
pooled connection is checked with `SELECT 1` before reuse. pymssql's `cancel()`
(dbcancel) is not safe while another thread is inside the same connection, so `cancel`
stops the query at the next batch boundary (dbcancel in the reading thread, then the
connection is discarded), and otherwise within the query timeout: a cancelled SQL
Server query is not stopped at the source at once, as the other sources' are.

Errors: SQL Server error numbers (and a SQLSTATE where one is well known) only; the
server's message is never passed on (conversion errors echo values), nor the password.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import math
import re
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from decimal import Decimal
from typing import Any, ClassVar

import pyarrow as pa
import pymssql
from cachetools import LRUCache

from connectors import failures, registry
from connectors.base import (
    ConnectorConfig,
    ParamStyle,
    QueryHandle,
    check_execute_arguments,
)
from connectors.batches import slices, unrepresentable
from connectors.blocking import BlockingQueryHandle
from connectors.discovery import TableAssembler, schema_filter
from connectors.placeholders import rewrite_format_placeholders
from connectors.pooled import PooledConnector, server_settings
from fabric.errors import (
    Cancelled,
    DeadlineExceeded,
    FabricError,
    InternalError,
    InvalidArgument,
    SourceQueryError,
    SourceUnavailable,
)
from fabric.model import ColumnInfo, TableInfo, TableKind

__all__ = ["SqlServerConnector", "bind_statement", "mssql_arrow_type"]

log = logging.getLogger(__name__)

SYSTEM_SCHEMAS = ("sys", "INFORMATION_SCHEMA", "guest")
_DESCRIBE_CACHE_SIZE = 256
_SESSION = (
    "SET XACT_ABORT ON; SET TRANSACTION ISOLATION LEVEL READ COMMITTED; "
    "SET IMPLICIT_TRANSACTIONS OFF; SET DATEFORMAT ymd; BEGIN TRANSACTION"
)
_ROLLBACK = "IF @@TRANCOUNT > 0 ROLLBACK TRANSACTION"

# -- type mapping ------------------------------------------------------------------------

_SIMPLE: dict[str, pa.DataType | None] = {
    "bit": pa.bool_(),
    "tinyint": pa.uint8(),
    "smallint": pa.int16(),
    "int": pa.int32(),
    "bigint": pa.int64(),
    "money": pa.decimal128(19, 4),
    "smallmoney": pa.decimal128(10, 4),
    "real": pa.float32(),
    "date": pa.date32(),
    "time": pa.time64("us"),
    "datetime": pa.timestamp("us"),
    "smalldatetime": pa.timestamp("us"),
    "datetime2": pa.timestamp("us"),
    "datetimeoffset": pa.timestamp("us", tz="UTC"),
    "char": pa.string(),
    "varchar": pa.string(),
    "nchar": pa.string(),
    "nvarchar": pa.string(),
    "text": pa.string(),
    "ntext": pa.string(),
    "xml": pa.string(),
    "sysname": pa.string(),
    "uniqueidentifier": pa.string(),
    "binary": pa.binary(),
    "varbinary": pa.binary(),
    "image": pa.binary(),
    "timestamp": pa.binary(),
    "rowversion": pa.binary(),
    "geometry": pa.binary(),
    "geography": pa.binary(),
    "hierarchyid": pa.binary(),
    "sql_variant": None,
}
_TYPE_NAME = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]*)\s*(?:\(([^)]*)\))?\s*$")


def mssql_arrow_type(
    type_name: str, precision: int | None = None, scale: int | None = None
) -> pa.DataType | None:
    """Arrow type of a SQL Server type, spelled as the catalog views or
    `sys.dm_exec_describe_first_result_set` give it (`decimal(12,3)`, `nvarchar(max)`,
    `float`, with precision and scale passed apart or inside the parentheses). None when
    the gateway cannot carry the type."""
    match = _TYPE_NAME.match(type_name)
    if match is None:
        return None
    base = match.group(1).lower()
    args = [a.strip() for a in (match.group(2) or "").split(",") if a.strip()]
    if base in ("decimal", "numeric"):
        p = int(args[0]) if args else (precision or 18)
        s = int(args[1]) if len(args) > 1 else (scale or 0)
        return pa.decimal128(max(p, 1), s)
    if base == "float":
        # float(n): n <= 24 is real; the catalog gives the precision in bits (24 or 53)
        bits = int(args[0]) if args else (precision or 53)
        return pa.float32() if bits <= 24 else pa.float64()
    return _SIMPLE.get(base)


# -- parameters --------------------------------------------------------------------------


def _nstring(text: str) -> str:
    return "N'" + text.replace("'", "''") + "'"


def _typed_literal(value: Any) -> tuple[str, str]:
    """(declared type, T-SQL literal) for one parameter value."""
    if value is None:
        return "NVARCHAR(1)", "NULL"
    if isinstance(value, bool):
        return "BIT", "1" if value else "0"
    if isinstance(value, int):
        if -(2**63) <= value < 2**63:
            return "BIGINT", str(value)
        if abs(value) < 10**38:
            return "DECIMAL(38, 0)", str(value)
        raise InvalidArgument("an integer parameter is out of SQL Server's range (38 digits)")
    if isinstance(value, float):
        if not math.isfinite(value):
            raise InvalidArgument("SQL Server cannot hold NaN or infinite float parameters")
        return "FLOAT", repr(value) if "e" in repr(value) else repr(value) + "E0"
    if isinstance(value, Decimal):
        if not value.is_finite():
            raise InvalidArgument("SQL Server cannot hold NaN or infinite decimal parameters")
        exponent = value.as_tuple().exponent
        assert isinstance(exponent, int)
        scale = max(0, -exponent)
        digits = len(value.as_tuple().digits)
        precision = max(digits, scale, 1)
        if precision > 38:
            raise InvalidArgument("a decimal parameter has more than 38 digits")
        return f"DECIMAL(38, {scale})", format(value, "f")
    if isinstance(value, str):
        return "NVARCHAR(MAX)", _nstring(value)
    if isinstance(value, bytes | bytearray | memoryview):
        return "VARBINARY(MAX)", "0x" + bytes(value).hex()
    if isinstance(value, dt.datetime):
        if value.tzinfo is not None:
            return "DATETIMEOFFSET(7)", f"'{value.isoformat(timespec='microseconds')}'"
        return "DATETIME2(7)", f"'{value.isoformat(timespec='microseconds')}'"
    if isinstance(value, dt.date):
        return "DATE", f"'{value.isoformat()}'"
    if isinstance(value, dt.time):
        if value.tzinfo is not None:
            raise InvalidArgument("a time of day with a time zone cannot be bound to SQL Server")
        return "TIME(7)", f"'{value.isoformat(timespec='microseconds')}'"
    if isinstance(value, uuid.UUID):
        return "UNIQUEIDENTIFIER", f"'{value}'"
    raise InvalidArgument(
        f"parameter of type {type(value).__name__} is not supported (int, float, Decimal, "
        "str, bool, bytes, date, time, datetime, UUID or None)"
    )


def bind_statement(sql: str, params: Sequence[Any]) -> tuple[str, str, str]:
    """Turn compiled FORMAT-style T-SQL and its values into (statement with @P1..@Pn,
    parameter declarations, the full `EXEC sp_executesql` batch). InvalidArgument when
    the number of values differs from the number of placeholders."""
    values = list(params)
    statement = rewrite_format_placeholders(sql, len(values), lambda n: f"@P{n}")
    if not values:
        return statement, "", statement
    typed = [_typed_literal(v) for v in values]
    declarations = ", ".join(f"@P{i} {t}" for i, (t, _) in enumerate(typed, start=1))
    assignments = ", ".join(f"@P{i} = {lit}" for i, (_, lit) in enumerate(typed, start=1))
    batch = f"EXEC sp_executesql {_nstring(statement)}, {_nstring(declarations)}, {assignments}"
    return statement, declarations, batch


# -- errors ------------------------------------------------------------------------------

_SQLSTATES: dict[int, str] = {
    102: "42000",
    156: "42000",
    207: "42S22",
    208: "42S02",
    229: "42000",
    230: "42000",
    241: "22007",
    242: "22008",
    245: "22018",
    262: "42000",
    517: "22008",
    1205: "40001",
    1222: "HYT00",
    3906: "25006",
    8114: "22018",
    8115: "22003",
    8134: "22012",
    18456: "28000",
    4060: "08004",
}
_NAMES: dict[int, str] = {
    102: "syntax_error",
    156: "syntax_error",
    207: "invalid_column_name",
    208: "invalid_object_name",
    229: "permission_denied",
    230: "permission_denied",
    241: "invalid_datetime_conversion",
    242: "datetime_out_of_range",
    245: "conversion_failed",
    262: "permission_denied",
    517: "datetime_overflow",
    1205: "deadlock_victim",
    1222: "lock_timeout",
    3906: "read_only_database",
    8114: "conversion_failed",
    8115: "arithmetic_overflow",
    8134: "division_by_zero",
    18456: "login_failed",
    4060: "cannot_open_database",
}
# A wrong or locked login; a database that is not there or not open to the login.
_CREDENTIALS = frozenset({18456, 18452, 18486, 18487, 18488})
_DATABASE_MISSING = frozenset({4060, 4064})
# DB-Library (FreeTDS) numbers: connection and network failures, and the timeout.
_UNAVAILABLE = frozenset({20002, 20004, 20006, 20009, 20017, 20019, 20020, 20047, 20056})
_DBLIB_TIMEOUT = 20003


def error_number(exc: BaseException) -> int | None:
    """The SQL Server or DB-Library error number of a pymssql exception (its first
    argument, as `_mssql` sets it), or None."""
    number = getattr(exc, "number", None)
    if isinstance(number, int) and number:
        return number
    args = getattr(exc, "args", ())
    if args and isinstance(args[0], tuple) and args[0]:
        args = args[0]
    if args and isinstance(args[0], int) and not isinstance(args[0], bool):
        return args[0]
    return None


def map_mssql_error(exc: BaseException, where: str) -> FabricError:
    """A FabricError for a pymssql exception; never carries the server's message."""
    if isinstance(exc, FabricError):
        return exc
    number = error_number(exc)
    if number is not None and isinstance(exc, pymssql.Error | pymssql._mssql.MSSQLException):
        name = _NAMES.get(number, "database_error")
        sqlstate = _SQLSTATES.get(number)
        detail = f"{name} (SQL Server error {number}" + (
            f", SQLSTATE {sqlstate})" if sqlstate else ")"
        )
        if number in _DATABASE_MISSING:
            return failures.database_missing("SQL Server", where, detail, sqlstate)
        if number in _CREDENTIALS:
            return failures.authentication_failed("SQL Server", where, detail, sqlstate)
        if number in _UNAVAILABLE:
            return failures.unreachable("SQL Server", where, detail, sqlstate)
        if number == _DBLIB_TIMEOUT:
            return SourceUnavailable(
                f"SQL Server at {where} stopped answering within the timeout; the "
                "connection was discarded",
            )
        return SourceQueryError(f"the source refused the query: {detail}", sqlstate=sqlstate)
    if isinstance(exc, pymssql.InterfaceError | pymssql.OperationalError | OSError):
        return failures.unreachable("SQL Server", where)
    if isinstance(exc, pymssql.Error):
        return SourceQueryError(f"the SQL Server driver refused the query ({type(exc).__name__})")
    return InternalError(f"unexpected error in the SQL Server connector ({type(exc).__name__})")


# -- results -----------------------------------------------------------------------------


class _Columns:
    """The Arrow schema of a described result and the conversion of rows to batches."""

    def __init__(self, described: Sequence[tuple[str, str]]) -> None:
        self.names = [name for name, _ in described]
        types: list[pa.DataType] = []
        for name, type_name in described:
            arrow_type = mssql_arrow_type(type_name)
            if arrow_type is None:
                raise SourceQueryError(
                    f"result column {name!r} has type {type_name}, which the gateway cannot "
                    "carry; cast it in the query (e.g. to nvarchar)"
                )
            types.append(arrow_type)
        self.types = types
        self.uuids = [t.lower().startswith("uniqueidentifier") for _, t in described]
        self.schema = pa.schema([pa.field(n, t) for n, t in zip(self.names, types, strict=True)])

    def batch(self, rows: Sequence[Sequence[Any]]) -> pa.RecordBatch:
        arrays = []
        for i, column in enumerate(zip(*rows, strict=True)):
            values: Sequence[Any] = column
            if self.uuids[i]:
                values = [None if v is None else str(v) for v in column]
            try:
                arrays.append(pa.array(values, type=self.types[i]))
            except (pa.ArrowException, TypeError, ValueError, OverflowError):
                raise unrepresentable(i, self.names[i], self.types[i]) from None
        return pa.RecordBatch.from_arrays(arrays, schema=self.schema)


class _SqlServerHandle(BlockingQueryHandle[pymssql.Connection]):
    """A query on a pooled connection. FreeTDS's per-call timeout is its deadline (no
    watcher), and nothing interrupts it from another thread: `cancel` only flags it, and
    the reading thread stops at the next batch boundary (dbcancel there)."""

    cancelled_message = "the query was cancelled"

    def __init__(
        self,
        connector: SqlServerConnector,
        conn: pymssql.Connection,
        batch: str,
        columns: _Columns,
        timeout: float | None,
        batch_rows: int,
        deadline: float | None,
    ) -> None:
        super().__init__(conn, timeout, deadlines=None)
        self._connector = connector
        self._batch = batch
        self._columns = columns
        self._deadline_at = deadline
        self._batch_rows = batch_rows
        self._reader = pa.RecordBatchReader.from_batches(columns.schema, self._batches())

    @property
    def reader(self) -> pa.RecordBatchReader:
        return self._reader

    def _batches(self) -> Iterator[pa.RecordBatch]:
        reuse = False
        try:
            self._check()
            conn = self._resource
            if conn is None:
                raise Cancelled("the query handle was closed")
            cursor = conn.cursor()
            self._call(conn, lambda: cursor.execute(self._batch))
            self._started = True
            while True:
                rows = self._call(conn, lambda: cursor.fetchmany(self._batch_rows))
                if len(rows) < self._batch_rows:
                    self._finished = True
                self._check()
                if rows:
                    yield from slices(self._columns.batch(rows), self._batch_rows)
                if self._finished:
                    break
            reuse = True
        except GeneratorExit:
            raise
        finally:
            self._release(ok=reuse)

    def _call(self, conn: pymssql.Connection, fn: Any) -> Any:
        """One driver call, bounded by the query's remaining time (the watchdog)."""
        self._enter()
        try:
            self._connector._arm(conn, self._deadline_at)
            return fn()
        except FabricError:
            raise
        except Exception as exc:
            raise self._map(exc) from None
        finally:
            self._leave()

    def _is_source_timeout(self, exc: BaseException) -> bool:
        return error_number(exc) == _DBLIB_TIMEOUT

    def _translate_error(self, exc: BaseException) -> FabricError:
        return map_mssql_error(exc, self._connector._where)

    def _settle(self, conn: pymssql.Connection, *, ok: bool) -> bool:
        if self._started and not self._finished:
            with contextlib.suppress(Exception):
                conn._conn.cancel()  # dbcancel in this thread: the server stops the query
            return False  # state after a cancel is not worth trusting
        return ok and not self._timed_out

    def _give_back(self, conn: pymssql.Connection, *, ok: bool) -> None:
        self._connector._give_back(conn, reuse=ok)


class SqlServerConnector(PooledConnector[pymssql.Connection]):
    """SQL Server 2016+ (DATETRUNC needs 2022) through pymssql; see the module docstring.

    Settings: host (required), port (1433), database, user (required), encryption
    ("off", "request" or "require"; FreeTDS's default when unset), tds_version ("7.4"),
    login_timeout (10 s), timeout (seconds any driver call may wait when the query has
    no timeout of its own; 300), pool_min (0), pool_max (5), pool_timeout (10 s),
    application_name ("fabric").
    """

    kind: ClassVar[str] = "sqlserver"
    dialect: ClassVar[str] = "tsql"
    param_style: ClassVar[ParamStyle] = ParamStyle.FORMAT
    source_name: ClassVar[str] = "SQL Server"

    def __init__(self, config: ConnectorConfig) -> None:
        config = registry.get(self.kind).with_defaults(config)
        super().__init__(config)
        server = server_settings(config, self.source_name, timeouts=("login_timeout", "timeout"))
        timeout = server.seconds["timeout"]
        if timeout is None:
            raise InvalidArgument("setting 'timeout' is required for a SQL Server connection")
        encryption = config.get_str("encryption")
        if encryption is not None and encryption not in ("off", "request", "require"):
            raise InvalidArgument("encryption must be 'off', 'request' or 'require'")
        self._call_timeout = timeout
        kwargs: dict[str, Any] = {
            "server": server.host,
            "port": str(server.port),
            "user": server.user,
            "database": config.get_str("database") or "",
            "login_timeout": server.seconds["login_timeout"],
            "timeout": timeout,
            "appname": config.get_str("application_name"),
            "tds_version": config.get_str("tds_version"),
            "autocommit": True,  # transactions are explicit and always rolled back
            "read_only": True,
            "charset": "UTF-8",
        }
        if encryption is not None:
            kwargs["encryption"] = encryption
        if config.password is not None:
            kwargs["password"] = config.password
        self._connect_kwargs = kwargs
        self._describe_cache: LRUCache[tuple[str, str], list[tuple[str, str]]] = LRUCache(
            _DESCRIBE_CACHE_SIZE
        )
        self._describe_lock = threading.Lock()
        self._open_pool(server)

    # -- connections --------------------------------------------------------------------

    def _connect(self) -> pymssql.Connection:
        try:
            return pymssql.connect(**self._connect_kwargs)
        except Exception as exc:
            raise map_mssql_error(exc, self._where) from None

    def _ping(self, conn: pymssql.Connection) -> bool:
        self._arm(conn, None, cap=int(self._connect_kwargs["login_timeout"]))
        with conn.cursor() as cur:
            cur.execute("SELECT 1")
            cur.fetchall()
        return True

    def _arm(
        self, conn: pymssql.Connection, deadline: float | None, cap: int | None = None
    ) -> None:
        """Bound the next driver call: the remaining query time, else the call timeout."""
        seconds = self._call_timeout if cap is None else cap
        if deadline is not None:
            seconds = max(1, math.ceil(deadline - time.monotonic()))
        conn._conn.query_timeout = seconds

    def _discard(self, conn: pymssql.Connection) -> None:
        conn.close()

    def _reset(self, conn: pymssql.Connection) -> None:
        self._arm(conn, None)
        with conn.cursor() as cur:
            cur.execute(_ROLLBACK)

    # -- contract -----------------------------------------------------------------------

    def test(self) -> None:
        conn = self._connect()
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT 1")
                cur.fetchall()
        except Exception as exc:
            raise map_mssql_error(exc, self._where) from None
        finally:
            conn.close()

    def introspect(self, schemas: Sequence[str] | None = None) -> list[TableInfo]:
        conn = self._acquire()
        reuse = False
        try:
            self._arm(conn, None)
            filter_sql, filter_params = discovery_filter(schemas)
            with conn.cursor() as cur:
                cur.execute(_SESSION)
                cur.execute(COLUMNS_SQL.format(filter=filter_sql), filter_params)
                column_rows = list(cur.fetchall())
                # the filter appears in both halves of the UNION
                cur.execute(KEYS_SQL.format(filter=filter_sql), filter_params * 2)
                key_rows = list(cur.fetchall())
            reuse = True
        except Exception as exc:
            raise map_mssql_error(exc, self._where) from None
        finally:
            self._give_back(conn, reuse=reuse)
        return build_tables(column_rows, key_rows)

    def execute(
        self,
        sql: str,
        params: Sequence[Any] = (),
        *,
        timeout: float | None = None,
        batch_rows: int = 65_536,
    ) -> QueryHandle:
        check_execute_arguments(timeout, batch_rows)
        deadline = None if timeout is None else time.monotonic() + timeout
        statement, declarations, batch = bind_statement(sql, params)
        conn = self._acquire()
        reuse = False
        try:
            self._arm(conn, deadline)
            with conn.cursor() as cur:
                cur.execute(_SESSION)
            columns = self._describe(conn, statement, declarations)
            reuse = True
        except Exception as exc:
            self._give_back(conn, reuse=reuse)
            if isinstance(exc, FabricError):
                raise
            if error_number(exc) == _DBLIB_TIMEOUT and timeout is not None:
                raise DeadlineExceeded(
                    f"the query ran past its timeout of {timeout}s before it started"
                ) from None
            raise map_mssql_error(exc, self._where) from None
        return _SqlServerHandle(self, conn, batch, columns, timeout, batch_rows, deadline)

    # -- describe -----------------------------------------------------------------------

    def _describe(self, conn: pymssql.Connection, statement: str, declarations: str) -> _Columns:
        key = (statement, declarations)
        with self._describe_lock:
            described = self._describe_cache.get(key)
        if described is None:
            with conn.cursor() as cur:
                cur.execute(DESCRIBE_SQL, (statement, declarations or None))
                rows = list(cur.fetchall())
            if rows and rows[0][2] is not None:
                # the describe itself failed: run nothing, report the server's number
                number = str(rows[0][2])
                raise SourceQueryError(f"the source refused the query: SQL Server error {number}")
            described = [(str(name or ""), str(type_name)) for name, type_name, _ in rows]
            with self._describe_lock:
                self._describe_cache[key] = described
        return _Columns(described)


# -- discovery ---------------------------------------------------------------------------

DESCRIBE_SQL = """
SELECT name, system_type_name, error_number
FROM sys.dm_exec_describe_first_result_set(%s, %s, 0)
WHERE is_hidden = 0 OR error_number IS NOT NULL
ORDER BY column_ordinal
"""
"""Result columns of a statement (parameters: statement text, parameter declarations)."""


def discovery_filter(schemas: Sequence[str] | None) -> tuple[str, tuple[str, ...]]:
    """The WHERE fragment on `s.name` (the schema) and its values, FORMAT style."""
    return schema_filter("s.name", SYSTEM_SCHEMAS, schemas)


COLUMNS_SQL = """
SELECT s.name AS schema_name, o.name AS table_name, o.type AS object_type,
       c.name AS column_name, t.name AS type_name, bt.name AS base_type_name,
       c.max_length, c.precision, c.scale, c.is_nullable
FROM sys.objects AS o
JOIN sys.schemas AS s ON s.schema_id = o.schema_id
JOIN sys.columns AS c ON c.object_id = o.object_id
JOIN sys.types AS t ON t.user_type_id = c.user_type_id
LEFT JOIN sys.types AS bt ON bt.user_type_id = t.system_type_id
WHERE o.type IN ('U', 'V') AND o.is_ms_shipped = 0 AND {filter}
ORDER BY s.name, o.name, c.column_id
"""
"""Tables ('U') and views ('V') with their columns, in column order."""

KEYS_SQL = """
SELECT s.name AS schema_name, o.name AS table_name, 'PK' AS key_type, kc.name AS key_name,
       c.name AS column_name, ic.key_ordinal AS position,
       NULL AS ref_schema, NULL AS ref_table, NULL AS ref_column
FROM sys.key_constraints AS kc
JOIN sys.objects AS o ON o.object_id = kc.parent_object_id
JOIN sys.schemas AS s ON s.schema_id = o.schema_id
JOIN sys.index_columns AS ic
  ON ic.object_id = kc.parent_object_id AND ic.index_id = kc.unique_index_id
JOIN sys.columns AS c ON c.object_id = ic.object_id AND c.column_id = ic.column_id
WHERE kc.type = 'PK' AND ic.key_ordinal > 0 AND {filter}
UNION ALL
SELECT s.name, o.name, 'FK', fk.name, c.name, fkc.constraint_column_id,
       rs.name, ro.name, rc.name
FROM sys.foreign_keys AS fk
JOIN sys.foreign_key_columns AS fkc ON fkc.constraint_object_id = fk.object_id
JOIN sys.objects AS o ON o.object_id = fk.parent_object_id
JOIN sys.schemas AS s ON s.schema_id = o.schema_id
JOIN sys.columns AS c ON c.object_id = fkc.parent_object_id AND c.column_id = fkc.parent_column_id
JOIN sys.objects AS ro ON ro.object_id = fk.referenced_object_id
JOIN sys.schemas AS rs ON rs.schema_id = ro.schema_id
JOIN sys.columns AS rc
  ON rc.object_id = fkc.referenced_object_id AND rc.column_id = fkc.referenced_column_id
WHERE {filter}
ORDER BY 1, 2, 3, 4, 6
"""
"""Primary keys (in key order) and foreign keys (composite kept whole, in column order)."""


def _source_type(type_name: str, max_length: int, precision: int, scale: int) -> str:
    name = type_name.lower()
    if name in ("decimal", "numeric"):
        return f"{name}({precision},{scale})"
    if name in ("varchar", "char", "varbinary", "binary"):
        return f"{name}({'max' if max_length == -1 else max_length})"
    if name in ("nvarchar", "nchar"):
        return f"{name}({'max' if max_length == -1 else max_length // 2})"
    if name in ("datetime2", "time", "datetimeoffset"):
        return f"{name}({scale})"
    return name


def build_tables(column_rows: Sequence[Any], key_rows: Sequence[Any]) -> list[TableInfo]:
    """TableInfos from the rows of COLUMNS_SQL and KEYS_SQL."""
    tables = TableAssembler()
    for (
        schema,
        table,
        object_type,
        name,
        type_name,
        base_type,
        max_length,
        precision,
        scale,
        nullable,
    ) in column_rows:
        kind = TableKind.VIEW if str(object_type).strip() == "V" else TableKind.TABLE
        # an alias type (CREATE TYPE ... FROM) maps through its base type
        effective = str(base_type or type_name)
        source = _source_type(str(type_name), int(max_length), int(precision), int(scale))
        arrow_type = mssql_arrow_type(effective, int(precision), int(scale))
        if effective.lower() == "float":
            arrow_type = pa.float32() if int(precision) <= 24 else pa.float64()
        tables.add_column(
            str(schema),
            str(table),
            kind,
            ColumnInfo(
                name=str(name), source_type=source, arrow_type=arrow_type, nullable=bool(nullable)
            ),
        )
    for schema, table, key_type, key_name, column, _, ref_schema, ref_table, ref_column in key_rows:
        if key_type == "PK":
            tables.add_primary_key_column(str(schema), str(table), str(column))
        else:
            tables.add_foreign_key_column(
                str(schema),
                str(table),
                str(key_name),
                str(column),
                str(ref_schema),
                str(ref_table),
                str(ref_column),
            )
    return tables.tables()
