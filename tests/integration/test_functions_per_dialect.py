"""The per-dialect function allow-list: what a target cannot run is refused by name, and
on MariaDB every allowed function of a probe set really runs."""

from __future__ import annotations

from dataclasses import replace

import pyarrow as pa
import pytest

from connectors import registry
from connectors.base import ParamStyle
from fabric.errors import QueryRejected
from fabric.model import CatalogSnapshot, ColumnInfo, Entity
from fabric.query.compiler import StatementCompiler

CATALOG = CatalogSnapshot(
    "t",
    "c",
    1,
    {
        "m": Entity(
            "m",
            "public",
            "m",
            (
                ColumnInfo("x", "int", pa.int32()),
                ColumnInfo("y", "double", pa.float64()),
                ColumnInfo("s", "text", pa.string()),
                ColumnInfo("d", "date", pa.date32()),
            ),
            ("x",),
            hidden_columns=(),
        )
    },
)

PROBES = {
    "corr": "SELECT CORR(x, y) AS v FROM m",
    "cbrt": "SELECT CBRT(y) AS v FROM m",
    "starts_with": "SELECT STARTS_WITH(s, 'a') AS v FROM m",
    "string_agg": "SELECT LEFT(STRING_AGG(s, ','), 100) AS v FROM m",
    "date_trunc": "SELECT DATE_TRUNC('month', d) AS v FROM m",
    "nth_value": "SELECT NTH_VALUE(x, 2) OVER (ORDER BY x) AS v FROM m",
    "greatest": "SELECT GREATEST(x, y) AS v FROM m",
    "bool_and": "SELECT BOOL_AND(x > 1) AS v FROM m",
}


def compile_for(sql: str, dialect: str) -> str:
    return (
        StatementCompiler()
        .compile(sql, CATALOG, dialect=dialect, param_style=ParamStyle.FORMAT, max_rows=10)
        .sql
    )


@pytest.mark.parametrize("dialect", ["mysql", "tsql"])
@pytest.mark.parametrize("name", sorted(PROBES))
def test_excluded_functions_are_refused_by_name(dialect: str, name: str) -> None:
    excluded_names = {cls.__name__ for cls in registry.excluded_functions(dialect)}
    sql = PROBES[name]
    tree_name = {
        "corr": "Corr",
        "cbrt": "Cbrt",
        "starts_with": "StartsWith",
        "string_agg": "GroupConcat",
        "date_trunc": "TimestampTrunc",
        "nth_value": "NthValue",
        "greatest": "Greatest",
        "bool_and": "LogicalAnd",
    }[name]
    if tree_name in excluded_names or (name == "date_trunc" and "DateTrunc" in excluded_names):
        with pytest.raises(QueryRejected, match=f"not available on this connection: {dialect}"):
            compile_for(sql, dialect)
    else:
        assert compile_for(sql, dialect)


@pytest.mark.parametrize("name", sorted(PROBES))
def test_postgres_and_duckdb_keep_every_function(name: str) -> None:
    for dialect in ("postgres", "duckdb"):
        assert compile_for(PROBES[name], dialect)


def test_allowed_functions_really_run_on_mariadb() -> None:
    """Every probe the MySQL allow-list accepts runs on a real MariaDB through the
    connector, with PostgreSQL's result types (DATE_TRUNC gives a timestamp, not text)."""
    import secrets
    from urllib.parse import urlparse

    import pymysql  # type: ignore[import-untyped]  # no stubs are published with PyMySQL

    from connectors.base import ConnectorConfig
    from connectors.mysql import MySQLConnector
    from tests.support.servers import mariadb_url

    url = urlparse(mariadb_url())
    database = f"fabric_fn_{secrets.token_hex(4)}"
    admin = pymysql.connect(
        host=url.hostname,
        port=url.port or 3306,
        user=url.username or "root",
        password=url.password or "",
    )
    try:
        with admin.cursor() as cur:
            cur.execute(f"CREATE DATABASE {database}")
            cur.execute(
                f"CREATE TABLE {database}.m (x int PRIMARY KEY, y double, s varchar(10), d date)"
            )
            cur.execute(
                f"INSERT INTO {database}.m VALUES (1, 2.5, 'abc', '2024-02-03'), "
                "(3, 4.5, 'bcd', '2024-05-06')"
            )
        admin.commit()
        entity = CATALOG.entities["m"]
        catalog = CatalogSnapshot("t", "c", 1, {"m": replace(entity, schema=database)})
        connector = MySQLConnector(
            ConnectorConfig(
                {
                    "host": url.hostname or "127.0.0.1",
                    "port": url.port or 3306,
                    "user": url.username or "root",
                    "database": database,
                },
                url.password or None,
            )
        )
        ran = []
        try:
            for name, sql in sorted(PROBES.items()):
                try:
                    compiled = StatementCompiler().compile(
                        sql, catalog, dialect="mysql", param_style=ParamStyle.FORMAT, max_rows=10
                    )
                except QueryRejected as error:
                    assert "not available on this connection" in error.message
                    continue
                with connector.execute(compiled.sql, ()) as handle:
                    table = handle.reader.read_all()
                assert table.num_rows >= 1, name
                if name == "date_trunc":
                    assert pa.types.is_timestamp(table.schema.field("v").type)
                ran.append(name)
            # The name limits the compiler enforces for mysql are the server's own: the
            # longest accepted names come back whole; a longer output name would be cut.
            output, cte = "o" * 255, "n" * 64
            compiled = StatementCompiler().compile(
                f"WITH {cte} AS (SELECT x FROM m) SELECT x AS {output} FROM {cte}",
                catalog,
                dialect="mysql",
                param_style=ParamStyle.FORMAT,
                max_rows=10,
            )
            with connector.execute(compiled.sql, ()) as handle:
                assert handle.reader.read_all().column_names == [output]
            with connector.execute(f"SELECT 1 AS {'o' * 256}", ()) as handle:
                assert handle.reader.read_all().column_names == [output]
        finally:
            connector.close()
        assert {"date_trunc", "greatest", "nth_value", "bool_and", "string_agg"} <= set(ran)
    finally:
        with admin.cursor() as cur:
            cur.execute(f"DROP DATABASE IF EXISTS {database}")
        admin.close()
