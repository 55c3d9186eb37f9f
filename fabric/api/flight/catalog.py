"""Flight SQL metadata, answered from the selection (never from a source).

How Fabric's model reads in Flight SQL terms:

- a catalog is a connection the caller's token may query: one of its tenant's
  connections with settings for its stage;
- every catalog has one database schema, named "" (empty): queries name entities
  unqualified, so no schema name could appear in a query;
- a table is a selected entity, under the name queries use (type TABLE), with its
  selected columns; primary keys and foreign keys are the entity's, a foreign key kept
  only when the table it references is selected too, composite keys whole and in order.

The result schemas are the ones the Flight SQL specification fixes, field for field
(clients compare them).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import pyarrow as pa

from fabric.model import CatalogSnapshot, Entity, ForeignKey
from fabric.v1 import flight_sql_pb2 as sql

SCHEMA_NAME = ""
"""The one database schema of every catalog."""
TABLE_TYPE = "TABLE"
NO_ACTION = 3
"""UpdateDeleteRules.NO_ACTION: the selection does not record referential actions."""

_STR = pa.utf8()

CATALOGS_SCHEMA = pa.schema([pa.field("catalog_name", _STR, False)])
DB_SCHEMAS_SCHEMA = pa.schema(
    [pa.field("catalog_name", _STR), pa.field("db_schema_name", _STR, False)]
)
TABLES_SCHEMA = pa.schema(
    [
        pa.field("catalog_name", _STR),
        pa.field("db_schema_name", _STR),
        pa.field("table_name", _STR, False),
        pa.field("table_type", _STR, False),
    ]
)
TABLES_WITH_SCHEMA_SCHEMA = TABLES_SCHEMA.append(pa.field("table_schema", pa.binary(), False))
TABLE_TYPES_SCHEMA = pa.schema([pa.field("table_type", _STR, False)])
PRIMARY_KEYS_SCHEMA = pa.schema(
    [
        pa.field("catalog_name", _STR),
        pa.field("db_schema_name", _STR),
        pa.field("table_name", _STR, False),
        pa.field("column_name", _STR, False),
        pa.field("key_sequence", pa.int32(), False),
        pa.field("key_name", _STR),
    ]
)
KEYS_SCHEMA = pa.schema(
    [
        pa.field("pk_catalog_name", _STR),
        pa.field("pk_db_schema_name", _STR),
        pa.field("pk_table_name", _STR, False),
        pa.field("pk_column_name", _STR, False),
        pa.field("fk_catalog_name", _STR),
        pa.field("fk_db_schema_name", _STR),
        pa.field("fk_table_name", _STR, False),
        pa.field("fk_column_name", _STR, False),
        pa.field("key_sequence", pa.int32(), False),
        pa.field("fk_key_name", _STR),
        pa.field("pk_key_name", _STR),
        pa.field("update_rule", pa.uint8(), False),
        pa.field("delete_rule", pa.uint8(), False),
    ]
)
"""GetImportedKeys, GetExportedKeys and GetCrossReference share it."""


# -- filters -------------------------------------------------------------------------


def _like(pattern: str | None) -> re.Pattern[str] | None:
    """A Flight SQL filter pattern (`%` any run, `_` one character, `\\` escapes) as a
    regular expression; None matches everything."""
    if pattern is None:
        return None
    out: list[str] = []
    escaped = False
    for char in pattern:
        if escaped:
            out.append(re.escape(char))
            escaped = False
        elif char == "\\":
            escaped = True
        elif char == "%":
            out.append(".*")
        elif char == "_":
            out.append(".")
        else:
            out.append(re.escape(char))
    if escaped:
        out.append(re.escape("\\"))
    return re.compile("".join(out), re.DOTALL)


def _matches(pattern: re.Pattern[str] | None, value: str) -> bool:
    return pattern is None or pattern.fullmatch(value) is not None


def _in_catalog(catalog: str | None, snapshot: CatalogSnapshot) -> bool:
    """Whether a command's `catalog` (None: any) names this connection."""
    return catalog is None or catalog == snapshot.connection


def _in_schema(db_schema: str | None) -> bool:
    return db_schema is None or db_schema == SCHEMA_NAME


def _optional(message: object, field: str) -> str | None:
    value: str | None = getattr(message, field) if message.HasField(field) else None  # type: ignore[attr-defined]
    return value


# -- catalogs, schemas, tables ---------------------------------------------------------


def catalogs(snapshots: Sequence[CatalogSnapshot]) -> pa.Table:
    names = sorted(s.connection for s in snapshots)
    return pa.table([pa.array(names, _STR)], schema=CATALOGS_SCHEMA)


