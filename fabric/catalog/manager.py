"""Filling the catalog: create connections, discover remote tables, select entities.

This is the Python API under the platform's connection admin and catalog services, the
CLI and the demo. It is the one place that turns what discovery found (`TableInfo`)
into what apps may query (`Entity`), with the rules that go with it:

- primary key columns are always part of an entity (so rows stay identifiable);
- a column whose type the gateway cannot carry (`arrow_type` None) cannot be selected,
  and is skipped when all columns are asked for;
- a foreign key is kept only when all its columns are selected;
- entity names are plain SQL identifiers, unique per connection ignoring case, and an
  entity name already used for another table is not silently re-pointed;
- an entity's `schema.table` serves every stage unless the entity maps a stage to its own
  physical table (`stage_tables`); such a table is checked in its stage when it is mapped
  (it must exist and carry every selected column with the same type).

Every change names its `actor` ("system" by default); the store writes the audit event in
the same transaction as the change. Selections are written with the catalog version the
manager checked them against, so a concurrent change is never overwritten unseen.

Connectors: the manager asks `connector_factory(connection, stage)` for a connector on
every call that needs the source, and closes it before returning. A factory that wants
to share a pooled connector should hand out a wrapper whose `close` does nothing.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Protocol

from fabric.catalog import audit
from fabric.catalog.audit import SYSTEM_ACTOR
from fabric.catalog.metadata.store import MetadataStore
from fabric.catalog.serialization import IDENTIFIER_RE, utc_now
from fabric.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    VersionConflict,
)
from fabric.model import (
    CatalogSnapshot,
    ColumnInfo,
    Connection,
    Entity,
    PhysicalTable,
    TableInfo,
    fold_name,
)


class SourceInspector(Protocol):
    """What the catalog needs from a connector: test the source, list its tables, close.
    Every `connectors.Connector` is one; the catalog names only this, so it does not
    depend on the connectors package."""

    def test(self) -> None: ...

    def introspect(self, schemas: Sequence[str] | None = None) -> list[TableInfo]: ...

    def close(self) -> None: ...


ConnectorFactory = Callable[[Connection, str], SourceInspector]
"""Builds a connector for a connection in a stage (resolving its secret); the caller of
the factory owns the connector and closes it."""

_SELECT_ATTEMPTS = 5


@dataclass(frozen=True, slots=True)
class TableChoice:
    """One table to select: `table` is `schema.table` or a bare table name, `columns` None
    means every supported column, `entity_name` None means the table name, and
    `stage_tables` maps other stages to their own `schema.table` for this entity."""

    table: str
    columns: Sequence[str] | None = None
    entity_name: str | None = None
    stage_tables: Mapping[str, str] = field(default_factory=dict)


class CatalogManager:
    """Connections and entity selection on top of a MetadataStore and connectors."""

    def __init__(self, store: MetadataStore, connector_factory: ConnectorFactory) -> None:
        self._store = store
        self._connector_factory = connector_factory
        # Connections, and unselecting (which needs no source), are the store's alone (it
        # checks, versions and audits them): the manager hands out the store's own methods,
        # documented on MetadataStore.
        self.create_connection = store.create_connection
        self.get_connection = store.get_connection
        self.list_connections = store.list_connections
        self.update_connection = store.update_connection
        self.delete_connection = store.delete_connection
        self.catalog_version = store.catalog_version

    @property
    def store(self) -> MetadataStore:
        """The metadata store the manager writes to."""
        return self._store

    # -- connections ---------------------------------------------------------------------

    def test_connection(self, tenant: str, connection: str, stage: str) -> None:
        """Connect to the source of `connection` in `stage` and run a trivial query; raises
        the connector's FabricError (SourceUnavailable, ...) when that fails."""
        with self._connector(tenant, connection, stage) as connector:
            connector.test()

    # -- discovery and selection ---------------------------------------------------------

    def discover(
        self,
        tenant: str,
        connection: str,
        stage: str,
        schemas: Sequence[str] | None = None,
    ) -> list[TableInfo]:
        """The source's tables and views (columns, keys) as the connector introspects them
        in `stage`; `schemas` restricts the search. Nothing is stored."""
        with self._connector(tenant, connection, stage) as connector:
            return connector.introspect(_schema_list(schemas))

    def select(
        self,
        tenant: str,
        connection: str,
        stage: str,
        table: str,
        columns: Sequence[str] | None = None,
        entity_name: str | None = None,
        *,
        stage_tables: Mapping[str, str] | None = None,
        actor: str = SYSTEM_ACTOR,
    ) -> Entity:
        """Select one remote table for apps and return the stored entity.

        `table` is `schema.table` or a bare table name that must match exactly one table
        across schemas (InvalidArgument lists the candidates otherwise; NotFound when
        none). `columns` None means every supported column; named columns must exist and
        be supported (InvalidArgument names the offender). Primary key columns are always
        included. `entity_name` defaults to the table name. Selecting a table again under
        the same entity name refreshes the entity; an entity name that already stands for
        another table raises AlreadyExists (unselect it first or choose another name).
        `stage_tables` maps other stages to their own `schema.table` (see `select_tables`).
        """
        choice = TableChoice(table, columns, entity_name, dict(stage_tables or {}))
        return self.select_tables(tenant, connection, stage, [choice], actor=actor)[0]

    def select_tables(
        self,
        tenant: str,
        connection: str,
        stage: str,
        choices: Sequence[TableChoice],
        *,
        expected_catalog_version: int | None = None,
        actor: str = SYSTEM_ACTOR,
    ) -> list[Entity]:
        """Select several tables in one catalog change, all or none; returns the stored
        entities in the order asked.

        Tables are looked up in `stage` (see `select` for the rules). A choice's
        `stage_tables` maps another stage to the physical table that stage uses for the
        entity: it is looked up in that stage and must have every selected column, with
        the same type (InvalidArgument names the column), else nothing is selected.
        Selecting an existing entity again keeps its stage mappings and adds the given
        ones (mapping a stage to the entity's own `schema.table` removes its override).
        `expected_catalog_version` (when given) must be the current catalog version.
        """
        if not choices:
            raise InvalidArgument("select at least one table")
        for choice in choices:
            if not isinstance(choice.table, str) or not choice.table:
                raise InvalidArgument("name the table to select, as 'schema.table' or 'table'")
        tables = self._introspect_for(tenant, connection, stage, [c.table for c in choices])
        configuration = self._configuration(tenant, connection, stage)
        entities: list[Entity] = []
        for choice in choices:
            info = _match_table(tables, choice.table)
            if info is None:
                raise NotFound(
                    f"no table or view {choice.table!r} in connection {connection!r} "
                    f"(stage {stage!r}); discover the connection to see what it has"
                )
            name = choice.entity_name or info.name
            entities.append(_entity_from_table(info, name, choice.columns, configuration))
        entities = self._with_stage_tables(tenant, connection, stage, choices, entities)
        return self._select_checked(
            tenant, connection, stage, entities, actor, expected_catalog_version
        )

    def select_all(
        self,
        tenant: str,
        connection: str,
        stage: str,
        schemas: Sequence[str] | None = None,
        *,
        actor: str = SYSTEM_ACTOR,
    ) -> list[Entity]:
        """Select every discovered table and view (in `schemas`, or all user schemas) with
        all its supported columns, in one catalog change; returns the stored entities.

        Entity names are the table names; where two schemas have a table of the same name,
        both become `schema_table`. Names that are not SQL identifiers are made into ones
        (other characters become `_`). Tables without a supported column are skipped.
        """
        tables = self.discover(tenant, connection, stage, schemas)
        configuration = self._configuration(tenant, connection, stage)
        usable = [t for t in tables if any(c.supported for c in t.columns)]
        counts = Counter(info.name.lower() for info in usable)
        entities: list[Entity] = []
        taken: set[str] = set()
        for info in usable:
            base = info.name if counts[info.name.lower()] == 1 else f"{info.schema}_{info.name}"
            name = _unique(_identifier(base), taken)
            taken.add(name.lower())
            entities.append(_entity_from_table(info, name, None, configuration))
        if not entities:
            return []
        return self._select_checked(tenant, connection, stage, entities, actor)

    def unselect(
        self,
        tenant: str,
        connection: str,
        names: Sequence[str],
        *,
        expected_catalog_version: int | None = None,
        actor: str = SYSTEM_ACTOR,
        stage: str | None = None,
    ) -> int:
        """Remove entities from the selection (`MetadataStore.unselect_entities`); a
        version conflict is recorded as a refused attempt."""
        with audit.version_conflicts_recorded(
            self._store.record_audit,
            utc_now,
            tenant,
            actor,
            audit.CATALOG_UNSELECT,
            connection,
            stage,
        ):
            return self._store.unselect_entities(
                tenant,
                connection,
                names,
                expected_catalog_version=expected_catalog_version,
                actor=actor,
                stage=stage,
            )

    def list_entities(self, tenant: str, connection: str) -> list[Entity]:
        """The selected entities of a connection, by name; NotFound if no connection."""
        return list(self._store.catalog(tenant, connection).entities.values())

    # -- internals -----------------------------------------------------------------------

    def _configuration(self, tenant: str, connection: str, stage: str) -> str:
        """The key of the configuration `stage` uses (its own, or `*`)."""
        configuration = self._store.get_connection(tenant, connection).configuration_of(stage)
        if configuration is None:
            raise FailedPrecondition(
                f"connection {connection!r} has no settings for stage {stage!r}; add "
                "settings for that stage first"
            )
        return configuration

    @contextmanager
    def _connector(self, tenant: str, connection: str, stage: str) -> Iterator[SourceInspector]:
        record = self._store.get_connection(tenant, connection)
        if record.settings_for(stage) is None:
            configured = ", ".join(sorted(record.stages)) or "none"
            raise FailedPrecondition(
                f"connection {connection!r} has no settings for stage {stage!r} "
                f"(configured: {configured}); add settings for that stage first"
            )
        connector = self._connector_factory(record, stage)
        try:
            yield connector
        finally:
            connector.close()

    def _introspect_for(
        self, tenant: str, connection: str, stage: str, tables: Sequence[str]
    ) -> list[TableInfo]:
        """What introspection in `stage` finds for the named tables: only their schemas
        when every name is qualified and found, else every user schema."""
        qualified = all("." in t for t in tables)
        schemas = sorted({t.split(".", 1)[0] for t in tables})
        with self._connector(tenant, connection, stage) as connector:
            if qualified:
                found = connector.introspect(schemas)
                if all(_match_table(found, t) is not None for t in tables):
                    return found
            return connector.introspect(None)

    def _with_stage_tables(
        self,
        tenant: str,
        connection: str,
        stage: str,
        choices: Sequence[TableChoice],
        entities: Sequence[Entity],
    ) -> list[Entity]:
        """`entities` with their choices' stage mappings, each checked in its stage."""
        by_stage: dict[str, list[tuple[int, str]]] = {}
        for index, choice in enumerate(choices):
            for other, table in choice.stage_tables.items():
                if not isinstance(other, str) or not other:
                    raise InvalidArgument("stage_tables must map stage names to tables")
                if other == stage:
                    raise InvalidArgument(
                        f"stage {stage!r} uses the selected table itself; map only other "
                        "stages in stage_tables"
                    )
                if not isinstance(table, str) or "." not in table:
                    raise InvalidArgument(
                        f"the table of stage {other!r} must be written 'schema.table'"
                    )
                by_stage.setdefault(other, []).append((index, table))
        result = list(entities)
        for other, wanted in sorted(by_stage.items()):
            found = self._introspect_for(tenant, connection, other, [t for _, t in wanted])
            configuration = self._configuration(tenant, connection, other)
            for index, table in wanted:
                info = _match_table(found, table)
                if info is None:
                    raise NotFound(
                        f"no table or view {table!r} in connection {connection!r} "
                        f"(stage {other!r}); it cannot stand for entity "
                        f"{result[index].name!r} there"
                    )
                _check_stage_table(result[index], info, other)
                mapped = dict(result[index].stage_tables)
                mapped[other] = (info.schema, info.name)
                result[index] = (
                    replace(result[index], stage_tables=MappingProxyType(mapped))
                    .with_hidden(column.name for column in info.columns)
                    .with_physical(PhysicalTable.of(configuration, info))
                )
        return result

    def _select_checked(
        self,
        tenant: str,
        connection: str,
        stage: str,
        entities: Sequence[Entity],
        actor: str,
        expected_catalog_version: int | None = None,
    ) -> list[Entity]:
        """Select `entities` after checking none re-points an entity name, against the very
        catalog version that was checked; a concurrent change makes it check again (unless
        the caller named the version it expects, which then must still hold). Returns the
        entities as stored."""
        attempts = 1 if expected_catalog_version is not None else _SELECT_ATTEMPTS
        for attempt in range(attempts):
            version, merged = self._check_not_repointed(tenant, connection, stage, entities)
            if expected_catalog_version is not None:
                version = expected_catalog_version
            try:
                self._store.select_entities(
                    tenant,
                    connection,
                    merged,
                    expected_catalog_version=version,
                    actor=actor,
                    stage=stage,
                )
            except VersionConflict:
                if attempt == attempts - 1:
                    self._store.record_audit(
                        audit.refused(
                            utc_now(),
                            tenant,
                            actor,
                            audit.CATALOG_SELECT,
                            "version_conflict",
                            connection=connection,
                            stage=stage,
                        )
                    )
                    raise
                continue  # the catalog changed between the check and the write: check again
            snapshot = self._store.catalog(tenant, connection)
            return [_stored(snapshot, entity.name) for entity in entities]
        raise AssertionError("unreachable")

    def _check_not_repointed(
        self, tenant: str, connection: str, stage: str, entities: Sequence[Entity]
    ) -> tuple[int, list[Entity]]:
        """The catalog version checked and the entities merged with what is selected
        (stage mappings kept); AlreadyExists when an entity name already stands for
        another table in `stage`."""
        snapshot = self._store.catalog(tenant, connection)
        selected = snapshot.entities
        merged: list[Entity] = []
        for entity in entities:
            current = selected.get(fold_name(entity.name))
            if current is None:
                merged.append(_without_default_overrides(entity))
                continue
            if current.physical(stage) != (entity.schema, entity.table):
                schema, table = current.physical(stage)
                raise AlreadyExists(
                    f"entity {current.name!r} already stands for {schema}.{table} in stage "
                    f"{stage!r}; unselect it first or choose another entity name"
                )
            mapped = {**current.stage_tables, **entity.stage_tables}
            # What other stage configurations recorded stays theirs; this select records
            # what its own stages' tables hold now.
            physical = {**current.stage_physical, **entity.stage_physical}
            merged.append(
                _without_default_overrides(
                    replace(
                        entity,
                        schema=current.schema,
                        table=current.table,
                        stage_tables=MappingProxyType(mapped),
                        stage_physical=MappingProxyType(physical),
                    ).with_hidden(current.hidden_columns or ())
                )
            )
        return snapshot.version, merged


