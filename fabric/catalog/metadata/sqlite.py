"""The embedded metadata store: one SQLite file (or `:memory:`), metadata only.

The queries and rules are the store's (fabric.catalog.metadata.store); this module
is what SQLite does its own way. Files are created with mode 0600, in WAL mode, with
foreign keys enforced. One SQLite connection (`check_same_thread=False`) per store, guarded
by a lock. Every write is one `BEGIN IMMEDIATE` transaction, so writers (threads, or
processes and other store instances on the same file) are serialized by SQLite: rows need
no locks of their own. Catalog versions come from the `sequences` table. The schema is
versioned by `schema_migrations` and migrated forward, in one transaction, when the store
is opened. Documents are compact JSON text and times sortable ISO 8601 text in UTC.

Deletion leaves nothing readable: `secure_delete` zeroes deleted content in the file, and
after a connection is deleted the write-ahead log, which still holds the pages as they
were before, is checkpointed and truncated (`erase_deleted`).
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any, ClassVar, Final, LiteralString

from fabric.catalog.metadata.driver import Migration, SqlDialect, SqlDriver, SqlSession, migrate
from fabric.catalog.metadata.store import MetadataStore
from fabric.catalog.serialization import utc_now
from fabric.errors import FailedPrecondition, InternalError

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
    Migration(
        version=4,
        description="unselected column names of entities",
        statements=(
            # JSON list of names; NULL (rows written before) means not known.
            "ALTER TABLE entities ADD COLUMN hidden_columns TEXT",
        ),
    ),
    Migration(
        version=5,
        description="per-stage-configuration physical tables of entities",
        statements=(
            # JSON list of {configuration ('*' or a stage), schema, table, columns,
            # primary_key, foreign_keys, exists}; '[]' when nothing was recorded.
            "ALTER TABLE entities ADD COLUMN stage_physical TEXT NOT NULL DEFAULT '[]'",
        ),
    ),
)
"""Every schema version, oldest first. Append; never edit a released migration."""


class SqliteDialect(SqlDialect):
    """The store's SQL as SQLite takes it; documents as JSON text, times as ISO 8601 text."""

    def render(self, template: LiteralString) -> str:
        # `main` is the schema of the file's own tables; BEGIN IMMEDIATE already keeps
        # other writers out, so rows are not locked.
        return template.format(
            s="main", row_lock="", delete_lock="", bytewise="COLLATE BINARY", time="TEXT"
        )

    def encode_document(self, document: Any, *, exact: bool = False) -> str:
        # Compact, keys sorted: the same document is always the same text.
        return json.dumps(document, sort_keys=True, separators=(",", ":"))

    def decode_document(self, value: Any) -> Any:
        return json.loads(value)

    def encode_time(self, at: datetime) -> str:
        # Fixed width (microseconds, +00:00), so text order is time order.
        return at.isoformat(timespec="microseconds")

    def decode_time(self, value: Any) -> datetime:
        return datetime.fromisoformat(value)

    def next_catalog_version(self, session: SqlSession) -> int:
        row = session.one(
            "UPDATE {s}.sequences SET value = value + 1 WHERE name = ? RETURNING value",
            [_CATALOG_SEQUENCE],
        )
        if row is None:  # the first migration inserts it
            raise InternalError("the catalog version sequence has no row")
        return int(row[0])


class SqliteDriver(SqlDriver):
    """One SQLite connection to `path`, opened and migrated by the constructor."""

    reads_are_local: ClassVar[bool] = True

    def __init__(self, path: str | Path) -> None:
        if sqlite3.sqlite_version_info < (3, 35):  # RETURNING
            raise FailedPrecondition(
                f"the metadata store needs SQLite 3.35 or later, not {sqlite3.sqlite_version}"
            )
        self.path = str(path)
        self.dialect = SqliteDialect()
        if self.path != MEMORY:
            _prepare_file(Path(self.path))
        self._lock = threading.RLock()
        db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        try:
            db.execute("PRAGMA foreign_keys = ON")
            db.execute("PRAGMA busy_timeout = 10000")
            # Deleted content is overwritten with zeros, not left in free pages.
            db.execute("PRAGMA secure_delete = ON")
            if self.path != MEMORY:
                db.execute("PRAGMA journal_mode = WAL")
                db.execute("PRAGMA synchronous = NORMAL")
            apply_migrations(db, MIGRATIONS)
        except BaseException:
            db.close()
            raise
        self._db: sqlite3.Connection | None = db

    @contextmanager
    def reading(self) -> Iterator[SqlSession]:
        with self._lock:
            if self._db is None:
                raise FailedPrecondition("the metadata store is closed")
            yield SqlSession(self._db, self.dialect)

    @contextmanager
    def writing(self) -> Iterator[SqlSession]:
        with self.reading() as session, _immediate_transaction(session):
            yield session

    def erase_deleted(self) -> None:
        """Copy every page back from the write-ahead log (where the deleted rows' earlier
        versions still are) and truncate it to nothing; with `secure_delete` on, the rows
        are then zeros in the file too. Waits (busy_timeout) for readers of older
        snapshots, which keep the log's frames alive while they read."""
        with self._lock:
            if self._db is None or self.path == MEMORY:
                return
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)").close()

    def close(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None


class SqliteMetadataStore(MetadataStore):
    """The metadata store on a SQLite file (or `:memory:`); see the module docstring.

    `clock` gives the wall-clock time written to audit events and timestamps (UTC).
    """

    def __init__(self, path: str | Path, *, clock: Callable[[], datetime] = utc_now) -> None:
        driver = SqliteDriver(path)
        super().__init__(driver, clock=clock)
        self._path = driver.path

    @property
    def path(self) -> str:
        """The file the store lives in, or `:memory:`."""
        return self._path


def apply_migrations(db: sqlite3.Connection, migrations: Sequence[Migration]) -> int:
    """`migrate` `db` (opened with `isolation_level=None`) in one `BEGIN IMMEDIATE`
    transaction, which also keeps two processes opening the file at once from both
    migrating."""
    session = SqlSession(db, SqliteDialect())
    with _immediate_transaction(session):
        return migrate(session, migrations)


@contextmanager
def _immediate_transaction(session: SqlSession) -> Iterator[None]:
    session.run("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        session.run("ROLLBACK")
        raise
    session.run("COMMIT")


def _prepare_file(path: Path) -> None:
    """Create the parent directories (0700) and the file (0600) before SQLite opens it;
    SQLite gives its WAL and shared-memory files the database file's permissions."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    os.close(fd)
    os.chmod(path, 0o600)
