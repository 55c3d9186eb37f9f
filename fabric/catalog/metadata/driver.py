"""The seam between the SQL metadata store and a database: dialect, session, driver, migrations.

The store (fabric.catalog.metadata.store) writes every query and every rule once. What
differs between the databases it runs on sits behind three small pieces, one of each per
backend:

- a **dialect** spells the store's SQL for the database (placeholders, the schema of the
  tables, row locks, collation, column types) and converts documents and times to and from
  what its driver takes;
- a **session** is one open connection, running the store's statements through the dialect;
- a **driver** hands out sessions (for reads, and inside one write transaction), turns its
  database's errors into FabricErrors, and says how a changed catalog version is noticed
  (`held_versions`: versions kept in memory while every change is heard of).
"""

from __future__ import annotations

import functools
from abc import ABC, abstractmethod
from collections.abc import Sequence
from contextlib import AbstractContextManager, closing
from dataclasses import dataclass
from datetime import datetime
from typing import Any, ClassVar, Final, LiteralString, Protocol

from fabric.catalog.serialization import utc_now
from fabric.errors import FailedPrecondition, InternalError

Row = tuple[Any, ...]


class DbCursor(Protocol):
    def fetchone(self) -> Any: ...

    def fetchall(self) -> list[Any]: ...

    def executemany(self, query: Any, rows: Any, /) -> object: ...

    def close(self) -> None: ...


class DbConnection(Protocol):
    """What a session needs of a DB-API connection (sqlite3's and psycopg's both fit)."""

    def execute(self, query: Any, params: Any = ..., /) -> DbCursor: ...

    def cursor(self) -> DbCursor: ...


class SqlDialect(ABC):
    """How one database spells the store's SQL and takes its values.

    Templates use `?` for every parameter (and nowhere else) and these words, which
    `render` fills in:

    - `{s}`: the schema that holds the store's tables (`{s}.connections`);
    - `{row_lock}`, `{delete_lock}`: ends a SELECT of the connection row that the
      transaction goes on to update, or to delete; empty where a write transaction already
      keeps every other writer out;
    - `{bytewise}`: the collation that orders text by code point, the same on every backend;
    - `{time}`: the type of a time column.
    """

    def __init__(self) -> None:
        # `query(template)`: rendered once and kept; the store has a fixed set of templates.
        self.query = functools.cache(self.render)

    @abstractmethod
    def render(self, template: LiteralString) -> Any:
        """`template` as this database's driver takes it."""

    def render_migration(self, statement: str) -> Any:
        """A statement of one of this backend's own migrations, as its driver takes it
        (by default as written)."""
        return statement

    @abstractmethod
    def encode_document(self, document: Any, *, exact: bool = False) -> Any:
        """A JSON document as a parameter; `exact` keeps its text as written (numbers
        included) where the database would otherwise normalise it."""

    def decode_document(self, value: Any) -> Any:
        """A document column's value as Python objects (by default the driver's value)."""
        return value

    def encode_time(self, at: datetime) -> Any:
        """A UTC time as a parameter (by default the datetime itself)."""
        return at

    def decode_time(self, value: Any) -> datetime:
        """A time column's value as an aware datetime (by default the driver's value)."""
        assert isinstance(value, datetime)
        return value

    @abstractmethod
    def next_catalog_version(self, session: SqlSession) -> int:
        """Draw the next value of the store-wide catalog version counter, in the session's
        transaction; never a value drawn before, even by a transaction rolled back."""


class SqlSession:
    """One open connection as the store uses it: every statement goes through the dialect."""

    def __init__(self, connection: DbConnection, dialect: SqlDialect) -> None:
        self._connection = connection
        self.dialect = dialect

    # Cursors are closed at once: SQLite keeps a statement with rows left open until then.

    def one(self, template: LiteralString, params: Sequence[Any] = ()) -> Row | None:
        """The first row of the result, or None."""
        with closing(self._connection.execute(self.dialect.query(template), params)) as cursor:
            row: Row | None = cursor.fetchone()
            return row

    def all(self, template: LiteralString, params: Sequence[Any] = ()) -> list[Row]:
        with closing(self._connection.execute(self.dialect.query(template), params)) as cursor:
            return cursor.fetchall()

    def run(self, template: LiteralString, params: Sequence[Any] = ()) -> None:
        self._connection.execute(self.dialect.query(template), params).close()

    def run_many(self, template: LiteralString, rows: Sequence[Sequence[Any]]) -> None:
        """The statement once per row of parameters (nothing when there are none)."""
        if not rows:
            return
        with closing(self._connection.cursor()) as cursor:
            cursor.executemany(self.dialect.query(template), rows)

    def run_migration(self, statement: str) -> None:
        self._connection.execute(self.dialect.render_migration(statement)).close()


