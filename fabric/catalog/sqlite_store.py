"""The embedded metadata store: one SQLite file, metadata only.

What it keeps: connections (kind, per-stage non-secret settings, secret store references,
an optimistic version), the entities selected for apps (physical schema and table, columns
with their exact Arrow types, primary and foreign keys), one catalog version per
connection, and the audit trail of administrative changes.

What it never keeps: a secret, a row or a parameter value. Settings and audit details whose
key names a secret (`password`, `token`, `client_secret`, ...) are refused before anything
is written; the secret belongs in the secret store and the connection only refers to it
(`secret_refs`). Validation and encodings are shared with the PostgreSQL store
(fabric.catalog.serialization); the semantics are the MetadataStore contract's
(fabric.catalog.store).

Catalog versions come from one store-wide counter that only ever goes up. A connection's
version therefore increases on every selection change, and a connection deleted and
created again under the same name starts above every version the old one ever had, so a
cache keyed by (tenant, connection, version) can never serve the old connection's data.

Concurrency: every write is one `BEGIN IMMEDIATE` transaction, so writers (threads, or
processes and other store instances on the same file) are serialized by SQLite; the
version checks are compare-and-set updates (`... WHERE version = ?`) all the same. One
SQLite connection (`check_same_thread=False`) per store, guarded by a lock; files are
created with mode 0600, in WAL mode, with foreign keys enforced. The schema is versioned by
`schema_migrations` and migrated forward, in one transaction, when the store is opened.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from types import MappingProxyType, TracebackType
from typing import Any, Final

from fabric.catalog import audit
from fabric.catalog.audit import SYSTEM_ACTOR, AuditEvent
from fabric.catalog.serialization import (
    CONNECTION_NAME_RE,
    IDENTIFIER_RE,
    SECRET_SETTING_KEYS,
    EntityDocument,
    Migration,
    arrow_type_from_text,
    arrow_type_to_text,
    audit_details_document,
    catalog_changed,
    check_actor,
    check_audit_limit,
    check_connection_name,
    check_expected_version,
    check_kind,
    check_migrations,
    check_stage_name,
    check_tenant,
    check_utc,
    connection_changed,
    connection_from_documents,
    connection_not_found,
    dumps,
    entity_from_documents,
    missing_entities,
    plain_stages,
    schema_too_new,
    secret_refs_document,
    selection_documents,
    stages_document,
    unselect_keys,
    utc_now,
)
from fabric.errors import AlreadyExists, FailedPrecondition, InvalidArgument
from fabric.model import (
    CatalogSnapshot,
    Connection,
    ConnectionKind,
    Entity,
    SettingValue,
)

__all__ = [
    "CONNECTION_NAME_RE",
    "IDENTIFIER_RE",
    "MEMORY",
    "MIGRATIONS",
    "SECRET_SETTING_KEYS",
    "Migration",
    "SqliteMetadataStore",
    "apply_migrations",
    "arrow_type_from_text",
    "arrow_type_to_text",
]

MEMORY: Final = ":memory:"
_CATALOG_SEQUENCE: Final = "catalog_version"


MIGRATIONS: Final[tuple[Migration, ...]] = (
    Migration(
        version=1,
        description="connections, entities, catalog versions",
        statements=(
            """
            CREATE TABLE sequences (
                name  TEXT PRIMARY KEY,
                value INTEGER NOT NULL
            )
            """,
            f"INSERT INTO sequences (name, value) VALUES ('{_CATALOG_SEQUENCE}', 0)",
            """
            CREATE TABLE connections (
                id          INTEGER PRIMARY KEY AUTOINCREMENT,
                tenant      TEXT    NOT NULL,
                name        TEXT    NOT NULL,
                kind        TEXT    NOT NULL,
                stages      TEXT    NOT NULL,  -- JSON: stage -> {setting: scalar}
                secret_refs TEXT    NOT NULL,  -- JSON: stage -> secret store reference
                version     INTEGER NOT NULL,
                created_at  TEXT    NOT NULL,
                updated_at  TEXT    NOT NULL,
                UNIQUE (tenant, name)
            )
            """,
            """
            CREATE TABLE catalog_versions (
                connection_id INTEGER PRIMARY KEY
                              REFERENCES connections (id) ON DELETE CASCADE,
                version       INTEGER NOT NULL,
                updated_at    TEXT    NOT NULL
            )
            """,
            """
            CREATE TABLE entities (
                id            INTEGER PRIMARY KEY AUTOINCREMENT,
                connection_id INTEGER NOT NULL
                              REFERENCES connections (id) ON DELETE CASCADE,
                name_key      TEXT    NOT NULL,  -- lower-cased name, for uniqueness
                name          TEXT    NOT NULL,  -- as the user spelled it
                schema_name   TEXT    NOT NULL,
                table_name    TEXT    NOT NULL,
                columns       TEXT    NOT NULL,  -- JSON, Arrow types as IPC schemas
                primary_key   TEXT    NOT NULL,  -- JSON list of column names
                foreign_keys  TEXT    NOT NULL,  -- JSON list of objects
                created_at    TEXT    NOT NULL,
                updated_at    TEXT    NOT NULL,
                UNIQUE (connection_id, name_key)
            )
            """,
        ),
    ),
    Migration(
        version=2,
        description="audit events",
        statements=(
            # No foreign key to connections: the events of a deleted connection are history.
            """
            CREATE TABLE audit_events (
                id         INTEGER PRIMARY KEY AUTOINCREMENT,
                at         TEXT    NOT NULL,  -- ISO 8601 in UTC, microseconds
                tenant     TEXT    NOT NULL,
                actor      TEXT    NOT NULL,
                action     TEXT    NOT NULL,
                connection TEXT,
                stage      TEXT,
                details    TEXT    NOT NULL   -- JSON: {name: scalar}, never a secret
            )
            """,
            "CREATE INDEX audit_events_by_tenant ON audit_events (tenant, at, id)",
            "CREATE INDEX audit_events_by_connection ON audit_events (tenant, connection, at, id)",
        ),
    ),
    Migration(
        version=3,
        description="per-stage physical tables of entities",
        statements=(
            # JSON: stage -> [schema, table]; '{}' when every stage uses schema_name.table_name.
            "ALTER TABLE entities ADD COLUMN stage_tables TEXT NOT NULL DEFAULT '{}'",
        ),
    ),
)
"""Every schema version, oldest first. Append; never edit a released migration."""


def apply_migrations(db: sqlite3.Connection, migrations: Sequence[Migration]) -> int:
    """Bring `db` (opened with `isolation_level=None`) up to the last of `migrations`.

    The pending migrations run in order inside one `BEGIN IMMEDIATE` transaction (which
    also keeps two processes opening the file at once from both migrating): either all of
    them apply or none does. Applying twice is a no-op. Returns the schema version reached.
    Raises FailedPrecondition when the file was written by a newer release.
    """
    latest = check_migrations(migrations)
    db.execute("BEGIN IMMEDIATE")
    try:
        db.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            " version INTEGER PRIMARY KEY, description TEXT NOT NULL, applied_at TEXT NOT NULL)"
        )
        row = db.execute("SELECT COALESCE(MAX(version), 0) FROM schema_migrations").fetchone()
        current = int(row[0])
        if current > latest:
            raise schema_too_new(current, latest)
        for migration in migrations:
            if migration.version <= current:
                continue
            for statement in migration.statements:
                db.execute(statement)
            db.execute(
                "INSERT INTO schema_migrations (version, description, applied_at) VALUES (?, ?, ?)",
                (migration.version, migration.description, _text(utc_now())),
            )
            current = migration.version
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        raise
    return current


class SqliteMetadataStore:
    """MetadataStore on a SQLite file (or `:memory:`); see the module docstring.

    `clock` gives the wall-clock time written to audit events and timestamps (UTC).
    """

    def __init__(self, path: str | Path, *, clock: Callable[[], datetime] = utc_now) -> None:
        self._path = str(path)
        self._clock = clock
        if self._path != MEMORY:
            _prepare_file(Path(self._path))
        self._lock = threading.RLock()
        db = sqlite3.connect(self._path, check_same_thread=False, isolation_level=None)
        try:
            db.execute("PRAGMA foreign_keys = ON")
            db.execute("PRAGMA busy_timeout = 10000")
            if self._path != MEMORY:
                db.execute("PRAGMA journal_mode = WAL")
                db.execute("PRAGMA synchronous = NORMAL")
            apply_migrations(db, MIGRATIONS)
        except BaseException:
            db.close()
            raise
        self._db: sqlite3.Connection | None = db

    @property
    def path(self) -> str:
        """The file the store lives in, or `:memory:`."""
        return self._path

    # -- connections ---------------------------------------------------------------------

    def create_connection(
        self,
        tenant: str,
        name: str,
        kind: ConnectionKind,
        stages: Mapping[str, Mapping[str, SettingValue]],
        secret_refs: Mapping[str, str] | None = None,
        *,
        actor: str = SYSTEM_ACTOR,
    ) -> Connection:
        """Register a connection; AlreadyExists when the tenant has one of that name.

        InvalidArgument when the name, kind, stages or secret references are malformed,
        or when a setting's key names a secret (those go to the secret store).
        """
        check_tenant(tenant)
        check_connection_name(name)
        kind = check_kind(kind)
        stages_doc = stages_document(stages)
        refs_doc = secret_refs_document(secret_refs or {})
        check_actor(actor)
        at = self._now()
        now = _text(at)
        with self._transaction() as db:
            exists = db.execute(
                "SELECT 1 FROM connections WHERE tenant = ? AND name = ?", (tenant, name)
            ).fetchone()
            if exists is not None:
                raise AlreadyExists(
                    f"connection {name!r} already exists in tenant {tenant!r}; "
                    "delete it first or choose another name"
                )
            cursor = db.execute(
                "INSERT INTO connections"
                " (tenant, name, kind, stages, secret_refs, version, created_at, updated_at)"
                " VALUES (?, ?, ?, ?, ?, 1, ?, ?)",
                (tenant, name, kind.value, dumps(stages_doc), dumps(refs_doc), now, now),
            )
            connection_id = cursor.lastrowid
            catalog_version = self._next_version(db)
            db.execute(
                "INSERT INTO catalog_versions (connection_id, version, updated_at)"
                " VALUES (?, ?, ?)",
                (connection_id, catalog_version, now),
            )
            created = connection_from_documents(tenant, name, kind.value, stages_doc, refs_doc, 1)
            self._audit(db, audit.connection_created(at, actor, created, catalog_version))
        return created

    def get_connection(self, tenant: str, name: str) -> Connection:
        """NotFound when the tenant has no connection of that name."""
        with self._locked() as db:
            row = db.execute(
                f"SELECT {_CONNECTION_COLUMNS} FROM connections WHERE tenant = ? AND name = ?",
                (tenant, name),
            ).fetchone()
        if row is None:
            raise connection_not_found(tenant, name)
        return _connection_from_row(row)

    def list_connections(self, tenant: str) -> list[Connection]:
        """The tenant's connections, by name."""
        with self._locked() as db:
            rows = db.execute(
                f"SELECT {_CONNECTION_COLUMNS} FROM connections WHERE tenant = ? ORDER BY name",
                (tenant,),
            ).fetchall()
        return [_connection_from_row(row) for row in rows]

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
        """Compare-and-set update of the stages and/or secret references; see
        MetadataStore.update_connection. The catalog version moves on too: settings may now
        point at another database, so nothing cached under the old version may be served.
        """
        if stages is None and secret_refs is None:
            raise InvalidArgument("nothing to update: give stages, secret_refs or both")
        check_expected_version(expected_version, "expected_version")
        if expected_version is None:
            raise InvalidArgument("expected_version is required: pass the version you read")
        stages_doc = None if stages is None else stages_document(stages)
        refs_doc = None if secret_refs is None else secret_refs_document(secret_refs)
        check_actor(actor)
        at = self._now()
        now = _text(at)
        with self._transaction() as db:
            row = db.execute(
                f"SELECT id, {_CONNECTION_COLUMNS} FROM connections WHERE tenant = ? AND name = ?",
                (tenant, name),
            ).fetchone()
            if row is None:
                raise connection_not_found(tenant, name)
            connection_id, old = int(row[0]), _connection_from_row(row[1:])
            if old.version != expected_version:
                raise connection_changed(name, expected_version, old.version)
            new_stages = stages_doc if stages_doc is not None else old.stages
            new_refs = refs_doc if refs_doc is not None else old.secret_refs
            cursor = db.execute(
                "UPDATE connections SET stages = ?, secret_refs = ?, version = version + 1,"
                " updated_at = ? WHERE id = ? AND version = ?",
                (
                    dumps(plain_stages(new_stages)),
                    dumps(dict(new_refs)),
                    now,
                    connection_id,
                    expected_version,
                ),
            )
            if cursor.rowcount != 1:  # cannot happen under BEGIN IMMEDIATE; never lose one
                raise connection_changed(name, expected_version, expected_version + 1)
            catalog_version = self._bump_version(db, connection_id, now)
            updated = connection_from_documents(
                tenant, name, old.kind.value, new_stages, new_refs, expected_version + 1
            )
            self._audit(db, audit.connection_updated(at, actor, old, updated, catalog_version))
        return updated

    def delete_connection(
        self,
        tenant: str,
        name: str,
        *,
        expected_version: int | None = None,
        actor: str = SYSTEM_ACTOR,
    ) -> None:
        """Deletes the connection and its selected entities (its audit events stay);
        NotFound if absent; FailedPrecondition when not at `expected_version` (if given)."""
        check_expected_version(expected_version, "expected_version")
        check_actor(actor)
        at = self._now()
        with self._transaction() as db:
            row = db.execute(
                "SELECT c.id, c.version, (SELECT COUNT(*) FROM entities e"
                " WHERE e.connection_id = c.id) FROM connections c"
                " WHERE c.tenant = ? AND c.name = ?",
                (tenant, name),
            ).fetchone()
            if row is None:
                raise connection_not_found(tenant, name)
            connection_id, version, entity_count = (int(value) for value in row)
            if expected_version is not None and version != expected_version:
                raise connection_changed(name, expected_version, version)
            db.execute("DELETE FROM connections WHERE id = ?", (connection_id,))
            self._audit(
                db, audit.connection_deleted(at, actor, tenant, name, version, entity_count)
            )

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
        """Add or replace the given entities (by entity name, case-insensitively) in the
        selection, all or none; returns the new catalog version.

        InvalidArgument for an empty list, a name that is not a plain SQL identifier, two
        entities whose names differ only in case, or an entity that is not consistent
        (no columns, duplicate columns, key columns that are not among its columns).
        FailedPrecondition when the catalog is not at `expected_catalog_version`.
        """
        documents = selection_documents(entities, allow_empty=False)
        self._check_change(expected_catalog_version, actor, stage)
        at = self._now()
        with self._transaction() as db:
            connection_id = self._catalog_for_change(
                db, tenant, connection, expected_catalog_version
            )
            return self._store_selection(
                db,
                connection_id,
                documents,
                at,
                actor=actor,
                action=audit.CATALOG_SELECT,
                tenant=tenant,
                connection=connection,
                stage=stage,
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
        """Remove entities (names compared ignoring case) from the selection, all or none;
        returns the new catalog version. NotFound names the entities that are not
        selected, and then nothing is removed."""
        names, keys = unselect_keys(names)
        self._check_change(expected_catalog_version, actor, stage)
        at = self._now()
        with self._transaction() as db:
            connection_id = self._catalog_for_change(
                db, tenant, connection, expected_catalog_version
            )
            selected = {
                row[0]
                for row in db.execute(
                    "SELECT name_key FROM entities WHERE connection_id = ?", (connection_id,)
                )
            }
            missing = [name for name in names if name.lower() not in selected]
            if missing:
                raise missing_entities(connection, missing)
            db.executemany(
                "DELETE FROM entities WHERE connection_id = ? AND name_key = ?",
                [(connection_id, key) for key in keys],
            )
            version = self._bump_version(db, connection_id, _text(at))
            self._audit(
                db,
                audit.catalog_changed(
                    at, actor, audit.CATALOG_UNSELECT, tenant, connection, stage, names, version
                ),
            )
            return version

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
        catalog version. Same checks as `select_entities`, an empty list aside."""
        documents = selection_documents(entities, allow_empty=True)
        self._check_change(expected_catalog_version, actor, stage)
        at = self._now()
        with self._transaction() as db:
            connection_id = self._catalog_for_change(
                db, tenant, connection, expected_catalog_version
            )
            db.execute("DELETE FROM entities WHERE connection_id = ?", (connection_id,))
            return self._store_selection(
                db,
                connection_id,
                documents,
                at,
                actor=actor,
                action=audit.CATALOG_REPLACE,
                tenant=tenant,
                connection=connection,
                stage=stage,
            )

    def bump_catalog_version(
        self,
        tenant: str,
        connection: str,
        *,
        actor: str = SYSTEM_ACTOR,
        stage: str | None = None,
    ) -> int:
        """Move the catalog version on (the remote schema changed); returns it."""
        self._check_change(None, actor, stage)
        at = self._now()
        with self._transaction() as db:
            connection_id = self._catalog_for_change(db, tenant, connection, None)
            version = self._bump_version(db, connection_id, _text(at))
            self._audit(
                db,
                audit.catalog_changed(
                    at, actor, audit.CATALOG_BUMP, tenant, connection, stage, (), version
                ),
            )
            return version

    def catalog(self, tenant: str, connection: str) -> CatalogSnapshot:
        """The selected entities (keyed by lower-cased name, in name order) and the catalog
        version, read together; NotFound if no such connection."""
        with self._locked() as db:
            row = db.execute(
                "SELECT c.id, v.version FROM connections c"
                " JOIN catalog_versions v ON v.connection_id = c.id"
                " WHERE c.tenant = ? AND c.name = ?",
                (tenant, connection),
            ).fetchone()
            if row is None:
                raise connection_not_found(tenant, connection)
            connection_id, version = int(row[0]), int(row[1])
            entity_rows = db.execute(
                "SELECT name_key, name, schema_name, table_name, columns, primary_key,"
                " foreign_keys, stage_tables FROM entities WHERE connection_id = ?"
                " ORDER BY name_key",
                (connection_id,),
            ).fetchall()
        entities = {row[0]: _entity_from_row(row[1:]) for row in entity_rows}
        return CatalogSnapshot(
            tenant=tenant,
            connection=connection,
            version=version,
            entities=MappingProxyType(entities),
        )

    def catalog_version(self, tenant: str, connection: str) -> int:
        """Cheap read of the current catalog version; NotFound if no such connection."""
        with self._locked() as db:
            row = db.execute(
                "SELECT v.version FROM connections c"
                " JOIN catalog_versions v ON v.connection_id = c.id"
                " WHERE c.tenant = ? AND c.name = ?",
                (tenant, connection),
            ).fetchone()
        if row is None:
            raise connection_not_found(tenant, connection)
        return int(row[0])

    def known_catalog_version(self, tenant: str, connection: str) -> int:
        """Always known: the store is a local file, read in microseconds (WAL readers
        never wait for a writer)."""
        return self.catalog_version(tenant, connection)

    # -- audit ---------------------------------------------------------------------------

    def record_audit(self, event: AuditEvent) -> None:
        """Record an administrative action; InvalidArgument for a secret-looking detail."""
        if not isinstance(event, AuditEvent):
            raise InvalidArgument(f"expected an AuditEvent, not {type(event).__name__}")
        with self._transaction() as db:
            self._audit(db, event)

    def list_audit(
        self, tenant: str, *, connection: str | None = None, limit: int = 100
    ) -> list[AuditEvent]:
        """The tenant's audit events, newest first, optionally about one connection."""
        check_audit_limit(limit)
        query = f"SELECT {_AUDIT_COLUMNS} FROM audit_events WHERE tenant = ?"
        params: list[Any] = [tenant]
        if connection is not None:
            query += " AND connection = ?"
            params.append(connection)
        query += " ORDER BY at DESC, id DESC LIMIT ?"
        params.append(limit)
        with self._locked() as db:
            rows = db.execute(query, params).fetchall()
        return [_audit_from_row(row) for row in rows]

    # -- lifecycle -----------------------------------------------------------------------

    def schema_version(self) -> int:
        """The schema version of the open file (the last applied migration)."""
        with self._locked() as db:
            row = db.execute("SELECT MAX(version) FROM schema_migrations").fetchone()
        return int(row[0])

    def close(self) -> None:
        """Close the file; idempotent. Any later call raises FailedPrecondition."""
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None

    def __enter__(self) -> SqliteMetadataStore:
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

    @contextmanager
    def _locked(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            if self._db is None:
                raise FailedPrecondition("the metadata store is closed")
            yield self._db

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._locked() as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")

    @staticmethod
    def _check_change(expected: int | None, actor: str, stage: str | None) -> None:
        check_expected_version(expected, "expected_catalog_version")
        check_actor(actor)
        check_stage_name(stage)

    @staticmethod
    def _catalog_for_change(
        db: sqlite3.Connection, tenant: str, name: str, expected: int | None
    ) -> int:
        """The connection's id, after checking its catalog is at `expected` (if given)."""
        row = db.execute(
            "SELECT c.id, v.version FROM connections c"
            " JOIN catalog_versions v ON v.connection_id = c.id"
            " WHERE c.tenant = ? AND c.name = ?",
            (tenant, name),
        ).fetchone()
        if row is None:
            raise connection_not_found(tenant, name)
        if expected is not None and int(row[1]) != expected:
            raise catalog_changed(name, expected, int(row[1]))
        return int(row[0])

    def _store_selection(
        self,
        db: sqlite3.Connection,
        connection_id: int,
        documents: Sequence[EntityDocument],
        at: datetime,
        *,
        actor: str,
        action: str,
        tenant: str,
        connection: str,
        stage: str | None,
    ) -> int:
        """Write the entities, move the catalog version and audit the change, all in the
        caller's transaction; returns the new version."""
        self._upsert(db, connection_id, documents, _text(at))
        version = self._bump_version(db, connection_id, _text(at))
        self._audit(
            db,
            audit.catalog_changed(
                at, actor, action, tenant, connection, stage, [d.name for d in documents], version
            ),
        )
        return version

    @staticmethod
    def _upsert(
        db: sqlite3.Connection, connection_id: int, documents: Sequence[EntityDocument], now: str
    ) -> None:
        db.executemany(
            "INSERT INTO entities (connection_id, name_key, name, schema_name, table_name,"
            " columns, primary_key, foreign_keys, stage_tables, created_at, updated_at)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
            " ON CONFLICT (connection_id, name_key) DO UPDATE SET"
            " name = excluded.name, schema_name = excluded.schema_name,"
            " table_name = excluded.table_name, columns = excluded.columns,"
            " primary_key = excluded.primary_key, foreign_keys = excluded.foreign_keys,"
            " stage_tables = excluded.stage_tables, updated_at = excluded.updated_at",
            [
                (
                    connection_id,
                    d.name_key,
                    d.name,
                    d.schema,
                    d.table,
                    dumps(d.columns),
                    dumps(d.primary_key),
                    dumps(d.foreign_keys),
                    dumps(d.stage_tables),
                    now,
                    now,
                )
                for d in documents
            ],
        )

    @staticmethod
    def _next_version(db: sqlite3.Connection) -> int:
        db.execute("UPDATE sequences SET value = value + 1 WHERE name = ?", (_CATALOG_SEQUENCE,))
        row = db.execute(
            "SELECT value FROM sequences WHERE name = ?", (_CATALOG_SEQUENCE,)
        ).fetchone()
        return int(row[0])

    def _bump_version(self, db: sqlite3.Connection, connection_id: int, now: str) -> int:
        version = self._next_version(db)
        db.execute(
            "UPDATE catalog_versions SET version = ?, updated_at = ? WHERE connection_id = ?",
            (version, now, connection_id),
        )
        db.execute("UPDATE connections SET updated_at = ? WHERE id = ?", (now, connection_id))
        return version

    @staticmethod
    def _audit(db: sqlite3.Connection, event: AuditEvent) -> None:
        # The details are checked again here: the event may have been tampered with after
        # it was built, and the store is the last line before the file.
        details = audit_details_document(event.details)
        db.execute(
            "INSERT INTO audit_events (at, tenant, actor, action, connection, stage, details)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            (
                _text(check_utc(event.at)),
                event.tenant,
                event.actor,
                event.action,
                event.connection,
                event.stage,
                dumps(details),
            ),
        )


# -- files -------------------------------------------------------------------------------


def _prepare_file(path: Path) -> None:
    """Create the parent directories (0700) and the file (0600) before SQLite opens it;
    SQLite gives its WAL and shared-memory files the database file's permissions."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    os.close(fd)
    os.chmod(path, 0o600)


def _text(at: datetime) -> str:
    """A UTC time as sortable ISO 8601 text (fixed width: microseconds, +00:00)."""
    return at.isoformat(timespec="microseconds")


# -- rows --------------------------------------------------------------------------------

_CONNECTION_COLUMNS: Final = "tenant, name, kind, stages, secret_refs, version"
_AUDIT_COLUMNS: Final = "at, tenant, actor, action, connection, stage, details"


def _connection_from_row(row: Sequence[Any]) -> Connection:
    tenant, name, kind, stages_json, refs_json, version = row
    return connection_from_documents(
        tenant, name, kind, json.loads(stages_json), json.loads(refs_json), int(version)
    )


def _entity_from_row(row: Sequence[Any]) -> Entity:
    name, schema, table, columns, primary_key, foreign_keys, stage_tables = row
    return entity_from_documents(
        name,
        schema,
        table,
        json.loads(columns),
        json.loads(primary_key),
        json.loads(foreign_keys),
        json.loads(stage_tables),
    )


def _audit_from_row(row: Sequence[Any]) -> AuditEvent:
    at, tenant, actor, action, connection, stage, details = row
    return AuditEvent(
        at=datetime.fromisoformat(at),
        tenant=tenant,
        actor=actor,
        action=action,
        connection=connection,
        stage=stage,
        details=json.loads(details),
    )
