"""One fixture over every connector: `source` builds its own data on a real server.

DuckDB: a temporary database file written by a read-write connection, then opened by the
connector read-only. PostgreSQL: a unique schema created through psycopg directly and
dropped afterwards (the `postgres_url` fixture skips locally, or fails under CI=true,
when no server answers).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import duckdb
import psycopg
import pytest

from connectors.base import Connector, ConnectorConfig
from connectors.duckdb import DuckDBConnector
from connectors.postgres import PostgresConnector


class Source:
    """A connector plus the means to plant data in its database before it opens."""

    name: str
    p: str  # placeholder of the connector's param style
    schema: str

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
    p = "?"
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
    p = "%s"

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


def wait_until(check: Callable[[], bool], deadline_s: float, what: str) -> float:
    """Poll `check` until true; fail after `deadline_s`. Returns the seconds it took."""
    start = time.monotonic()
    while not check():
        if time.monotonic() - start > deadline_s:
            pytest.fail(f"timed out after {deadline_s}s waiting for {what}")
        time.sleep(0.005)
    return time.monotonic() - start


@pytest.fixture(params=["duckdb", "postgres"])
def source(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Source]:
    src: Source
    if request.param == "duckdb":
        src = DuckDBSource(tmp_path)
    else:
        src = PostgresSource(request.getfixturevalue("postgres_url"))
    try:
        yield src
    finally:
        src.close()
