"""TPC-H split across three sources, for federation (issue 17): lineitem and orders stay in
PostgreSQL, customer, nation and region go to MariaDB, part, partsupp and supplier to a
DuckDB file. The PostgreSQL schema loaded by `benchmarks.tpch` holds all eight tables and
is both the reference (every query run there directly) and the source of the split copies
(exported with COPY, so every source holds exactly the reference's rows).

A federated query names each table as `connection.entity`; `qualify` rewrites the 22
queries of `benchmarks.tpch` on their sqlglot tree, so there is one text of each query.
`compare` checks a federated answer against the reference with a stated tolerance.
"""

from __future__ import annotations

import csv
import json
import math
import re
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import psycopg
import sqlglot
from psycopg import sql
from sqlglot import exp

from benchmarks.tpch import PRIMARY_KEYS, TABLES

PG, MARIADB, DUCKDB = "pg", "maria", "duck"
"""The three connections' names (the schema position of a qualified entity name)."""

SPLIT: dict[str, str] = {
    "lineitem": PG,
    "orders": PG,
    "customer": MARIADB,
    "nation": MARIADB,
    "region": MARIADB,
    "part": DUCKDB,
    "partsupp": DUCKDB,
    "supplier": DUCKDB,
}

REL_TOL = 1e-9
"""Numbers (integers, decimals, floats) are equal when within this relative difference
(or ABS_TOL of each other): the reference computes in PostgreSQL numeric, a federated
plan may compute part of an expression in DuckDB's DECIMAL or DOUBLE (avg, division)."""
ABS_TOL = 1e-9

MARIADB_LAYOUT = 1
"""Bump when the MariaDB DDL or load changes, so cached databases are reloaded."""


def tables_of(connection: str) -> list[str]:
    return [table for table, source in SPLIT.items() if source == connection]


# -- query rewriting ----------------------------------------------------------------------


def qualify(text: str, split: Mapping[str, str] = SPLIT) -> str:
    """`text` with every TPC-H table written `connection.table` (CTE names and aliases
    untouched), in Fabric's PostgreSQL-flavoured SQL."""
    tree = sqlglot.parse_one(text, read="postgres")
    ctes = {cte.alias_or_name.lower() for cte in tree.find_all(exp.CTE)}
    for table in tree.find_all(exp.Table):
        name = table.name.lower()
        if table.args.get("db") is not None or name in ctes:
            continue
        if name not in split:
            raise ValueError(f"table {table.name!r} is not part of the split")
        table.set("db", exp.to_identifier(split[name]))
    return tree.sql(dialect="postgres", pretty=True)


def connections_used(text: str) -> set[str]:
    """The connections a qualified query names."""
    tree = sqlglot.parse_one(text, read="postgres")
    return {t.db for t in tree.find_all(exp.Table) if t.db}


# -- result comparison --------------------------------------------------------------------


def _number(value: Any) -> bool:
    return isinstance(value, int | float | Decimal) and not isinstance(value, bool)


def _norm(value: Any) -> Any:
    # CHAR(n) padding is a property of the source, not of the data: PostgreSQL pads
    # bpchar, MariaDB strips trailing spaces, DuckDB has no CHAR; compare unpadded text.
    if isinstance(value, str):
        return value.rstrip(" ")
    return value


def _same(a: Any, b: Any) -> bool:
    if _number(a) and _number(b):
        x, y = float(a), float(b)
        return math.isclose(x, y, rel_tol=REL_TOL, abs_tol=ABS_TOL)
    return bool(_norm(a) == _norm(b))


def _sort_key(row: Sequence[Any]) -> tuple[tuple[int, str], ...]:
    # Numbers sort by 9 significant digits so two answers within tolerance sort alike.
    return tuple((0, f"{float(v):.9e}") if _number(v) else (1, repr(_norm(v))) for v in row)


