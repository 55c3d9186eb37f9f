"""Value objects shared by connectors, the catalog and the engine: connections, discovered
tables, selected entities.

All of it is metadata. None of these objects ever holds a secret, a row or a parameter
value; a connection's password lives in the secret store and is referred to by name.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from enum import StrEnum
from types import MappingProxyType

import pyarrow as pa

# Settings are plain scalars so they can be shown, stored and compared; never a secret.
SettingValue = str | int | float | bool
ALL_STAGES = "*"
"""Stage key of a configuration that applies to every stage without its own."""

_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


def fold_name(name: str) -> str:
    """`name` as PostgreSQL folds an unquoted identifier: ASCII `A`-`Z` to lower case and
    nothing else. `str.lower` would fold more (the Kelvin sign `\u212a` to `k`, `\u00c9`
    to `\u00e9`), binding a name to one the source would never match it with."""
    return name.translate(_ASCII_LOWER)


@dataclass(frozen=True, slots=True)
class ColumnInfo:
    name: str
    source_type: str
    """The type as the source spells it (`numeric(15,2)`, `timestamp with time zone`)."""
    arrow_type: pa.DataType | None
    """None when the gateway cannot carry the type: shown as unsupported, never dropped."""
    nullable: bool = True

    @property
    def supported(self) -> bool:
        return self.arrow_type is not None


@dataclass(frozen=True, slots=True)
class ForeignKey:
    """A foreign key kept whole: composite keys keep their column order."""

    name: str
    columns: tuple[str, ...]
    referenced_schema: str
    referenced_table: str
    referenced_columns: tuple[str, ...]


class TableKind(StrEnum):
    TABLE = "table"
    VIEW = "view"


@dataclass(frozen=True, slots=True)
class TableInfo:
    """A remote table or view as discovery found it."""

    schema: str
    name: str
    columns: tuple[ColumnInfo, ...]
    primary_key: tuple[str, ...] = ()
    foreign_keys: tuple[ForeignKey, ...] = ()
    kind: TableKind = TableKind.TABLE

    def column(self, name: str) -> ColumnInfo | None:
        for column in self.columns:
            if column.name == name:
                return column
        return None


PlaceKey = tuple[str, str, str]
"""(configuration, schema, table): one physical table an entity uses, in the database of
one stage configuration (a stage name, or `*` for the stages without their own)."""


@dataclass(frozen=True, slots=True)
class PhysicalTable:
    """What one physical table of an entity holds, in the database of one stage
    configuration, as the last select or refresh in a stage using it found it: every
    column (selected or not, with that database's types) and its keys. Stages that share
    a configuration and a table share this record; any other stage keeps its own, and
    one stage's refresh never rewrites another's."""

    configuration: str
    schema: str
    table: str
    columns: tuple[ColumnInfo, ...]
    primary_key: tuple[str, ...] = ()
    foreign_keys: tuple[ForeignKey, ...] = ()
    exists: bool = True
    """False when the table was gone at the last refresh."""

    @property
    def key(self) -> PlaceKey:
        return (self.configuration, self.schema, self.table)

    def column(self, name: str) -> ColumnInfo | None:
        for column in self.columns:
            if column.name == name:
                return column
        return None

    @classmethod
    def of(cls, configuration: str, info: TableInfo) -> PhysicalTable:
        return cls(
            configuration, info.schema, info.name, info.columns, info.primary_key, info.foreign_keys
        )

    @classmethod
    def gone(cls, configuration: str, schema: str, table: str) -> PhysicalTable:
        return cls(configuration, schema, table, (), exists=False)


@dataclass(frozen=True, slots=True)
class Entity:
    """A table selected for apps, under the name apps use, with the columns they may read.

    `schema` and `table` are the physical names in the source; `name` is what queries say.
    `stage_tables` maps a stage to its own physical (schema, table) where that stage's
    database names the table differently; stages without an entry use `schema.table`.
    The selection (name, columns) is shared by every stage; `stage_physical` keeps what
    each physical table the entity uses holds, per stage configuration (`PhysicalTable`,
    by its `key`).

    In a stage's view (`for_stage`), `columns`, `primary_key` and `foreign_keys` are what
    that stage's table has of the selection, `missing` names the selected columns it
    lacks, and `absent` says its table was gone at the last refresh there.
    """

    name: str
    schema: str
    table: str
    columns: tuple[ColumnInfo, ...]
    primary_key: tuple[str, ...] = ()
    foreign_keys: tuple[ForeignKey, ...] = ()
    stage_tables: Mapping[str, tuple[str, str]] = field(
        default_factory=lambda: MappingProxyType({}), hash=False
    )
    hidden_columns: tuple[str, ...] | None = None
    """Names of the physical table's columns that are not selected, as introspection saw
    them in every stage it read (unsupported types included). Apps never read them, but
    the source resolves names against them, so the compiler must know them to bind a name
    as the source does. None: not known (an entity stored before they were recorded);
    the compiler then treats every name as possibly one of them."""
    stage_physical: Mapping[PlaceKey, PhysicalTable] = field(
        default_factory=lambda: MappingProxyType({}), hash=False
    )
    missing: tuple[str, ...] = ()
    absent: bool = False

    def column(self, name: str) -> ColumnInfo | None:
        for column in self.columns:
            if column.name == name:
                return column
        return None

    def with_hidden(self, names: Iterable[str]) -> Entity:
        """This entity with `names` (columns a physical table of it has) added to its
        hidden columns, leaving out selected names and repeats. Names are only added
        (a column seen in one stage's table stays counted for every stage, which at worst
        refuses a query that names it) or dropped when selected. An unknown list becomes
        the names given."""
        selected = {column.name for column in self.columns}
        hidden = [name for name in self.hidden_columns or () if name not in selected]
        for name in names:
            if name not in selected and name not in hidden:
                hidden.append(name)
        return replace(self, hidden_columns=tuple(hidden))

    def physical(self, stage: str) -> tuple[str, str]:
        """The (schema, table) that holds this entity's rows in `stage`."""
        return self.stage_tables.get(stage, (self.schema, self.table))

    def recorded(self, stage: str, configuration: str) -> PhysicalTable | None:
        """What the table `stage` uses holds in `configuration`'s database, if recorded."""
        return self.stage_physical.get((configuration, *self.physical(stage)))

    def with_physical(self, *records: PhysicalTable) -> Entity:
        """This entity with `records` replacing what was recorded for their tables."""
        physical = {**self.stage_physical, **{record.key: record for record in records}}
        return replace(self, stage_physical=MappingProxyType(physical))

    def places(self, configurations: Iterable[str]) -> set[PlaceKey]:
        """Every physical table the entity uses, in the database of each of
        `configurations` (a connection's stage configuration keys): a stage's own
        configuration reads its table; `*` reads the default table and those of the
        stages mapped in `stage_tables` that have no configuration of their own."""
        keys = set(configurations)
        places = {(key, *self.physical(key)) for key in keys if key != ALL_STAGES}
        if ALL_STAGES in keys:
            places.add((ALL_STAGES, self.schema, self.table))
            places.update(
                (ALL_STAGES, *table)
                for stage, table in self.stage_tables.items()
                if stage not in keys
            )
        return places

    def for_stage(self, stage: str, configuration: str | None = None) -> Entity:
        """This entity as `stage` sees it: `schema` and `table` are that stage's physical
        names and, when `configuration` (the stage's configuration key) has a recorded
        table, columns, types and keys are that table's (see the class docstring)."""
        schema, table = self.physical(stage)
        record = self.recorded(stage, configuration) if configuration is not None else None
        if record is None:
            if (schema, table) == (self.schema, self.table):
                return self
            return replace(self, schema=schema, table=table)
        available = {c.name: c for c in record.columns if c.supported}
        columns = tuple(available[c.name] for c in self.columns if c.name in available)
        selected = {c.name for c in columns}
        primary_key = record.primary_key
        if not all(name in selected for name in primary_key):
            primary_key = ()
        return replace(
            self,
            schema=schema,
            table=table,
            columns=columns,
            primary_key=primary_key,
            foreign_keys=tuple(
                fk for fk in record.foreign_keys if all(c in selected for c in fk.columns)
            ),
            missing=tuple(c.name for c in self.columns if c.name not in available),
            absent=not record.exists,
        )


@dataclass(frozen=True, slots=True)
class Connection:
    """A registered external system. `stages` maps a stage name (or ALL_STAGES) to its
    non-secret settings; `secret_refs` maps a stage to the secret store reference of its
    password, never the password itself."""

    tenant: str
    name: str
    kind: str
    """A kind registered in `connectors.registry` (checked when the connection is created)."""
    stages: Mapping[str, Mapping[str, SettingValue]]
    secret_refs: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    version: int = 1

    def settings_for(self, stage: str) -> Mapping[str, SettingValue] | None:
        """The stage's own settings, else the all-stages settings, else None."""
        own = self.stages.get(stage)
        if own is not None:
            return own
        return self.stages.get(ALL_STAGES)

    def secret_ref_for(self, stage: str) -> str | None:
        own = self.secret_refs.get(stage)
        if own is not None:
            return own
        return self.secret_refs.get(ALL_STAGES)

    def configuration_of(self, stage: str) -> str | None:
        """The key of the configuration `stage` uses: its own, else `*`, else None."""
        if stage in self.stages:
            return stage
        return ALL_STAGES if ALL_STAGES in self.stages else None


@dataclass(frozen=True, slots=True)
class CatalogSnapshot:
    """What apps may query through one connection, at one catalog version.

    The version changes whenever the selection or the remote schema changes, so every
    cache keyed by it (compiled statements, results) misses after a change.
    """

    tenant: str
    connection: str
    version: int
    entities: Mapping[str, Entity]
    stage: str | None = None
    """None for the snapshot as stored; a stage name for the view `for_stage` made, whose
    entities carry that stage's physical schema and table (what the compiler emits)."""

    def entity(self, name: str) -> Entity | None:
        """The entity `name` stands for, ignoring ASCII case only (`fold_name`); entity
        names are ASCII, so any other letter makes the name a different one."""
        return self.entities.get(fold_name(name))

    def for_stage(self, stage: str, configuration: str | None = None) -> CatalogSnapshot:
        """The snapshot as `stage` sees it (`Entity.for_stage`; `configuration` is the key
        of the configuration the stage uses). Caches keyed on the view must include its
        `stage`."""
        entities = {
            key: entity.for_stage(stage, configuration) for key, entity in self.entities.items()
        }
        return replace(self, entities=MappingProxyType(entities), stage=stage)
