"""The embedded metadata store: one SQLite file, metadata only.

What it keeps: connections (kind, per-stage non-secret settings, secret store references),
the entities selected for apps (physical schema and table, columns with their exact Arrow
types, primary and foreign keys) and one catalog version per connection.

What it never keeps: a secret, a row or a parameter value. Settings whose key names a
secret (`password`, `token`, ...) are refused; the secret belongs in the secret store and
the connection only refers to it (`secret_refs`).

Catalog versions come from one store-wide counter that only ever goes up. A connection's
version therefore increases on every selection change, and a connection deleted and
created again under the same name starts above every version the old one ever had, so a
cache keyed by (tenant, connection, version) can never serve the old connection's data.

Thread safety: one SQLite connection (`check_same_thread=False`) guarded by a lock; the
gateway calls the store from worker threads. Files are created with mode 0600, in WAL
mode, with foreign keys enforced. The schema is versioned by `schema_migrations` and
migrated forward, in one transaction, when the store is opened.
"""

from __future__ import annotations

import base64
import json
import math
import os
import re
import sqlite3
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import MappingProxyType, TracebackType
from typing import Any, Final

import pyarrow as pa

from fabric.catalog.model import (
    CatalogSnapshot,
    ColumnInfo,
    Connection,
    ConnectionKind,
    Entity,
    ForeignKey,
    SettingValue,
)
from fabric.errors import (
    AlreadyExists,
    FailedPrecondition,
    InternalError,
    InvalidArgument,
    NotFound,
)

MEMORY: Final = ":memory:"

SECRET_SETTING_KEYS: Final = frozenset(
    {"password", "passwd", "pwd", "secret", "token", "api_key", "private_key"}
)
"""Setting keys (compared case-insensitively) that name a secret and are refused."""

IDENTIFIER_RE: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
"""What an entity name must look like: a plain, unquoted SQL identifier."""

CONNECTION_NAME_RE: Final = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
"""What a connection name must look like."""

_MAX_NAME_LENGTH: Final = 128
_CATALOG_SEQUENCE: Final = "catalog_version"


@dataclass(frozen=True, slots=True)
class Migration:
    """One forward step of the schema; `statements` run in order, in one transaction."""

    version: int
    description: str
    statements: tuple[str, ...]


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
)
"""Every schema version, oldest first. Append; never edit a released migration."""


def apply_migrations(db: sqlite3.Connection, migrations: Sequence[Migration]) -> int:
    """Bring `db` (opened with `isolation_level=None`) up to the last of `migrations`.

    The pending migrations run in order inside one transaction: either all of them apply
    or none does. Applying twice is a no-op. Returns the schema version reached. Raises
    FailedPrecondition when the file was written by a newer release (unknown version).
    """
    versions = [migration.version for migration in migrations]
    if versions != sorted(set(versions)):
        raise InternalError("migrations must have unique, increasing versions")
    db.execute("BEGIN IMMEDIATE")
    try:
        db.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            " version INTEGER PRIMARY KEY, description TEXT NOT NULL, applied_at TEXT NOT NULL)"
        )
        row = db.execute("SELECT COALESCE(MAX(version), 0) FROM schema_migrations").fetchone()
        current = int(row[0])
        latest = versions[-1] if versions else 0
        if current > latest:
            raise FailedPrecondition(
                f"the metadata store has schema version {current}, newer than this release "
                f"knows ({latest}); upgrade Fabric or use another metadata store file"
            )
        for migration in migrations:
            if migration.version <= current:
                continue
            for statement in migration.statements:
                db.execute(statement)
            db.execute(
                "INSERT INTO schema_migrations (version, description, applied_at) VALUES (?, ?, ?)",
                (migration.version, migration.description, _now()),
            )
            current = migration.version
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        raise
    return current


