"""The production metadata store: PostgreSQL, metadata only, in one schema of its own.

The queries and rules are the store's (fabric.catalog.metadata.store); this module
is what PostgreSQL does its own way.

Layout: every table lives in `schema` (default `fabric`), created if missing, so several
deployments (or test runs) can share a database. Connection stages are `json` (not
`jsonb`, which would turn a float setting such as 1e20 into an integer); the other
documents are `jsonb`; times are `timestamptz`. Catalog versions come from one sequence,
`catalog_version_seq`, so they only ever go up, across connections and across a delete
and re-create.

Migrations: `schema_migrations` inside the schema records the applied steps. They run when
a store is opened, in one transaction, under a transaction-scoped advisory lock derived
from the schema name: when several processes start at once, one migrates and the others
wait, then find nothing left to do.

Concurrency: connections come from a pool, in autocommit. A write is one transaction that
locks the connection's row first (`FOR NO KEY UPDATE`, or `FOR UPDATE` to delete it), so
writes to one connection are serialized while writes to others run in parallel.

Catalog versions, read on every query, come from memory while a LISTEN connection hears
of every change (a trigger on `catalog_versions` notifies at commit; see
fabric.catalog.metadata.version_watch); without it they are read from the database.

The URL's password, if any, is used to connect and never appears in an error or a log
line written here. A server that cannot be reached is SourceUnavailable (gRPC
UNAVAILABLE); any other server error is InternalError with its SQLSTATE.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from typing import Any, Final, LiteralString

import psycopg
from psycopg import sql
from psycopg.rows import TupleRow
from psycopg.types.json import Json, Jsonb
from psycopg_pool import ConnectionPool, PoolTimeout

from fabric.catalog.metadata.driver import Migration, SqlDialect, SqlDriver, SqlSession, migrate
from fabric.catalog.metadata.store import MetadataStore
from fabric.catalog.metadata.version_watch import CatalogVersionWatch
from fabric.catalog.serialization import IDENTIFIER_RE, utc_now
from fabric.errors import (
    FabricError,
    FailedPrecondition,
    InternalError,
    InvalidArgument,
    SourceUnavailable,
)

PgConnection = psycopg.Connection[TupleRow]

DEFAULT_SCHEMA: Final = "fabric"
_MAX_SCHEMA_LENGTH: Final = 63  # PostgreSQL's identifier limit (NAMEDATALEN - 1)

MIGRATIONS: Final[tuple[Migration, ...]] = (
    Migration(
        version=1,
        description="connections, entities, catalog versions, audit events",
        statements=(
            "CREATE SEQUENCE {s}.catalog_version_seq AS BIGINT MINVALUE 1 START 1",
            """
            CREATE TABLE {s}.connections (
                id          BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
                tenant      TEXT        NOT NULL,
                name        TEXT        NOT NULL,
                kind        TEXT        NOT NULL,
                stages      JSON        NOT NULL,  -- stage -> settings (scalars), exact text
                secret_refs JSONB       NOT NULL,  -- stage -> secret store reference
                version     INTEGER     NOT NULL CHECK (version >= 1),
                created_at  TIMESTAMPTZ NOT NULL,
                updated_at  TIMESTAMPTZ NOT NULL,
                UNIQUE (tenant, name)
            )
            """,
            """
            CREATE TABLE {s}.catalog_versions (
                connection_id BIGINT      PRIMARY KEY
                              REFERENCES {s}.connections (id) ON DELETE CASCADE,
                version       BIGINT      NOT NULL,
                updated_at    TIMESTAMPTZ NOT NULL
            )
            """,
            """
            CREATE TABLE {s}.entities (
                id            BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
                connection_id BIGINT      NOT NULL
                              REFERENCES {s}.connections (id) ON DELETE CASCADE,
                name_key      TEXT        NOT NULL,  -- lower-cased name, for uniqueness
                name          TEXT        NOT NULL,  -- as the user spelled it
                schema_name   TEXT        NOT NULL,
                table_name    TEXT        NOT NULL,
                columns       JSONB       NOT NULL,  -- Arrow types as base64 IPC schemas
                primary_key   JSONB       NOT NULL,  -- list of column names, in key order
                foreign_keys  JSONB       NOT NULL,  -- list of objects, composite kept whole
                created_at    TIMESTAMPTZ NOT NULL,
                updated_at    TIMESTAMPTZ NOT NULL,
                UNIQUE (connection_id, name_key)
            )
            """,
            # No foreign key to connections: the events of a deleted connection are history.
            """
            CREATE TABLE {s}.audit_events (
                id         BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
                at         TIMESTAMPTZ NOT NULL,
                tenant     TEXT        NOT NULL,
                actor      TEXT        NOT NULL,
                action     TEXT        NOT NULL,
                connection TEXT,
                stage      TEXT,
                details    JSONB       NOT NULL  -- name -> scalar, never a secret
            )
            """,
            "CREATE INDEX audit_events_by_tenant ON {s}.audit_events (tenant, at DESC, id DESC)",
            "CREATE INDEX audit_events_by_connection"
            " ON {s}.audit_events (tenant, connection, at DESC, id DESC)",
        ),
    ),
    Migration(
        version=2,
        description="per-stage physical tables of entities",
        statements=(
            # stage -> [schema, table]; '{}' when every stage uses schema_name.table_name.
            "ALTER TABLE {s}.entities ADD COLUMN stage_tables JSONB NOT NULL DEFAULT '{{}}'",
        ),
    ),
    Migration(
        version=3,
        description="notify every change of a catalog version (at its commit)",
        statements=(
            """
            CREATE FUNCTION {s}.notify_catalog_change() RETURNS trigger
            LANGUAGE plpgsql AS $$
            BEGIN
                PERFORM pg_notify('fabric_catalog', TG_TABLE_SCHEMA);
                RETURN NULL;
            END
            $$
            """,
            "CREATE TRIGGER catalog_versions_notify"
            " AFTER INSERT OR UPDATE OR DELETE ON {s}.catalog_versions"
            " FOR EACH STATEMENT EXECUTE FUNCTION {s}.notify_catalog_change()",
        ),
    ),
    Migration(
        version=4,
        description="unselected column names of entities",
        statements=(
            # List of names; NULL (rows written before) means not known.
            "ALTER TABLE {s}.entities ADD COLUMN hidden_columns JSONB",
        ),
    ),
    Migration(
        version=5,
        description="per-stage-configuration physical tables of entities",
        statements=(
            # list of {configuration ('*' or a stage), schema, table, columns, primary_key,
            # foreign_keys, exists}; '[]' when nothing was recorded (rows written before).
            "ALTER TABLE {s}.entities ADD COLUMN stage_physical JSONB NOT NULL DEFAULT '[]'",
        ),
    ),
)
"""Every schema version, oldest first; `{s}` stands for the quoted schema name. Append;
never edit a released migration."""


def check_schema_name(schema: str) -> None:
    """InvalidArgument unless `schema` is a plain identifier PostgreSQL keeps whole."""
    if (
        not isinstance(schema, str)
        or IDENTIFIER_RE.fullmatch(schema) is None
        or len(schema) > _MAX_SCHEMA_LENGTH
    ):
        raise InvalidArgument(
            f"metadata schema {schema!r} must be a plain identifier (letters, digits, '_', "
            f"not starting with a digit) of at most {_MAX_SCHEMA_LENGTH} characters"
        )


def migration_lock_key(schema: str) -> int:
    """The advisory lock key that serializes migrations of `schema` (signed 64 bits)."""
    digest = hashlib.sha256(f"fabric.metadata.migrations:{schema}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


class PostgresDialect(SqlDialect):
    """The store's SQL as psycopg takes it, for the tables in `schema`."""

    def __init__(self, schema: str) -> None:
        super().__init__()
        self._schema = sql.Identifier(schema)
        self._sequence = f'"{schema}".catalog_version_seq'

    def render(self, template: LiteralString) -> sql.Composed:
        return sql.SQL(template.replace("?", "%s")).format(
            s=self._schema,
            row_lock=sql.SQL("FOR NO KEY UPDATE"),
            delete_lock=sql.SQL("FOR UPDATE"),
            bytewise=sql.SQL('COLLATE "C"'),
            time=sql.SQL("TIMESTAMPTZ"),
        )

    def render_migration(self, statement: str) -> sql.Composed:
        return sql.SQL(statement).format(s=self._schema)

    def encode_document(self, document: Any, *, exact: bool = False) -> Json | Jsonb:
        return Json(document) if exact else Jsonb(document)

    def next_catalog_version(self, session: SqlSession) -> int:
        row = session.one("SELECT nextval(?::regclass)", [self._sequence])
        if row is None:
            raise InternalError("the catalog version sequence returned nothing")
        return int(row[0])


