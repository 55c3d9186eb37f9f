"""Results through the gateway read by the Arrow consumers apps use (pyarrow, pandas,
polars, DuckDB) give the source's own values, for every live connector: columns of each
common type and the aggregates whose types the source derives (SUM and AVG over decimals,
which PostgreSQL types as unconstrained numeric)."""

from __future__ import annotations

import datetime as dt
import secrets
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import duckdb
import pandas as pd  # type: ignore[import-untyped]  # no stubs ship with pandas
import polars as pl
import psycopg
import pyarrow as pa
import pymysql  # type: ignore[import-untyped]  # no stubs are published with PyMySQL
import pytest

from fabric.api.auth import local_admin_context
from fabric.api.background import BackgroundGateway
from fabric.app.gateway import assemble_gateway
from fabric.app.parts import catalog_manager
from fabric.catalog.metadata.sqlite import SqliteMetadataStore
from fabric.client import FabricClient
from fabric.config import Settings
from fabric.query.engine import QueryEngine
from tests.support.servers import mariadb_url

pytestmark = pytest.mark.postgres

ROWS = [
    (1, 10_000_000_001, Decimal("12.50"), "ünï 🚀", dt.date(2024, 2, 29), 0.25),
    (2, -7, Decimal("-0.01"), "plain", dt.date(1999, 12, 31), -1.5),
    (3, 0, Decimal("99999999.99"), "漢字", dt.date(1970, 1, 1), 3.0),
]
COLUMNS = "id, big, amount, label, day, ratio"
AGGREGATES = "SUM(amount) AS total, AVG(amount) AS mean, MIN(amount) AS least, COUNT(*) AS n"


@dataclass
class Source:
    name: str
    entity: str
    direct: Callable[[str], list[tuple[Any, ...]]]


def _insert_values() -> str:
    return ", ".join(
        f"({i}, {b}, {a}, '{s}', DATE '{d.isoformat()}', {r})" for i, b, a, s, d, r in ROWS
    )


@pytest.fixture(scope="module")
def pg(postgres_url: str) -> Iterator[tuple[dict[str, Any], Source]]:
    schema = f"fabric_consumers_{secrets.token_hex(4)}"
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
        conn.execute(
            f"CREATE TABLE {schema}.t (id int PRIMARY KEY, big bigint, amount numeric(10,2), "
            "label text, day date, ratio double precision)"
        )
        conn.execute(f"INSERT INTO {schema}.t VALUES {_insert_values()}")

    def direct(sql: str) -> list[tuple[Any, ...]]:
        with psycopg.connect(postgres_url) as conn:
            conn.execute(f"SET search_path TO {schema}")
            return list(conn.execute(sql).fetchall())

    info = psycopg.conninfo.conninfo_to_dict(postgres_url)
    settings = {
        "host": info.get("host", "127.0.0.1"),
        "port": int(info.get("port") or 5432),
        "database": info["dbname"],
        "user": info.get("user", "postgres"),
    }
    try:
        yield settings, Source("pg", f"{schema}.t", direct)
    finally:
        with psycopg.connect(postgres_url, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA {schema} CASCADE")


@pytest.fixture(scope="module")
def maria() -> Iterator[tuple[dict[str, Any], Source]]:
    url = urlparse(mariadb_url())
    db = f"fabric_consumers_{secrets.token_hex(4)}"
    login = {
        "host": url.hostname or "127.0.0.1",
        "port": url.port or 3306,
        "user": unquote(url.username or "root"),
        "password": unquote(url.password) if url.password else "",
    }
    admin = pymysql.connect(**login, charset="utf8mb4", autocommit=True)
    with admin.cursor() as cur:
        cur.execute(f"CREATE DATABASE {db} CHARACTER SET utf8mb4")
        cur.execute(
            f"CREATE TABLE {db}.t (id INT PRIMARY KEY, big BIGINT, amount DECIMAL(10,2), "
            "label VARCHAR(20), day DATE, ratio DOUBLE)"
        )
        cur.execute(f"INSERT INTO {db}.t VALUES {_insert_values().replace('DATE ', '')}")

    def direct(sql: str) -> list[tuple[Any, ...]]:
        conn = pymysql.connect(**login, database=db, charset="utf8mb4")
        try:
            with conn.cursor() as cur:
                cur.execute(sql)
                return list(cur.fetchall())
        finally:
            conn.close()

    settings = {k: v for k, v in login.items() if k != "password"} | {"database": db}
    try:
        yield settings, Source("maria", f"{db}.t", direct)
    finally:
        with admin.cursor() as cur:
            cur.execute(f"DROP DATABASE {db}")
        admin.close()


@pytest.fixture(scope="module")
def duck(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], Source]:
    path: Path = tmp_path_factory.mktemp("consumers") / "source.duckdb"
    with duckdb.connect(str(path)) as con:
        con.execute(
            "CREATE TABLE t (id INTEGER PRIMARY KEY, big BIGINT, amount DECIMAL(10,2), "
            "label VARCHAR, day DATE, ratio DOUBLE)"
        )
        con.execute(f"INSERT INTO t VALUES {_insert_values()}")

    def direct(sql: str) -> list[tuple[Any, ...]]:
        with duckdb.connect(str(path), read_only=True) as con:
            return list(con.execute(sql).fetchall())

    return {"path": str(path)}, Source("duck", "main.t", direct)


