"""Unit tests of the refresh plan: drift found and the selection reconciled, no I/O; and
what each stage then sees (its own columns, types and keys) when compiling."""

from __future__ import annotations

import dataclasses
from dataclasses import replace
from types import MappingProxyType

import pyarrow as pa
import pytest

from connectors.base import ParamStyle
from fabric.errors import QueryRejected, SchemaMismatch
from fabric.model import (
    CatalogSnapshot,
    ColumnInfo,
    Entity,
    ForeignKey,
    PhysicalTable,
    TableInfo,
)
from fabric.platform.refresh import DriftKind, plan_refresh
from fabric.query.compiler import StatementCompiler

DEV, PROD = "development", "production"
BOTH = (DEV, PROD)


def col(name: str, source: str = "integer", arrow: pa.DataType | None = None) -> ColumnInfo:
    return ColumnInfo(
        name, source, arrow if arrow is not None or source == "geometry" else pa.int32()
    )


def recorded(entity: Entity, configuration: str, table: TableInfo) -> Entity:
    return entity.with_physical(PhysicalTable.of(configuration, table))


def test_drift_kinds_and_the_reconciled_entity() -> None:
    fk = ForeignKey("fk", ("a", "b"), "s", "p", ("x", "y"))
    before = TableInfo(
        "s", "t", (col("id"), col("a"), col("b"), col("gone"), col("geo")), ("id",), (fk,)
    )
    entity = recorded(Entity("e", "s", "t", before.columns, ("id",), (fk,)), "*", before)
    table = TableInfo(
        "s",
        "t",
        (col("id"), col("a"), col("b", "text", pa.string()), col("geo", "geometry"), col("fresh")),
        ("id",),
        (fk,),
    )
    [kept], drift = plan_refresh([entity], "development", {("s", "t"): table})
    kinds = {(d.kind, d.column) for d in drift}
    assert kinds == {
        (DriftKind.COLUMN_DROPPED, "gone"),
        (DriftKind.TYPE_CHANGED, "b"),
        (DriftKind.TYPE_CHANGED, "geo"),
        (DriftKind.NEW_COLUMN, "fresh"),
    }
    assert [d.detail for d in drift if d.column == "geo"] == [
        "unsupported: the column leaves the entity"
    ]
    assert [c.name for c in kept.columns] == ["id", "a", "b"]
    assert kept.column("b") == col("b", "text", pa.string())
    assert kept.foreign_keys == (fk,) and kept.primary_key == ("id",)
    # What the table has but the entity does not select is recorded, unsupported types too.
    assert kept.hidden_columns == ("geo", "fresh")
    assert kept.recorded("development", "*") == PhysicalTable.of("*", table)


def test_a_refresh_that_finds_nothing_changes_nothing() -> None:
    """Unselected, unchanged columns are not news: a second refresh of the same table
    reports nothing and leaves the selection exactly as it was."""
    table = TableInfo("s", "t", (col("id"), col("a"), col("hidden")), ("id",))
    entity = Entity("e", "s", "t", (col("id"), col("a")), ("id",))
    first, drift = plan_refresh([entity], DEV, {("s", "t"): table})
    assert drift == []  # no record yet: nothing to call new
    again, drift = plan_refresh(first, DEV, {("s", "t"): table})
    assert drift == [] and again == first
    grown = dataclasses.replace(table, columns=(*table.columns, col("added")))
    _, drift = plan_refresh(again, DEV, {("s", "t"): grown})
    assert [(d.kind, d.column) for d in drift] == [(DriftKind.NEW_COLUMN, "added")]


def test_hidden_columns_of_every_stage_are_kept_and_a_selected_one_leaves_them() -> None:
    entity = Entity("e", "s", "t", (col("id"), col("a")), ("id",), hidden_columns=("dev_only",))
    table = TableInfo("s", "t", (col("id"), col("a"), col("prod_only")), ("id",))
    [kept], _ = plan_refresh([entity], "production", {("s", "t"): table})
    assert kept.hidden_columns == ("dev_only", "prod_only")
    # A primary key column that was hidden becomes selected and leaves the list.
    keyed = TableInfo("s", "t", (col("k"), col("id"), col("a")), ("k",))
    [rekeyed], _ = plan_refresh([replace(entity, hidden_columns=("k",))], "x", {("s", "t"): keyed})
    assert "k" in [c.name for c in rekeyed.columns] and rekeyed.hidden_columns == ()


