"""Unit tests of the refresh plan: drift found and the selection reconciled, no I/O."""

from __future__ import annotations

from dataclasses import replace
from types import MappingProxyType

import pyarrow as pa

from fabric.model import ColumnInfo, Entity, ForeignKey, TableInfo
from fabric.platform.refresh import DriftKind, plan_refresh


def col(name: str, source: str = "integer", arrow: pa.DataType | None = None) -> ColumnInfo:
    return ColumnInfo(
        name, source, arrow if arrow is not None or source == "geometry" else pa.int32()
    )


def test_drift_kinds_and_the_reconciled_entity() -> None:
    fk = ForeignKey("fk", ("a", "b"), "s", "p", ("x", "y"))
    entity = Entity(
        "e", "s", "t", (col("id"), col("a"), col("b"), col("gone"), col("geo")), ("id",), (fk,)
    )
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
    assert [c.name for c in kept.columns] == ["id", "a", "b"]
    assert kept.column("b") == col("b", "text", pa.string())
    assert kept.foreign_keys == (fk,) and kept.primary_key == ("id",)
    # What the table has but the entity does not select is recorded, unsupported types too.
    assert kept.hidden_columns == ("geo", "fresh")


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
    kept, drift = plan_refresh(
        [entity], "production", {("dev", "t"): TableInfo("dev", "t", (col("id"),), ("id",))}
    )
    assert kept == []
    assert [(d.kind, d.schema, d.table) for d in drift] == [(DriftKind.TABLE_GONE, "prod", "t2")]
    kept, drift = plan_refresh(
        [entity], "development", {("dev", "t"): TableInfo("dev", "t", (col("id"),), ("id",))}
    )
    # The entity now records that its table hides nothing.
    assert kept == [replace(entity, hidden_columns=())] and drift == []


def test_a_new_primary_key_column_is_added() -> None:
    entity = Entity("e", "s", "t", (col("a"), col("note")), ())
    table = TableInfo("s", "t", (col("id"), col("a"), col("note")), ("id", "a"))
    [kept], drift = plan_refresh([entity], "x", {("s", "t"): table})
    assert [c.name for c in kept.columns] == ["id", "a", "note"]
    assert kept.primary_key == ("id", "a")
    assert [d.kind for d in drift] == [DriftKind.KEY_CHANGED]