@pytest.fixture(scope="module")
def gateway(
    tmp_path_factory: pytest.TempPathFactory,
    pg: tuple[dict[str, Any], Source],
    maria: tuple[dict[str, Any], Source],
    duck: tuple[dict[str, Any], Source],
) -> Iterator[tuple[str, list[Source]]]:
    home = tmp_path_factory.mktemp("consumers_home")
    store = SqliteMetadataStore(home / "metadata.sqlite")
    manager = catalog_manager(store)
    sources = []
    for (settings, source), kind in ((pg, "postgres"), (maria, "mysql"), (duck, "duckdb")):
        manager.create_connection("default", source.name, kind, {"*": settings})
        manager.select("default", source.name, "development", source.entity, entity_name="t")
        sources.append(source)
    engine = QueryEngine(store, Settings(home=home, metrics_port=0))
    background = BackgroundGateway(
        assemble_gateway(engine, context_provider=local_admin_context)
    ).start()
    try:
        yield background.address, sources
    finally:
        background.stop()
        store.close()


QUERIES = [
    f"SELECT {COLUMNS} FROM t ORDER BY id",
    f"SELECT {AGGREGATES} FROM t",
    "SELECT id, amount * 3 AS tripled, amount / 7 AS seventh FROM t ORDER BY id",
]


def _same(got: Any, want: Any) -> bool:
    """Equal values of equal kinds: a decimal stays an exact Decimal; a date may come as
    a midnight timestamp (pandas' default for date columns)."""
    if isinstance(want, Decimal):
        return isinstance(got, Decimal) and got == want
    date_only = isinstance(want, dt.date) and not isinstance(want, dt.datetime)
    if date_only and isinstance(got, pd.Timestamp | dt.datetime):
        return bool(got.date() == want)
    return bool(got == want)


def _rows_equal(got: list[tuple[Any, ...]], want: list[tuple[Any, ...]]) -> None:
    assert len(got) == len(want)
    for got_row, want_row in zip(got, want, strict=True):
        assert len(got_row) == len(want_row)
        for g, w in zip(got_row, want_row, strict=True):
            assert _same(g, w), (got_row, want_row)


@pytest.mark.parametrize("sql", QUERIES, ids=["columns", "aggregates", "arithmetic"])
@pytest.mark.parametrize("which", [0, 1, 2], ids=["postgres", "mysql", "duckdb"])
def test_every_consumer_reads_the_sources_values(
    gateway: tuple[str, list[Source]], which: int, sql: str
) -> None:
    address, sources = gateway
    source = sources[which]
    with FabricClient(address, timeout=60) as client:
        table = client.query(source.name, sql)
    want = source.direct(sql)
    for field in table.schema:
        # decimal256 is what polars, DuckDB and pandas' Arrow types cannot read
        assert not pa.types.is_decimal256(field.type), field

    _rows_equal([tuple(r.values()) for r in table.to_pylist()], want)
    frame = table.to_pandas()
    _rows_equal(list(frame.itertuples(index=False, name=None)), want)
    arrow_frame = table.to_pandas(types_mapper=pd.ArrowDtype)
    _rows_equal(list(arrow_frame.itertuples(index=False, name=None)), want)
    _rows_equal(pl.from_arrow(table).rows(), want)  # type: ignore[union-attr]
    _rows_equal(duckdb.arrow(table).fetchall(), want)
