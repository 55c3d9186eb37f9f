"""Dialect proofs for the compiler's MySQL and T-SQL output.

MySQL: every accepted golden case (and a few extra queries that exercise the dialect
rewrites) is compiled for `mysql` and run through the MySQL connector on the real
MariaDB, on tables created to match the golden catalog in unique databases, so the text
is proven accepted by a server. T-SQL: no SQL Server runs here, so the output is parsed
back with sqlglot's tsql reader and checked for constructs SQL Server refuses. A case a
dialect cannot express must be rejected with a QueryRejected naming the problem.
"""

from __future__ import annotations

import datetime as dt
import json
import uuid
from collections.abc import Iterator
from decimal import Decimal
from typing import Any
from urllib.parse import unquote, urlparse

import pytest
import sqlglot
from sqlglot import exp

from connectors.base import ConnectorConfig, ParamStyle
from fabric.errors import QueryRejected
from fabric.model import CatalogSnapshot, Entity
from fabric.query.compiler import StatementCompiler
from tests.support.servers import mariadb_url
from tests.unit.test_compiler_golden import GOLDEN_DIR, sales_catalog

ACCEPTED = [
    case
    for path in sorted(GOLDEN_DIR.glob("*.json"))
    for case in json.loads(path.read_text(encoding="utf-8"))
    if "error" not in case
]

# Queries beyond the golden files that exercise each rewrite.
EXTRA = {
    "boolean_projection": "SELECT id, amount > 10 AS big, NOT (amount > 10) AS small FROM orders",
    "string_concatenation": "SELECT name || ' (' || region || ')' AS label FROM customers",
    "date_plus_interval": (
        "SELECT ordered_at + INTERVAL '3' DAY AS later, ordered_at - INTERVAL '2 months' AS "
        "earlier FROM orders WHERE ordered_at >= current_date - INTERVAL '10' YEAR"
    ),
    "count_star_filter": (
        "SELECT count(*) FILTER (WHERE status = 'paid') AS paid, "
        "sum(amount) FILTER (WHERE status = :status) AS s FROM orders"
    ),
    "cast_to_text": "SELECT CAST(id AS text) AS t, CAST(amount AS varchar(20)) AS v FROM orders",
    "limit_offset": "SELECT id FROM orders ORDER BY id LIMIT 3 OFFSET 1",
    "where_boolean_connectives": (
        "SELECT id FROM orders WHERE (amount > :lo OR status IS NULL) AND NOT status = 'void'"
    ),
}

PARAM_VALUES: dict[str, Any] = {
    "since": dt.datetime(2024, 1, 1, 0, 0),
    "status": "paid",
    "min": 1,
    "lo": 1,
    "hi": 1000,
    "skip": 1,
    "x": 5,
    "id": 1,
    "order_id": 1,
    "parity": 1,
}


def _catalog(schemas: dict[str, str]) -> CatalogSnapshot:
    base = sales_catalog()
    entities = {
        name: Entity(
            e.name,
            schemas[e.schema],
            e.table,
            e.columns,
            e.primary_key,
            e.foreign_keys,
        )
        for name, e in base.entities.items()
    }
    return CatalogSnapshot(base.tenant, base.connection, base.version, entities)


def _compile(sql: str, catalog: CatalogSnapshot, dialect: str) -> Any:
    return StatementCompiler().compile(
        sql, catalog, dialect=dialect, param_style=ParamStyle.FORMAT, max_rows=100
    )


# -- MySQL, on the real server -----------------------------------------------------------


