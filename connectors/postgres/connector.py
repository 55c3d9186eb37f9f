"""`PostgresConnector`: settings, the connection pool, and which path runs a query."""

from __future__ import annotations

import threading
import time
import weakref
from collections.abc import Sequence
from typing import Any, ClassVar

import psycopg
from cachetools import TTLCache
from psycopg import pq
from psycopg_pool import PoolTimeout

from connectors import failures, registry
from connectors.base import (
    Connector,
    ConnectorConfig,
    ParamStyle,
    PoolStats,
    QueryHandle,
    check_execute_arguments,
)
from connectors.postgres.decode import PgColumn, TextDecoder
from connectors.postgres.errors import map_error
from connectors.postgres.failfast import FailFastPool
from connectors.postgres.introspection import (
    COLUMNS_SQL,
    CONSTRAINTS_SQL,
    SYSTEM_SCHEMAS,
    build_tables,
)
from connectors.postgres.pipeline import QUERY_START
from connectors.postgres.session import Session, begin, configure_connection
from connectors.postgres.small import execute_small
from connectors.postgres.worker import (
    PgHandle,
    connection_lost,
    describe,
    start_copy,
    start_cursor,
    start_stream,
)
from connectors.sockets import idle_connection_is_dead
from fabric.errors import (
    DeadlineExceeded,
    FabricError,
    InternalError,
    InvalidArgument,
    SourceUnavailable,
)
from fabric.model import TableInfo

_DESCRIBE_CACHE_SIZE = 256
_DESCRIBE_CACHE_TTL = 300.0
_DECODER_CACHE_SIZE = 256
_NO_WAIT = 0.001  # getconn's timeout once the pool has said a connection is free
_RECONNECT_GIVE_UP = 1.0
"""Seconds psycopg_pool keeps retrying a failed new connection (with backoff) before it
gives up and leaves the next attempt to the next query that needs one: a server that
comes back is used again at once, not after a backoff that grows to minutes."""


