"""Refresh: re-read the selected tables at the source and reconcile the selection.

The selection (which entities, which columns) is shared by every stage; what is
physical (columns, types, keys) is recorded per table, in the database of each stage
configuration: a stage with its own settings, or `*` for the stages without (they share
one database), and a stage may map an entity to its own table (`stage_tables`). A
refresh in a stage re-reads the tables that stage uses and rewrites only their records
(`Entity.stage_physical`), so refreshing Development never rewrites what Production
has. Drift is reported against what that configuration had at its last select or
refresh:

- `table_gone`: the table no longer exists in this stage;
- `column_dropped`: a selected column no longer exists in this stage;
- `type_changed`: a selected column has another type in this stage;
- `new_column`: the table has a column it did not have at the last refresh here (it
  stays unselected: selecting it is the developer's decision); reported once;
- `key_changed`: the primary key or foreign keys differ;
- `entity_removed`: no selected column is left anywhere; the entity is removed.

Every entity also records the names of its table's unselected columns (`Entity.
hidden_columns`, added to what other stages showed): the compiler needs them to bind a
name in a query the way the source will.

The shared selection follows what every table the entity uses agrees on, once each has
been read: a column leaves it when no stage's table has it (as a type the gateway carries),
an entity when no stage has its table, a column's type or the keys change when every
stage has the new ones. Until then a stage that lacks a selected column or table keeps
it selected for the others, and a query in that stage that reads it is refused with a
clear SchemaMismatch (FAILED_PRECONDITION) naming it, before anything reaches the
source. With one configuration (the usual `*`), a refresh reconciles the selection at
once.

The result is written with `replace_entities` against the catalog version it was
computed from (a concurrent change makes the refresh start over). A refresh that finds
nothing changes nothing: no write, the catalog version stays, caches stay warm
(`RefreshReport.changed` is False, and nothing is purged).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from enum import StrEnum
from types import MappingProxyType
from typing import Final

from fabric.catalog.audit import SYSTEM_ACTOR, AuditEvent, refused
from fabric.catalog.manager import CatalogManager
from fabric.catalog.serialization import utc_now
from fabric.errors import FailedPrecondition, VersionConflict
from fabric.model import ALL_STAGES, ColumnInfo, Entity, ForeignKey, PhysicalTable, TableInfo

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
    changed: bool
    """Whether anything was written (False: the catalog version did not move)."""


def _type_text(column: ColumnInfo) -> str:
    return column.source_type


def _same_type(a: ColumnInfo, b: ColumnInfo) -> bool:
    return a.arrow_type == b.arrow_type and a.source_type == b.source_type


def _selected_keys(
    record: PhysicalTable, selected: set[str]
) -> tuple[tuple[str, ...], tuple[ForeignKey, ...]]:
    """The record's primary key and the foreign keys over selected columns."""
    foreign_keys = tuple(fk for fk in record.foreign_keys if all(c in selected for c in fk.columns))
    return record.primary_key, foreign_keys


def _stage_drift(
    entity: Entity, previous: PhysicalTable | None, record: PhysicalTable
) -> list[Drift]:
    """What changed in one configuration's table since `previous` (its last record; None:
    never recorded, compared with the selection itself)."""
    schema, table = record.schema, record.table
    drift: list[Drift] = []

    def report(
        kind: DriftKind, column: str = "", old: str = "", new: str = "", detail: str = ""
    ) -> None:
        drift.append(Drift(kind, entity.name, schema, table, column, old, new, detail))

    baseline = previous or PhysicalTable(
        record.configuration, schema, table, entity.columns, entity.primary_key, entity.foreign_keys
    )
    if not record.exists:
        if baseline.exists:
            report(DriftKind.TABLE_GONE)
        return drift
    selected = {c.name for c in entity.columns}
    for column in entity.columns:
        was, now = baseline.column(column.name), record.column(column.name)
        if was is None:
            continue
        if now is None:
            report(DriftKind.COLUMN_DROPPED, column.name, _type_text(was))
        elif not _same_type(was, now):
            detail = "" if now.supported else "unsupported"
            report(DriftKind.TYPE_CHANGED, column.name, _type_text(was), _type_text(now), detail)
    if previous is not None:
        for column in record.columns:
            if column.name not in selected and previous.column(column.name) is None:
                report(
                    DriftKind.NEW_COLUMN,
                    column.name,
                    new=_type_text(column),
                    detail="" if column.supported else "unsupported",
                )
    if not baseline.exists:
        return drift
    old_key, old_fks = _selected_keys(baseline, selected)
    new_key, new_fks = _selected_keys(record, selected)
    if old_key != new_key:
        report(
            DriftKind.KEY_CHANGED,
            detail=f"primary key ({', '.join(old_key)}) is now ({', '.join(new_key)})",
        )
    if old_fks != new_fks:
        report(DriftKind.KEY_CHANGED, detail="foreign keys changed")
    return drift


