"""The metadata store: connections, selected entities, catalog versions, audit, in SQL.

What it keeps: connections (kind, per-stage non-secret settings, secret store references,
an optimistic version), the entities selected for apps (physical schema and table, columns
with their exact Arrow types, primary and foreign keys), one catalog version per
connection, and the audit trail of administrative changes. What it never keeps: a secret,
a row or a parameter value. Every query and rule is written once, here; what differs per
database (SQL spelling, value encodings, migrations, transactions, change notification) is
the driver's (fabric.catalog.metadata.driver). It runs on SQLite (`SqliteMetadataStore`,
the embedded default) and PostgreSQL (`PostgresMetadataStore`) and passes the same test
suite on both (tests/integration/test_metadata_stores.py);
`fabric.catalog.metadata.open.open_metadata_store` picks one from a URL or a path.

Semantics:

- **Connection versions** start at 1 and go up by one on every update. Updates are a
  compare-and-set on the version the caller read (`expected_version`): when another
  writer got there first the call raises FailedPrecondition and changes nothing, so
  concurrent read-modify-write loops that retry never lose an update.
- **Catalog versions** come from one store-wide counter that only goes up. Every change
  of a connection's selection, every bump (remote schema changed) and every connection
  update moves the connection's catalog version to a new, higher number; a connection
  deleted and created again starts above every version the old one had. Caches keyed by
  (tenant, connection, catalog version) therefore never serve stale data. Selection
  changes take an optional `expected_catalog_version` (None: unconditional) with the
  same compare-and-set behaviour as connection updates.
- **Audit**: every method that changes something takes `actor` ("system" by default) and
  writes its audit event (see fabric.catalog.audit) in the same transaction as the
  change. Selection changes also take the `stage` they were made in, for the record.
  Audit events outlive the connection they are about (they are history) and never hold
  a secret.
- **Validation first**: input is checked and encoded (fabric.catalog.serialization)
  before anything is sent to the database, so a refused value never reaches a file, a
  table or a log.

Concurrency: every write transaction first locks the connection's row (`{row_lock}` or
`{delete_lock}`; SQLite's write transaction holds the whole file instead) and only then
touches its catalog version, entities and audit rows. One lock order for every writer means
no deadlocks, and writes to one connection are serialized. Version checks happen under that
lock and the update itself is a compare-and-set (`... WHERE version = ?`) all the same.
Reads are single statements, so a catalog snapshot is always consistent.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from types import MappingProxyType, TracebackType
from typing import Final, Self

from fabric.catalog import audit
from fabric.catalog.audit import SYSTEM_ACTOR, AuditEvent
from fabric.catalog.metadata.driver import Row, SqlDriver, SqlSession
from fabric.catalog.serialization import (
    catalog_changed,
    check_actor,
    check_connection_name,
    check_expected_version,
    check_kind,
    check_name,
    check_selection,
    check_unselect,
    check_utc,
    columns_document,
    connection_changed,
    connection_from_documents,
    connection_not_found,
    entity_from_documents,
    foreign_keys_document,
    secret_refs_document,
    stage_physical_document,
    stage_tables_document,
    stages_document,
    utc_now,
)
from fabric.errors import AlreadyExists, InternalError, InvalidArgument, NotFound
from fabric.model import CatalogSnapshot, Connection, Entity, SettingValue

_CONNECTION_COLUMNS: Final = "tenant, name, kind, stages, secret_refs, version"
_AUDIT_COLUMNS: Final = "at, tenant, actor, action, connection, stage, details"


class MetadataStore:
    """The metadata store on the database `driver` opens; see the module docstring.

    `clock` gives the wall-clock time written to audit events and timestamps (UTC).
    """

    def __init__(self, driver: SqlDriver, *, clock: Callable[[], datetime] = utc_now) -> None:
        self._driver = driver
        self._dialect = driver.dialect
        self._clock = clock

    # -- connections ---------------------------------------------------------------------

    def create_connection(
        self,
        tenant: str,
        name: str,
        kind: str,
        stages: Mapping[str, Mapping[str, SettingValue]],
        secret_refs: Mapping[str, str] | None = None,
        *,
        actor: str = SYSTEM_ACTOR,
    ) -> Connection:
        """Register a connection at version 1; AlreadyExists when the tenant has one of
        that name; InvalidArgument for malformed input or a setting that names a secret."""
        check_name(tenant, "tenant")
        check_connection_name(name)
        kind_name = check_kind(kind)
        stages_doc = stages_document(stages)
        refs_doc = secret_refs_document(secret_refs or {})
        check_actor(actor)
        at = self._now()
        encode, now = self._dialect.encode_document, self._dialect.encode_time(at)
        with self._driver.writing() as session:
            row = session.one(
                "INSERT INTO {s}.connections"
                " (tenant, name, kind, stages, secret_refs, version, created_at, updated_at)"
                " VALUES (?, ?, ?, ?, ?, 1, ?, ?)"
                " ON CONFLICT (tenant, name) DO NOTHING RETURNING id",
                [
                    tenant,
                    name,
                    kind_name,
                    encode(stages_doc, exact=True),
                    encode(refs_doc),
                    now,
                    now,
                ],
            )
            if row is None:
                raise AlreadyExists(
                    f"connection {name!r} already exists in tenant {tenant!r}; "
                    "delete it first or choose another name"
                )
            catalog_version = self._dialect.next_catalog_version(session)
            session.run(
                "INSERT INTO {s}.catalog_versions (connection_id, version, updated_at)"
                " VALUES (?, ?, ?)",
                [row[0], catalog_version, now],
            )
            created = connection_from_documents(tenant, name, kind_name, stages_doc, refs_doc, 1)
            self._audit(session, audit.connection_created(at, actor, created, catalog_version))
        return created

    def get_connection(self, tenant: str, name: str) -> Connection:
        """NotFound when the tenant has no connection of that name."""
        with self._driver.reading() as session:
            row = session.one(
                f"SELECT {_CONNECTION_COLUMNS} FROM {{s}}.connections"
                " WHERE tenant = ? AND name = ?",
                [tenant, name],
            )
        if row is None:
            raise connection_not_found(tenant, name)
        return self._connection_from_row(row)

    def list_connections(self, tenant: str) -> list[Connection]:
        """The tenant's connections, by name."""
        with self._driver.reading() as session:
            rows = session.all(
                f"SELECT {_CONNECTION_COLUMNS} FROM {{s}}.connections"
                " WHERE tenant = ? ORDER BY name {bytewise}",
                [tenant],
            )
        return [self._connection_from_row(row) for row in rows]

    def update_connection(
        self,
        tenant: str,
        name: str,
        *,
        stages: Mapping[str, Mapping[str, SettingValue]] | None = None,
        secret_refs: Mapping[str, str] | None = None,
        expected_version: int,
        actor: str = SYSTEM_ACTOR,
    ) -> Connection:
        """Replace the stages and/or secret references (None keeps them) if the connection
        is still at `expected_version`; returns it at the next version, with a new catalog
        version. FailedPrecondition when it changed meanwhile (reload and retry), NotFound,
        InvalidArgument (nothing to update, malformed input, a secret-looking setting)."""
        if stages is None and secret_refs is None:
            raise InvalidArgument("nothing to update: give stages, secret_refs or both")
        check_expected_version(expected_version, "expected_version")
        if expected_version is None:
            raise InvalidArgument("expected_version is required: pass the version you read")
        stages_doc = None if stages is None else stages_document(stages)
        refs_doc = None if secret_refs is None else secret_refs_document(secret_refs)
        check_actor(actor)
        at = self._now()
        encode, now = self._dialect.encode_document, self._dialect.encode_time(at)
        with self._driver.writing() as session:
            row = session.one(
                f"SELECT id, {_CONNECTION_COLUMNS} FROM {{s}}.connections"
                " WHERE tenant = ? AND name = ? {row_lock}",
                [tenant, name],
            )
            if row is None:
                raise connection_not_found(tenant, name)
            connection_id, old = int(row[0]), self._connection_from_row(row[1:])
            if old.version != expected_version:
                raise connection_changed(name, expected_version, old.version)
            new_stages = stages_doc
            if new_stages is None:  # written back unchanged, as plain dicts
                new_stages = {stage: dict(settings) for stage, settings in old.stages.items()}
            new_refs = refs_doc if refs_doc is not None else dict(old.secret_refs)
            updated_row = session.one(
                "UPDATE {s}.connections SET stages = ?, secret_refs = ?,"
                " version = version + 1, updated_at = ?"
                " WHERE id = ? AND version = ? RETURNING version",
                [
                    encode(new_stages, exact=True),
                    encode(new_refs),
                    now,
                    connection_id,
                    expected_version,
                ],
            )
            if updated_row is None:  # cannot happen under the row lock; never lose an update
                raise connection_changed(name, expected_version, expected_version + 1)
            # Settings may now point at another database: nothing cached under the old
            # catalog version may be served.
            catalog_version = self._bump_version(session, connection_id, at)
            updated = connection_from_documents(
                tenant, name, str(old.kind), new_stages, new_refs, int(updated_row[0])
            )
            self._audit(session, audit.connection_updated(at, actor, old, updated, catalog_version))
        return updated

    def delete_connection(
        self,
        tenant: str,
        name: str,
        *,
        expected_version: int | None = None,
        actor: str = SYSTEM_ACTOR,
    ) -> None:
        """Delete the connection and its selected entities (its audit events stay);
        NotFound if absent, VersionConflict if not at `expected_version` (when given).
        Nothing of the deleted rows stays readable in the database's files where the
        driver can see to it (`SqlDriver.erase_deleted`)."""
        check_expected_version(expected_version, "expected_version")
        check_actor(actor)
        at = self._now()
        with self._driver.writing() as session:
            row = session.one(
                "SELECT id, version FROM {s}.connections"
                " WHERE tenant = ? AND name = ? {delete_lock}",
                [tenant, name],
            )
            if row is None:
                raise connection_not_found(tenant, name)
            connection_id, version = int(row[0]), int(row[1])
            if expected_version is not None and version != expected_version:
                raise connection_changed(name, expected_version, version)
            count = session.one(
                "SELECT COUNT(*) FROM {s}.entities WHERE connection_id = ?", [connection_id]
            )
            session.run("DELETE FROM {s}.connections WHERE id = ?", [connection_id])
            entities = int(count[0]) if count is not None else 0
            self._audit(
                session, audit.connection_deleted(at, actor, tenant, name, version, entities)
            )
        self._driver.erase_deleted()

    # -- selection -----------------------------------------------------------------------

    def select_entities(
        self,
        tenant: str,
        connection: str,
        entities: Sequence[Entity],
        *,
        expected_catalog_version: int | None = None,
        actor: str = SYSTEM_ACTOR,
        stage: str | None = None,
    ) -> int:
        """Add or replace the given entities (by entity name) in the selection, all or none;
        returns the new catalog version. Entity names are unique per connection,
        case-insensitively. InvalidArgument for an empty list, a name that is not a plain
        SQL identifier, two entities whose names differ only in case, or an entity that is
        not consistent (no columns, duplicate columns, key columns that are not among its
        columns). FailedPrecondition when the catalog is no longer at
        `expected_catalog_version` (when given)."""
        documents = check_selection(entities, allow_empty=False)
        return self._change_selection(
            audit.CATALOG_SELECT,
            tenant,
            connection,
            expected_catalog_version,
            actor,
            stage,
            upsert=documents,
        )

    def unselect_entities(
        self,
        tenant: str,
        connection: str,
        names: Sequence[str],
        *,
        expected_catalog_version: int | None = None,
        actor: str = SYSTEM_ACTOR,
        stage: str | None = None,
    ) -> int:
        """Remove entities (names compared ignoring case) from the selection, all or none
        (NotFound names the ones not selected); returns the new catalog version."""
        return self._change_selection(
            audit.CATALOG_UNSELECT,
            tenant,
            connection,
            expected_catalog_version,
            actor,
            stage,
            remove=check_unselect(names),
        )

    def replace_entities(
        self,
        tenant: str,
        connection: str,
        entities: Sequence[Entity],
        *,
        expected_catalog_version: int | None = None,
        actor: str = SYSTEM_ACTOR,
        stage: str | None = None,
    ) -> int:
        """Make `entities` (possibly none) the whole selection, atomically; returns the new
        catalog version. Same checks as `select_entities`, an empty list aside. What
        `refresh` uses after re-reading the remote schema."""
        documents = check_selection(entities, allow_empty=True)
        return self._change_selection(
            audit.CATALOG_REPLACE,
            tenant,
            connection,
            expected_catalog_version,
            actor,
            stage,
            upsert=documents,
            replace=True,
        )

    def bump_catalog_version(
        self,
        tenant: str,
        connection: str,
        *,
        actor: str = SYSTEM_ACTOR,
        stage: str | None = None,
    ) -> int:
        """Move the catalog version on without changing the selection (the remote schema
        changed); returns the new version."""
        return self._change_selection(audit.CATALOG_BUMP, tenant, connection, None, actor, stage)

    def catalog(self, tenant: str, connection: str) -> CatalogSnapshot:
        """The selected entities (keyed by lower-cased name, in name order) and the catalog
        version, read together; NotFound if no such connection."""
        with self._driver.reading() as session:
            rows = session.all(
                "SELECT v.version, e.name_key, e.name, e.schema_name, e.table_name,"
                " e.columns, e.primary_key, e.foreign_keys, e.stage_tables, e.hidden_columns,"
                " e.stage_physical"
                " FROM {s}.connections c"
                " JOIN {s}.catalog_versions v ON v.connection_id = c.id"
                " LEFT JOIN {s}.entities e ON e.connection_id = c.id"
                " WHERE c.tenant = ? AND c.name = ?"
                " ORDER BY e.name_key {bytewise}",
                [tenant, connection],
            )
        if not rows:
            raise connection_not_found(tenant, connection)
        decode = self._dialect.decode_document
        entities = {
            row[1]: entity_from_documents(
                *row[2:5], *(None if value is None else decode(value) for value in row[5:])
            )
            for row in rows
            if row[1] is not None
        }
        return CatalogSnapshot(
            tenant=tenant,
            connection=connection,
            version=int(rows[0][0]),
            entities=MappingProxyType(entities),
        )

    def catalog_version(self, tenant: str, connection: str) -> int:
        """Cheap read of the current catalog version; NotFound if no such connection.

        Served from memory while the driver hears of every change (no round trip on the
        query path); read from the database otherwise."""
        held = self._driver.held_versions(start=True)
        key = (tenant, connection)
        generation = None
        if held is not None:
            version = held.get(key)
            if version is not None:
                return version
            generation = held.generation()
        with self._driver.reading() as session:
            row = session.one(
                "SELECT v.version FROM {s}.connections c"
                " JOIN {s}.catalog_versions v ON v.connection_id = c.id"
                " WHERE c.tenant = ? AND c.name = ?",
                [tenant, connection],
            )
        if row is None:
            raise connection_not_found(tenant, connection)
        if held is not None:
            held.keep(key, int(row[0]), generation)
        return int(row[0])

    def known_catalog_version(self, tenant: str, connection: str) -> int | None:
        """The current catalog version when the store has it without a round trip to a
        server, else None. The query path calls it on the event loop and goes to a worker
        thread only on None. Read at once where reads are local (a file: microseconds, and
        WAL readers never wait for a writer); else the version held in memory, if any (not
        before the driver listens: starting to listen connects). NotFound when the store
        knows there is no such connection."""
        if self._driver.reads_are_local:
            return self.catalog_version(tenant, connection)
        held = self._driver.held_versions(start=False)
        return None if held is None else held.get((tenant, connection))

    # -- audit ---------------------------------------------------------------------------

    def record_audit(self, event: AuditEvent) -> None:
        """Record an administrative action the store did not make itself (the store's
        own changes are recorded with them). InvalidArgument for a secret-looking detail."""
        if not isinstance(event, AuditEvent):
            raise InvalidArgument(f"expected an AuditEvent, not {type(event).__name__}")
        audit.details_document(event.details)  # refuse before connecting
        with self._driver.writing() as session:
            self._audit(session, event)

    def list_audit(
        self, tenant: str, *, connection: str | None = None, limit: int = 100
    ) -> list[AuditEvent]:
        """The tenant's audit events, newest first, optionally about one connection
        (including a deleted one); `limit` between 1 and 10,000."""
        audit.check_limit(limit)
        # Two statements rather than one with `(? IS NULL OR ...)`: each uses its index.
        about = "" if connection is None else " AND connection = ?"
        params = [tenant] if connection is None else [tenant, connection]
        with self._driver.reading() as session:
            rows = session.all(
                f"SELECT {_AUDIT_COLUMNS} FROM {{s}}.audit_events WHERE tenant = ?{about}"
                " ORDER BY at DESC, id DESC LIMIT ?",
                [*params, limit],
            )
        return [self._audit_from_row(row) for row in rows]

    # -- lifecycle -----------------------------------------------------------------------

    def schema_version(self) -> int:
        """The store's schema version (its last applied migration)."""
        with self._driver.reading() as session:
            row = session.one("SELECT MAX(version) FROM {s}.schema_migrations")
        return int(row[0]) if row is not None and row[0] is not None else 0

    def close(self) -> None:
        """Release the store's resources; idempotent. Later calls raise FailedPrecondition."""
        self._driver.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- internals -----------------------------------------------------------------------

    def _now(self) -> datetime:
        return check_utc(self._clock(), "the store's clock")

    def _change_selection(
        self,
        action: str,
        tenant: str,
        connection: str,
        expected: int | None,
        actor: str,
        stage: str | None,
        *,
        upsert: Sequence[Entity] = (),
        remove: Sequence[str] | None = None,
        replace: bool = False,
    ) -> int:
        """One selection change in one transaction: lock the connection, check its catalog
        version, remove (`remove`: names, compared ignoring case; all or none) or replace
        entities, write `upsert`, move the catalog version on and audit the change;
        returns the new version."""
        check_expected_version(expected, "expected_catalog_version")
        check_actor(actor)
        check_name(stage, "stage", optional=True)
        at = self._now()
        with self._driver.writing() as session:
            connection_id = self._catalog_for_change(session, tenant, connection, expected)
            names: Sequence[str] = [entity.name for entity in upsert]
            if remove is not None:
                names = remove
                selected = {
                    row[0]
                    for row in session.all(
                        "SELECT name_key FROM {s}.entities WHERE connection_id = ?",
                        [connection_id],
                    )
                }
                missing = [name for name in names if name.lower() not in selected]
                if missing:
                    raise NotFound(
                        f"connection {connection!r} has no selected entity named "
                        f"{', '.join(repr(name) for name in missing)}"
                    )
                session.run_many(
                    "DELETE FROM {s}.entities WHERE connection_id = ? AND name_key = ?",
                    [(connection_id, key) for key in dict.fromkeys(n.lower() for n in names)],
                )
            if replace:
                session.run("DELETE FROM {s}.entities WHERE connection_id = ?", [connection_id])
            self._upsert(session, connection_id, upsert, at)
            version = self._bump_version(session, connection_id, at)
            self._audit(
                session,
                audit.catalog_changed(at, actor, action, tenant, connection, stage, names, version),
            )
            return version

    @staticmethod
    def _catalog_for_change(
        session: SqlSession, tenant: str, name: str, expected: int | None
    ) -> int:
        """Lock the connection, then check its catalog is at `expected` (if given)."""
        row = session.one(
            "SELECT id FROM {s}.connections WHERE tenant = ? AND name = ? {row_lock}",
            [tenant, name],
        )
        if row is None:
            raise connection_not_found(tenant, name)
        connection_id = int(row[0])
        # A statement of its own, after the lock: it sees the latest committed version.
        current = session.one(
            "SELECT version FROM {s}.catalog_versions WHERE connection_id = ?", [connection_id]
        )
        if current is None:
            raise InternalError(f"connection {name!r} has no catalog version")
        if expected is not None and int(current[0]) != expected:
            raise catalog_changed(name, expected, int(current[0]))
        return connection_id

    def _upsert(
        self,
        session: SqlSession,
        connection_id: int,
        entities: Sequence[Entity],
        at: datetime,
    ) -> None:
        encode, now = self._dialect.encode_document, self._dialect.encode_time(at)
        session.run_many(
            "INSERT INTO {s}.entities (connection_id, name_key, name, schema_name,"
            " table_name, columns, primary_key, foreign_keys, stage_tables, hidden_columns,"
            " stage_physical,"
            " created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
            " ON CONFLICT (connection_id, name_key) DO UPDATE SET"
            " name = excluded.name, schema_name = excluded.schema_name,"
            " table_name = excluded.table_name, columns = excluded.columns,"
            " primary_key = excluded.primary_key, foreign_keys = excluded.foreign_keys,"
            " stage_tables = excluded.stage_tables, hidden_columns = excluded.hidden_columns,"
            " stage_physical = excluded.stage_physical,"
            " updated_at = excluded.updated_at",
            [
                (
                    connection_id,
                    e.name.lower(),
                    e.name,
                    e.schema,
                    e.table,
                    encode(columns_document(e.columns)),
                    encode(list(e.primary_key)),
                    encode(foreign_keys_document(e.foreign_keys)),
                    encode(stage_tables_document(e.stage_tables)),
                    # NULL: not known (see Entity.hidden_columns).
                    None if e.hidden_columns is None else encode(list(e.hidden_columns)),
                    encode(stage_physical_document(e.stage_physical)),
                    now,
                    now,
                )
                for e in entities
            ],
        )

    def _bump_version(self, session: SqlSession, connection_id: int, at: datetime) -> int:
        # Called with the connection's row locked, so versions of one connection are
        # drawn (and committed) in order.
        version = self._dialect.next_catalog_version(session)
        now = self._dialect.encode_time(at)
        session.run(
            "UPDATE {s}.catalog_versions SET version = ?, updated_at = ? WHERE connection_id = ?",
            [version, now, connection_id],
        )
        session.run("UPDATE {s}.connections SET updated_at = ? WHERE id = ?", [now, connection_id])
        return version

    def _audit(self, session: SqlSession, event: AuditEvent) -> None:
        # The details are checked again here: the event may have been tampered with after
        # it was built, and the store is the last line before the database.
        details = audit.details_document(event.details)
        session.run(
            "INSERT INTO {s}.audit_events (at, tenant, actor, action, connection, stage, details)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            [
                self._dialect.encode_time(check_utc(event.at)),
                event.tenant,
                event.actor,
                event.action,
                event.connection,
                event.stage,
                self._dialect.encode_document(details),
            ],
        )

    def _connection_from_row(self, row: Row) -> Connection:
        tenant, name, kind, stages, secret_refs, version = row
        decode = self._dialect.decode_document
        return connection_from_documents(
            tenant, name, kind, decode(stages), decode(secret_refs), int(version)
        )

    def _audit_from_row(self, row: Row) -> AuditEvent:
        at, tenant, actor, action, connection, stage, details = row
        return AuditEvent(
            at=self._dialect.decode_time(at),
            tenant=tenant,
            actor=actor,
            action=action,
            connection=connection,
            stage=stage,
            details=self._dialect.decode_document(details),
        )
