"""Refresh: re-read the selected tables at the source and reconcile the selection.

Drift is reported per entity against the physical table the entity uses in the stage
the refresh runs in:

- `table_gone`: the table no longer exists; the entity is removed from the selection
  (queries naming it are then rejected by the compiler, clearly, instead of failing at
  the source);
- `column_dropped`: a selected column no longer exists; it leaves the entity (queries
  that use it are rejected naming the column, the others keep working);
- `type_changed`: a selected column has another type; the entity takes the new type, or
  drops the column when the gateway cannot carry the new type;
- `new_column`: the table has a column the entity does not select (it stays unselected:
  selecting it is the developer's decision);
- `key_changed`: the primary key or foreign keys differ; the entity takes the new ones
  (primary key columns are always part of an entity, so a new key column is added);
- `entity_removed`: no selected column is left; the entity is removed.

Every entity also records the names of its table's unselected columns (`Entity.
hidden_columns`, added to what other stages showed): the compiler needs them to bind a
name in a query the way the source will.

The reconciled selection is written with `replace_entities` against the catalog version
it was computed from (a concurrent change makes the refresh start over), or, when
nothing changed, the catalog version is bumped. Either way the version moves, so
compiled statements and cached results of the connection miss from then on.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Final

from fabric.catalog.audit import SYSTEM_ACTOR, AuditEvent
from fabric.catalog.manager import CatalogManager
from fabric.catalog.serialization import utc_now
from fabric.errors import FailedPrecondition
from fabric.model import ColumnInfo, Entity, TableInfo

CATALOG_REFRESH: Final = "catalog.refresh"
_ATTEMPTS: Final = 3


class DriftKind(StrEnum):
    TABLE_GONE = "table_gone"
    COLUMN_DROPPED = "column_dropped"
    TYPE_CHANGED = "type_changed"
    NEW_COLUMN = "new_column"
    KEY_CHANGED = "key_changed"
    ENTITY_REMOVED = "entity_removed"


@dataclass(frozen=True, slots=True)
class Drift:
    """One difference between the selection and the source."""

    kind: DriftKind
    entity: str
    schema: str
    table: str
    column: str = ""
    old_type: str = ""
    """The selected column's source type (type_changed, column_dropped)."""
    new_type: str = ""
    """The source's type now (type_changed, new_column); `unsupported` is in `detail`."""
    detail: str = ""


@dataclass(frozen=True, slots=True)
class RefreshReport:
    stage: str
    previous_version: int
    catalog_version: int
    drift: tuple[Drift, ...]
    entities: tuple[Entity, ...]
    """The selection after the refresh."""


def _type_text(column: ColumnInfo) -> str:
    return column.source_type


def _reconcile(entity: Entity, info: TableInfo) -> tuple[Entity | None, list[Drift]]:
    schema, table = info.schema, info.name
    drift: list[Drift] = []

    def report(
        kind: DriftKind, column: str = "", old: str = "", new: str = "", detail: str = ""
    ) -> None:
        drift.append(Drift(kind, entity.name, schema, table, column, old, new, detail))

    keep: dict[str, ColumnInfo] = {}
    for column in entity.columns:
        now = info.column(column.name)
        if now is None:
            report(DriftKind.COLUMN_DROPPED, column.name, _type_text(column))
            continue
        if now.arrow_type != column.arrow_type or now.source_type != column.source_type:
            detail = "" if now.supported else "unsupported: the column leaves the entity"
            report(DriftKind.TYPE_CHANGED, column.name, _type_text(column), _type_text(now), detail)
            if not now.supported:
                continue
        keep[now.name] = now
    selected_before = {c.name for c in entity.columns}
    primary_key = info.primary_key
    if primary_key and all((c := info.column(k)) is not None and c.supported for k in primary_key):
        for name in primary_key:
            key_column = info.column(name)
            if name not in keep and key_column is not None:
                keep[name] = key_column
    else:
        primary_key = ()
    for column in info.columns:
        if column.name not in selected_before and column.name not in keep:
            report(
                DriftKind.NEW_COLUMN,
                column.name,
                new=_type_text(column),
                detail="" if column.supported else "unsupported",
            )
    if not keep:
        report(DriftKind.ENTITY_REMOVED, detail="no selected column is left")
        return None, drift
    columns = tuple(c for c in info.columns if c.name in keep)
    foreign_keys = tuple(fk for fk in info.foreign_keys if all(c in keep for c in fk.columns))
    if tuple(primary_key) != tuple(entity.primary_key):
        report(
            DriftKind.KEY_CHANGED,
            detail=f"primary key ({', '.join(entity.primary_key)}) "
            f"is now ({', '.join(primary_key)})",
        )
    if foreign_keys != entity.foreign_keys:
        report(DriftKind.KEY_CHANGED, detail="foreign keys changed")
    reconciled = replace(
        entity, columns=columns, primary_key=tuple(primary_key), foreign_keys=foreign_keys
    )
    return reconciled.with_hidden(column.name for column in info.columns), drift