class SqliteMetadataStore:
    """MetadataStore on a SQLite file (or `:memory:`); see the module docstring."""

    def __init__(self, path: str | Path) -> None:
        self._path = str(path)
        if self._path != MEMORY:
            _prepare_file(Path(self._path))
        self._lock = threading.RLock()
        db = sqlite3.connect(self._path, check_same_thread=False, isolation_level=None)
        try:
            db.execute("PRAGMA foreign_keys = ON")
            db.execute("PRAGMA busy_timeout = 5000")
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
    ) -> Connection:
        """Register a connection; AlreadyExists when the tenant has one of that name.

        InvalidArgument when the name, kind, stages or secret references are malformed,
        or when a setting's key names a secret (those go to the secret store).
        """
        _check_tenant(tenant)
        _check_connection_name(name)
        kind = _check_kind(kind)
        stages_json = _stages_json(stages)
        refs_json = _secret_refs_json(secret_refs or {})
        now = _now()
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
                (tenant, name, kind.value, stages_json, refs_json, now, now),
            )
            connection_id = cursor.lastrowid
            db.execute(
                "INSERT INTO catalog_versions (connection_id, version, updated_at)"
                " VALUES (?, ?, ?)",
                (connection_id, self._next_version(db), now),
            )
            row = db.execute(
                f"SELECT {_CONNECTION_COLUMNS} FROM connections WHERE id = ?", (connection_id,)
            ).fetchone()
        return _connection_from_row(row)

    def get_connection(self, tenant: str, name: str) -> Connection:
        """NotFound when the tenant has no connection of that name."""
        with self._locked() as db:
            row = db.execute(
                f"SELECT {_CONNECTION_COLUMNS} FROM connections WHERE tenant = ? AND name = ?",
                (tenant, name),
            ).fetchone()
        if row is None:
            raise _connection_not_found(tenant, name)
        return _connection_from_row(row)

    def list_connections(self, tenant: str) -> list[Connection]:
        """The tenant's connections, by name."""
        with self._locked() as db:
            rows = db.execute(
                f"SELECT {_CONNECTION_COLUMNS} FROM connections WHERE tenant = ? ORDER BY name",
                (tenant,),
            ).fetchall()
        return [_connection_from_row(row) for row in rows]

    def delete_connection(self, tenant: str, name: str) -> None:
        """Deletes the connection and its selected entities; NotFound if absent."""
        with self._transaction() as db:
            cursor = db.execute(
                "DELETE FROM connections WHERE tenant = ? AND name = ?", (tenant, name)
            )
            if cursor.rowcount == 0:
                raise _connection_not_found(tenant, name)

    # -- selection -----------------------------------------------------------------------

    def select_entities(self, tenant: str, connection: str, entities: Sequence[Entity]) -> int:
        """Add or replace the given entities (by entity name, case-insensitively) in the
        selection, all or none; returns the new catalog version.

        InvalidArgument for an empty list, a name that is not a plain SQL identifier, two
        entities whose names differ only in case, or an entity that is not consistent
        (no columns, duplicate columns, key columns that are not among its columns).
        """
        if not entities:
            raise InvalidArgument("select at least one entity")
        rows: list[tuple[str, str, str, str, str, str, str]] = []
        seen: dict[str, str] = {}
        for entity in entities:
            _check_entity(entity)
            key = entity.name.lower()
            if key in seen:
                raise InvalidArgument(
                    f"entity names {seen[key]!r} and {entity.name!r} collide: entity names "
                    "are unique per connection, ignoring case"
                )
            seen[key] = entity.name
            rows.append(
                (
                    key,
                    entity.name,
                    entity.schema,
                    entity.table,
                    _columns_json(entity.columns),
                    json.dumps(list(entity.primary_key)),
                    _foreign_keys_json(entity.foreign_keys),
                )
            )
        now = _now()
        with self._transaction() as db:
            connection_id = self._connection_id(db, tenant, connection)
            db.executemany(
                "INSERT INTO entities (connection_id, name_key, name, schema_name, table_name,"
                " columns, primary_key, foreign_keys, created_at, updated_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (connection_id, name_key) DO UPDATE SET"
                " name = excluded.name, schema_name = excluded.schema_name,"
                " table_name = excluded.table_name, columns = excluded.columns,"
                " primary_key = excluded.primary_key, foreign_keys = excluded.foreign_keys,"
                " updated_at = excluded.updated_at",
                [(connection_id, *row, now, now) for row in rows],
            )
            return self._bump_version(db, connection_id, now)

    def unselect_entities(self, tenant: str, connection: str, names: Sequence[str]) -> int:
        """Remove entities (names compared ignoring case) from the selection, all or none;
        returns the new catalog version. NotFound names the entities that are not
        selected, and then nothing is removed."""
        if isinstance(names, str):
            names = [names]
        if not names:
            raise InvalidArgument("name at least one entity to unselect")
        keys = list(dict.fromkeys(name.lower() for name in names))
        now = _now()
        with self._transaction() as db:
            connection_id = self._connection_id(db, tenant, connection)
            selected = {
                row[0]
                for row in db.execute(
                    "SELECT name_key FROM entities WHERE connection_id = ?", (connection_id,)
                )
            }
            missing = [name for name in names if name.lower() not in selected]
            if missing:
                raise NotFound(
                    f"connection {connection!r} has no selected entity named "
                    f"{', '.join(repr(name) for name in missing)}"
                )
            db.executemany(
                "DELETE FROM entities WHERE connection_id = ? AND name_key = ?",
                [(connection_id, key) for key in keys],
            )
            return self._bump_version(db, connection_id, now)

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
                raise _connection_not_found(tenant, connection)
            connection_id, version = int(row[0]), int(row[1])
            entity_rows = db.execute(
                "SELECT name_key, name, schema_name, table_name, columns, primary_key,"
                " foreign_keys FROM entities WHERE connection_id = ? ORDER BY name_key",
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
            raise _connection_not_found(tenant, connection)
        return int(row[0])

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
    def _connection_id(db: sqlite3.Connection, tenant: str, name: str) -> int:
        row = db.execute(
            "SELECT id FROM connections WHERE tenant = ? AND name = ?", (tenant, name)
        ).fetchone()
        if row is None:
            raise _connection_not_found(tenant, name)
        return int(row[0])

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


# -- files -------------------------------------------------------------------------------


def _prepare_file(path: Path) -> None:
    """Create the parent directories (0700) and the file (0600) before SQLite opens it;
    SQLite gives its WAL and shared-memory files the database file's permissions."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    os.close(fd)
    os.chmod(path, 0o600)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds")


# -- validation --------------------------------------------------------------------------


def _check_tenant(tenant: str) -> None:
    if not isinstance(tenant, str) or not tenant or len(tenant) > _MAX_NAME_LENGTH:
        raise InvalidArgument(f"tenant must be a non-empty string of at most {_MAX_NAME_LENGTH}")


def _check_connection_name(name: str) -> None:
    if not isinstance(name, str) or CONNECTION_NAME_RE.fullmatch(name) is None:
        raise InvalidArgument(
            f"connection name {name!r} is not valid: use 1 to {_MAX_NAME_LENGTH} letters, "
            "digits, '_', '.' or '-', not starting with '.' or '-'"
        )


def _check_kind(kind: ConnectionKind | str) -> ConnectionKind:
    try:
        return ConnectionKind(kind)
    except ValueError:
        known = ", ".join(k.value for k in ConnectionKind)
        raise InvalidArgument(f"unknown connection kind {kind!r}; use one of {known}") from None


def _stages_json(stages: Mapping[str, Mapping[str, SettingValue]]) -> str:
    if not isinstance(stages, Mapping) or not stages:
        raise InvalidArgument("a connection needs settings for at least one stage")
    plain: dict[str, dict[str, SettingValue]] = {}
    for stage, settings in stages.items():
        if not isinstance(stage, str) or not stage:
            raise InvalidArgument("stage names must be non-empty strings")
        if not isinstance(settings, Mapping):
            raise InvalidArgument(f"settings of stage {stage!r} must be a mapping")
        plain[stage] = {}
        for key, value in settings.items():
            if not isinstance(key, str) or not key:
                raise InvalidArgument(f"setting names of stage {stage!r} must be strings")
            if key.lower() in SECRET_SETTING_KEYS:
                raise InvalidArgument(
                    f"setting {key!r} of stage {stage!r} looks like a secret: put secrets in "
                    "the secret store and refer to them with a secret reference; the metadata "
                    "store never keeps a secret"
                )
            if not isinstance(value, str | int | float | bool) or (
                isinstance(value, float) and not math.isfinite(value)
            ):
                raise InvalidArgument(
                    f"setting {key!r} of stage {stage!r} must be a string, integer, finite "
                    f"number or boolean, not {type(value).__name__}"
                )
            plain[stage][key] = value
    return json.dumps(plain, sort_keys=True)


def _secret_refs_json(secret_refs: Mapping[str, str]) -> str:
    if not isinstance(secret_refs, Mapping):
        raise InvalidArgument("secret_refs must map a stage to a secret reference")
    for stage, ref in secret_refs.items():
        if not isinstance(stage, str) or not stage or not isinstance(ref, str) or not ref:
            raise InvalidArgument(
                "secret_refs must map non-empty stage names to non-empty secret references"
            )
    return json.dumps(dict(secret_refs), sort_keys=True)


def _check_entity(entity: Entity) -> None:
    if not isinstance(entity.name, str) or IDENTIFIER_RE.fullmatch(entity.name) is None:
        raise InvalidArgument(
            f"entity name {entity.name!r} is not a valid SQL identifier: use letters, digits "
            "and '_', not starting with a digit"
        )
    if len(entity.name) > _MAX_NAME_LENGTH:
        raise InvalidArgument(f"entity name {entity.name!r} is longer than {_MAX_NAME_LENGTH}")
    if not entity.schema or not entity.table:
        raise InvalidArgument(f"entity {entity.name!r} needs a schema and a table")
    if not entity.columns:
        raise InvalidArgument(f"entity {entity.name!r} needs at least one column")
    names = [column.name for column in entity.columns]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise InvalidArgument(f"entity {entity.name!r} repeats column(s) {duplicates}")
    known = set(names)
    missing = [name for name in entity.primary_key if name not in known]
    if missing:
        raise InvalidArgument(
            f"primary key column(s) {missing} of entity {entity.name!r} are not among its columns"
        )
    for fk in entity.foreign_keys:
        missing = [name for name in fk.columns if name not in known]
        if missing or not fk.columns or len(fk.columns) != len(fk.referenced_columns):
            raise InvalidArgument(
                f"foreign key {fk.name!r} of entity {entity.name!r} must use selected columns "
                "and reference as many columns as it has"
            )


def _connection_not_found(tenant: str, name: str) -> NotFound:
    return NotFound(f"connection {name!r} not found in tenant {tenant!r}")


# -- (de)serialization -------------------------------------------------------------------

_CONNECTION_COLUMNS: Final = "tenant, name, kind, stages, secret_refs, version"


def _connection_from_row(row: Sequence[Any]) -> Connection:
    tenant, name, kind, stages_json, refs_json, version = row
    stages = json.loads(stages_json)
    return Connection(
        tenant=tenant,
        name=name,
        kind=ConnectionKind(kind),
        stages=MappingProxyType(
            {stage: MappingProxyType(settings) for stage, settings in stages.items()}
        ),
        secret_refs=MappingProxyType(json.loads(refs_json)),
        version=int(version),
    )


def arrow_type_to_text(arrow_type: pa.DataType | None) -> str | None:
    """An Arrow type as text that `arrow_type_from_text` turns back into an equal type
    (the IPC schema encoding, base64): exact for decimals, time zones, units, nesting."""
    if arrow_type is None:
        return None
    schema = pa.schema([pa.field("t", arrow_type)])
    return base64.b64encode(schema.serialize().to_pybytes()).decode("ascii")


def arrow_type_from_text(text: str | None) -> pa.DataType | None:
    """The inverse of `arrow_type_to_text`."""
    if text is None:
        return None
    schema = pa.ipc.read_schema(pa.py_buffer(base64.b64decode(text)))
    arrow_type: pa.DataType = schema.field(0).type
    return arrow_type


def _columns_json(columns: Sequence[ColumnInfo]) -> str:
    return json.dumps(
        [
            {
                "name": column.name,
                "source_type": column.source_type,
                "nullable": column.nullable,
                # Readable form for people looking at the file; `arrow_ipc` is the truth.
                "arrow": None if column.arrow_type is None else str(column.arrow_type),
                "arrow_ipc": arrow_type_to_text(column.arrow_type),
            }
            for column in columns
        ]
    )


def _columns_from_json(text: str) -> tuple[ColumnInfo, ...]:
    return tuple(
        ColumnInfo(
            name=item["name"],
            source_type=item["source_type"],
            arrow_type=arrow_type_from_text(item["arrow_ipc"]),
            nullable=bool(item["nullable"]),
        )
        for item in json.loads(text)
    )


def _foreign_keys_json(foreign_keys: Sequence[ForeignKey]) -> str:
    return json.dumps(
        [
            {
                "name": fk.name,
                "columns": list(fk.columns),
                "referenced_schema": fk.referenced_schema,
                "referenced_table": fk.referenced_table,
                "referenced_columns": list(fk.referenced_columns),
            }
            for fk in foreign_keys
        ]
    )


def _foreign_keys_from_json(text: str) -> tuple[ForeignKey, ...]:
    return tuple(
        ForeignKey(
            name=item["name"],
            columns=tuple(item["columns"]),
            referenced_schema=item["referenced_schema"],
            referenced_table=item["referenced_table"],
            referenced_columns=tuple(item["referenced_columns"]),
        )
        for item in json.loads(text)
    )


def _entity_from_row(row: Sequence[Any]) -> Entity:
    name, schema, table, columns, primary_key, foreign_keys = row
    return Entity(
        name=name,
        schema=schema,
        table=table,
        columns=_columns_from_json(columns),
        primary_key=tuple(json.loads(primary_key)),
        foreign_keys=_foreign_keys_from_json(foreign_keys),
    )