def compare(
    actual: Sequence[Sequence[Any]], expected: Sequence[Sequence[Any]], ordered: bool
) -> str | None:
    """None when `actual` equals `expected` (in order when `ordered`, else as multisets),
    numbers within REL_TOL/ABS_TOL and text without CHAR padding; else what differs."""
    if len(actual) != len(expected):
        return f"{len(actual)} rows, {len(expected)} expected"
    if actual and len(actual[0]) != len(expected[0]):
        return f"{len(actual[0])} columns, {len(expected[0])} expected"
    left, right = list(actual), list(expected)
    if not ordered:
        left, right = sorted(left, key=_sort_key), sorted(right, key=_sort_key)
    for i, (a, e) in enumerate(zip(left, right, strict=True)):
        if not all(_same(x, y) for x, y in zip(a, e, strict=True)):
            where = f"row {i}" if ordered else "a row (compared as multisets)"
            return f"{where} differs: got {tuple(a)!r}, expected {tuple(e)!r}"
    return None


def arrow_rows(table: Any) -> list[tuple[Any, ...]]:
    columns = [table.column(i).to_pylist() for i in range(table.num_columns)]
    return list(zip(*columns, strict=True))


# -- the sources --------------------------------------------------------------------------


def _columns(table: str) -> list[tuple[str, str]]:
    """(name, type) of each column of `table` in benchmarks.tpch's DDL."""
    parts = (p.split() for p in re.split(r",(?![^()]*\))", TABLES[table]) if p.strip())
    return [(p[0], p[1].lower()) for p in parts]


def char_columns(table: str) -> list[str]:
    """The CHAR(n) columns of `table` in benchmarks.tpch's DDL."""
    return [name for name, kind in _columns(table) if kind.startswith("char(")]


def unpadded_columns(table: str) -> sql.Composable:
    """A select list of `table` with its CHAR(n) values without their padding: PostgreSQL
    ignores a bpchar's trailing spaces in comparisons, a copy in another engine would not,
    so the copies hold the values as generated (tpchgen writes no padding)."""
    names = [name for name, _ in _columns(table)]
    chars = set(char_columns(table))
    return sql.SQL(", ").join(
        sql.SQL("rtrim({0}) AS {0}").format(sql.Identifier(n)) if n in chars else sql.Identifier(n)
        for n in names
    )


def export_csv(conninfo: str, schema: str, tables: Sequence[str], directory: Path) -> None:
    """Each table of `schema` as `directory/<table>.csv` (no header, CHAR(n) values
    without padding), in key order."""
    with psycopg.connect(conninfo, autocommit=True) as conn:
        for table in tables:
            copy_sql = sql.SQL("COPY (SELECT {} FROM {}.{} ORDER BY {}) TO STDOUT (FORMAT csv)")
            keys = sql.SQL(", ").join(
                sql.Identifier(k.strip()) for k in PRIMARY_KEYS[table].split(",")
            )
            with (
                conn.cursor() as cur,
                cur.copy(
                    copy_sql.format(
                        unpadded_columns(table), sql.Identifier(schema), sql.Identifier(table), keys
                    )
                ) as copy,
                open(directory / f"{table}.csv", "wb") as out,
            ):
                for block in copy:
                    out.write(block)


def load_duckdb(path: Path, directory: Path, tables: Sequence[str]) -> dict[str, int]:
    """A DuckDB file at `path` holding `tables` (DDL of benchmarks.tpch, primary keys)
    from the CSV files in `directory`; returns the row counts."""
    import duckdb

    rows: dict[str, int] = {}
    with duckdb.connect(str(path)) as con:
        for table in tables:
            con.execute(
                f"CREATE TABLE {table} ({TABLES[table]}, PRIMARY KEY ({PRIMARY_KEYS[table]}))"
            )
            csv = str(directory / f"{table}.csv").replace("'", "''")
            con.execute(f"COPY {table} FROM '{csv}' (FORMAT csv, HEADER false)")
            counted = con.execute(f"SELECT count(*) FROM {table}").fetchone()
            rows[table] = int(counted[0]) if counted else 0
    return rows


