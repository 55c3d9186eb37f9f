"""Issue 17's must-show: TPC-H split across three sources, every one of the 22 queries
through the gateway as one federated query, equal to the all-in-PostgreSQL answer.

lineitem and orders are in PostgreSQL, customer, nation and region in MariaDB, part,
partsupp and supplier in a DuckDB file (benchmarks.tpch_split.SPLIT). The data is
generated at scale 0.01 with tpchgen-cli into a fresh PostgreSQL schema (the reference,
with every table) and copied from there into a fresh MariaDB database and a DuckDB file,
so every source holds exactly the reference's rows. The three connections are created,
discovered and selected through Fabric's catalog manager; the queries of
benchmarks.tpch are rewritten to `connection.entity` names on their sqlglot tree.

Answers are compared as benchmarks.tpch_split.compare states: in order where ORDER BY
fixes every row's place, else as multisets; numbers within a relative 1e-9; text without
CHAR(n) padding (PostgreSQL pads bpchar, MariaDB strips it).
"""

from __future__ import annotations

import secrets
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pyarrow as pa
import pytest
import sqlglot

from benchmarks import tpch
from benchmarks.common import Pg
from benchmarks.tpch import TABLES
from benchmarks.tpch_pushdown import IDEAL, perfect_rows, statements
from benchmarks.tpch_split import (
    DUCKDB,
    MARIADB,
    PG,
    SPLIT,
    MariaDb,
    SplitSources,
    arrow_rows,
    build_sources,
    compare,
    connections_used,
    exported,
    qualify,
    register,
    tables_of,
)
from fabric.api.auth import local_admin_context
from fabric.api.background import BackgroundGateway
from fabric.app.gateway import assemble_gateway
from fabric.app.parts import catalog_manager
from fabric.catalog.metadata.sqlite import SqliteMetadataStore
from fabric.client import FabricClient
from fabric.config import Settings
from fabric.context import DEFAULT_STAGE, DEFAULT_TENANT
from fabric.query.engine import QueryEngine
from tests.support.servers import mariadb_url

pytestmark = pytest.mark.postgres

SCALE = 0.01
QUERIES = tpch.queries(SCALE)


@dataclass(frozen=True)
class Split:
    pg: Pg
    schema: str
    maria: MariaDb
    sources: SplitSources
    reference_rows: dict[str, int]

    def reference(self, text: str) -> list[tuple[Any, ...]]:
        with psycopg.connect(self.pg.conninfo(schema=self.schema, connect_timeout=10)) as conn:
            return [tuple(row) for row in conn.execute(text).fetchall()]


def _pg(url: str) -> Pg:
    info = psycopg.conninfo.conninfo_to_dict(url)
    return Pg(
        host=str(info.get("host") or "127.0.0.1"),
        port=int(info.get("port") or 5432),
        user=str(info.get("user") or "postgres"),
        database=str(info["dbname"]),
        password=info.get("password"),  # type: ignore[arg-type]
    )


@pytest.fixture(scope="module")
def split(tmp_path_factory: pytest.TempPathFactory, postgres_url: str) -> Iterator[Split]:
    maria = MariaDb.from_url(mariadb_url())
    pg = _pg(postgres_url)
    name = f"fabric_tpch_{secrets.token_hex(4)}"
    directory = tmp_path_factory.mktemp("tpch_split")
    try:
        with tempfile.TemporaryDirectory(prefix="fabric-tpch-csv-") as csv:
            tpch.generate(SCALE, Path(csv))
            rows = tpch.load(pg, name, Path(csv))
        sources = build_sources(
            pg.conninfo(connect_timeout=10), name, maria, name, directory / "tpch.duckdb"
        )
        yield Split(pg, name, maria, sources, rows)
    finally:
        maria.drop(name)
        with psycopg.connect(pg.conninfo(connect_timeout=10), autocommit=True) as conn:
            conn.execute(
                psycopg.sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(
                    psycopg.sql.Identifier(name)
                )
            )


@pytest.fixture(scope="module")
def gateway(
    tmp_path_factory: pytest.TempPathFactory, split: Split
) -> Iterator[tuple[BackgroundGateway, dict[str, list[str]]]]:
    home = tmp_path_factory.mktemp("tpch_split_home")
    store = SqliteMetadataStore(home / "metadata.sqlite")
    manager = catalog_manager(store)
    pg_settings = {
        "host": split.pg.host,
        "port": split.pg.port,
        "database": split.pg.database,
        "user": split.pg.user,
    }
    entities = register(
        manager,
        DEFAULT_TENANT,
        DEFAULT_STAGE,
        pg_settings,
        split.schema,
        split.maria,
        split.sources,
    )
    engine = QueryEngine(store, Settings(home=home, metrics_port=0))
    background = BackgroundGateway(
        assemble_gateway(engine, context_provider=local_admin_context)
    ).start()
    try:
        yield background, entities
    finally:
        background.stop()
        store.close()


def test_each_source_holds_its_tables_with_the_reference_rows(
    split: Split, gateway: tuple[BackgroundGateway, dict[str, list[str]]]
) -> None:
    _, entities = gateway
    assert entities == {c: sorted(tables_of(c)) for c in (PG, MARIADB, DUCKDB)}
    assert split.sources.rows == {t: split.reference_rows[t] for t in SPLIT if SPLIT[t] != PG}
    assert split.reference_rows["lineitem"] > 50_000  # scale 0.01: ~60 k lineitem rows