def test_the_stage_table_is_checked_and_a_gone_table_leaves() -> None:
    entity = Entity(
        "e",
        "dev",
        "t",
        (col("id"),),
        ("id",),
        stage_tables=MappingProxyType({"production": ("prod", "t2")}),
    )
    dev_table = TableInfo("dev", "t", (col("id"),), ("id",))
    # Production's own table is gone: production cannot read the entity, development
    # (whose table was not read) keeps it.
    [kept], drift = plan_refresh([entity], "production", {("dev", "t"): dev_table})
    assert [(d.kind, d.schema, d.table) for d in drift] == [(DriftKind.TABLE_GONE, "prod", "t2")]
    assert "stays selected" in drift[0].detail
    assert kept.for_stage("production", "*").absent
    assert not kept.for_stage("development", "*").absent
    kept_again, drift = plan_refresh([kept], "development", {("dev", "t"): dev_table})
    assert drift == [] and kept_again[0].columns == entity.columns
    # Gone from every table it uses: it leaves the selection.
    gone, drift = plan_refresh(kept_again, "development", {})
    assert gone == []
    assert [(d.kind, d.detail) for d in drift] == [
        (DriftKind.TABLE_GONE, "the entity leaves the selection")
    ]


def test_a_new_primary_key_column_is_added() -> None:
    entity = Entity("e", "s", "t", (col("a"), col("note")), ())
    table = TableInfo("s", "t", (col("id"), col("a"), col("note")), ("id", "a"))
    [kept], drift = plan_refresh([entity], "x", {("s", "t"): table})
    assert [c.name for c in kept.columns] == ["id", "a", "note"]
    assert kept.primary_key == ("id", "a")
    assert [d.kind for d in drift] == [DriftKind.KEY_CHANGED]


# -- two stage configurations: what is physical stays per stage -----------------------------

DEV_TABLE = TableInfo("s", "orders", (col("id"), col("note", "text", pa.string())), ("id",))
PROD_TABLE = TableInfo(
    "s", "orders", (col("id"), col("amount", "numeric", pa.decimal128(12, 2))), ("id",)
)


def two_stage_entity() -> Entity:
    """`orders` selected in development (id, note, amount as an integer)."""
    dev = dataclasses.replace(DEV_TABLE, columns=(*DEV_TABLE.columns, col("amount")))
    return recorded(Entity("orders", "s", "orders", dev.columns, ("id",)), DEV, dev)


def refresh(entity: Entity, stage: str, table: TableInfo) -> tuple[Entity, list[DriftKind]]:
    [kept], drift = plan_refresh(
        [entity], stage, {("s", "orders"): table}, configuration=stage, configurations=BOTH
    )
    return kept, [d.kind for d in drift]


def test_refreshing_one_stage_never_rewrites_another() -> None:
    entity = two_stage_entity()
    # Production never had `note` and has `amount` as numeric: it is recorded for
    # production only; the selection and development's record stay as they were.
    after_prod, kinds = refresh(entity, PROD, PROD_TABLE)
    assert kinds == [DriftKind.COLUMN_DROPPED, DriftKind.TYPE_CHANGED]
    assert [c.name for c in after_prod.columns] == ["id", "note", "amount"]
    assert after_prod.column("amount") == col("amount")
    assert after_prod.recorded(DEV, DEV) == entity.recorded(DEV, DEV)
    assert after_prod.recorded(PROD, PROD) == PhysicalTable.of(PROD, PROD_TABLE)

    # Each stage compiles against its own table: production lacks `note`.
    prod = after_prod.for_stage(PROD, PROD)
    assert prod.missing == ("note",) and prod.column("amount") == PROD_TABLE.column("amount")
    dev = after_prod.for_stage(DEV, DEV)
    assert dev.missing == () and dev.column("amount") == col("amount")

    # Refreshing development again finds nothing and changes nothing, and
    # production's type is not flipped back by it.
    dev_table = dataclasses.replace(DEV_TABLE, columns=(*DEV_TABLE.columns, col("amount")))
    again, kinds = refresh(after_prod, DEV, dev_table)
    assert kinds == [] and again == after_prod

    # Once no stage has `note`, it leaves the selection.
    gone = dataclasses.replace(dev_table, columns=(col("id"), col("amount")))
    last, kinds = refresh(again, DEV, gone)
    assert kinds == [DriftKind.COLUMN_DROPPED]
    assert [c.name for c in last.columns] == ["id", "amount"]