@dataclass(frozen=True)
class MariaDb:
    """A MariaDB/MySQL server, from a `mysql://user:password@host:port/db` URL."""

    host: str
    port: int
    user: str
    password: str | None

    @staticmethod
    def from_url(url: str) -> MariaDb:
        u = urlparse(url)
        return MariaDb(
            host=u.hostname or "127.0.0.1",
            port=u.port or 3306,
            user=unquote(u.username or "root"),
            password=unquote(u.password) if u.password else None,
        )

    def connect(self, database: str | None = None, **extra: Any) -> Any:
        import pymysql  # type: ignore[import-untyped]  # no stubs are published with PyMySQL

        return pymysql.connect(
            host=self.host,
            port=self.port,
            user=self.user,
            password=self.password or "",
            database=database,
            charset="utf8mb4",
            autocommit=True,
            **extra,
        )

    def settings(self, database: str) -> dict[str, Any]:
        """The Fabric `mysql` connection settings for `database` (no secret)."""
        return {"host": self.host, "port": self.port, "user": self.user, "database": database}

    def drop(self, database: str) -> None:
        con = self.connect()
        try:
            with con.cursor() as cur:
                cur.execute(f"DROP DATABASE IF EXISTS `{database}`")
        finally:
            con.close()


MARKER_TABLE = "fabric_bench_loaded"


def load_mariadb(
    server: MariaDb, database: str, directory: Path, tables: Sequence[str]
) -> dict[str, int]:
    """`database` (re)created holding `tables` (DDL of benchmarks.tpch, primary keys),
    loaded with LOAD DATA LOCAL INFILE from the CSV files in `directory`."""
    con = server.connect(local_infile=True)
    rows: dict[str, int] = {}
    try:
        with con.cursor() as cur:
            cur.execute(f"DROP DATABASE IF EXISTS `{database}`")
            cur.execute(f"CREATE DATABASE `{database}` CHARACTER SET utf8mb4")
            cur.execute(f"USE `{database}`")
            for table in tables:
                cur.execute(
                    f"CREATE TABLE `{table}` ({TABLES[table]}, "
                    f"PRIMARY KEY ({PRIMARY_KEYS[table]})) ENGINE=InnoDB"
                )
                _load_table(cur, table, directory / f"{table}.csv")
                cur.execute(f"SELECT count(*) FROM `{table}`")
                rows[table] = int(cur.fetchone()[0])
                cur.execute(f"ANALYZE TABLE `{table}`")
                cur.fetchall()
    finally:
        con.close()
    return rows


LOCAL_INFILE_REFUSED = (1148, 3948, 4166)
"""MySQL/MariaDB error codes of a server (or client) that does not take LOCAL INFILE."""
INSERT_BATCH = 5000


def _load_table(cur: Any, table: str, csv_path: Path) -> None:
    """LOAD DATA LOCAL INFILE when the server takes it, else batched INSERTs."""
    import pymysql

    # PostgreSQL's CSV: comma-separated, '"' around fields that need it with '""'
    # inside, no backslash escapes.
    try:
        cur.execute(
            f"LOAD DATA LOCAL INFILE %s INTO TABLE `{table}` CHARACTER SET utf8mb4 "
            "FIELDS TERMINATED BY ',' OPTIONALLY ENCLOSED BY '\"' ESCAPED BY '' "
            "LINES TERMINATED BY '\\n'",
            (str(csv_path),),
        )
        return
    except pymysql.err.MySQLError as exc:
        if not exc.args or exc.args[0] not in LOCAL_INFILE_REFUSED:
            raise
    width = len(_columns(table))
    insert = f"INSERT INTO `{table}` VALUES ({', '.join(['%s'] * width)})"
    with open(csv_path, newline="", encoding="utf-8") as f:
        batch: list[list[str]] = []
        for row in csv.reader(f):
            batch.append(row)
            if len(batch) >= INSERT_BATCH:
                cur.executemany(insert, batch)
                batch = []
        if batch:
            cur.executemany(insert, batch)


def mariadb_marker(server: MariaDb, database: str) -> dict[str, Any] | None:
    """The load marker of `database` (scale, source, layout, rows, seconds), if any."""
    con = server.connect()
    try:
        with con.cursor() as cur:
            cur.execute(
                "SELECT count(*) FROM information_schema.tables "
                "WHERE table_schema = %s AND table_name = %s",
                (database, MARKER_TABLE),
            )
            if int(cur.fetchone()[0]) == 0:
                return None
            cur.execute(f"SELECT body FROM `{database}`.`{MARKER_TABLE}`")
            row = cur.fetchone()
            return dict(json.loads(row[0])) if row else None
    finally:
        con.close()