class HeldVersions(Protocol):
    """Catalog versions kept in memory, valid only while every change is heard of.

    A version read from the database is kept only if nothing changed between taking the
    generation (before the read) and keeping it.
    """

    def get(self, key: tuple[str, str]) -> int | None: ...

    def generation(self) -> int | None: ...

    def keep(self, key: tuple[str, str], version: int, generation: int | None) -> None: ...


class SqlDriver(ABC):
    """How the store obtains sessions of one database and notices changed catalog versions."""

    dialect: SqlDialect

    reads_are_local: ClassVar[bool] = False
    """True when a read costs no round trip to a server (a local file): the query path then
    reads catalog versions on its event loop instead of a worker thread."""

    @abstractmethod
    def reading(self) -> AbstractContextManager[SqlSession]:
        """A session for reads; each statement sees what was committed when it started.
        FailedPrecondition once the driver is closed."""

    @abstractmethod
    def writing(self) -> AbstractContextManager[SqlSession]:
        """A session inside one write transaction: committed when the block ends, rolled
        back when it raises."""

    def held_versions(self, *, start: bool) -> HeldVersions | None:
        """The catalog versions held in memory, if this driver hears of every change (and,
        with `start`, once it has begun to listen); None: read them from the database."""
        return None

    def erase_deleted(self) -> None:  # noqa: B027 - optional: most databases have nothing to do
        """After a committed delete: leave nothing of the deleted rows readable in the
        database's own files, where the database allows it (by default nothing to do)."""

    @abstractmethod
    def close(self) -> None:
        """Release the connections; idempotent."""


# -- migrations ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Migration:
    """One forward step of a store's schema; `statements` run in order, in one transaction
    together with every other pending step."""

    version: int
    description: str
    statements: tuple[str, ...]


SCHEMA_MIGRATIONS: Final = (
    "CREATE TABLE IF NOT EXISTS {s}.schema_migrations"
    " (version INTEGER PRIMARY KEY, description TEXT NOT NULL, applied_at {time} NOT NULL)"
)


def migrate(session: SqlSession, migrations: Sequence[Migration]) -> int:
    """Bring the store's schema up to the last of `migrations`, in the session's transaction.

    The caller's transaction also keeps other processes from migrating at the same time
    (SQLite: BEGIN IMMEDIATE; PostgreSQL: an advisory lock), so either all pending steps
    apply or none does, once. Applying twice is a no-op. Returns the schema version
    reached; FailedPrecondition when the schema was written by a newer release.
    """
    versions = [migration.version for migration in migrations]
    if versions != sorted(set(versions)) or any(v < 1 for v in versions):
        raise InternalError("migrations must have unique, increasing, positive versions")
    latest = versions[-1] if versions else 0
    session.run(SCHEMA_MIGRATIONS)
    row = session.one("SELECT COALESCE(MAX(version), 0) FROM {s}.schema_migrations")
    current = int(row[0]) if row is not None else 0
    if current > latest:
        raise FailedPrecondition(
            f"the metadata store has schema version {current}, newer than this release "
            f"knows ({latest}); upgrade Fabric or use another metadata store"
        )
    for migration in migrations:
        if migration.version <= current:
            continue
        for statement in migration.statements:
            session.run_migration(statement)
        session.run(
            "INSERT INTO {s}.schema_migrations (version, description, applied_at) VALUES (?, ?, ?)",
            [migration.version, migration.description, session.dialect.encode_time(utc_now())],
        )
        current = migration.version
    return current