def _stored(snapshot: CatalogSnapshot, name: str) -> Entity:
    entity = snapshot.entity(name)
    if entity is None:  # only if someone unselected it in between
        raise NotFound(f"entity {name!r} is no longer selected in {snapshot.connection!r}")
    return entity


def _without_default_overrides(entity: Entity) -> Entity:
    """`entity` without stage mappings that name its own default table."""
    default = (entity.schema, entity.table)
    kept = {s: t for s, t in entity.stage_tables.items() if t != default}
    if len(kept) == len(entity.stage_tables):
        return entity
    return replace(entity, stage_tables=MappingProxyType(kept))


def _check_stage_table(entity: Entity, info: TableInfo, stage: str) -> None:
    """InvalidArgument unless `info` (a table of `stage`) carries every column of `entity`
    with the same type, so the entity reads the same in every stage."""
    for column in entity.columns:
        found = info.column(column.name)
        if found is None:
            raise InvalidArgument(
                f"{info.schema}.{info.name} (stage {stage!r}) has no column "
                f"{column.name!r}, which entity {entity.name!r} selects"
            )
        if found.arrow_type != column.arrow_type:
            raise InvalidArgument(
                f"column {column.name!r} of {info.schema}.{info.name} (stage {stage!r}) is "
                f"{found.source_type!r}, not {column.source_type!r} as entity "
                f"{entity.name!r} has it; both stages must agree on its type"
            )