def write_mariadb_marker(server: MariaDb, database: str, body: Mapping[str, Any]) -> None:
    con = server.connect(database)
    try:
        with con.cursor() as cur:
            cur.execute(f"CREATE TABLE `{MARKER_TABLE}` (body TEXT NOT NULL)")
            cur.execute(f"INSERT INTO `{MARKER_TABLE}` VALUES (%s)", (json.dumps(body),))
    finally:
        con.close()


@dataclass(frozen=True)
class SplitSources:
    """Where the split copies are: the MariaDB database, the DuckDB file, and how long
    each took (0 for a reused MariaDB load)."""

    mariadb_database: str
    duckdb_path: Path
    rows: dict[str, int]
    mariadb_seconds: float
    mariadb_reused: bool
    duckdb_seconds: float


@contextmanager
def exported(conninfo: str, schema: str, tables: Sequence[str]) -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="fabric-tpch-split-") as tmp:
        export_csv(conninfo, schema, tables, Path(tmp))
        yield Path(tmp)


def build_sources(
    conninfo: str,
    schema: str,
    server: MariaDb,
    mariadb_database: str,
    duckdb_path: Path,
    *,
    marker: Mapping[str, Any] | None = None,
) -> SplitSources:
    """Copy the MariaDB and DuckDB tables of the split out of the PostgreSQL `schema`.
    With `marker`, a MariaDB database whose marker equals it is reused as is, and a fresh
    load writes it (a benchmark caches its load across runs); without, it is always
    loaded."""
    maria_tables, duck_tables = tables_of(MARIADB), tables_of(DUCKDB)
    rows: dict[str, int] = {}
    reuse = False
    if marker is not None:
        found = mariadb_marker(server, mariadb_database)
        reuse = found is not None and {k: found.get(k) for k in marker} == dict(marker)
        if reuse and found is not None:
            rows.update(found["rows"])
    needed = duck_tables if reuse else maria_tables + duck_tables
    with exported(conninfo, schema, needed) as directory:
        maria_seconds = 0.0
        if not reuse:
            t0 = time.perf_counter()
            rows.update(load_mariadb(server, mariadb_database, directory, maria_tables))
            maria_seconds = time.perf_counter() - t0
            if marker is not None:
                write_mariadb_marker(
                    server,
                    mariadb_database,
                    {**marker, "rows": {t: rows[t] for t in maria_tables}},
                )
        t0 = time.perf_counter()
        rows.update(load_duckdb(duckdb_path, directory, duck_tables))
        duck_seconds = time.perf_counter() - t0
    return SplitSources(mariadb_database, duckdb_path, rows, maria_seconds, reuse, duck_seconds)


def register(
    manager: Any,
    tenant: str,
    stage: str,
    pg_settings: Mapping[str, Any],
    pg_schema: str,
    server: MariaDb,
    sources: SplitSources,
) -> dict[str, list[str]]:
    """Create the three connections through Fabric's catalog manager and select each
    source's tables with every column (discovered by Fabric, as an admin would); returns
    the entity names per connection."""
    from fabric.catalog.manager import TableChoice

    if server.password:
        # Registered settings hold no secret, and this harness keeps no secret store.
        raise ValueError(
            "the split registers MariaDB without a password: use an account without one"
        )

    manager.create_connection(tenant, PG, "postgres", {"*": dict(pg_settings)})
    manager.create_connection(
        tenant, MARIADB, "mysql", {"*": server.settings(sources.mariadb_database)}
    )
    manager.create_connection(tenant, DUCKDB, "duckdb", {"*": {"path": str(sources.duckdb_path)}})
    entities: dict[str, list[str]] = {}
    for connection, schema in (
        (PG, pg_schema),
        (MARIADB, sources.mariadb_database),
        (DUCKDB, "main"),
    ):
        found = manager.discover(tenant, connection, stage, [schema])
        wanted = set(tables_of(connection))
        choices = [TableChoice(f"{t.schema}.{t.name}") for t in found if t.name in wanted]
        if len(choices) != len(wanted):
            raise RuntimeError(f"connection {connection!r} lacks some of {sorted(wanted)}")
        chosen = manager.select_tables(tenant, connection, stage, choices)
        entities[connection] = sorted(e.name for e in chosen)
    return entities
