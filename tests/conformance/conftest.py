"""One fixture over every connector: `source` builds its own data on a real server.

DuckDB: a temporary database file written by a read-write connection, then opened by the
connector read-only. PostgreSQL: a unique schema created through psycopg directly and
dropped afterwards (the `postgres_url` fixture skips locally, or fails under CI=true,
when no server answers). MariaDB/MySQL: a unique database created through PyMySQL and
dropped afterwards (same rule: skipped locally, a failure under CI=true). SQL Server: a
unique schema, only when FABRIC_TEST_MSSQL_URL is set; otherwise every sqlserver case is
reported as skipped ("not run") with that reason, never as passed.

Expected failures are declared here, in one table, as strict xfails with their reason
(`expect_failure`): a case a connector cannot pass fails loudly if it starts passing.
"""

from __future__ import annotations

import datetime as dt
import re
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import duckdb
import psycopg
import pytest

from connectors import registry
from connectors.base import Connector, ConnectorConfig, ParamStyle
from connectors.duckdb import DuckDBConnector
from connectors.postgres import PostgresConnector
from tests.support.servers import mariadb_url, mssql_url


class Source:
    """A connector plus the means to plant data in its database before it opens."""

    name: str
    """The connection kind, as registered in `connectors.registry`."""
    schema: str
    length_function = "length"
    """SQL function giving a string's length in characters."""

    @property
    def dialect(self) -> str:
        return registry.get(self.name).dialect

    @property
    def p(self) -> str:
        """Placeholder of the connector's param style."""
        return "?" if registry.get(self.name).param_style is ParamStyle.QMARK else "%s"

    def run(self, *statements: str, rows: Sequence[Sequence[Any]] = ()) -> None:
        raise NotImplementedError

    def connector(self) -> Connector:
        raise NotImplementedError

    def down_connector(self) -> Connector:
        """A connector whose source cannot be reached."""
        raise NotImplementedError

    def sql(self, text: str) -> str:
        return text.replace("{s}", self.schema).replace("{p}", self.p)

    def series(self, n: int | str) -> str:
        """A FROM item giving integers 1..n as column `i`."""
        raise NotImplementedError

    def wait_running(self, deadline_s: float = 5.0) -> None:
        """Return once the source shows a query of ours running (where it can tell)."""

    def close(self) -> None:
        raise NotImplementedError


class DuckDBSource(Source):
    name = "duckdb"
    schema = "fab"

    def __init__(self, tmp_path: Path) -> None:
        self.path = tmp_path / "source.duckdb"
        self._opened: list[Connector] = []
        with duckdb.connect(str(self.path)) as con:
            con.execute(f"CREATE SCHEMA {self.schema}")

    def run(self, *statements: str, rows: Sequence[Sequence[Any]] = ()) -> None:
        assert not self._opened, "plant data before opening the connector"
        with duckdb.connect(str(self.path)) as con:
            for statement in statements:
                if rows and "{p}" in statement:
                    con.executemany(self.sql(statement), [list(r) for r in rows])
                else:
                    con.execute(self.sql(statement))

    def connector(self) -> Connector:
        c = DuckDBConnector(ConnectorConfig({"path": str(self.path)}))
        self._opened.append(c)
        return c

    def down_connector(self) -> Connector:
        return DuckDBConnector(ConnectorConfig({"path": str(self.path.parent / "missing.db")}))

    def series(self, n: int | str) -> str:
        return f"range(1, CAST({n} AS BIGINT) + 1) AS g(i)"

    def close(self) -> None:
        for c in self._opened:
            c.close()


