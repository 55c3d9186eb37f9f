"""A parameter's type from the column it is compared with (`param_types`)."""

from __future__ import annotations

import pyarrow as pa
import pytest

from connectors.base import ParamStyle
from fabric.model import CatalogSnapshot, ColumnInfo, Entity
from fabric.query.compiler import StatementCompiler

AMOUNT = pa.decimal128(12, 2)
PLACED = pa.timestamp("us", "UTC")


def catalog() -> CatalogSnapshot:
    orders = Entity(
        "orders",
        "sales",
        "orders",
        (
            ColumnInfo("id", "bigint", pa.int64()),
            ColumnInfo("amount", "numeric(12,2)", AMOUNT),
            ColumnInfo("placed_at", "timestamptz", PLACED),
            ColumnInfo("note", "text", pa.string()),
            ColumnInfo("paid", "boolean", pa.bool_()),
        ),
        hidden_columns=(),
    )
    return CatalogSnapshot(
        tenant="acme", connection="sales", version=1, entities={"orders": orders}
    )


def types_of(sql: str) -> dict[str, pa.DataType | None]:
    compiled = StatementCompiler().compile(
        sql, catalog(), dialect="postgres", param_style=ParamStyle.FORMAT, max_rows=100
    )
    return dict(compiled.param_types)


@pytest.mark.parametrize(
    ("sql", "expected"),
    [
        ("SELECT id FROM orders WHERE id = :id", {"id": pa.int64()}),
        ("SELECT id FROM orders WHERE :low < amount", {"low": AMOUNT}),
        ("SELECT id FROM orders o WHERE (o.placed_at) >= (:since)", {"since": PLACED}),
        ("SELECT id FROM orders WHERE note LIKE :pattern", {"pattern": pa.string()}),
        ("SELECT id FROM orders WHERE id IN (:a, :b)", {"a": pa.int64(), "b": pa.int64()}),
        (
            "SELECT id FROM orders WHERE amount BETWEEN :lo AND :hi AND paid <> :paid",
            {"lo": AMOUNT, "hi": AMOUNT, "paid": pa.bool_()},
        ),
        # Used where no column tells: unknown.
        ("SELECT id, :tag AS tag FROM orders", {"tag": None}),
        ("SELECT id FROM orders WHERE amount > :x + 1", {"x": None}),
        ("SELECT id FROM orders WHERE coalesce(note, :d) = 'x'", {"d": None}),
        # Compared with columns of two types: unknown; with one type twice: that type.
        ("SELECT id FROM orders WHERE id = :v OR note = :v", {"v": None}),
        ("SELECT id FROM orders WHERE id = :v OR id > :v", {"v": pa.int64()}),
        # A derived table's column: not typed from the selection.
        ("SELECT d.id FROM (SELECT id FROM orders) d WHERE d.id = :v", {"v": None}),
    ],
)
def test_a_parameter_takes_the_type_of_the_column_it_is_compared_with(
    sql: str, expected: dict[str, pa.DataType | None]
) -> None:
    assert types_of(sql) == expected


def test_types_come_in_order_of_first_use() -> None:
    compiled = StatementCompiler().compile(
        "SELECT id FROM orders WHERE note = :b AND id = :a AND amount > :b",
        catalog(),
        dialect="postgres",
        param_style=ParamStyle.FORMAT,
        max_rows=100,
    )
    assert [name for name, _ in compiled.param_types] == ["b", "a"]
    assert dict(compiled.param_types) == {"b": None, "a": pa.int64()}