def _duckdb_over_the_sources(split: Split) -> Any:
    """An in-memory DuckDB with schemas `pg`, `maria` and `duck` holding the tables read
    back from each source as it stores them: the naive federation (move everything).
    PostgreSQL's CHAR(n) values are read without their padding, as PostgreSQL compares
    them (DuckDB would compare the padded text): benchmarks.tpch_split.export_csv."""
    import duckdb

    con = duckdb.connect(":memory:")
    for schema in (PG, MARIADB, DUCKDB):
        con.execute(f"CREATE SCHEMA {schema}")

    def put(schema: str, table: str, data: pa.Table) -> None:
        con.register("incoming", data)
        con.execute(f"CREATE TABLE {schema}.{table} AS SELECT * FROM incoming")
        con.unregister("incoming")

    # PostgreSQL's tables as COPY exports them (in C, unlike a row-by-row fetch).
    with exported(split.pg.conninfo(connect_timeout=10), split.schema, tables_of(PG)) as csv:
        for table in tables_of(PG):
            con.execute(f"CREATE TABLE {PG}.{table} ({TABLES[table]})")
            con.execute(f"COPY {PG}.{table} FROM '{csv / table}.csv' (FORMAT csv, HEADER false)")
    maria = split.maria.connect(split.sources.mariadb_database)
    try:
        with maria.cursor() as cur:
            for table in tables_of(MARIADB):
                cur.execute(f"SELECT * FROM `{table}`")
                names = [d[0] for d in cur.description]
                columns = list(zip(*cur.fetchall(), strict=True))
                put(MARIADB, table, pa.table(dict(zip(names, map(list, columns), strict=True))))
    finally:
        maria.close()
    with duckdb.connect(str(split.sources.duckdb_path), read_only=True) as duck:
        for table in tables_of(DUCKDB):
            put(DUCKDB, table, duck.sql(f"SELECT * FROM {table}").to_arrow_table())
    return con


def test_qualified_queries_over_the_sources_data_match_postgres(split: Split) -> None:
    """The harness itself: each qualified query, run in DuckDB over what the three sources
    hold, equals the reference. A federated failure below is then the engine's."""
    con = _duckdb_over_the_sources(split)
    try:
        failures = []
        for q in QUERIES:
            text = qualify(q.sql)
            got = [tuple(r) for r in con.execute(text).fetchall()]
            diff = compare(got, split.reference(q.sql), q.total_order)
            if diff is not None:
                failures.append(f"Q{q.number}: {diff}")
        assert failures == []
    finally:
        con.close()


def test_every_query_spans_connections_as_split() -> None:
    spans = {q.number: connections_used(qualify(q.sql)) for q in QUERIES}
    assert spans[1] == spans[6] == {PG}
    assert spans[2] == {DUCKDB, MARIADB}
    assert spans[5] == spans[7] == spans[8] == spans[9] == {PG, MARIADB, DUCKDB}
    assert sum(len(s) > 1 for s in spans.values()) == 17


@pytest.mark.parametrize("query", QUERIES, ids=[f"Q{q.number}" for q in QUERIES])
def test_federated_query_equals_postgres(
    split: Split, gateway: tuple[BackgroundGateway, dict[str, list[str]]], query: tpch.TpchQuery
) -> None:
    background, _ = gateway
    expected = split.reference(query.sql)
    assert expected, "the reference answer is empty: the query would prove nothing"
    text = qualify(query.sql)
    with FabricClient(background.address, timeout=60) as client:
        table = client.query("", text)
        plan = client.explain("", text)
    diff = compare(arrow_rows(table), expected, query.total_order)
    assert diff is None, f"Q{query.number}: {diff}"
    # Every source the query names is sent a statement of its own.
    assert {p.connection for p in plan.parts if p.connection} == connections_used(text)
    assert plan.federated == (len(connections_used(text)) > 1)


def test_perfect_pushdown_statements_name_only_their_source(split: Split) -> None:
    """The benchmark's perfect-pushdown figures (benchmarks.tpch_pushdown): every query
    has them, each statement reads only its own source's tables, and counts on the
    reference; the whole-query ones move the query's own answer."""
    assert sorted(IDEAL) == [q.number for q in QUERIES]
    with psycopg.connect(split.pg.conninfo(schema=split.schema, connect_timeout=10)) as conn:
        for q in QUERIES:
            for source, texts in statements(q.number, q.sql).items():
                for text in texts:
                    tree = sqlglot.parse_one(text, read="postgres")
                    ctes = {c.alias_or_name for c in tree.find_all(sqlglot.exp.CTE)}
                    named = {t.name for t in tree.find_all(sqlglot.exp.Table)} - ctes
                    assert named and {SPLIT[t] for t in named} == {source}, (q.number, text)
            moved = perfect_rows(conn, q.number, q.sql)
            assert set(moved) == connections_used(qualify(q.sql)), q.number
            if len(moved) == 1:
                assert list(moved.values()) == [len(split.reference(q.sql))], q.number