def plan_refresh(
    entities: Sequence[Entity], stage: str, tables: Mapping[tuple[str, str], TableInfo]
) -> tuple[list[Entity], list[Drift]]:
    """The selection reconciled with `tables` (what the source has, by (schema, table))
    as `stage` sees it, and the drift found. Pure: nothing is read or written."""
    kept: list[Entity] = []
    drift: list[Drift] = []
    for entity in entities:
        schema, table = entity.physical(stage)
        info = tables.get((schema, table))
        if info is None:
            drift.append(
                Drift(
                    DriftKind.TABLE_GONE,
                    entity.name,
                    schema,
                    table,
                    detail="the entity leaves the selection",
                )
            )
            continue
        reconciled, found = _reconcile(entity, info)
        drift.extend(found)
        if reconciled is not None:
            kept.append(reconciled)
    return kept, drift


def refresh_catalog(
    manager: CatalogManager,
    tenant: str,
    connection: str,
    stage: str,
    *,
    actor: str = SYSTEM_ACTOR,
) -> RefreshReport:
    """Re-read the tables of the selection in `stage`, reconcile, write, and report.

    FailedPrecondition when the connection has no settings for the stage, or when the
    catalog kept changing under the refresh; the connector's error when the source
    cannot be read (nothing changes then).
    """
    store = manager.store
    for attempt in range(_ATTEMPTS):
        snapshot = store.catalog(tenant, connection)
        entities = list(snapshot.entities.values())
        schemas = sorted({entity.physical(stage)[0] for entity in entities})
        if entities:
            found = manager.discover(tenant, connection, stage, schemas)
        else:
            found = []
            record = manager.get_connection(tenant, connection)
            if record.settings_for(stage) is None:
                raise FailedPrecondition(
                    f"connection {connection!r} has no settings for stage {stage!r}"
                )
        tables = {(t.schema, t.name): t for t in found}
        reconciled, drift = plan_refresh(entities, stage, tables)
        try:
            if reconciled != entities:
                version = store.replace_entities(
                    tenant,
                    connection,
                    reconciled,
                    expected_catalog_version=snapshot.version,
                    actor=actor,
                    stage=stage,
                )
            else:
                version = store.bump_catalog_version(tenant, connection, actor=actor, stage=stage)
        except FailedPrecondition:
            if attempt == _ATTEMPTS - 1:
                raise
            continue
        counts: dict[str, str | int | bool] = {"catalog_version": version, "drift": len(drift)}
        for kind in DriftKind:
            counts[kind.value] = sum(1 for d in drift if d.kind is kind)
        store.record_audit(
            AuditEvent(
                at=utc_now(),
                tenant=tenant,
                actor=actor,
                action=CATALOG_REFRESH,
                connection=connection,
                stage=stage,
                details=counts,
            )
        )
        after = store.catalog(tenant, connection)
        return RefreshReport(
            stage, snapshot.version, version, tuple(drift), tuple(after.entities.values())
        )
    raise AssertionError("unreachable")