def db_schemas(snapshots: Sequence[CatalogSnapshot], command: sql.CommandGetDbSchemas) -> pa.Table:
    catalog = _optional(command, "catalog")
    pattern = _like(_optional(command, "db_schema_filter_pattern"))
    names = sorted(
        s.connection
        for s in snapshots
        if _in_catalog(catalog, s) and _matches(pattern, SCHEMA_NAME)
    )
    return pa.table(
        [pa.array(names, _STR), pa.array([SCHEMA_NAME] * len(names), _STR)],
        schema=DB_SCHEMAS_SCHEMA,
    )


def entity_schema(snapshot: CatalogSnapshot, entity: Entity) -> pa.Schema:
    """An entity's columns as Arrow fields, with the Flight SQL column metadata."""
    fields = []
    for column in entity.columns:
        if column.arrow_type is None:
            continue  # cannot be selected; never part of an entity in practice
        metadata = {
            "ARROW:FLIGHT:SQL:CATALOG_NAME": snapshot.connection,
            "ARROW:FLIGHT:SQL:DB_SCHEMA_NAME": SCHEMA_NAME,
            "ARROW:FLIGHT:SQL:TABLE_NAME": entity.name,
            "ARROW:FLIGHT:SQL:TYPE_NAME": column.source_type,
            "ARROW:FLIGHT:SQL:IS_READ_ONLY": "1",
            "ARROW:FLIGHT:SQL:IS_SEARCHABLE": "1",
            "ARROW:FLIGHT:SQL:IS_AUTO_INCREMENT": "0",
        }
        if pa.types.is_decimal(column.arrow_type):
            metadata["ARROW:FLIGHT:SQL:PRECISION"] = str(column.arrow_type.precision)
            metadata["ARROW:FLIGHT:SQL:SCALE"] = str(column.arrow_type.scale)
        fields.append(pa.field(column.name, column.arrow_type, column.nullable, metadata))
    return pa.schema(fields)


def _entities(snapshot: CatalogSnapshot) -> list[Entity]:
    return sorted(snapshot.entities.values(), key=lambda e: e.name)


def tables(snapshots: Sequence[CatalogSnapshot], command: sql.CommandGetTables) -> pa.Table:
    catalog = _optional(command, "catalog")
    schema_pattern = _like(_optional(command, "db_schema_filter_pattern"))
    table_pattern = _like(_optional(command, "table_name_filter_pattern"))
    types = set(command.table_types)
    rows: list[tuple[str, Entity, CatalogSnapshot]] = []
    if (not types or TABLE_TYPE in types) and _matches(schema_pattern, SCHEMA_NAME):
        for snapshot in sorted(snapshots, key=lambda s: s.connection):
            if not _in_catalog(catalog, snapshot):
                continue
            for entity in _entities(snapshot):
                if _matches(table_pattern, entity.name):
                    rows.append((snapshot.connection, entity, snapshot))
    columns: list[pa.Array] = [
        pa.array([r[0] for r in rows], _STR),
        pa.array([SCHEMA_NAME] * len(rows), _STR),
        pa.array([r[1].name for r in rows], _STR),
        pa.array([TABLE_TYPE] * len(rows), _STR),
    ]
    if not command.include_schema:
        return pa.table(columns, schema=TABLES_SCHEMA)
    encoded = [entity_schema(s, e).serialize().to_pybytes() for _, e, s in rows]
    columns.append(pa.array(encoded, pa.binary()))
    return pa.table(columns, schema=TABLES_WITH_SCHEMA_SCHEMA)


def table_types() -> pa.Table:
    return pa.table([pa.array([TABLE_TYPE], _STR)], schema=TABLE_TYPES_SCHEMA)


# -- keys --------------------------------------------------------------------------------


def _find_entities(
    snapshots: Sequence[CatalogSnapshot], catalog: str | None, db_schema: str | None, table: str
) -> list[tuple[CatalogSnapshot, Entity]]:
    if not _in_schema(db_schema):
        return []
    found = []
    for snapshot in snapshots:
        if _in_catalog(catalog, snapshot):
            entity = snapshot.entity(table)
            if entity is not None:
                found.append((snapshot, entity))
    return found


def primary_keys(
    snapshots: Sequence[CatalogSnapshot], command: sql.CommandGetPrimaryKeys
) -> pa.Table:
    rows: list[tuple[str, str, str, int]] = []
    for snapshot, entity in _find_entities(
        snapshots, _optional(command, "catalog"), _optional(command, "db_schema"), command.table
    ):
        for sequence, column in enumerate(entity.primary_key, start=1):
            rows.append((snapshot.connection, entity.name, column, sequence))
    rows.sort(key=lambda row: (row[0], row[1], row[3]))
    return pa.table(
        [
            pa.array([r[0] for r in rows], _STR),
            pa.array([SCHEMA_NAME] * len(rows), _STR),
            pa.array([r[1] for r in rows], _STR),
            pa.array([r[2] for r in rows], _STR),
            pa.array([r[3] for r in rows], pa.int32()),
            pa.nulls(len(rows), _STR),
        ],
        schema=PRIMARY_KEYS_SCHEMA,
    )


