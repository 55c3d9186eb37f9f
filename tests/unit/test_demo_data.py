"""The demo DuckDB file: generated locally, deterministic, with declared keys."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import duckdb
import pyarrow as pa
import pytest

from fabric.demo_data import (
    CUSTOMERS_PER_SCALE,
    ORDERS_PER_SCALE,
    PRODUCTS_PER_SCALE,
    TABLES,
    create_demo_database,
)


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, int]]:
    path = tmp_path_factory.mktemp("demo") / "shop.duckdb"
    return path, create_demo_database(path)


@pytest.fixture
def con(demo: tuple[Path, dict[str, int]]) -> Iterator[duckdb.DuckDBPyConnection]:
    connection = duckdb.connect(str(demo[0]), read_only=True)
    yield connection
    connection.close()


def _table(path: Path, table: str) -> pa.Table:
    with duckdb.connect(str(path), read_only=True) as c:
        result: pa.Table = c.sql(f"SELECT * FROM main.{table} ORDER BY ALL").to_arrow_table()
    return result


def _scalar(con: duckdb.DuckDBPyConnection, sql: str) -> object:
    row = con.execute(sql).fetchone()
    assert row is not None
    return row[0]


def test_row_counts(demo: tuple[Path, dict[str, int]], con: duckdb.DuckDBPyConnection) -> None:
    _, counts = demo
    assert list(counts) == list(TABLES)
    assert counts["regions"] == 8
    assert counts["customers"] == CUSTOMERS_PER_SCALE
    assert counts["products"] == PRODUCTS_PER_SCALE
    assert counts["orders"] == ORDERS_PER_SCALE == 50_000
    assert ORDERS_PER_SCALE <= counts["order_items"] <= 5 * ORDERS_PER_SCALE
    for table, count in counts.items():
        assert _scalar(con, f"SELECT count(*) FROM main.{table}") == count


def test_column_types(con: duckdb.DuckDBPyConnection) -> None:
    rows = con.execute(
        "SELECT table_name, column_name, data_type FROM information_schema.columns"
        " WHERE table_schema = 'main'"
    ).fetchall()
    types = {(t, c): d for t, c, d in rows}
    assert types[("customers", "email")] == "VARCHAR"
    assert types[("customers", "signup_date")] == "DATE"
    assert types[("products", "unit_price")] == "DECIMAL(10,2)"
    assert types[("orders", "order_date")] == "DATE"
    assert types[("orders", "ordered_at")] == "TIMESTAMP WITH TIME ZONE"
    assert types[("order_items", "quantity")] == "INTEGER"
    assert types[("order_items", "unit_price")] == "DECIMAL(10,2)"
    assert types[("order_items", "discount")] == "DECIMAL(4,2)"
    assert {t for t, _ in types} == set(TABLES)


def test_keys_are_declared(con: duckdb.DuckDBPyConnection) -> None:
    rows = con.execute(
        "SELECT table_name, constraint_type, constraint_column_names, referenced_table,"
        " referenced_column_names FROM duckdb_constraints()"
        " WHERE schema_name = 'main' AND constraint_type IN ('PRIMARY KEY', 'FOREIGN KEY')"
    ).fetchall()
    primary = {t: tuple(cols) for t, kind, cols, _, _ in rows if kind == "PRIMARY KEY"}
    foreign = {
        (t, tuple(cols), ref, tuple(ref_cols))
        for t, kind, cols, ref, ref_cols in rows
        if kind == "FOREIGN KEY"
    }
    assert primary == {
        "regions": ("id",),
        "customers": ("id",),
        "products": ("id",),
        "orders": ("id",),
        "order_items": ("order_id", "line_no"),
    }
    assert foreign == {
        ("customers", ("region_id",), "regions", ("id",)),
        ("orders", ("customer_id",), "customers", ("id",)),
        ("order_items", ("order_id",), "orders", ("id",)),
        ("order_items", ("product_id",), "products", ("id",)),
    }


def test_data_is_plausible(con: duckdb.DuckDBPyConnection) -> None:
    # Every order is placed on or after its customer's signup, on the day of ordered_at.
    assert (
        _scalar(
            con,
            "SELECT count(*) FROM orders o JOIN customers c ON c.id = o.customer_id"
            " WHERE o.order_date < c.signup_date"
            " OR CAST(timezone('UTC', o.ordered_at) AS DATE) <> o.order_date",
        )
        == 0
    )
    assert _scalar(con, "SELECT count(*) FROM customers WHERE email NOT LIKE '%@example.com'") == 0
    assert _scalar(con, "SELECT count(DISTINCT status) FROM orders") == 5
    assert _scalar(con, "SELECT count(DISTINCT segment) FROM customers") == 3
    assert _scalar(con, "SELECT min(quantity) >= 1 AND max(discount) < 1 FROM order_items")
    assert _scalar(
        con,
        "SELECT bool_and(i.unit_price = p.unit_price) FROM order_items i"
        " JOIN products p ON p.id = i.product_id",
    )
    # Every order has lines numbered 1..n without gaps.
    assert (
        _scalar(
            con,
            "SELECT count(*) FROM (SELECT order_id FROM order_items GROUP BY order_id"
            " HAVING min(line_no) <> 1 OR max(line_no) <> count(*))",
        )
        == 0
    )
    assert _scalar(con, "SELECT count(DISTINCT order_id) FROM order_items") == ORDERS_PER_SCALE


def test_deterministic_for_a_seed(demo: tuple[Path, dict[str, int]], tmp_path: Path) -> None:
    path, counts = demo
    again = tmp_path / "again.duckdb"
    assert create_demo_database(again) == counts
    other = tmp_path / "other.duckdb"
    create_demo_database(other, seed=8)
    for table in TABLES:
        assert _table(again, table).equals(_table(path, table)), table
    assert not _table(other, "customers").equals(_table(path, "customers"))
    assert not _table(other, "orders").equals(_table(path, "orders"))


def test_replaces_an_existing_file_atomically(tmp_path: Path) -> None:
    path = tmp_path / "nested" / "shop.duckdb"
    path.parent.mkdir()
    path.write_bytes(b"not a database")
    counts = create_demo_database(path, scale=2)
    assert counts["orders"] == 2 * ORDERS_PER_SCALE
    assert counts["customers"] == 2 * CUSTOMERS_PER_SCALE
    assert create_demo_database(path, seed=1)["orders"] == ORDERS_PER_SCALE
    with duckdb.connect(str(path), read_only=True) as c:
        assert c.execute("SELECT count(*) FROM orders").fetchone() == (ORDERS_PER_SCALE,)
    assert sorted(p.name for p in path.parent.iterdir()) == ["shop.duckdb"]


@pytest.mark.parametrize("kwargs", [{"scale": 0}, {"scale": -1}, {"seed": "7"}, {"scale": True}])
def test_rejects_bad_arguments(tmp_path: Path, kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        create_demo_database(tmp_path / "x.duckdb", **kwargs)  # type: ignore[arg-type]
    assert list(tmp_path.iterdir()) == []