class PostgresSource(Source):
    name = "postgres"

    def __init__(self, url: str) -> None:
        self.url = url
        tag = uuid.uuid4().hex[:12]
        self.schema = f"fabric_conf_{tag}"
        self.app = f"fabric-conf-{tag}"
        self._admin = psycopg.connect(url, autocommit=True)
        self._admin.execute(f"CREATE SCHEMA {self.schema}")
        self._opened: list[Connector] = []

    def settings(self, **extra: Any) -> dict[str, Any]:
        u = urlparse(self.url)
        settings: dict[str, Any] = {
            "host": u.hostname or "127.0.0.1",
            "port": u.port or 5432,
            "database": (u.path or "/test").lstrip("/") or "test",
            "user": unquote(u.username or "postgres"),
            "application_name": self.app,
            "pool_min": 1,
            "pool_max": 3,
            "connect_timeout": 2,
            "pool_timeout": 5,
        }
        settings.update(extra)
        return settings

    def password(self) -> str | None:
        u = urlparse(self.url)
        return unquote(u.password) if u.password else None

    def run(self, *statements: str, rows: Sequence[Sequence[Any]] = ()) -> None:
        with self._admin.cursor() as cur:
            for statement in statements:
                if rows and "{p}" in statement:
                    cur.executemany(self.sql(statement), rows)
                else:
                    cur.execute(self.sql(statement))

    def connector(self) -> Connector:
        c = PostgresConnector(ConnectorConfig(self.settings(), password=self.password()))
        self._opened.append(c)
        return c

    def down_connector(self) -> Connector:
        c = PostgresConnector(
            ConnectorConfig(
                self.settings(port=1, connect_timeout=1, pool_timeout=1),
                password="secret-password-xyz",
            )
        )
        self._opened.append(c)
        return c

    def series(self, n: int | str) -> str:
        return f"generate_series(1, {n}) AS g(i)"

    def running(self) -> int:
        row = self._admin.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s "
            "AND state = 'active'",
            [self.app],
        ).fetchone()
        assert row is not None
        return int(row[0])

    def wait_running(self, deadline_s: float = 5.0) -> None:
        wait_until(lambda: self.running() > 0, deadline_s, "the query to show up as active")

    def close(self) -> None:
        for c in self._opened:
            c.close()
        self._admin.execute(f"DROP SCHEMA IF EXISTS {self.schema} CASCADE")
        self._admin.close()


_DIGITS = (
    "(SELECT 0 AS d UNION ALL SELECT 1 UNION ALL SELECT 2 UNION ALL SELECT 3 UNION ALL "
    "SELECT 4 UNION ALL SELECT 5 UNION ALL SELECT 6 UNION ALL SELECT 7 UNION ALL SELECT 8 "
    "UNION ALL SELECT 9)"
)


def _digits_series(n: int | str) -> str:
    """1..n (n <= 100000) as column `i`, from five cross-joined digit tables: neither
    MySQL nor SQL Server has a series function both accept with a bound upper end."""
    number = "a.d + 10 * b.d + 100 * c.d + 1000 * e.d + 10000 * f.d + 1"
    return (
        f"(SELECT {number} AS i FROM {_DIGITS} a CROSS JOIN {_DIGITS} b CROSS JOIN {_DIGITS} c "
        f"CROSS JOIN {_DIGITS} e CROSS JOIN {_DIGITS} f WHERE {number} <= {n}) g"
    )


def _utc_naive(value: Any) -> Any:
    if isinstance(value, dt.datetime) and value.tzinfo is not None:
        return value.astimezone(dt.UTC).replace(tzinfo=None)
    return value


class MySQLSource(Source):
    """MariaDB/MySQL: a unique database, planted through PyMySQL (session in UTC)."""

    name = "mysql"
    length_function = "char_length"  # LENGTH counts bytes in MySQL

    def __init__(self, url: str) -> None:
        import pymysql  # type: ignore[import-untyped]  # no stubs are published with PyMySQL

        self.url = url
        tag = uuid.uuid4().hex[:12]
        self.schema = f"fabric_conf_{tag}"
        u = urlparse(url)
        self._admin = pymysql.connect(
            host=u.hostname or "127.0.0.1",
            port=u.port or 3306,
            user=unquote(u.username or "root"),
            password=unquote(u.password) if u.password else "",
            charset="utf8mb4",
            autocommit=True,
            binary_prefix=True,
            init_command="SET time_zone = '+00:00'",
        )
        self._execute(
            f"CREATE DATABASE {self.schema} CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci"
        )
        self._opened: list[Connector] = []

    def _execute(self, sql: str, params: Sequence[Any] | None = None) -> list[Any]:
        with self._admin.cursor() as cur:
            cur.execute(sql, params)
            return list(cur.fetchall())

    def sql(self, text: str) -> str:
        text = super().sql(text)
        if text.lstrip().upper().startswith("CREATE TABLE"):
            # the shared cases are written with PostgreSQL type names
            text = re.sub(r"\btimestamptz\b", "TIMESTAMP(6) NULL", text, flags=re.I)
            text = re.sub(r"\btext\b", "LONGTEXT", text, flags=re.I)
        return text

    def settings(self, **extra: Any) -> dict[str, Any]:
        u = urlparse(self.url)
        settings: dict[str, Any] = {
            "host": u.hostname or "127.0.0.1",
            "port": u.port or 3306,
            "database": self.schema,
            "user": unquote(u.username or "root"),
            "pool_min": 1,
            "pool_max": 3,
            "connect_timeout": 2,
            "pool_timeout": 5,
        }
        settings.update(extra)
        return settings

    def password(self) -> str | None:
        u = urlparse(self.url)
        return unquote(u.password) if u.password else None

    def run(self, *statements: str, rows: Sequence[Sequence[Any]] = ()) -> None:
        with self._admin.cursor() as cur:
            for statement in statements:
                if rows and "{p}" in statement:
                    cur.executemany(
                        self.sql(statement), [[_utc_naive(v) for v in row] for row in rows]
                    )
                else:
                    cur.execute(self.sql(statement))

    def connector(self) -> Connector:
        from connectors.mysql import MySQLConnector

        c = MySQLConnector(ConnectorConfig(self.settings(), password=self.password()))
        self._opened.append(c)
        return c

    def down_connector(self) -> Connector:
        from connectors.mysql import MySQLConnector

        c = MySQLConnector(
            ConnectorConfig(
                self.settings(port=1, connect_timeout=1, pool_timeout=1),
                password="secret-password-xyz",
            )
        )
        self._opened.append(c)
        return c

    def series(self, n: int | str) -> str:
        return _digits_series(n)

    def running(self) -> int:
        rows = self._execute(
            "SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE DB = %s "
            "AND COMMAND = 'Query' AND ID <> CONNECTION_ID()",
            [self.schema],
        )
        return int(rows[0][0])

    def wait_running(self, deadline_s: float = 5.0) -> None:
        wait_until(lambda: self.running() > 0, deadline_s, "the query to show up as running")

    def close(self) -> None:
        for c in self._opened:
            c.close()
        self._execute(f"DROP DATABASE IF EXISTS {self.schema}")
        self._admin.close()