def _schema_list(schemas: Sequence[str] | None) -> list[str] | None:
    if schemas is None:
        return None
    if isinstance(schemas, str):
        return [schemas]
    return list(schemas)


def _match_table(tables: Sequence[TableInfo], wanted: str) -> TableInfo | None:
    """The table `wanted` names (`schema.table` or `table`), exact spelling first, then
    ignoring case; None when nothing matches, InvalidArgument when several do."""
    for exact in (True, False):
        key = wanted if exact else wanted.lower()

        def norm(text: str, exact: bool = exact) -> str:
            return text if exact else text.lower()

        found = [t for t in tables if key in (norm(f"{t.schema}.{t.name}"), norm(t.name))]
        unique = {(t.schema, t.name): t for t in found}
        if len(unique) == 1:
            return next(iter(unique.values()))
        if len(unique) > 1:
            candidates = ", ".join(sorted(f"{s}.{n}" for s, n in unique))
            raise InvalidArgument(
                f"table {wanted!r} is ambiguous; name it with its schema, one of: {candidates}"
            )
    return None


def _entity_from_table(
    info: TableInfo, name: str, columns: Sequence[str] | None, configuration: str
) -> Entity:
    """The entity for `info` with the chosen columns (in table order), its primary key
    (always included, dropped only if a key column's type is unsupported) and the foreign
    keys whose columns are all selected; what the table holds is recorded as
    `configuration`'s physical table."""
    if not isinstance(name, str) or IDENTIFIER_RE.fullmatch(name) is None:
        raise InvalidArgument(
            f"entity name {name!r} is not a valid SQL identifier (letters, digits and '_', "
            "not starting with a digit); pass entity_name"
        )
    if columns is None:
        wanted = {c.name for c in info.columns if c.supported}
    else:
        if isinstance(columns, str):
            columns = [columns]
        wanted = set()
        for requested in columns:
            column = _match_column(info, requested)
            if not column.supported:
                raise InvalidArgument(
                    f"column {column.name!r} of {info.schema}.{info.name} has type "
                    f"{column.source_type!r}, which the gateway does not support; leave it out"
                )
            wanted.add(column.name)
    by_name = {c.name: c for c in info.columns}
    primary_key = info.primary_key
    if all(k in by_name and by_name[k].supported for k in primary_key):
        wanted.update(primary_key)
    else:
        primary_key = ()
    chosen: tuple[ColumnInfo, ...] = tuple(c for c in info.columns if c.name in wanted)
    if not chosen:
        raise InvalidArgument(
            f"{info.schema}.{info.name} has no column of a supported type; it cannot be selected"
        )
    foreign_keys = tuple(fk for fk in info.foreign_keys if all(c in wanted for c in fk.columns))
    return Entity(
        name=name,
        schema=info.schema,
        table=info.name,
        columns=chosen,
        primary_key=primary_key,
        foreign_keys=foreign_keys,
        hidden_columns=tuple(c.name for c in info.columns if c.name not in wanted),
        stage_physical=MappingProxyType(
            {(configuration, info.schema, info.name): PhysicalTable.of(configuration, info)}
        ),
    )


def _match_column(info: TableInfo, requested: str) -> ColumnInfo:
    column = info.column(requested)
    if column is not None:
        return column
    folded = [c for c in info.columns if c.name.lower() == requested.lower()]
    if len(folded) == 1:
        return folded[0]
    available = ", ".join(c.name for c in info.columns)
    raise InvalidArgument(
        f"{info.schema}.{info.name} has no column {requested!r}; its columns are: {available}"
    )


def _identifier(text: str) -> str:
    """`text` made into a plain SQL identifier."""
    name = re.sub(r"[^A-Za-z0-9_]", "_", text) or "_"
    return f"_{name}" if name[0].isdigit() else name


def _unique(name: str, taken: set[str]) -> str:
    """`name`, or `name_2`, `name_3`, ... whichever is not yet taken (ignoring case)."""
    candidate, n = name, 1
    while candidate.lower() in taken:
        n += 1
        candidate = f"{name}_{n}"
    return candidate