class PostgresDriver(SqlDriver):
    """A pool of connections to `url`; the constructor migrates `schema` (see the module
    docstring). The version watch starts with the first `held_versions(start=True)`: a
    process that never asks (a CLI command) opens no listening connection."""

    def __init__(
        self,
        url: str,
        *,
        schema: str,
        pool_min: int,
        pool_max: int,
        timeout: float,
        watch_versions: bool,
    ) -> None:
        check_schema_name(schema)
        if not 0 <= pool_min <= pool_max or pool_max < 1:
            raise InvalidArgument("the metadata store pool needs 0 <= pool_min <= pool_max >= 1")
        self.schema = schema
        self.dialect = PostgresDialect(schema)
        self._url = url
        self._watch_versions = watch_versions
        self._watch_lock = threading.Lock()
        self.version_watch: CatalogVersionWatch | None = None
        pool: ConnectionPool[PgConnection] = ConnectionPool(
            url,
            min_size=pool_min,
            max_size=pool_max,
            timeout=timeout,
            kwargs={"autocommit": True},
            name=f"fabric-metadata-{schema}",
            open=False,
        )
        self._pool: ConnectionPool[PgConnection] | None = pool
        try:
            try:
                pool.open(wait=pool_min > 0, timeout=timeout)
            except PoolTimeout as exc:
                raise _unreachable() from exc
            with self._connection() as conn:
                apply_migrations(conn, schema, MIGRATIONS)
        except BaseException:
            self.close()
            raise

    @contextmanager
    def reading(self) -> Iterator[SqlSession]:
        with self._connection() as conn:
            yield SqlSession(conn, self.dialect)

    @contextmanager
    def writing(self) -> Iterator[SqlSession]:
        try:
            with self._connection() as conn, conn.transaction():
                yield SqlSession(conn, self.dialect)
        finally:
            # This process sees its own change at once, not when the notification of
            # it comes back.
            watch = self.version_watch
            if watch is not None:
                watch.invalidate()

    def held_versions(self, *, start: bool) -> CatalogVersionWatch | None:
        if self.version_watch is not None or not start:
            return self.version_watch
        with self._watch_lock:
            if self.version_watch is None and self._watch_versions and self._pool is not None:
                self.version_watch = CatalogVersionWatch(self._url, self.schema)
            return self.version_watch

    def close(self) -> None:
        with self._watch_lock:
            self._watch_versions = False
            watch, self.version_watch = self.version_watch, None
        if watch is not None:
            watch.close()
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.close()

    @contextmanager
    def _connection(self) -> Iterator[PgConnection]:
        """A pooled connection (autocommit); server trouble becomes a FabricError."""
        pool = self._pool
        if pool is None:
            raise FailedPrecondition("the metadata store is closed")
        try:
            with pool.connection() as conn:
                yield conn
        except FabricError:
            raise
        except PoolTimeout as exc:
            raise _unreachable() from exc
        except psycopg.OperationalError as exc:
            raise SourceUnavailable(
                "the metadata store (PostgreSQL) is unreachable or refused the connection "
                f"(SQLSTATE {exc.sqlstate or 'none'}); check the server and "
                "FABRIC_METADATA_URL",
                sqlstate=exc.sqlstate,
            ) from exc
        except psycopg.Error as exc:
            raise InternalError(
                f"the metadata store (PostgreSQL) failed (SQLSTATE {exc.sqlstate or 'none'})",
                sqlstate=exc.sqlstate,
            ) from exc