class MariaDB:
    """Databases matching the golden catalog, with a few rows, dropped afterwards."""

    def __init__(self, url: str) -> None:
        import pymysql

        tag = uuid.uuid4().hex[:10]
        self.schemas = {"sales": f"fabric_dial_{tag}_sales", "Analytics": f"fabric_dial_{tag}_An"}
        u = urlparse(url)
        self.settings: dict[str, Any] = {
            "host": u.hostname or "127.0.0.1",
            "port": u.port or 3306,
            "user": unquote(u.username or "root"),
            "database": "information_schema",
            "pool_max": 2,
        }
        self.password = unquote(u.password) if u.password else None
        self.admin = pymysql.connect(
            host=self.settings["host"],
            port=self.settings["port"],
            user=self.settings["user"],
            password=self.password or "",
            charset="utf8mb4",
            autocommit=True,
        )
        s, a = self.schemas["sales"], self.schemas["Analytics"]
        statements = [
            f"CREATE DATABASE `{s}` CHARACTER SET utf8mb4",
            f"CREATE DATABASE `{a}` CHARACTER SET utf8mb4",
            f"CREATE TABLE `{s}`.customers (id INT PRIMARY KEY, name VARCHAR(50), "
            "region VARCHAR(20), `Signup Date` DATE)",
            f"CREATE TABLE `{s}`.orders (id INT PRIMARY KEY, customer_id INT, "
            "amount DECIMAL(12,2), status VARCHAR(10), ordered_at DATETIME)",
            f"CREATE TABLE `{s}`.order_lines (order_id INT, product_id INT, qty INT, "
            "price DECIMAL(12,2))",
            f"CREATE TABLE `{s}`.products (id INT PRIMARY KEY, name VARCHAR(50), "
            "category VARCHAR(20), price DECIMAL(12,2))",
            f'CREATE TABLE `{a}`.`Web "Events"` (EventId INT, kind VARCHAR(20), '
            "occurred_at DATETIME)",
            f"INSERT INTO `{s}`.customers VALUES (1, 'ann', 'north', '2024-01-05'), "
            "(2, 'bob', 'south', NULL), (3, 'abe', 'north', '2023-03-01')",
            f"INSERT INTO `{s}`.orders VALUES (1, 1, 120.50, 'paid', '2024-02-01 10:00:00'), "
            "(2, 1, 5.00, 'new', '2024-03-01 11:30:00'), (3, 2, 60.00, 'void', NULL), "
            "(4, 3, 99.99, NULL, '2023-12-31 23:59:59')",
            f"INSERT INTO `{s}`.order_lines VALUES (1, 1, 2, 10.00), (1, 2, 1, 100.50)",
            f"INSERT INTO `{s}`.products VALUES (1, 'pen', 'office', 10.00), "
            "(2, 'desk', 'furniture', 100.50)",
            f"INSERT INTO `{a}`.`Web \"Events\"` VALUES (1, 'view', '2024-01-02 00:00:00')",
        ]
        with self.admin.cursor() as cur:
            for statement in statements:
                cur.execute(statement)
        self.catalog = _catalog(self.schemas)

    def connector(self) -> Any:
        from connectors.mysql import MySQLConnector

        return MySQLConnector(ConnectorConfig(self.settings, password=self.password))

    def close(self) -> None:
        with self.admin.cursor() as cur:
            for schema in self.schemas.values():
                cur.execute(f"DROP DATABASE IF EXISTS `{schema}`")
        self.admin.close()


@pytest.fixture(scope="module")
def mariadb() -> Iterator[MariaDB]:
    db = MariaDB(mariadb_url())
    try:
        yield db
    finally:
        db.close()


def _run_mysql(db: MariaDB, sql: str) -> None:
    try:
        compiled = _compile(sql, db.catalog, "mysql")
    except QueryRejected as error:
        # a construct MySQL cannot express must say which and where
        assert "mysql" in str(error) or "not supported" in str(error), str(error)
        return
    params = [PARAM_VALUES[name] for name in compiled.param_names]
    connector = db.connector()
    try:
        with connector.execute(compiled.sql, params, timeout=10) as handle:
            table = handle.reader.read_all()
        assert table.num_columns >= 1
    finally:
        connector.close()


@pytest.mark.parametrize("case", ACCEPTED, ids=[c["name"] for c in ACCEPTED])
def test_golden_mysql_runs_on_mariadb(mariadb: MariaDB, case: dict[str, Any]) -> None:
    _run_mysql(mariadb, case["sql"])


@pytest.mark.parametrize("name", sorted(EXTRA))
def test_extra_mysql_runs_on_mariadb(mariadb: MariaDB, name: str) -> None:
    _run_mysql(mariadb, EXTRA[name])


def test_mysql_filter_and_boolean_results(mariadb: MariaDB) -> None:
    compiled = _compile(EXTRA["count_star_filter"], mariadb.catalog, "mysql")
    assert "FILTER" not in compiled.sql
    connector = mariadb.connector()
    try:
        with connector.execute(compiled.sql, ["paid"]) as handle:
            row = handle.reader.read_all().to_pylist()[0]
    finally:
        connector.close()
    assert row["paid"] == 1 and row["s"] == Decimal("120.50")


