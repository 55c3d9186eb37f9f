"""Dialect proofs for the compiler's MySQL output, on the real MariaDB.

Every accepted golden case (and the extra queries of tests/unit/test_dialects.py that
exercise the dialect rewrites) is compiled for `mysql` and run through the MySQL
connector on tables created to match the golden catalog in unique databases, so the text
is proven accepted by a server.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Iterator
from dataclasses import replace
from decimal import Decimal
from typing import Any
from urllib.parse import unquote, urlparse

import pytest

from connectors.base import ConnectorConfig
from fabric.errors import QueryRejected
from fabric.model import CatalogSnapshot
from tests.support.servers import mariadb_url
from tests.unit.test_compiler_golden import sales_catalog
from tests.unit.test_dialects import ACCEPTED, EXTRA, compile_for

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
    entities = {name: replace(e, schema=schemas[e.schema]) for name, e in base.entities.items()}
    return CatalogSnapshot(base.tenant, base.connection, base.version, entities)


# -- MySQL, on the real server -----------------------------------------------------------


class MariaDB:
    """Databases matching the golden catalog, with a few rows, dropped afterwards."""

    def __init__(self, url: str) -> None:
        import pymysql  # type: ignore[import-untyped]  # no stubs are published with PyMySQL

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
        compiled = compile_for(sql, db.catalog, "mysql")
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
    compiled = compile_for(EXTRA["count_star_filter"], mariadb.catalog, "mysql")
    assert "FILTER" not in compiled.sql
    connector = mariadb.connector()
    try:
        with connector.execute(compiled.sql, ["paid"]) as handle:
            row = handle.reader.read_all().to_pylist()[0]
    finally:
        connector.close()
    assert row["paid"] == 1 and row["s"] == Decimal("120.50")
