"""Three real sources for the federation tests: orders and lineitem in PostgreSQL,
customer in MariaDB (with a column left unselected), nation in a DuckDB file; each
connector records the statements it was sent."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import duckdb
import psycopg
import pyarrow as pa

from connectors import Connector, QueryHandle
from fabric.app.parts import catalog_manager
from fabric.catalog.metadata.sqlite import SqliteMetadataStore
from fabric.config import Settings
from fabric.context import RequestContext, Role
from fabric.model import Connection, SettingValue
from fabric.query.engine import QueryEngine, QueryRequest
from fabric.query.sources import default_connector_factory
from fabric.results.ipc import open_ipc_stream
from tests.support.servers import mariadb_url, postgres_url

CTX = RequestContext(tenant="acme", stage="development", role=Role.APP, principal="app")
CUSTOMERS = 200
ORDERS_PER_CUSTOMER = 20


class Recording(Connector):
    """The real connector, recording each statement it is sent."""

    def __init__(self, inner: Connector, sent: list[str]) -> None:
        super().__init__(inner.config)
        self.inner = inner
        self.sent = sent
        self.kind = inner.kind  # type: ignore[misc]
        self.dialect = inner.dialect  # type: ignore[misc]
        self.param_style = inner.param_style  # type: ignore[misc]

    @property
    def capacity(self) -> int | None:
        return self.inner.capacity

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
        self.sent.append(sql)
        return self.inner.execute(sql, params, timeout=timeout, batch_rows=batch_rows)

    def close(self) -> None:
        self.inner.close()


@dataclass
class Sources:
    engine: QueryEngine
    sent: dict[str, list[str]] = field(default_factory=dict)
    pg_schema: str = ""
    pg_url: str = ""


def run(coro: Any, timeout: float = 120) -> Any:
    return asyncio.run(asyncio.wait_for(coro, timeout))


async def rows_of(
    engine: QueryEngine, sql: str, params: Mapping[str, Any] | None = None, connection: str = ""
) -> pa.Table:
    messages = [
        item
        async for item in engine.execute(CTX, QueryRequest(connection, sql, dict(params or {})))
        if isinstance(item, bytes)
    ]
    return open_ipc_stream(messages).read_all()


def sources(
    tmp_path: Path,
    *,
    tenant: str = CTX.tenant,
    lineitems: int = 8000,
    pg_url: str | None = None,
    **settings: Any,
) -> Iterator[Sources]:
    """The three sources (PostgreSQL: the shared server, or `pg_url`'s)."""
    tag = uuid.uuid4().hex[:10]
    pg_url = pg_url or postgres_url()
    schema = f"fed_{tag}"
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
        conn.execute(
            f"CREATE TABLE {schema}.orders (o_orderkey int PRIMARY KEY, o_custkey int NOT NULL, "
            "o_totalprice numeric(12,2) NOT NULL, o_status text NOT NULL)"
        )
        conn.execute(f"CREATE INDEX ON {schema}.orders (o_custkey)")
        conn.execute(
            f"INSERT INTO {schema}.orders SELECT g, 1 + (g % {CUSTOMERS}), (g % 997) + 0.5, "
            f"CASE WHEN g % 3 = 0 THEN 'F' ELSE 'O' END "
            f"FROM generate_series(1, {CUSTOMERS * ORDERS_PER_CUSTOMER}) g"
        )
        conn.execute(
            f"CREATE TABLE {schema}.lineitem (l_orderkey int NOT NULL, l_quantity int NOT NULL)"
        )
        conn.execute(
            f"INSERT INTO {schema}.lineitem SELECT 1 + (g % {CUSTOMERS * ORDERS_PER_CUSTOMER}), "
            f"g % 50 FROM generate_series(1, {lineitems}) g"
        )
        conn.execute(f"ANALYZE {schema}.orders")
    import pymysql  # type: ignore[import-untyped]  # no stubs are published with PyMySQL

    u = urlparse(mariadb_url())
    database = f"fed_{tag}"
    maria: dict[str, Any] = {
        "host": u.hostname or "127.0.0.1",
        "port": u.port or 3306,
        "user": unquote(u.username or "root"),
        "database": database,
        "pool_max": 4,
    }
    admin = pymysql.connect(
        host=maria["host"],
        port=maria["port"],
        user=maria["user"],
        password=unquote(u.password) if u.password else "",
        autocommit=True,
    )
    with admin.cursor() as cur:
        cur.execute(f"CREATE DATABASE `{database}`")
        cur.execute(
            f"CREATE TABLE `{database}`.customer (c_custkey INT PRIMARY KEY, "
            "c_name VARCHAR(40) NOT NULL, c_nationkey INT NOT NULL, c_secret VARCHAR(40))"
        )
        values = ", ".join(
            f"({i}, 'Customer#{i:04d}', {i % 5}, 'secret-{i}')" for i in range(1, CUSTOMERS + 1)
        )
        cur.execute(f"INSERT INTO `{database}`.customer VALUES {values}")
    nation_file = tmp_path / "nation.duckdb"
    with duckdb.connect(str(nation_file)) as con:
        con.execute("CREATE TABLE nation (n_nationkey INTEGER PRIMARY KEY, n_name VARCHAR)")
        con.execute(
            "INSERT INTO nation VALUES (0, 'ALGERIA'), (1, 'ARGENTINA'), (2, 'BRAZIL'), "
            "(3, 'CANADA'), (4, 'EGYPT')"
        )
    sent: dict[str, list[str]] = {"pg": [], "mdb": [], "ddb": []}
    names = {"postgres": "pg", "mysql": "mdb", "duckdb": "ddb"}

    def factory(
        connection: Connection, stage_settings: Mapping[str, SettingValue], password: str | None
    ) -> Connector:
        inner = default_connector_factory(connection, stage_settings, password)
        return Recording(inner, sent[names[connection.kind]])

    store = SqliteMetadataStore(tmp_path / "metadata.sqlite")
    manager = catalog_manager(store, connector_builder=factory)
    pg = urlparse(pg_url)
    manager.create_connection(
        tenant,
        "pg",
        "postgres",
        {
            "*": {
                "host": pg.hostname or "127.0.0.1",
                "port": pg.port or 5432,
                "user": unquote(pg.username or "postgres"),
                "database": (pg.path or "/test").lstrip("/") or "test",
            }
        },
    )
    manager.select(tenant, "pg", "development", f"{schema}.orders")
    manager.select(tenant, "pg", "development", f"{schema}.lineitem")
    manager.create_connection(tenant, "mdb", "mysql", {"*": maria})
    manager.select(
        tenant,
        "mdb",
        "development",
        f"{database}.customer",
        columns=["c_custkey", "c_name", "c_nationkey"],
    )
    manager.create_connection(tenant, "ddb", "duckdb", {"*": {"path": str(nation_file)}})
    manager.select(tenant, "ddb", "development", "main.nation")
    engine = QueryEngine(
        store,
        Settings(home=tmp_path / "home", metrics_port=0, **settings),
        connector_factory=factory,
    )
    try:
        yield Sources(engine, sent, schema, pg_url)
    finally:
        engine.close()
        store.close()
        with admin.cursor() as cur:
            cur.execute(f"DROP DATABASE `{database}`")
        admin.close()
        with psycopg.connect(pg_url, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA {schema} CASCADE")