class PostgresConnector(Connector):
    """PostgreSQL through psycopg 3 and psycopg_pool.

    Settings: host (required), port (5432), database (required), user (required),
    sslmode, connect_timeout (s, default 10), application_name (default "fabric"),
    pool_min (1), pool_max (10), pool_timeout (s to wait for a free connection, default
    connect_timeout). The password comes from `config.password` only.
    """

    kind: ClassVar[str] = "postgres"
    dialect: ClassVar[str] = "postgres"
    param_style: ClassVar[ParamStyle] = ParamStyle.FORMAT

    def __init__(self, config: ConnectorConfig) -> None:
        config = registry.get(self.kind).with_defaults(config)
        super().__init__(config)
        try:
            host = config.get_str("host")
            port = config.get_int("port")
            database = config.get_str("database")
            user = config.get_str("user")
            connect_timeout = config.get_int("connect_timeout")
            pool_min = config.get_int("pool_min")
            pool_max = config.get_int("pool_max")
            pool_timeout = float(config.settings.get("pool_timeout", connect_timeout or 10))
        except (TypeError, ValueError) as exc:
            raise InvalidArgument(f"invalid PostgreSQL connection setting: {exc}") from None
        missing = [k for k, v in (("host", host), ("database", database), ("user", user)) if not v]
        if missing:
            raise InvalidArgument(f"PostgreSQL connection settings miss {', '.join(missing)}")
        assert pool_min is not None and pool_max is not None and port is not None
        if not (0 <= pool_min <= pool_max and pool_max >= 1):
            raise InvalidArgument("pool_min and pool_max must satisfy 0 <= pool_min <= pool_max")
        if connect_timeout is not None and connect_timeout < 1:
            raise InvalidArgument("connect_timeout must be at least 1 second")
        self._where = f"{host}:{port}"
        kwargs: dict[str, Any] = {
            "host": host,
            "port": port,
            "dbname": database,
            "user": user,
            "connect_timeout": connect_timeout,
            "application_name": config.get_str("application_name"),
        }
        sslmode = config.get_str("sslmode")
        if sslmode:
            kwargs["sslmode"] = sslmode
        if config.password is not None:
            kwargs["password"] = config.password
        self._connect_kwargs = kwargs
        self._pool_min, self._pool_max, self._pool_timeout = pool_min, pool_max, pool_timeout
        self._pool: FailFastPool | None = None
        self._pool_lock = threading.Lock()
        self._closed = False
        # the decoder of a statement without parameters, per text (LRU, time-limited)
        self._describe_cache: TTLCache[str, TextDecoder] = TTLCache(
            _DESCRIBE_CACHE_SIZE, _DESCRIBE_CACHE_TTL, timer=time.monotonic
        )
        self._describe_lock = threading.Lock()
        self._decoders: dict[tuple[tuple[bytes | None, int, int], ...], TextDecoder] = {}
        self._sessions: weakref.WeakKeyDictionary[psycopg.Connection[Any], Session] = (
            weakref.WeakKeyDictionary()
        )
        self._sessions_lock = threading.Lock()

    @property
    def capacity(self) -> int:
        return self._pool_max

    def pool_stats(self) -> PoolStats:
        pool = self._pool
        if pool is None:
            return PoolStats(0, 0, 0)
        stats = pool.get_stats()  # a copy of psycopg_pool's counters, under its lock
        size, idle = stats.get("pool_size", 0), stats.get("pool_available", 0)
        return PoolStats(max(0, size - idle), idle, stats.get("requests_waiting", 0))

    # -- connections --------------------------------------------------------------------

    def _get_pool(self) -> FailFastPool:
        with self._pool_lock:
            if self._closed:
                raise SourceUnavailable("the PostgreSQL connector is closed")
            if self._pool is None:
                pool = FailFastPool(
                    conninfo="",
                    kwargs={**self._connect_kwargs, "autocommit": True},
                    min_size=self._pool_min,
                    max_size=self._pool_max,
                    timeout=self._pool_timeout,
                    configure=configure_connection,
                    name=f"fabric-postgres-{self._where}",
                    reconnect_timeout=_RECONNECT_GIVE_UP,
                    open=False,
                )
                pool.open(wait=False)
                self._pool = pool
            return self._pool

    def _acquire(self, timeout: float | None = None) -> psycopg.Connection[Any]:
        """A live pooled connection, waiting at most the pool timeout (or `timeout`, when
        sooner). A pooled connection the server has dropped meanwhile (a restart, an
        operator's terminate) is discarded and another taken: a poll of its socket, no
        round trip."""
        pool = self._get_pool()
        wait = self._pool_timeout if timeout is None else min(timeout, self._pool_timeout)
        deadline = time.monotonic() + wait
        while True:
            try:
                conn = pool.getconn(timeout=max(deadline - time.monotonic(), _NO_WAIT))
            except PoolTimeout:  # (a psycopg.Error itself: first)
                failure = pool.last_failure
                if failure is not None:
                    raise self._map_error(failure) from None
                if pool.get_stats().get("pool_size", 0) >= self._pool_max:
                    raise failures.pool_exhausted(
                        "PostgreSQL", self._where, wait, self._pool_max
                    ) from None
                raise failures.unreachable(
                    "PostgreSQL", self._where, f"no connection opened within {wait:g}s"
                ) from None
            except psycopg.Error as exc:  # a failed connection attempt (FailFastPool)
                raise self._map_error(exc) from None
            if self._alive(conn):
                return conn
            self._discard(conn)

    def _acquire_now(self) -> psycopg.Connection[Any] | None:
        """A live pooled connection that is free now, or None (never waits: the event
        loop's call; a pool still opening, full or down leaves the query to a worker
        thread). Dead ones are discarded on the way, as `_acquire` does."""
        try:
            pool = self._get_pool()
        except SourceUnavailable:
            return None
        while pool.get_stats().get("pool_available", 0):
            try:
                conn = pool.getconn(timeout=_NO_WAIT)
            except (PoolTimeout, psycopg.Error):  # the worker path reports why
                return None
            if self._alive(conn):
                return conn
            self._discard(conn)
        return None

    @staticmethod
    def _alive(conn: psycopg.Connection[Any]) -> bool:
        if conn.closed or conn.pgconn.status != pq.ConnStatus.OK:
            return False
        return not idle_connection_is_dead(conn.pgconn.socket)

    def _discard(self, conn: psycopg.Connection[Any]) -> None:
        """Close a connection and hand it back, so the pool forgets it and opens another
        when it needs one."""
        conn.close()
        self._put_back(conn)

    def _session(self, conn: psycopg.Connection[Any]) -> Session:
        with self._sessions_lock:
            session = self._sessions.get(conn)
            if session is None:
                session = self._sessions[conn] = Session()
            return session

    def _give_back(self, conn: psycopg.Connection[Any], *, commit: bool) -> None:
        self._reset(conn, commit=commit)
        self._put_back(conn)

    @staticmethod
    def _reset(conn: psycopg.Connection[Any], *, commit: bool) -> None:
        """End what a query left open on the connection (COMMIT when `commit` and all
        went well, else ROLLBACK); close it when that cannot be done."""
        try:
            status = conn.pgconn.transaction_status
            if status == pq.TransactionStatus.ACTIVE:
                conn.close()  # a query still runs: never hand that connection out
            elif status != pq.TransactionStatus.IDLE:
                if commit and status == pq.TransactionStatus.INTRANS:
                    conn.execute("COMMIT")
                else:
                    conn.execute("ROLLBACK")
        except Exception:
            conn.close()

    def _put_back(self, conn: psycopg.Connection[Any]) -> None:
        """Return a connection to the pool (a closed one is dropped there); no I/O."""
        pool = self._pool
        if pool is not None:
            pool.putconn(conn)
        else:
            conn.close()

    # -- contract -----------------------------------------------------------------------

    def test(self) -> None:
        try:
            with psycopg.connect(**self._connect_kwargs, autocommit=True) as conn:
                conn.execute("SELECT 1").fetchone()
        except psycopg.Error as exc:
            raise self._map_error(exc) from None

    def introspect(self, schemas: Sequence[str] | None = None) -> list[TableInfo]:
        conn = self._acquire()
        ok = False
        try:
            begin(conn, None)
            wanted = list(schemas) if schemas is not None else None
            cur = conn.cursor()
            cur.execute(COLUMNS_SQL, {"schemas": wanted, "system": list(SYSTEM_SCHEMAS)})
            column_rows = cur.fetchall()
            cur.execute(CONSTRAINTS_SQL, {"schemas": wanted, "system": list(SYSTEM_SCHEMAS)})
            constraint_rows = cur.fetchall()
            ok = True
        except psycopg.Error as exc:
            raise self._map_error(exc) from None
        finally:
            self._give_back(conn, commit=ok)
        return build_tables(column_rows, constraint_rows)

    def execute(
        self,
        sql: str,
        params: Sequence[Any] = (),
        *,
        timeout: float | None = None,
        batch_rows: int = 65_536,
    ) -> QueryHandle:
        check_execute_arguments(timeout, batch_rows)
        params = tuple(params)
        started = time.monotonic()
        for attempt in (0, 1):
            remaining = None if timeout is None else timeout - (time.monotonic() - started)
            if remaining is not None and remaining <= 0:
                raise DeadlineExceeded(
                    f"the query ran past its timeout of {timeout}s before it could start; "
                    "narrow it or raise the timeout"
                )
            conn = self._acquire(remaining)
            handle = PgHandle(self, conn, remaining, batch_rows)
            try:
                self._start(handle, conn, sql, params, remaining)
            except BaseException as exc:
                mapped = handle._map(exc) if not isinstance(exc, FabricError) else exc
                # The connection died before the query could give anything back (a
                # session the server ended while it sat in the pool, and that the poll
                # did not see yet): the query runs once more, on a fresh connection.
                retry = attempt == 0 and connection_lost(conn, exc) and not handle._stopped()
                handle._release(ok=False)
                if retry:
                    continue
                if mapped is exc:
                    raise
                raise mapped from None
            return handle
        raise InternalError("unreachable: the second attempt returns or raises")

    def _start(
        self,
        handle: PgHandle,
        conn: psycopg.Connection[Any],
        sql: str,
        params: tuple[Any, ...],
        timeout: float | None,
    ) -> None:
        """Start the query on `conn` by the path that suits it (see the package docstring)."""
        if not params:
            begin(conn, timeout)
            start_copy(self, handle, conn, sql)
        elif conn.pgconn.transaction_status == pq.TransactionStatus.IDLE and QUERY_START.match(sql):
            start_stream(self, handle, conn, sql, params, timeout)
        else:
            begin(conn, timeout)
            start_cursor(handle, conn, sql, params)

    async def execute_small(
        self,
        sql: str,
        params: Sequence[Any] = (),
        *,
        timeout: float | None = None,
        max_rows: int,
    ) -> QueryHandle | None:
        """The parameterized path, driven by the event loop (psycopg's `wait_async` on the
        connection's socket) for a statement of at most `max_rows` rows: the same
        pipeline, guard and prepared statements as `execute`, without a flush request
        (the whole answer comes in one read), the rows decoded at once. None, before
        anything is sent, when a worker thread must do it: no parameters (the COPY
        path), not a plain query, or no free pooled connection at this moment; None too
        when the server says a prepared statement went stale (this query then runs in a
        worker thread; the pipeline of the connection's next query deallocates them). If
        more rows come than `max_rows` allows (a stale primary key in the catalog), the
        handle streams the rest from a worker thread like `execute`'s. A caller that goes
        away cancels the query at the server and cleans up the connection in a worker
        thread."""
        return await execute_small(self, sql, params, timeout=timeout, max_rows=max_rows)

    def close(self) -> None:
        with self._pool_lock:
            self._closed = True
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.close()
        with self._describe_lock:
            self._describe_cache.clear()

    # -- decoders -----------------------------------------------------------------------

    def _statement_decoder(self, conn: psycopg.Connection[Any], text: str) -> TextDecoder:
        """The decoder of a statement without parameters, described once per text."""
        with self._describe_lock:
            decoder = self._describe_cache.get(text)
        if decoder is None:
            decoder = describe(conn, text)
            with self._describe_lock:
                self._describe_cache[text] = decoder
        return decoder

    def _forget_decoder(self, text: str) -> None:
        """Drop a statement's decoder after a conversion error: an ALTER TABLE heals."""
        with self._describe_lock:
            self._describe_cache.pop(text, None)

    def _decoder(self, res: pq.abc.PGresult, encoding: str) -> TextDecoder:
        """The decoder of a result's description, cached (building one costs more than a
        point query)."""
        key = tuple((res.fname(i), res.ftype(i), res.fmod(i)) for i in range(res.nfields))
        decoder = self._decoders.get(key)
        if decoder is None:
            decoder = TextDecoder(
                [PgColumn((name or b"").decode(encoding), oid, mod) for name, oid, mod in key]
            )
            if len(self._decoders) >= _DECODER_CACHE_SIZE:
                self._decoders.clear()
            self._decoders[key] = decoder
        return decoder

    # -- errors -------------------------------------------------------------------------

    def _map_error(self, exc: BaseException) -> FabricError:
        return map_error(exc, self._where)
