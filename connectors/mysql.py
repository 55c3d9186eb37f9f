"""MySQL / MariaDB connector: PyMySQL with a bounded pool, unbuffered results into Arrow.

Sessions. Every connection starts with `SET time_zone = '+00:00'` (so TIMESTAMP values
arrive in UTC) and utf8mb4. The server flavour is read once per connection
(`SELECT VERSION()`): the statement timeout is `max_statement_time` (seconds) on MariaDB
and `max_execution_time` (milliseconds, SELECT only) on MySQL. Every query runs inside
`START TRANSACTION READ ONLY` (a write fails with error 1792) that is always rolled back.

Results. The statement runs on an unbuffered cursor (`SSCursor`) when the reader is first
asked for, in the reading thread; rows are fetched `batch_rows` at a time and turned into
Arrow one column at a time (`pa.array(column, type=...)`), never one dict per row. Types
come from the result's column definitions (type code, flags, length, decimals, charset),
and `introspect` uses the same mapping from information_schema, so discovery and results
agree:

    TINYINT / SMALLINT / MEDIUMINT / INT / BIGINT   int8 / int16 / int32 / int32 / int64
      ... UNSIGNED                                  uint8 / uint16 / uint32 / uint32 / uint64
    TINYINT(1), BOOLEAN                             int8 (MySQL has no boolean type: a
                                                    TINYINT(1) can hold -128..127)
    YEAR                                            int16
    DECIMAL(p, s)                                   decimal128(p, s); p > 38: decimal128(38, s)
                                                    when the first batch's values fit it,
                                                    else decimal256(p, s)
    FLOAT / DOUBLE                                  float32 / float64
    DATE                                            date32
    DATETIME                                        timestamp[us] (naive, as stored)
    TIMESTAMP                                       timestamp[us, tz=UTC] (session in UTC)
    TIME                                            duration[us] (MySQL TIME is a signed
                                                    interval, -838:59:59 .. 838:59:59,
                                                    not a time of day)
    CHAR / VARCHAR / TEXT / ENUM / SET / JSON       utf8 (utf8mb4 on the wire: emoji kept)
    BINARY / VARBINARY / BLOB / GEOMETRY            binary
    BIT(n)                                          uint64 (the bits as an unsigned number)

Zero and partial dates ('0000-00-00', '2024-00-10', year 0) have no Arrow or Python value.
Setting `zero_dates` decides: "null" (default, what MySQL's own Connector/J and ODBC offer
as convertToNull) turns them into NULL; "error" fails the read with SourceQueryError.

Parameters are FORMAT style (`%s`, literal `%` written `%%`): PyMySQL escapes each value
by type and substitutes it client-side, so the statement text always goes through `%`
formatting, with an empty tuple when there are no parameters. Timezone-aware datetimes
are bound as UTC wall time (the session time zone), bytes as `_binary'...'`.

Cancellation and timeouts. `cancel`, the client-side deadline (the shared watcher of
`connectors.blocking`) and `close` of an unfinished result send `KILL QUERY <thread id>`
from a second, short-lived connection (a user may always kill its own threads), again
every 0.2 s while a driver call is in flight (a KILL that lands before the statement
reaches the server is lost), then the connection is discarded rather than pooled (a late
KILL must never hit a later query). A query that still holds its connection 2 s after it
was told to stop (a server that answers neither it nor the KILL) has the connection's
socket shut down under it. The server-side statement timeout is a second line of
defence. A killed query reads as Cancelled or DeadlineExceeded.

Dead connections. A pooled connection whose socket has something to read while idle
(the server closed the session: a restart, KILL, wait_timeout) is discarded before use;
one that fails at the first statement of a query (the transaction's start) because the
link is gone is discarded and the query runs once more on a fresh connection.

Errors: MySQL error numbers and their SQLSTATE (where known) only; the server's message
is never passed on (it echoes values and query text), nor is the password.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
from collections.abc import Iterator, Sequence
from decimal import Decimal
from typing import Any, ClassVar

import pyarrow as pa
import pymysql  # type: ignore[import-untyped]  # no stubs are published with PyMySQL
import pymysql.cursors  # type: ignore[import-untyped]
from pymysql.constants import ER, FIELD_TYPE, FLAG  # type: ignore[import-untyped]

from connectors import failures, registry
from connectors.base import (
    ConnectorConfig,
    ParamStyle,
    QueryHandle,
    check_execute_arguments,
)
from connectors.batches import narrowed_decimals, unrepresentable
from connectors.blocking import BlockingQueryHandle
from connectors.discovery import TableAssembler, schema_filter
from connectors.pooled import PooledConnector, server_settings
from connectors.sockets import idle_connection_is_dead, sever
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

__all__ = ["MySQLConnector", "mysql_column_arrow_type", "mysql_result_arrow_type"]

log = logging.getLogger(__name__)

SYSTEM_SCHEMAS = ("mysql", "information_schema", "performance_schema", "sys")
_BINARY_CHARSET = 63
_KILL_RETRY_S = 0.2
_KILL_RETRIES = 25
_SEVER_AFTER = 2.0
_LINK_LOST = frozenset({2006, 2013, 2055})
"""Server gone away, lost connection during query, lost connection to server."""
_ZERO_DATE_MODES = ("null", "error")

_ER_NAMES: dict[int, str] = {
    value: name for name, value in vars(ER).items() if name.isupper() and isinstance(value, int)
}
# MariaDB-only and newer MySQL numbers PyMySQL's table lacks.
_ER_NAMES.update(
    {
        1792: "CANT_EXECUTE_IN_READ_ONLY_TRANSACTION",
        1927: "CONNECTION_KILLED",
        1969: "STATEMENT_TIMEOUT",
        3024: "QUERY_TIMEOUT",
        4038: "JSON_SYNTAX",
    }
)
# PyMySQL parses the SQLSTATE of an error packet but does not keep it; these are the
# server's own pairs for the errors a read-only query meets most.
_SQLSTATES: dict[int, str] = {
    1044: "42000",
    1045: "28000",
    1049: "42000",
    1054: "42S22",
    1064: "42000",
    1142: "42000",
    1143: "42000",
    1146: "42S02",
    1264: "22003",
    1292: "22007",
    1317: "70100",
    1365: "22012",
    1366: "HY000",
    1690: "22003",
    1698: "28000",
    1792: "25006",
    1969: "70100",
    3024: "HY000",
}
_UNAVAILABLE = frozenset({1053, 1130, 1152, 1153, 1184, 1927, 2002, 2003, 2005})
_UNAVAILABLE |= frozenset({2006, 2013, 2014, 2026, 2055})
# Told apart for the message: a wrong login, a database that is not there (or not the
# user's: 1044), a server refusing more sessions, one that cannot be reached.
_CREDENTIALS = frozenset({1045, 1251, 1698, 1862})
_DATABASE_MISSING = frozenset({1044, 1049})
_BUSY = frozenset({1040, 1129, 1203})
_TIMEOUTS = frozenset({1969, 3024})
_INTERRUPTED = 1317


def _error_name(number: int) -> str:
    return _ER_NAMES.get(number, "DATABASE_ERROR")


def _error_number(exc: BaseException) -> int | None:
    args = getattr(exc, "args", ())
    if args and isinstance(args[0], int) and not isinstance(args[0], bool):
        return args[0]
    return None


# -- type mapping ------------------------------------------------------------------------


def _decimal_type(precision: int, scale: int) -> pa.DataType:
    precision = max(precision, scale, 1)
    if precision <= 38:
        return pa.decimal128(precision, scale)
    if precision <= 76:
        return pa.decimal256(precision, scale)
    return pa.string()


# The result column types that have a name in information_schema: a result column maps
# through `mysql_column_arrow_type` like a table column, so the two always agree.
_RESULT_TYPE_NAMES = {
    FIELD_TYPE.TINY: "tinyint",
    FIELD_TYPE.SHORT: "smallint",
    FIELD_TYPE.INT24: "mediumint",
    FIELD_TYPE.LONG: "int",
    FIELD_TYPE.LONGLONG: "bigint",
    FIELD_TYPE.FLOAT: "float",
    FIELD_TYPE.DOUBLE: "double",
    FIELD_TYPE.YEAR: "year",
    FIELD_TYPE.DATE: "date",
    FIELD_TYPE.NEWDATE: "date",
    FIELD_TYPE.DATETIME: "datetime",
    FIELD_TYPE.TIMESTAMP: "timestamp",
    FIELD_TYPE.TIME: "time",
    FIELD_TYPE.BIT: "bit",
    FIELD_TYPE.JSON: "json",  # MySQL sends JSON as utf8mb4 text with the binary charset
    FIELD_TYPE.GEOMETRY: "geometry",
}
_TEXT_OR_BYTES = frozenset(
    {
        FIELD_TYPE.VARCHAR,
        FIELD_TYPE.VAR_STRING,
        FIELD_TYPE.STRING,
        FIELD_TYPE.TINY_BLOB,
        FIELD_TYPE.MEDIUM_BLOB,
        FIELD_TYPE.LONG_BLOB,
        FIELD_TYPE.BLOB,
        FIELD_TYPE.ENUM,
        FIELD_TYPE.SET,
    }
)


def mysql_result_arrow_type(
    type_code: int, flags: int, length: int, scale: int, charsetnr: int
) -> pa.DataType:
    """Arrow type of a result column from its column definition packet."""
    unsigned = bool(flags & FLAG.UNSIGNED)
    if type_code in (FIELD_TYPE.NEWDECIMAL, FIELD_TYPE.DECIMAL):
        # length counts the digits plus a point (scale > 0) and a sign (signed)
        precision = length - (1 if scale > 0 else 0) - (0 if unsigned else 1)
        return _decimal_type(precision, scale)
    name = _RESULT_TYPE_NAMES.get(type_code)
    if name is not None:
        return mysql_column_arrow_type(name, "unsigned" if unsigned else "")
    if type_code in _TEXT_OR_BYTES:
        return pa.binary() if charsetnr == _BINARY_CHARSET else pa.string()
    return pa.string()  # NULL-typed columns (SELECT NULL) and anything new


_COLUMN_INTS = {
    "tinyint": (pa.int8(), pa.uint8()),
    "smallint": (pa.int16(), pa.uint16()),
    "mediumint": (pa.int32(), pa.uint32()),
    "int": (pa.int32(), pa.uint32()),
    "integer": (pa.int32(), pa.uint32()),
    "bigint": (pa.int64(), pa.uint64()),
}
_COLUMN_SIMPLE: dict[str, pa.DataType] = {
    "float": pa.float32(),
    "double": pa.float64(),
    "real": pa.float64(),
    "year": pa.int16(),
    "date": pa.date32(),
    "datetime": pa.timestamp("us"),
    "timestamp": pa.timestamp("us", tz="UTC"),
    "time": pa.duration("us"),
    "bit": pa.uint64(),
    "json": pa.string(),
    "binary": pa.binary(),
    "varbinary": pa.binary(),
    "tinyblob": pa.binary(),
    "blob": pa.binary(),
    "mediumblob": pa.binary(),
    "longblob": pa.binary(),
}
_COLUMN_GEOMETRY = frozenset(
    {
        "geometry",
        "point",
        "linestring",
        "polygon",
        "multipoint",
        "multilinestring",
        "multipolygon",
        "geometrycollection",
        "geomcollection",
    }
)


def mysql_column_arrow_type(
    data_type: str,
    column_type: str,
    precision: int | None = None,
    scale: int | None = None,
    charset: str | None = None,
) -> pa.DataType:
    """Arrow type of a table column from information_schema.COLUMNS (DATA_TYPE,
    COLUMN_TYPE, NUMERIC_PRECISION, NUMERIC_SCALE, CHARACTER_SET_NAME); the same mapping
    as `mysql_result_arrow_type` gives for the column in a result."""
    base = data_type.lower()
    if base in _COLUMN_INTS:
        signed, unsigned = _COLUMN_INTS[base]
        return unsigned if "unsigned" in column_type.lower() else signed
    if base in ("decimal", "numeric", "dec", "fixed"):
        return _decimal_type(int(precision or 10), int(scale or 0))
    if base in _COLUMN_SIMPLE:
        return _COLUMN_SIMPLE[base]
    if base in _COLUMN_GEOMETRY:
        return pa.binary()
    if base in ("char", "varchar") and charset is None:
        return pa.binary()  # CHAR ... CHARACTER SET binary
    return pa.string()  # char, varchar, *text, enum, set, and anything new


# -- results -----------------------------------------------------------------------------


def _is_temporal(arrow_type: pa.DataType) -> bool:
    return bool(pa.types.is_date(arrow_type) or pa.types.is_timestamp(arrow_type))


def _bits(column: Sequence[Any]) -> list[int | None]:
    return [None if v is None else int.from_bytes(v, "big") for v in column]


class _ResultColumns:
    """The Arrow schema of a result and the conversion of fetched rows into batches."""

    def __init__(self, fields: Sequence[Any], zero_dates: str) -> None:
        self.names = [str(f.name) for f in fields]
        self.types = [
            mysql_result_arrow_type(f.type_code, f.flags, f.length, f.scale, f.charsetnr)
            for f in fields
        ]
        self.bits = [f.type_code == FIELD_TYPE.BIT for f in fields]
        self.schema = pa.schema(
            [pa.field(n, t) for n, t in zip(self.names, self.types, strict=True)]
        )
        self.zero_dates = zero_dates

    def batch(self, rows: Sequence[Sequence[Any]]) -> pa.RecordBatch:
        if not self.names:
            return pa.RecordBatch.from_pylist([{}] * len(rows), schema=self.schema)
        arrays = []
        for i, column in enumerate(zip(*rows, strict=True)):
            arrays.append(self._array(i, column))
        return pa.RecordBatch.from_arrays(arrays, schema=self.schema)

    def _array(self, i: int, column: Sequence[Any]) -> pa.Array:
        arrow_type = self.types[i]
        values: Sequence[Any] = _bits(column) if self.bits[i] else column
        try:
            return pa.array(values, type=arrow_type)
        except (pa.ArrowException, TypeError, ValueError, OverflowError):
            pass
        if _is_temporal(arrow_type) and any(isinstance(v, str) for v in values):
            # PyMySQL hands back a date Python cannot hold (zero or partial) as its text.
            if self.zero_dates == "error":
                raise SourceQueryError(
                    f"result column #{i + 1} ({self.names[i]!r}) holds a zero or partial date "
                    "('0000-00-00'), which has no value in Arrow; filter it out, use NULLIF in "
                    "the query, or set zero_dates to 'null'"
                ) from None
            cleaned = [None if isinstance(v, str) else v for v in values]
            try:
                return pa.array(cleaned, type=arrow_type)
            except (pa.ArrowException, TypeError, ValueError, OverflowError):
                pass
        raise unrepresentable(i, self.names[i], arrow_type) from None


# -- connections -------------------------------------------------------------------------


class _Conn:
    """A pooled PyMySQL connection with what the connector learned about its session."""

    __slots__ = ("mariadb", "raw", "statement_timeout", "thread_id")

    def __init__(self, raw: pymysql.connections.Connection[Any], mariadb: bool) -> None:
        self.raw = raw
        self.mariadb = mariadb
        self.thread_id = int(raw.thread_id())
        self.statement_timeout: float | None = None  # as last set on the session (None: off)


def _close_raw(raw: pymysql.connections.Connection[Any]) -> None:
    result = raw._result
    if result is not None:
        # An unread unbuffered result would try to drain itself from the closed socket
        # when it (or its cursor) is garbage collected.
        result.unbuffered_active = False
        raw._result = None
    try:
        raw.close()
    except Exception:
        raw._force_close()  # closing an unfinished or broken connection: drop the socket


_ALLOWED_PARAM_TYPES = (
    int,
    float,
    Decimal,
    str,
    bytes,
    bytearray,
    dt.date,
    dt.time,
    dt.timedelta,
)


def _bind_value(value: Any) -> Any:
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, dt.datetime) and value.tzinfo is not None:
        return value.astimezone(dt.UTC).replace(tzinfo=None)
    if isinstance(value, dt.time) and value.tzinfo is not None:
        raise InvalidArgument("a time of day with a time zone cannot be bound to MySQL")
    if isinstance(value, bytearray):
        return bytes(value)
    if isinstance(value, _ALLOWED_PARAM_TYPES):
        return value
    raise InvalidArgument(
        f"parameter of type {type(value).__name__} is not supported (int, float, Decimal, "
        "str, bool, bytes, date, time, datetime, timedelta or None)"
    )


class _MySQLHandle(BlockingQueryHandle[_Conn]):
    """A query on a pooled connection; the interrupt is `KILL QUERY` from a second one."""

    interrupt_every = _KILL_RETRY_S
    interrupt_attempts = _KILL_RETRIES
    sever_after = _SEVER_AFTER

    def __init__(
        self,
        connector: MySQLConnector,
        conn: _Conn,
        sql: str,
        params: tuple[Any, ...],
        timeout: float | None,
        batch_rows: int,
    ) -> None:
        self._connector = connector
        self._thread_id = conn.thread_id
        self._sql = sql
        self._params = params
        self._batch_rows = batch_rows
        self._reader: pa.RecordBatchReader | None = None
        super().__init__(conn, timeout)

    @property
    def reader(self) -> pa.RecordBatchReader:
        """Runs the statement on first access, in the reading thread, so `cancel` from
        another thread can stop it while it computes its first rows."""
        with self._lock:
            if self._reader is not None:
                return self._reader
            flagged = self._flag_error()
            conn = self._resource
            if flagged is None and conn is None:
                flagged = Cancelled("the query handle was closed")
            if flagged is None:
                self._started = True
                self._busy = True
        if flagged is not None or conn is None:
            self._release(ok=not self._started)
            raise flagged or Cancelled("the query handle was closed")
        try:
            cursor = pymysql.cursors.SSCursor(conn.raw)
            try:
                cursor.execute(self._sql, self._params)
            except (TypeError, ValueError, pymysql.ProgrammingError) as exc:
                if _error_number(exc) is not None:
                    raise  # the server's error, not the client's formatting
                self._finished = True  # formatting failed before anything was sent
                raise InvalidArgument(
                    "the parameters do not match the statement (one value per %s "
                    "placeholder; a literal % must be written %%)"
                ) from None
            result = cursor._result  # the column definitions PyMySQL parsed (flags, charset)
            fields = list(result.fields) if result is not None and result.fields else []
            columns = _ResultColumns(fields, self._connector._zero_dates)
            if not fields:
                self._finished = True
        except BaseException as exc:
            self._leave()
            raise self._fail(exc) from None
        self._leave()
        flagged = self._flag_error()
        if flagged is not None:
            self._release(ok=False)
            raise flagged
        schema, batches = narrowed_decimals(columns.schema, self._batches(cursor, columns))
        reader = pa.RecordBatchReader.from_batches(schema, batches)
        with self._lock:
            self._reader = reader
        return reader

    def _batches(
        self, cursor: pymysql.cursors.SSCursor, columns: _ResultColumns
    ) -> Iterator[pa.RecordBatch]:
        reuse = False
        try:
            while not self._finished:
                self._enter()
                try:
                    rows = cursor.fetchmany(self._batch_rows)
                except BaseException as exc:
                    self._leave()
                    raise self._fail(exc, release=False) from None
                self._leave()
                if len(rows) < self._batch_rows:
                    self._finished = True
                self._check()
                if rows:
                    yield columns.batch(rows)
            self._check()
            reuse = True
        except GeneratorExit:
            raise
        except FabricError:
            reuse = self._finished
            raise
        finally:
            self._release(ok=reuse)

    def _fail(self, exc: BaseException, *, release: bool = True) -> FabricError:
        """Map a failure of a driver call and, when `release`, give the connection back
        (reused only after an error the server reported cleanly)."""
        number = _error_number(exc)
        clean_server_error = (
            number is not None
            and number < 2000
            and isinstance(exc, pymysql.MySQLError)
            and not self._interrupted
        )
        if clean_server_error:
            self._finished = True
        mapped = self._map(exc)
        if release:
            self._release(ok=clean_server_error or isinstance(exc, InvalidArgument))
        return mapped

    def _is_source_timeout(self, exc: BaseException) -> bool:
        return _error_number(exc) in _TIMEOUTS

    def _translate_error(self, exc: BaseException) -> FabricError:
        return self._connector._map_error(exc)

    def _send_interrupt(self, conn: _Conn) -> bool:
        """KILL QUERY while the statement may run; re-sent while a driver call is still
        in flight (a KILL that lands before the statement reaches the server is lost)."""
        with self._lock:
            if not self._started or (self._finished and not self._busy):
                return False
        self._connector._kill_query(self._thread_id)
        return True

    def _sever(self, conn: _Conn) -> bool:
        sock = conn.raw._sock
        return sock is not None and sever(sock.fileno())

    def _settle(self, conn: _Conn, *, ok: bool) -> bool:
        """Kill an unfinished statement, then roll back a connection to reuse (while
        the deadline, and a cut-off once the query was told to stop, still guard)."""
        with self._lock:
            unfinished = self._started and not self._finished
            kill = unfinished and not self._interrupted
            if kill:
                self._interrupted = True
        if kill:
            self._connector._kill_query(conn.thread_id)  # stop it before the socket goes
        reuse = ok and not unfinished and not self._interrupted
        if reuse:
            try:
                self._connector._reset(conn)
            except Exception:
                reuse = False
        return reuse

    def _give_back(self, conn: _Conn, *, ok: bool) -> None:
        self._connector._pool.release(conn, reuse=ok)  # settled already: no I/O


class MySQLConnector(PooledConnector[_Conn]):
    """MySQL 8 and MariaDB 10.5+ through PyMySQL; see the module docstring.

    Settings: host (required), port (3306), database, user (required), connect_timeout
    (10 s), read_timeout (seconds a socket read may wait; none by default: the statement
    timeout bounds queries), charset (utf8mb4), pool_min (0), pool_max (5), pool_timeout
    (10 s), ssl_ca (path of a CA bundle; enables TLS), zero_dates ("null" or "error").
    """

    kind: ClassVar[str] = "mysql"
    dialect: ClassVar[str] = "mysql"
    param_style: ClassVar[ParamStyle] = ParamStyle.FORMAT
    source_name: ClassVar[str] = "MySQL"

    def __init__(self, config: ConnectorConfig) -> None:
        config = registry.get(self.kind).with_defaults(config)
        super().__init__(config)
        server = server_settings(
            config, self.source_name, timeouts=("connect_timeout", "read_timeout")
        )
        zero_dates = (config.get_str("zero_dates") or "").lower()
        if zero_dates not in _ZERO_DATE_MODES:
            raise InvalidArgument("zero_dates must be 'null' or 'error'")
        charset = config.get_str("charset") or "utf8mb4"
        kwargs: dict[str, Any] = {
            "host": server.host,
            "port": server.port,
            "user": server.user,
            "database": config.get_str("database"),
            "charset": charset,
            "connect_timeout": server.seconds["connect_timeout"],
            "read_timeout": server.seconds["read_timeout"],
            "autocommit": True,  # transactions are explicit: START TRANSACTION READ ONLY
            "binary_prefix": True,
            "local_infile": False,
            # GROUP_CONCAT cuts its value silently at group_concat_max_len (MySQL's default
            # is 1,024 bytes): above the longest `left(string_agg(...), n)` the compiler
            # lets through (65,535 characters of up to 4 bytes), nothing is cut unseen.
            "init_command": "SET time_zone = '+00:00', group_concat_max_len = 1048576",
            "program_name": config.get_str("application_name"),
        }
        ssl_ca = config.get_str("ssl_ca")
        if ssl_ca:
            kwargs["ssl_ca"] = ssl_ca
        if config.password is not None:
            kwargs["password"] = config.password
        self._connect_kwargs = kwargs
        self._zero_dates = zero_dates
        self._open_pool(server)

    # -- connections --------------------------------------------------------------------

    def _open_raw(self, **overrides: Any) -> pymysql.connections.Connection[Any]:
        try:
            return pymysql.connect(**{**self._connect_kwargs, **overrides})
        except pymysql.MySQLError as exc:
            raise self._map_error(exc) from None
        except OSError:
            raise self._unreachable() from None

    def _connect(self) -> _Conn:
        raw = self._open_raw()
        try:
            with raw.cursor() as cur:
                cur.execute("SELECT VERSION()")
                row = cur.fetchone()
            version = str(row[0]) if row else ""
        except pymysql.MySQLError as exc:
            _close_raw(raw)
            raise self._map_error(exc) from None
        return _Conn(raw, "mariadb" in version.lower())

    def _discard(self, conn: _Conn) -> None:
        _close_raw(conn.raw)

    def _ping(self, conn: _Conn) -> bool:
        conn.raw.ping(reconnect=False)
        return True

    def _alive(self, conn: _Conn) -> bool:
        sock = conn.raw._sock
        return sock is not None and not idle_connection_is_dead(sock.fileno())

    def _reset(self, conn: _Conn) -> None:
        conn.raw.rollback()  # read-only: nothing to keep

    def _begin(self, conn: _Conn, timeout: float | None) -> None:
        """Set the statement timeout (when it changed) and open the read-only transaction."""
        with conn.raw.cursor() as cur:
            if timeout != conn.statement_timeout:
                if conn.mariadb:
                    value = 0.0 if timeout is None else max(timeout, 0.001)
                    cur.execute(f"SET SESSION max_statement_time = {value:.3f}")
                else:
                    ms = 0 if timeout is None else max(1, math.ceil(timeout * 1000))
                    cur.execute(f"SET SESSION max_execution_time = {ms}")
                conn.statement_timeout = timeout
            cur.execute("START TRANSACTION READ ONLY")

    def _kill_query(self, thread_id: int) -> None:
        try:
            timeout = min(int(self._connect_kwargs["connect_timeout"]), 5)
            raw = self._open_raw(connect_timeout=timeout, read_timeout=timeout)
        except FabricError as exc:
            log.warning("mysql kill: no second connection (%s)", exc.code)
            return
        try:
            with raw.cursor() as cur:
                cur.execute("KILL QUERY %s", (thread_id,))
        except pymysql.MySQLError as exc:
            if _error_number(exc) != 1094:  # unknown thread: it already ended
                log.warning("mysql kill failed: error %s", _error_number(exc))
        finally:
            _close_raw(raw)

    # -- contract -----------------------------------------------------------------------

    def test(self) -> None:
        raw = self._open_raw()
        try:
            with raw.cursor() as cur:
                cur.execute("SELECT 1")
                cur.fetchall()
        except pymysql.MySQLError as exc:
            raise self._map_error(exc) from None
        finally:
            _close_raw(raw)

    def introspect(self, schemas: Sequence[str] | None = None) -> list[TableInfo]:
        conn = self._acquire()
        reuse = False
        try:
            self._begin(conn, None)
            filter_sql, filter_params = schema_filter("c.TABLE_SCHEMA", SYSTEM_SCHEMAS, schemas)
            with conn.raw.cursor() as cur:
                cur.execute(_COLUMNS_SQL.format(filter=filter_sql), filter_params)
                column_rows = list(cur.fetchall())
                cur.execute(_KEYS_SQL.format(filter=filter_sql), filter_params)
                key_rows = list(cur.fetchall())
            reuse = True
        except pymysql.MySQLError as exc:
            reuse = (_error_number(exc) or 2000) < 2000
            raise self._map_error(exc) from None
        finally:
            self._give_back(conn, reuse=reuse)
        return _build_tables(column_rows, key_rows)

    def execute(
        self,
        sql: str,
        params: Sequence[Any] = (),
        *,
        timeout: float | None = None,
        batch_rows: int = 65_536,
    ) -> QueryHandle:
        check_execute_arguments(timeout, batch_rows)
        bound = tuple(_bind_value(value) for value in params)
        for attempt in (0, 1):
            conn = self._acquire(timeout)
            try:
                self._begin(conn, timeout)
            except BaseException as exc:
                reuse = isinstance(exc, pymysql.MySQLError) and (_error_number(exc) or 2000) < 2000
                self._give_back(conn, reuse=reuse)
                lost = isinstance(exc, OSError) or _error_number(exc) in _LINK_LOST
                if attempt == 0 and lost:
                    continue  # the connection died in the pool: once more on a fresh one
                if isinstance(exc, FabricError):
                    raise
                raise self._map_error(exc) from None
            return _MySQLHandle(self, conn, sql, bound, timeout, batch_rows)
        raise InternalError("unreachable: the second attempt returns or raises")

    # -- errors -------------------------------------------------------------------------

    def _unreachable(self) -> SourceUnavailable:
        return failures.unreachable("MySQL", self._where)

    def _map_error(self, exc: BaseException) -> FabricError:
        if isinstance(exc, FabricError):
            return exc
        number = _error_number(exc)
        if number is not None and isinstance(exc, pymysql.MySQLError):
            name = _error_name(number)
            sqlstate = _SQLSTATES.get(number)
            detail = f"{name} (MySQL error {number}" + (
                f", SQLSTATE {sqlstate})" if sqlstate else ")"
            )
            if number in _DATABASE_MISSING:
                return failures.database_missing("MySQL", self._where, detail, sqlstate)
            if number in _CREDENTIALS:
                return failures.authentication_failed("MySQL", self._where, detail, sqlstate)
            if number in _BUSY:
                return failures.busy("MySQL", self._where, detail, sqlstate)
            if number in _UNAVAILABLE:
                return failures.unreachable("MySQL", self._where, detail, sqlstate)
            if number in _TIMEOUTS:
                return DeadlineExceeded(
                    f"the query ran past its timeout at the source: {detail}", sqlstate=sqlstate
                )
            if number == _INTERRUPTED:
                return SourceQueryError(
                    f"the query was killed at the source by someone else: {detail}",
                    sqlstate=sqlstate,
                )
            return SourceQueryError(f"the source refused the query: {detail}", sqlstate=sqlstate)
        if isinstance(exc, pymysql.MySQLError | OSError):
            return self._unreachable()
        return InternalError(f"unexpected error in the MySQL connector ({type(exc).__name__})")


# -- discovery ---------------------------------------------------------------------------


_COLUMNS_SQL = """
SELECT c.TABLE_SCHEMA, c.TABLE_NAME, t.TABLE_TYPE, c.COLUMN_NAME, c.COLUMN_TYPE,
       c.DATA_TYPE, c.NUMERIC_PRECISION, c.NUMERIC_SCALE, c.IS_NULLABLE,
       c.CHARACTER_SET_NAME