# -- T-SQL, parsed back ------------------------------------------------------------------

_TSQL_FORBIDDEN = (
    " LIMIT ",
    "INTERVAL",
    "FILTER(",
    "FILTER (",
    "WITHIN GROUP",
    "||",
    "NULLS FIRST",
    "NULLS LAST",
    "::",
    " TRUE",
    " FALSE",
    "CURRENT_DATE",
)


def _check_tsql(text: str) -> None:
    upper = text.upper()
    for construct in _TSQL_FORBIDDEN:
        assert construct not in upper, f"T-SQL has no {construct.strip()}: {text}"
    tree = sqlglot.parse_one(text.replace("%%", "%").replace("%s", "@p"), read="tsql")
    for select in tree.find_all(exp.Select):
        aliases = {p.alias for p in select.expressions if isinstance(p, exp.Alias)}
        group = select.args.get("group")
        if group is not None:
            for column in group.find_all(exp.Column):
                assert column.table or column.name not in aliases, (
                    f"T-SQL cannot GROUP BY an output alias: {text}"
                )
        for projection in select.expressions:
            value = projection.this if isinstance(projection, exp.Alias) else projection
            assert not isinstance(value, exp.Predicate | exp.Connector | exp.Not), (
                f"T-SQL has no boolean values in a SELECT list: {text}"
            )
        if select is not tree and select.args.get("order") is not None:
            assert select.args.get("limit") or select.args.get("offset"), (
                f"T-SQL refuses ORDER BY in a subquery without TOP/OFFSET: {text}"
            )


@pytest.mark.parametrize("case", ACCEPTED, ids=[c["name"] for c in ACCEPTED])
def test_golden_tsql_is_valid(case: dict[str, Any]) -> None:
    try:
        compiled = _compile(case["sql"], sales_catalog(), "tsql")
    except QueryRejected as error:
        assert "tsql" in str(error) or "not supported" in str(error), str(error)
        assert "tsql" not in case["expect"], "golden file expects T-SQL the compiler rejects"
        return
    _check_tsql(compiled.sql)


@pytest.mark.parametrize("name", sorted(EXTRA))
def test_extra_tsql_is_valid(name: str) -> None:
    _check_tsql(_compile(EXTRA[name], sales_catalog(), "tsql").sql)


def test_tsql_rewrites() -> None:
    catalog = sales_catalog()
    text = _compile(EXTRA["date_plus_interval"], catalog, "tsql").sql
    assert "DATEADD(DAY, 3, [orders].[ordered_at])" in text
    assert "DATEADD(MONTH, -2, [orders].[ordered_at])" in text
    assert "DATEADD(YEAR, -10, CAST(GETDATE() AS DATE))" in text
    text = _compile(EXTRA["boolean_projection"], catalog, "tsql").sql
    assert "CASE WHEN [orders].[amount] > 10 THEN CAST(1 AS BIT)" in text
    text = _compile(EXTRA["string_concatenation"], catalog, "tsql").sql
    assert "CAST([customers].[name] AS NVARCHAR(MAX)) + ' ('" in text
    text = _compile(EXTRA["cast_to_text"], catalog, "tsql").sql
    assert "NVARCHAR" in text and "AS VARCHAR" not in text
    text = _compile(EXTRA["limit_offset"], catalog, "tsql").sql
    assert "OFFSET 1 ROWS FETCH" in text


@pytest.mark.parametrize("dialect", ["tsql", "mysql"])
@pytest.mark.parametrize(
    ("sql", "message"),
    [
        (
            "SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY amount) AS m FROM orders",
            "WITHIN GROUP",
        ),
        ("SELECT ordered_at - INTERVAL '1 day 2 hours' AS t FROM orders", "INTERVAL"),
        ("SELECT array_agg(id) FILTER (WHERE id > 1) AS a FROM orders", "array_agg"),
    ],
)
def test_rejected_with_clear_message(dialect: str, sql: str, message: str) -> None:
    try:
        _compile(sql, sales_catalog(), dialect)
    except QueryRejected as error:
        assert message in str(error) or "not supported" in str(error)
        return
    if "FILTER" in message and dialect == "tsql":
        return  # sqlglot rewrites FILTER for T-SQL itself (IIF)
    pytest.fail(f"{dialect} accepted {sql!r}")
