"""A column or table dropped at a MariaDB source since the last refresh: the caller is
told that the source's schema no longer matches the selection, that a refresh is
needed, and which column or table, named from the gateway's own compiled statement
(MariaDB's 1054 and 1146, reported as SQLSTATE 42S22 and 42S02). After the refresh the
same query is refused before anything reaches the source."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import pytest

from connectors import Connector, QueryHandle
from fabric.app.parts import catalog_manager
from fabric.catalog.metadata.sqlite import SqliteMetadataStore
from fabric.config import Settings
from fabric.context import RequestContext, Role
from fabric.errors import QueryRejected, SchemaMismatch
from fabric.model import Connection, SettingValue
from fabric.platform.refresh import refresh_catalog
from fabric.query.engine import QueryEngine, QueryRequest
from fabric.query.sources import default_connector_factory
from tests.support.servers import mariadb_url

CTX = RequestContext(tenant="acme", stage="development", role=Role.APP, principal="app")


class Counting(Connector):
    """The real MySQL connector, counting what it is asked to run."""

    def __init__(self, inner: Connector, executed: list[str]) -> None:
        super().__init__(inner.config)
        self.inner = inner
        self.executed = executed
        self.kind = inner.kind  # type: ignore[misc]
        self.dialect = inner.dialect  # type: ignore[misc]
        self.param_style = inner.param_style  # type: ignore[misc]

    def test(self) -> None:
        self.inner.test()

    def introspect(self, schemas: Sequence[str] | None = None) -> Any:
        return self.inner.introspect(schemas)

    def execute(
        self,
        sql: str,
        params: Sequence[Any] = (),
        *,
        timeout: float | None = None,
        batch_rows: int = 65_536,
    ) -> QueryHandle:
        self.executed.append(sql)
        return self.inner.execute(sql, params, timeout=timeout, batch_rows=batch_rows)

    def close(self) -> None:
        self.inner.close()


@pytest.fixture
def mariadb() -> Iterator[tuple[Any, dict[str, Any]]]:
    import pymysql  # type: ignore[import-untyped]  # no stubs are published with PyMySQL

    u = urlparse(mariadb_url())
    database = f"fabric_drift_{uuid.uuid4().hex[:10]}"
    settings: dict[str, Any] = {
        "host": u.hostname or "127.0.0.1",
        "port": u.port or 3306,
        "user": unquote(u.username or "root"),
        "database": database,
        "pool_max": 2,
    }
    admin = pymysql.connect(
        host=settings["host"],
        port=settings["port"],
        user=settings["user"],
        password=unquote(u.password) if u.password else "",
        autocommit=True,
    )
    with admin.cursor() as cur:
        cur.execute(f"CREATE DATABASE `{database}`")
        cur.execute(
            f"CREATE TABLE `{database}`.orders (id INT PRIMARY KEY, note VARCHAR(20), amount INT)"
        )
        cur.execute(f"INSERT INTO `{database}`.orders VALUES (1, 'a', 10), (2, 'b', 20)")
    try:
        yield admin, settings
    finally:
        with admin.cursor() as cur:
            cur.execute(f"DROP DATABASE `{database}`")
        admin.close()


def run(coro: Any) -> Any:
    return asyncio.run(asyncio.wait_for(coro, 60))


async def query(engine: QueryEngine, sql: str) -> list[bytes]:
    return [
        item
        async for item in engine.execute(CTX, QueryRequest("shop", sql))
        if isinstance(item, bytes)
    ]


def test_a_dropped_column_or_table_is_named_and_needs_a_refresh(
    mariadb: tuple[Any, dict[str, Any]], tmp_path: Path
) -> None:
    admin, settings = mariadb
    database = settings["database"]
    executed: list[str] = []

    def factory(
        connection: Connection, stage_settings: Mapping[str, SettingValue], password: str | None
    ) -> Connector:
        return Counting(default_connector_factory(connection, stage_settings, password), executed)

    store = SqliteMetadataStore(tmp_path / "metadata.sqlite")
    manager = catalog_manager(store, connector_builder=factory)
    manager.create_connection("acme", "shop", "mysql", {"*": settings})
    manager.select("acme", "shop", "development", f"{database}.orders")
    engine = QueryEngine(store, Settings(home=tmp_path, metrics_port=0), connector_factory=factory)
    try:
        assert len(run(query(engine, "SELECT id, note FROM orders"))) >= 2
        with admin.cursor() as cur:
            cur.execute(f"ALTER TABLE `{database}`.orders DROP COLUMN note")
        with pytest.raises(SchemaMismatch) as column:
            run(query(engine, "SELECT id, note FROM orders"))
        assert column.value.sqlstate == "42S22"
        assert "column 'orders.note' no longer exists at the source" in column.value.message
        assert "A refresh is needed" in column.value.message

        report = refresh_catalog(manager, "acme", "shop", "development")
        assert [(d.kind.value, d.column) for d in report.drift] == [("column_dropped", "note")]
        before = len(executed)
        with pytest.raises(QueryRejected, match=r"column 'note' is not selected"):
            run(query(engine, "SELECT id, note FROM orders"))
        assert len(executed) == before, "nothing reached the source"

        with admin.cursor() as cur:
            cur.execute(f"DROP TABLE `{database}`.orders")
        with pytest.raises(SchemaMismatch) as table:
            run(query(engine, "SELECT id FROM orders"))
        assert table.value.sqlstate == "42S02"
        assert f"table {database}.orders of entity 'orders' no longer exists" in (
            table.value.message
        )
    finally:
        engine.close()
        store.close()