class SqlServerSource(Source):
    """SQL Server: a unique schema, planted through pymssql. Runs only with
    FABRIC_TEST_MSSQL_URL (mssql://user:password@host:port/database)."""

    name = "sqlserver"
    length_function = "len"

    def __init__(self, url: str) -> None:
        import pymssql

        self.url = url
        tag = uuid.uuid4().hex[:12]
        self.schema = f"fabric_conf_{tag}"
        self.app = f"fabric-conf-{tag}"
        u = urlparse(url)
        self._admin = pymssql.connect(
            server=u.hostname or "127.0.0.1",
            port=str(u.port or 1433),
            user=unquote(u.username or "sa"),
            password=unquote(u.password) if u.password else None,
            database=(u.path or "/master").lstrip("/") or "master",
            autocommit=True,
            login_timeout=5,
        )
        self._execute(f"CREATE SCHEMA [{self.schema}]")
        self._created: list[tuple[str, str]] = []
        self._opened: list[Connector] = []

    def _execute(self, sql: str, params: Sequence[Any] | None = None) -> list[Any]:
        with self._admin.cursor() as cur:
            cur.execute(sql, tuple(params) if params is not None else None)
            try:
                return list(cur.fetchall())
            except Exception:  # no result set
                return []

    def sql(self, text: str) -> str:
        text = super().sql(text)
        if text.lstrip().upper().startswith("CREATE TABLE"):
            text = re.sub(r"\btimestamptz\b", "DATETIMEOFFSET(6)", text, flags=re.I)
            text = re.sub(r"\btext\b", "NVARCHAR(MAX)", text, flags=re.I)
            text = re.sub(r"\bvarchar\b", "NVARCHAR", text, flags=re.I)
        return text

    def settings(self, **extra: Any) -> dict[str, Any]:
        u = urlparse(self.url)
        settings: dict[str, Any] = {
            "host": u.hostname or "127.0.0.1",
            "port": u.port or 1433,
            "database": (u.path or "/master").lstrip("/") or "master",
            "user": unquote(u.username or "sa"),
            "application_name": self.app,
            "pool_min": 1,
            "pool_max": 3,
            "login_timeout": 5,
            "pool_timeout": 5,
        }
        settings.update(extra)
        return settings

    def password(self) -> str | None:
        u = urlparse(self.url)
        return unquote(u.password) if u.password else None

    def run(self, *statements: str, rows: Sequence[Sequence[Any]] = ()) -> None:
        with self._admin.cursor() as cur:
            for statement in statements:
                text = self.sql(statement)
                match = re.match(r"\s*CREATE\s+(TABLE|VIEW)\s+(\S+?)\.(\w+)", text, re.I)
                if match:
                    self._created.append((match.group(1).upper(), match.group(3)))
                if rows and "{p}" in statement:
                    cur.executemany(text, [tuple(r) for r in rows])
                else:
                    cur.execute(text)

    def connector(self) -> Connector:
        from connectors.sqlserver import SqlServerConnector

        c = SqlServerConnector(ConnectorConfig(self.settings(), password=self.password()))
        self._opened.append(c)
        return c

    def down_connector(self) -> Connector:
        from connectors.sqlserver import SqlServerConnector

        c = SqlServerConnector(
            ConnectorConfig(
                self.settings(port=1, login_timeout=1, pool_timeout=1),
                password="secret-password-xyz",
            )
        )
        self._opened.append(c)
        return c

    def series(self, n: int | str) -> str:
        return _digits_series(n)

    def running(self) -> int:
        rows = self._execute(
            "SELECT COUNT(*) FROM sys.dm_exec_requests r JOIN sys.dm_exec_sessions s "
            "ON s.session_id = r.session_id WHERE s.program_name = %s",
            [self.app],
        )
        return int(rows[0][0])

    def wait_running(self, deadline_s: float = 5.0) -> None:
        wait_until(lambda: self.running() > 0, deadline_s, "the query to show up as running")

    def close(self) -> None:
        for c in self._opened:
            c.close()
        for kind, name in reversed(self._created):
            self._execute(f"DROP {kind} IF EXISTS [{self.schema}].[{name}]")
        self._execute(f"DROP SCHEMA IF EXISTS [{self.schema}]")
        self._admin.close()