def _shared(entity: Entity, configurations: Sequence[str]) -> Entity | None:
    """The shared selection of `entity` once every table it uses, in every configuration's
    database, has been read (see the module docstring); `entity` itself (with records of
    tables it no longer uses dropped) while one has not; None when it leaves."""
    places = entity.places(configurations)
    entity = replace(
        entity,
        stage_physical=MappingProxyType(
            {key: record for key, record in entity.stage_physical.items() if key in places}
        ),
    )
    records = [entity.stage_physical.get(place) for place in sorted(places)]
    if not places or any(record is None for record in records):
        return entity
    existing = [record for record in records if record is not None and record.exists]
    if not existing:
        return None
    kept: dict[str, ColumnInfo] = {}
    for column in entity.columns:
        found = [record.column(column.name) for record in existing]
        carried = [c for c in found if c is not None and c.supported]
        if not carried:
            continue  # no stage has it, as a type the gateway carries
        agreed = len(carried) == len(found) and all(_same_type(carried[0], c) for c in carried)
        kept[column.name] = carried[0] if agreed else column
    keys = {(record.primary_key, record.foreign_keys) for record in existing}
    primary_key: tuple[str, ...]
    if len(keys) == 1:
        primary_key, foreign_keys = next(iter(keys))
        if primary_key and all(
            all((c := record.column(name)) is not None and c.supported for name in primary_key)
            for record in existing
        ):
            # Primary key columns are always part of an entity.
            for name in primary_key:
                key_column = existing[0].column(name)
                if name not in kept and key_column is not None:
                    kept[name] = key_column
        else:
            primary_key = ()
    else:
        primary_key = entity.primary_key if all(k in kept for k in entity.primary_key) else ()
        foreign_keys = entity.foreign_keys
    if not kept:
        return None
    # The table order of a table that has every kept column (the selection's own order
    # otherwise, new key columns last): a stage lacking a column does not reorder it.
    whole = next((r for r in existing if all(r.column(name) for name in kept)), None)
    if whole is not None:
        order = [c.name for c in whole.columns if c.name in kept]
    else:
        order = [c.name for c in entity.columns if c.name in kept]
        order += [name for name in kept if name not in order]
    return replace(
        entity,
        columns=tuple(kept[name] for name in order),
        primary_key=primary_key,
        foreign_keys=tuple(fk for fk in foreign_keys if all(c in kept for c in fk.columns)),
    )


def _explained(
    drift: list[Drift], entity: Entity, shared: Entity | None, stage: str
) -> list[Drift]:
    """`drift` with details saying what became of the shared selection."""
    if shared is None:
        gone = any(d.kind is DriftKind.TABLE_GONE for d in drift)
        result = [
            replace(d, detail="the entity leaves the selection")
            if d.kind is DriftKind.TABLE_GONE
            else d
            for d in drift
        ]
        if not gone:
            schema, table = entity.physical(stage)
            result.append(
                Drift(
                    DriftKind.ENTITY_REMOVED,
                    entity.name,
                    schema,
                    table,
                    detail="no selected column is left",
                )
            )
        return result
    still = {c.name for c in shared.columns}
    stays = (
        f"it stays selected: another stage still has it; queries in stage '{stage}' that "
        "read it are refused until it is back or unselected"
    )
    result = []
    for d in drift:
        if d.kind is DriftKind.TABLE_GONE:
            d = replace(
                d,
                detail=f"the entity stays selected: another stage still has the table; "
                f"queries in stage '{stage}' that read it are refused until it is back",
            )
        elif d.kind is DriftKind.COLUMN_DROPPED and d.column in still:
            d = replace(d, detail=stays)
        elif d.kind is DriftKind.TYPE_CHANGED and d.detail == "unsupported":
            if d.column in still:
                d = replace(d, detail=f"unsupported in stage '{stage}': {stays}")
            else:
                d = replace(d, detail="unsupported: the column leaves the entity")
        result.append(d)
    return result


def plan_refresh(
    entities: Sequence[Entity],
    stage: str,
    tables: Mapping[tuple[str, str], TableInfo],
    *,
    configuration: str = ALL_STAGES,
    configurations: Sequence[str] = (ALL_STAGES,),
) -> tuple[list[Entity], list[Drift]]:
    """The selection after reading `tables` (what the source has, by (schema, table)) in
    `stage`, whose configuration key is `configuration` among the connection's
    `configurations`, and the drift found. Pure: nothing is read or written."""
    kept: list[Entity] = []
    drift: list[Drift] = []
    for entity in entities:
        schema, table = entity.physical(stage)
        info = tables.get((schema, table))
        record = (
            PhysicalTable.of(configuration, info)
            if info is not None
            else PhysicalTable.gone(configuration, schema, table)
        )
        found = _stage_drift(entity, entity.recorded(stage, configuration), record)
        shared = _shared(entity.with_physical(record), configurations)
        drift.extend(_explained(found, entity, shared, stage))
        if shared is not None:
            kept.append(shared.with_hidden(column.name for column in record.columns))
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
        record = manager.get_connection(tenant, connection)
        configuration = record.configuration_of(stage)
        if configuration is None:
            raise FailedPrecondition(
                f"connection {connection!r} has no settings for stage {stage!r}"
            )
        snapshot = store.catalog(tenant, connection)
        entities = list(snapshot.entities.values())
        schemas = sorted({entity.physical(stage)[0] for entity in entities})
        found = manager.discover(tenant, connection, stage, schemas) if entities else []
        tables = {(t.schema, t.name): t for t in found}
        reconciled, drift = plan_refresh(
            entities,
            stage,
            tables,
            configuration=configuration,
            configurations=tuple(record.stages),
        )
        changed = reconciled != entities
        version = snapshot.version
        try:
            if changed:
                version = store.replace_entities(
                    tenant,
                    connection,
                    reconciled,
                    expected_catalog_version=snapshot.version,
                    actor=actor,
                    stage=stage,
                )
        except VersionConflict:
            if attempt == _ATTEMPTS - 1:
                store.record_audit(
                    refused(
                        utc_now(),
                        tenant,
                        actor,
                        CATALOG_REFRESH,
                        "version_conflict",
                        connection=connection,
                        stage=stage,
                    )
                )
                raise
            continue
        counts: dict[str, str | int | bool] = {
            "catalog_version": version,
            "drift": len(drift),
            "changed": changed,
        }
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
        after = store.catalog(tenant, connection) if changed else snapshot
        return RefreshReport(
            stage,
            snapshot.version,
            version,
            tuple(drift),
            tuple(after.entities.values()),
            changed,
        )
    raise AssertionError("unreachable")