def test_stages_mapped_to_their_own_tables_in_one_database_keep_them_apart() -> None:
    """One configuration for every stage (`*`), production mapped to its own table: a
    refresh in production records production's table, never development's."""
    prod_table = dataclasses.replace(PROD_TABLE, name="orders_p")
    dev = dataclasses.replace(DEV_TABLE, columns=(*DEV_TABLE.columns, col("amount")))
    entity = Entity(
        "orders",
        "s",
        "orders",
        dev.columns,
        ("id",),
        stage_tables=MappingProxyType({PROD: ("s", "orders_p")}),
    ).with_physical(PhysicalTable.of("*", dev))
    [kept], drift = plan_refresh([entity], PROD, {("s", "orders_p"): prod_table})
    assert {(d.kind, d.column) for d in drift} == {
        (DriftKind.COLUMN_DROPPED, "note"),
        (DriftKind.TYPE_CHANGED, "amount"),
    }
    assert [c.name for c in kept.columns] == ["id", "note", "amount"]  # development has note
    assert kept.recorded(DEV, "*") == PhysicalTable.of("*", dev)
    assert kept.for_stage(PROD, "*").missing == ("note",)
    assert kept.for_stage(DEV, "*").missing == ()
    again, drift = plan_refresh([kept], DEV, {("s", "orders"): dev})
    assert drift == [] and again == [kept]


def test_a_stage_missing_the_table_keeps_the_entity_for_the_others() -> None:
    entity = two_stage_entity()
    [kept], drift = plan_refresh([entity], PROD, {}, configuration=PROD, configurations=BOTH)
    assert [d.kind for d in drift] == [DriftKind.TABLE_GONE]
    assert "stays selected" in drift[0].detail
    assert kept.for_stage(PROD, PROD).absent and not kept.for_stage(DEV, DEV).absent


def catalog(entity: Entity, stage: str) -> CatalogSnapshot:
    snapshot = CatalogSnapshot("t", "c", 7, MappingProxyType({"orders": entity}))
    return snapshot.for_stage(stage, stage)


def compile_in(entity: Entity, stage: str, sql: str) -> str:
    return (
        StatementCompiler()
        .compile(
            sql,
            catalog(entity, stage),
            dialect="postgres",
            param_style=ParamStyle.FORMAT,
            max_rows=10,
        )
        .sql
    )


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT note FROM orders",
        "SELECT o.note FROM orders o",
        "SELECT * FROM orders",
        "SELECT id FROM orders WHERE note = 'x'",
        "SELECT id FROM orders ORDER BY (SELECT MAX(note) FROM orders)",
    ],
)
def test_a_column_a_stage_lacks_is_a_clear_error_in_that_stage_only(sql: str) -> None:
    entity, _ = refresh(two_stage_entity(), PROD, PROD_TABLE)
    with pytest.raises(SchemaMismatch, match=r"'orders\.note'.*stage 'production'"):
        compile_in(entity, PROD, sql)
    assert "note" in compile_in(entity, DEV, sql)
    assert "amount" in compile_in(entity, PROD, "SELECT id, amount FROM orders")
    with pytest.raises(QueryRejected, match="not selected"):
        compile_in(entity, PROD, "SELECT secret FROM orders")


def test_a_table_a_stage_lacks_is_a_clear_error_in_that_stage() -> None:
    [entity], _ = plan_refresh(
        [two_stage_entity()], PROD, {}, configuration=PROD, configurations=BOTH
    )
    with pytest.raises(SchemaMismatch, match="did not exist in stage 'production'"):
        compile_in(entity, PROD, "SELECT count(*) AS n FROM orders")
    assert compile_in(entity, DEV, "SELECT count(*) AS n FROM orders")