# (connector, case) -> why that connector cannot pass the case. Applied as strict xfails.
EXPECTED_FAILURES: dict[tuple[str, str], str] = {
    ("mysql", "type:bool"): (
        "MySQL has no boolean type: BOOLEAN is TINYINT(1), which holds -128..127, so it "
        "maps to int8, not bool"
    ),
    ("mysql", "type:time"): (
        "MySQL TIME is a signed interval (-838:59:59..838:59:59), mapped to duration[us], "
        "not time64"
    ),
    ("mysql", "type:interval"): "MySQL has no INTERVAL column type",
    ("mysql", "param:bool"): (
        "MySQL has no boolean type: a bool binds as 1/0 and cannot be cast back to a bool"
    ),
    ("mysql", "param:aware-datetime"): (
        "MySQL has no type with a time zone to cast to: an aware datetime binds as UTC wall "
        "time and reads back naive"
    ),
    ("mysql", "division_by_zero"): (
        "MySQL and MariaDB return NULL (with a warning) for a division by zero in a SELECT"
    ),
    ("mysql", "bad_cast"): (
        "MySQL casts a non-numeric string to 0 with a warning: there is no bad-cast error"
    ),
    ("sqlserver", "type:interval"): "SQL Server has no INTERVAL type",
    ("sqlserver", "type:bool"): (
        "SQL Server has no BOOLEAN column type; its BIT (mapped to bool) is checked in the "
        "SQL Server tests"
    ),
    ("sqlserver", "long_value"): (
        "LEN counts UTF-16 code units (an emoji is 2) and ignores trailing blanks"
    ),
}


def expect_failure(request: pytest.FixtureRequest, source: Source, case: str) -> None:
    """Mark the running test as a strict expected failure when the table says so."""
    reason = EXPECTED_FAILURES.get((source.name, case))
    if reason is not None:
        request.applymarker(pytest.mark.xfail(strict=True, reason=f"{source.name}: {reason}"))


def wait_until(check: Callable[[], bool], deadline_s: float, what: str) -> float:
    """Poll `check` until true; fail after `deadline_s`. Returns the seconds it took."""
    start = time.monotonic()
    while not check():
        if time.monotonic() - start > deadline_s:
            pytest.fail(f"timed out after {deadline_s}s waiting for {what}")
        time.sleep(0.005)
    return time.monotonic() - start


@pytest.fixture(scope="session")
def mariadb_server_url() -> str:
    """URL of a real MariaDB/MySQL server (skips, or fails under CI=true, when none)."""
    return mariadb_url()


@pytest.fixture(scope="session")
def mssql_server_url() -> str:
    """URL of a real SQL Server; skipped as "not run" unless FABRIC_TEST_MSSQL_URL is set."""
    return mssql_url()


# How to build each registered kind's Source: a kind registered without one fails here.
SOURCES: dict[str, Callable[[pytest.FixtureRequest, Path], Source]] = {
    "duckdb": lambda request, tmp_path: DuckDBSource(tmp_path),
    "postgres": lambda request, tmp_path: PostgresSource(request.getfixturevalue("postgres_url")),
    "mysql": lambda request, tmp_path: MySQLSource(request.getfixturevalue("mariadb_server_url")),
    "sqlserver": lambda request, tmp_path: SqlServerSource(
        request.getfixturevalue("mssql_server_url")
    ),
}


@pytest.fixture(params=registry.kinds())
def source(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Source]:
    build = SOURCES.get(request.param)
    if build is None:
        pytest.fail(f"connector kind {request.param!r} has no conformance Source in SOURCES")
    src = build(request, tmp_path)
    try:
        yield src
    finally:
        src.close()