class PostgresMetadataStore(MetadataStore):
    """The metadata store on PostgreSQL; see the module docstring.

    `url` is a libpq URL or conninfo string; `schema` holds every table; the pool keeps
    between `pool_min` and `pool_max` connections and waits up to `timeout` seconds for
    one. `clock` gives the wall-clock time written to audit events and timestamps;
    `watch_versions=False` never listens (every catalog version is read from the database).
    """

    def __init__(
        self,
        url: str,
        *,
        schema: str = DEFAULT_SCHEMA,
        pool_min: int = 1,
        pool_max: int = 4,
        timeout: float = 10.0,
        clock: Callable[[], datetime] = utc_now,
        watch_versions: bool = True,
    ) -> None:
        self._postgres = PostgresDriver(
            url,
            schema=schema,
            pool_min=pool_min,
            pool_max=pool_max,
            timeout=timeout,
            watch_versions=watch_versions,
        )
        super().__init__(self._postgres, clock=clock)

    @property
    def schema(self) -> str:
        """The PostgreSQL schema the store's tables live in."""
        return self._postgres.schema

    @property
    def version_watch(self) -> CatalogVersionWatch | None:
        """The listener that keeps catalog versions in memory, once the first
        `catalog_version` call (the query path) has started it."""
        return self._postgres.version_watch


def apply_migrations(conn: PgConnection, schema: str, migrations: Sequence[Migration]) -> int:
    """`migrate` `schema` (created if missing) in one transaction under an advisory lock
    on the schema, so that two processes never migrate it at once."""
    check_schema_name(schema)
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", [migration_lock_key(schema)])
        # Look before creating: CREATE SCHEMA IF NOT EXISTS needs CREATE on the database
        # even when the schema exists, which a least-privilege role may not have.
        exists = conn.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s", [schema]).fetchone()
        if exists is None:
            conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
        return migrate(SqlSession(conn, PostgresDialect(schema)), migrations)


def _unreachable() -> SourceUnavailable:
    return SourceUnavailable(
        "the metadata store (PostgreSQL) could not be reached in time; check that the "
        "server is up and FABRIC_METADATA_URL points at it"
    )