FROM information_schema.COLUMNS c
JOIN information_schema.TABLES t
  ON t.TABLE_SCHEMA = c.TABLE_SCHEMA AND t.TABLE_NAME = c.TABLE_NAME
WHERE t.TABLE_TYPE IN ('BASE TABLE', 'VIEW', 'SYSTEM VERSIONED') AND {filter}
ORDER BY c.TABLE_SCHEMA, c.TABLE_NAME, c.ORDINAL_POSITION
"""

_KEYS_SQL = """
SELECT c.TABLE_SCHEMA, c.TABLE_NAME, c.CONSTRAINT_NAME, tc.CONSTRAINT_TYPE, c.COLUMN_NAME,
       c.REFERENCED_TABLE_SCHEMA, c.REFERENCED_TABLE_NAME, c.REFERENCED_COLUMN_NAME
FROM information_schema.KEY_COLUMN_USAGE c
JOIN information_schema.TABLE_CONSTRAINTS tc
  ON tc.CONSTRAINT_SCHEMA = c.CONSTRAINT_SCHEMA AND tc.TABLE_NAME = c.TABLE_NAME
 AND tc.CONSTRAINT_NAME = c.CONSTRAINT_NAME
WHERE tc.CONSTRAINT_TYPE IN ('PRIMARY KEY', 'FOREIGN KEY') AND {filter}
ORDER BY c.TABLE_SCHEMA, c.TABLE_NAME, c.CONSTRAINT_NAME, c.ORDINAL_POSITION
"""


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes | bytearray) else str(value)


def _build_tables(column_rows: Sequence[Any], key_rows: Sequence[Any]) -> list[TableInfo]:
    tables = TableAssembler()
    for (
        schema,
        table,
        table_type,
        name,
        column_type,
        data_type,
        precision,
        scale,
        nullable,
        charset,
    ) in column_rows:
        kind = TableKind.VIEW if _text(table_type) == "VIEW" else TableKind.TABLE
        tables.add_column(
            _text(schema),
            _text(table),
            kind,
            ColumnInfo(
                name=_text(name),
                source_type=_text(column_type),
                arrow_type=mysql_column_arrow_type(
                    _text(data_type),
                    _text(column_type),
                    None if precision is None else int(precision),
                    None if scale is None else int(scale),
                    None if charset is None else _text(charset),
                ),
                nullable=_text(nullable) == "YES",
            ),
        )
    for schema, table, constraint, ctype, column, ref_schema, ref_table, ref_column in key_rows:
        if _text(ctype) == "PRIMARY KEY":
            tables.add_primary_key_column(_text(schema), _text(table), _text(column))
        else:
            tables.add_foreign_key_column(
                _text(schema),
                _text(table),
                _text(constraint),
                _text(column),
                _text(ref_schema),
                _text(ref_table),
                _text(ref_column),
            )
    return tables.tables()