@dataclass(frozen=True, slots=True)
class _Reference:
    """A foreign key whose referenced table is a selected entity."""

    catalog: str
    fk_table: Entity
    key: ForeignKey
    pk_table: Entity


def _references(snapshot: CatalogSnapshot) -> Iterable[_Reference]:
    """The foreign keys of a catalog whose referenced table is selected, with every
    referenced column selected (else the key is not visible as a whole)."""
    by_physical: dict[tuple[str, str], Entity] = {}
    for entity in snapshot.entities.values():
        by_physical[(entity.schema, entity.table)] = entity
        for physical in entity.stage_tables.values():
            by_physical.setdefault(physical, entity)
    for entity in _entities(snapshot):
        for key in entity.foreign_keys:
            target = by_physical.get((key.referenced_schema, key.referenced_table))
            if target is None or any(target.column(c) is None for c in key.referenced_columns):
                continue
            yield _Reference(snapshot.connection, entity, key, target)


def _keys_table(references: Iterable[_Reference], order: str) -> pa.Table:
    rows = []
    for ref in references:
        for sequence, (fk_column, pk_column) in enumerate(
            zip(ref.key.columns, ref.key.referenced_columns, strict=True), start=1
        ):
            rows.append(
                {
                    "pk_catalog_name": ref.catalog,
                    "pk_db_schema_name": SCHEMA_NAME,
                    "pk_table_name": ref.pk_table.name,
                    "pk_column_name": pk_column,
                    "fk_catalog_name": ref.catalog,
                    "fk_db_schema_name": SCHEMA_NAME,
                    "fk_table_name": ref.fk_table.name,
                    "fk_column_name": fk_column,
                    "key_sequence": sequence,
                    "fk_key_name": ref.key.name or None,
                    "pk_key_name": None,
                    "update_rule": NO_ACTION,
                    "delete_rule": NO_ACTION,
                }
            )
    side = "pk" if order == "pk" else "fk"
    rows.sort(
        key=lambda r: (
            r[f"{side}_catalog_name"],
            r[f"{side}_table_name"],
            r[f"{side}_key_name"] or "",
            r["fk_key_name"] or "",
            r["key_sequence"],
        )
    )
    return pa.Table.from_pylist(rows, schema=KEYS_SCHEMA)


def imported_keys(
    snapshots: Sequence[CatalogSnapshot], command: sql.CommandGetImportedKeys
) -> pa.Table:
    """The foreign keys of `table` (it is the foreign-key side)."""
    return _keys_touching(snapshots, command, side="fk")


def exported_keys(
    snapshots: Sequence[CatalogSnapshot], command: sql.CommandGetExportedKeys
) -> pa.Table:
    """The foreign keys that reference `table` (it is the primary-key side)."""
    return _keys_touching(snapshots, command, side="pk")


def _keys_touching(
    snapshots: Sequence[CatalogSnapshot],
    command: sql.CommandGetImportedKeys | sql.CommandGetExportedKeys,
    *,
    side: str,
) -> pa.Table:
    """The foreign keys whose `side` ("fk" or "pk") is the command's table, listed by the
    other side, as GetImportedKeys and GetExportedKeys answer."""
    wanted = _find_entities(
        snapshots, _optional(command, "catalog"), _optional(command, "db_schema"), command.table
    )
    refs = [
        ref
        for snapshot, entity in wanted
        for ref in _references(snapshot)
        if (ref.fk_table if side == "fk" else ref.pk_table).name == entity.name
    ]
    return _keys_table(refs, "pk" if side == "fk" else "fk")


def cross_reference(
    snapshots: Sequence[CatalogSnapshot], command: sql.CommandGetCrossReference
) -> pa.Table:
    """The foreign keys of `fk_table` that reference `pk_table`."""
    pk_side = _find_entities(
        snapshots,
        _optional(command, "pk_catalog"),
        _optional(command, "pk_db_schema"),
        command.pk_table,
    )
    fk_side = _find_entities(
        snapshots,
        _optional(command, "fk_catalog"),
        _optional(command, "fk_db_schema"),
        command.fk_table,
    )
    pk_names = {(s.connection, e.name) for s, e in pk_side}
    refs = [
        ref
        for snapshot, entity in fk_side
        for ref in _references(snapshot)
        if ref.fk_table.name == entity.name and (ref.catalog, ref.pk_table.name) in pk_names
    ]
    return _keys_table(refs, "pk")
