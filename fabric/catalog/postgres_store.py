"""The production metadata store: PostgreSQL, metadata only, in one schema of its own.

Same contract and semantics as the SQLite store (fabric.catalog.store; both pass
tests/integration/test_metadata_stores.py), with the same validation and encodings
(fabric.catalog.serialization): nothing that names a secret is accepted, and input is
checked before anything is sent to the server.

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

Concurrency: every write transaction first locks the connection's row (`FOR NO KEY UPDATE`,
or the UPDATE/DELETE itself) and only then touches its catalog version, entities and
audit rows. One lock order for every writer means no deadlocks, and writes to one
connection are serialized while writes to others run in parallel. Version checks happen
under that lock and the update itself is a compare-and-set (`... WHERE version = %s`).
Reads are single statements, so a catalog snapshot is always consistent.

Catalog versions, read on every query, come from memory while a LISTEN connection hears
of every change (a trigger on `catalog_versions` notifies at commit; see
fabric.catalog.version_watch); without it they are read from the database.

The URL's password, if any, is used to connect and never appears in an error or a log
line written here. A server that cannot be reached is SourceUnavailable (gRPC
UNAVAILABLE); any other server error is InternalError with its SQLSTATE.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import datetime
from types import MappingProxyType, TracebackType
from typing import Any, Final, LiteralString

import psycopg
from psycopg import sql
from psycopg.rows import TupleRow
from psycopg.types.json import Json, Jsonb
from psycopg_pool import ConnectionPool, PoolTimeout

from fabric.catalog import audit
from fabric.catalog.audit import SYSTEM_ACTOR, AuditEvent
from fabric.catalog.serialization import (
    IDENTIFIER_RE,
    EntityDocument,
    Migration,
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
from fabric.catalog.version_watch import CatalogVersionWatch
from fabric.errors import (
    AlreadyExists,
    FabricError,
    FailedPrecondition,
    InternalError,
    InvalidArgument,
    SourceUnavailable,
)
from fabric.model import (
    CatalogSnapshot,
    Connection,
    ConnectionKind,
    Entity,
    SettingValue,
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


def apply_migrations(conn: PgConnection, schema: str, migrations: Sequence[Migration]) -> int:
    """Bring `schema` (created if missing) up to the last of `migrations`.

    All pending steps run in one transaction under an advisory lock on the schema, so
    either all of them apply or none does, and two processes never migrate at once.
    Applying twice is a no-op. Returns the schema version reached; FailedPrecondition when
    the schema was written by a newer release.
    """
    check_schema_name(schema)
    latest = check_migrations(migrations)
    ident = sql.Identifier(schema)
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", [migration_lock_key(schema)])
        # Look before creating: CREATE SCHEMA IF NOT EXISTS needs CREATE on the database
        # even when the schema exists, which a least-privilege role may not have.
        exists = conn.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s", [schema]).fetchone()
        if exists is None:
            conn.execute(sql.SQL("CREATE SCHEMA {}").format(ident))
        conn.execute(
            sql.SQL(
                "CREATE TABLE IF NOT EXISTS {}.schema_migrations ("
                " version INTEGER PRIMARY KEY, description TEXT NOT NULL,"
                " applied_at TIMESTAMPTZ NOT NULL DEFAULT now())"
            ).format(ident)
        )
        row = conn.execute(
            sql.SQL("SELECT COALESCE(MAX(version), 0) FROM {}.schema_migrations").format(ident)
        ).fetchone()
        current = int(row[0]) if row is not None else 0
        if current > latest:
            raise schema_too_new(current, latest)
        for migration in migrations:
            if migration.version <= current:
                continue
            for statement in migration.statements:
                conn.execute(sql.SQL(statement).format(s=ident))
            conn.execute(
                sql.SQL(
                    "INSERT INTO {}.schema_migrations (version, description) VALUES (%s, %s)"
                ).format(ident),
                [migration.version, migration.description],
            )
            current = migration.version
    return current


class PostgresMetadataStore:
    """MetadataStore on PostgreSQL; see the module docstring.

    `url` is a libpq URL or conninfo string; `schema` holds every table; the pool keeps
    between `pool_min` and `pool_max` connections and waits up to `timeout` seconds for
    one. `clock` gives the wall-clock time written to audit events and timestamps.
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
        check_schema_name(schema)
        if not 0 <= pool_min <= pool_max or pool_max < 1:
            raise InvalidArgument("the metadata store pool needs 0 <= pool_min <= pool_max >= 1")
        self._schema = schema
        self._clock = clock
        self._sequence = f'"{schema}".catalog_version_seq'
        self._queries: dict[str, sql.Composed] = {}
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
        self._url = url
        self._watch_versions = watch_versions
        self._watch_lock = threading.Lock()
        self.version_watch: CatalogVersionWatch | None = None
        """Started by the first catalog_version call (the query path): a process that
        never asks (a CLI command) opens no listening connection."""
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

    @property
    def schema(self) -> str:
        """The PostgreSQL schema the store's tables live in."""
        return self._schema

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
        """Register a connection; see MetadataStore.create_connection."""
        check_tenant(tenant)
        check_connection_name(name)
        kind = check_kind(kind)
        stages_doc = stages_document(stages)
        refs_doc = secret_refs_document(secret_refs or {})
        check_actor(actor)
        at = self._now()
        with self._transaction() as conn:
            row = conn.execute(
                self._q(
                    "INSERT INTO {s}.connections"
                    " (tenant, name, kind, stages, secret_refs, version, created_at, updated_at)"
                    " VALUES (%s, %s, %s, %s, %s, 1, %s, %s)"
                    " ON CONFLICT (tenant, name) DO NOTHING RETURNING id"
                ),
                [tenant, name, kind.value, Json(stages_doc), Jsonb(refs_doc), at, at],
            ).fetchone()
            if row is None:
                raise AlreadyExists(
                    f"connection {name!r} already exists in tenant {tenant!r}; "
                    "delete it first or choose another name"
                )
            catalog_version = self._next_version(conn)
            conn.execute(
                self._q(
                    "INSERT INTO {s}.catalog_versions (connection_id, version, updated_at)"
                    " VALUES (%s, %s, %s)"
                ),
                [row[0], catalog_version, at],
            )
            created = connection_from_documents(tenant, name, kind.value, stages_doc, refs_doc, 1)
            self._audit(conn, audit.connection_created(at, actor, created, catalog_version))
        return created

    def get_connection(self, tenant: str, name: str) -> Connection:
        """NotFound when the tenant has no connection of that name."""
        with self._connection() as conn:
            row = conn.execute(
                self._q(
                    f"SELECT {_CONNECTION_COLUMNS} FROM {{s}}.connections"
                    " WHERE tenant = %s AND name = %s"
                ),
                [tenant, name],
            ).fetchone()
        if row is None:
            raise connection_not_found(tenant, name)
        return _connection_from_row(row)

    def list_connections(self, tenant: str) -> list[Connection]:
        """The tenant's connections, by name."""
        with self._connection() as conn:
            rows = conn.execute(
                self._q(
                    f"SELECT {_CONNECTION_COLUMNS} FROM {{s}}.connections"
                    ' WHERE tenant = %s ORDER BY name COLLATE "C"'
                ),
                [tenant],
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
        with self._transaction() as conn:
            connection_id, old = self._lock_connection(conn, tenant, name)
            if old.version != expected_version:
                raise connection_changed(name, expected_version, old.version)
            new_stages = stages_doc if stages_doc is not None else plain_stages(old.stages)
            new_refs = refs_doc if refs_doc is not None else dict(old.secret_refs)
            row = conn.execute(
                self._q(
                    "UPDATE {s}.connections SET stages = %s, secret_refs = %s,"
                    " version = version + 1, updated_at = %s"
                    " WHERE id = %s AND version = %s RETURNING version"
                ),
                [Json(new_stages), Jsonb(new_refs), at, connection_id, expected_version],
            ).fetchone()
            if row is None:  # cannot happen under the row lock; never lose an update
                raise connection_changed(name, expected_version, expected_version + 1)
            catalog_version = self._bump_version(conn, connection_id, at)
            updated = connection_from_documents(
                tenant, name, old.kind.value, new_stages, new_refs, int(row[0])
            )
            self._audit(conn, audit.connection_updated(at, actor, old, updated, catalog_version))
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
        with self._transaction() as conn:
            row = conn.execute(
                self._q(
                    "SELECT id, version FROM {s}.connections"
                    " WHERE tenant = %s AND name = %s FOR UPDATE"
                ),
                [tenant, name],
            ).fetchone()
            if row is None:
                raise connection_not_found(tenant, name)
            connection_id, version = int(row[0]), int(row[1])
            if expected_version is not None and version != expected_version:
                raise connection_changed(name, expected_version, version)
            count = conn.execute(
                self._q("SELECT COUNT(*) FROM {s}.entities WHERE connection_id = %s"),
                [connection_id],
            ).fetchone()
            conn.execute(self._q("DELETE FROM {s}.connections WHERE id = %s"), [connection_id])
            entities = int(count[0]) if count is not None else 0
            self._audit(conn, audit.connection_deleted(at, actor, tenant, name, version, entities))

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
        """Add or replace entities in the selection; see MetadataStore.select_entities."""
        documents = selection_documents(entities, allow_empty=False)
        _check_change(expected_catalog_version, actor, stage)
        at = self._now()
        with self._transaction() as conn:
            connection_id = self._catalog_for_change(
                conn, tenant, connection, expected_catalog_version
            )
            return self._store_selection(
                conn,
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
        """Remove entities from the selection, all or none; see
        MetadataStore.unselect_entities."""
        names, keys = unselect_keys(names)
        _check_change(expected_catalog_version, actor, stage)
        at = self._now()
        with self._transaction() as conn:
            connection_id = self._catalog_for_change(
                conn, tenant, connection, expected_catalog_version
            )
            selected = {
                row[0]
                for row in conn.execute(
                    self._q("SELECT name_key FROM {s}.entities WHERE connection_id = %s"),
                    [connection_id],
                )
            }
            missing = [name for name in names if name.lower() not in selected]
            if missing:
                raise missing_entities(connection, missing)
            conn.execute(
                self._q("DELETE FROM {s}.entities WHERE connection_id = %s AND name_key = ANY(%s)"),
                [connection_id, keys],
            )
            version = self._bump_version(conn, connection_id, at)
            self._audit(
                conn,
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
        """Make `entities` (possibly none) the whole selection, atomically; see
        MetadataStore.replace_entities."""
        documents = selection_documents(entities, allow_empty=True)
        _check_change(expected_catalog_version, actor, stage)
        at = self._now()
        with self._transaction() as conn:
            connection_id = self._catalog_for_change(
                conn, tenant, connection, expected_catalog_version
            )
            conn.execute(
                self._q("DELETE FROM {s}.entities WHERE connection_id = %s"), [connection_id]
            )
            return self._store_selection(
                conn,
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
        _check_change(None, actor, stage)
        at = self._now()
        with self._transaction() as conn:
            connection_id = self._catalog_for_change(conn, tenant, connection, None)
            version = self._bump_version(conn, connection_id, at)
            self._audit(
                conn,
                audit.catalog_changed(
                    at, actor, audit.CATALOG_BUMP, tenant, connection, stage, (), version
                ),
            )
            return version

    def catalog(self, tenant: str, connection: str) -> CatalogSnapshot:
        """The selected entities (keyed by lower-cased name, in name order) and the catalog
        version, read in one statement; NotFound if no such connection."""
        with self._connection() as conn:
            rows = conn.execute(
                self._q(
                    "SELECT v.version, e.name_key, e.name, e.schema_name, e.table_name,"
                    " e.columns, e.primary_key, e.foreign_keys, e.stage_tables"
                    " FROM {s}.connections c"
                    " JOIN {s}.catalog_versions v ON v.connection_id = c.id"
                    " LEFT JOIN {s}.entities e ON e.connection_id = c.id"
                    " WHERE c.tenant = %s AND c.name = %s"
                    ' ORDER BY e.name_key COLLATE "C"'
                ),
                [tenant, connection],
            ).fetchall()
        if not rows:
            raise connection_not_found(tenant, connection)
        entities = {row[1]: entity_from_documents(*row[2:]) for row in rows if row[1] is not None}
        return CatalogSnapshot(
            tenant=tenant,
            connection=connection,
            version=int(rows[0][0]),
            entities=MappingProxyType(entities),
        )

    def catalog_version(self, tenant: str, connection: str) -> int:
        """Cheap read of the current catalog version; NotFound if no such connection.

        Served from memory while the version watch is listening (no round trip on the
        query path); read from the database otherwise."""
        watch = self.version_watch or self._start_watch()
        key = (tenant, connection)
        generation = None
        if watch is not None:
            held = watch.get(key)
            if held is not None:
                return held
            generation = watch.generation()
        with self._connection() as conn:
            row = conn.execute(
                self._q(
                    "SELECT v.version FROM {s}.connections c"
                    " JOIN {s}.catalog_versions v ON v.connection_id = c.id"
                    " WHERE c.tenant = %s AND c.name = %s"
                ),
                [tenant, connection],
            ).fetchone()
        if row is None:
            raise connection_not_found(tenant, connection)
        version = int(row[0])
        if watch is not None:
            watch.keep(key, version, generation)
        return version

    def known_catalog_version(self, tenant: str, connection: str) -> int | None:
        """The version the version watch holds; None while it is not listening (or not
        started: starting it connects) or does not hold this connection yet."""
        watch = self.version_watch
        return None if watch is None else watch.get((tenant, connection))

    def _start_watch(self) -> CatalogVersionWatch | None:
        with self._watch_lock:
            if self.version_watch is None and self._watch_versions and self._pool is not None:
                self.version_watch = CatalogVersionWatch(self._url, self._schema)
            return self.version_watch

    # -- audit ---------------------------------------------------------------------------

    def record_audit(self, event: AuditEvent) -> None:
        """Record an administrative action; InvalidArgument for a secret-looking detail."""
        if not isinstance(event, AuditEvent):
            raise InvalidArgument(f"expected an AuditEvent, not {type(event).__name__}")
        audit_details_document(event.details)  # refuse before connecting
        with self._transaction() as conn:
            self._audit(conn, event)

    def list_audit(
        self, tenant: str, *, connection: str | None = None, limit: int = 100
    ) -> list[AuditEvent]:
        """The tenant's audit events, newest first, optionally about one connection."""
        check_audit_limit(limit)
        with self._connection() as conn:
            if connection is None:
                cursor = conn.execute(
                    self._q(
                        f"SELECT {_AUDIT_COLUMNS} FROM {{s}}.audit_events WHERE tenant = %s"
                        " ORDER BY at DESC, id DESC LIMIT %s"
                    ),
                    [tenant, limit],
                )
            else:
                cursor = conn.execute(
                    self._q(
                        f"SELECT {_AUDIT_COLUMNS} FROM {{s}}.audit_events"
                        " WHERE tenant = %s AND connection = %s"
                        " ORDER BY at DESC, id DESC LIMIT %s"
                    ),
                    [tenant, connection, limit],
                )
            rows = cursor.fetchall()
        return [_audit_from_row(row) for row in rows]

    # -- lifecycle -----------------------------------------------------------------------

    def schema_version(self) -> int:
        """The schema version (the last applied migration)."""
        with self._connection() as conn:
            row = conn.execute(self._q("SELECT MAX(version) FROM {s}.schema_migrations")).fetchone()
        return int(row[0]) if row is not None and row[0] is not None else 0

    def close(self) -> None:
        """Close the pool; idempotent. Any later call raises FailedPrecondition."""
        with self._watch_lock:
            self._watch_versions = False
            watch, self.version_watch = self.version_watch, None
        if watch is not None:
            watch.close()
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.close()

    def __enter__(self) -> PostgresMetadataStore:
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

    def _q(self, template: LiteralString) -> sql.Composed:
        """`template` with `{s}` bound to the quoted schema name (cached)."""
        query = self._queries.get(template)
        if query is None:
            query = sql.SQL(template).format(s=sql.Identifier(self._schema))
            self._queries[template] = query
        return query

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

    @contextmanager
    def _transaction(self) -> Iterator[PgConnection]:
        try:
            with self._connection() as conn, conn.transaction():
                yield conn
        finally:
            # This process sees its own change at once, not when the notification of
            # it comes back.
            watch = self.version_watch
            if watch is not None:
                watch.invalidate()

    def _lock_connection(
        self, conn: PgConnection, tenant: str, name: str
    ) -> tuple[int, Connection]:
        """Lock the connection's row (first lock of every write) and read it."""
        row = conn.execute(
            self._q(
                f"SELECT id, {_CONNECTION_COLUMNS} FROM {{s}}.connections"
                " WHERE tenant = %s AND name = %s FOR NO KEY UPDATE"
            ),
            [tenant, name],
        ).fetchone()
        if row is None:
            raise connection_not_found(tenant, name)
        return int(row[0]), _connection_from_row(row[1:])

    def _catalog_for_change(
        self, conn: PgConnection, tenant: str, name: str, expected: int | None
    ) -> int:
        """Lock the connection, then check its catalog is at `expected` (if given)."""
        row = conn.execute(
            self._q(
                "SELECT id FROM {s}.connections WHERE tenant = %s AND name = %s FOR NO KEY UPDATE"
            ),
            [tenant, name],
        ).fetchone()
        if row is None:
            raise connection_not_found(tenant, name)
        connection_id = int(row[0])
        # A statement of its own, after the lock: it sees the latest committed version.
        current = conn.execute(
            self._q("SELECT version FROM {s}.catalog_versions WHERE connection_id = %s"),
            [connection_id],
        ).fetchone()
        if current is None:
            raise InternalError(f"connection {name!r} has no catalog version")
        if expected is not None and int(current[0]) != expected:
            raise catalog_changed(name, expected, int(current[0]))
        return connection_id

    def _store_selection(
        self,
        conn: psycopg.Connection[Any],
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
        self._upsert(conn, connection_id, documents, at)
        version = self._bump_version(conn, connection_id, at)
        self._audit(
            conn,
            audit.catalog_changed(
                at, actor, action, tenant, connection, stage, [d.name for d in documents], version
            ),
        )
        return version

    def _upsert(
        self,
        conn: PgConnection,
        connection_id: int,
        documents: Sequence[EntityDocument],
        at: datetime,
    ) -> None:
        if not documents:
            return
        with conn.cursor() as cursor:
            cursor.executemany(
                self._q(
                    "INSERT INTO {s}.entities (connection_id, name_key, name, schema_name,"
                    " table_name, columns, primary_key, foreign_keys, stage_tables, created_at,"
                    " updated_at) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
                    " ON CONFLICT (connection_id, name_key) DO UPDATE SET"
                    " name = excluded.name, schema_name = excluded.schema_name,"
                    " table_name = excluded.table_name, columns = excluded.columns,"
                    " primary_key = excluded.primary_key, foreign_keys = excluded.foreign_keys,"
                    " stage_tables = excluded.stage_tables, updated_at = excluded.updated_at"
                ),
                [
                    (
                        connection_id,
                        d.name_key,
                        d.name,
                        d.schema,
                        d.table,
                        Jsonb(d.columns),
                        Jsonb(d.primary_key),
                        Jsonb(d.foreign_keys),
                        Jsonb(d.stage_tables),
                        at,
                        at,
                    )
                    for d in documents
                ],
            )

    def _next_version(self, conn: PgConnection) -> int:
        row = conn.execute("SELECT nextval(%s::regclass)", [self._sequence]).fetchone()
        if row is None:
            raise InternalError("the catalog version sequence returned nothing")
        return int(row[0])

    def _bump_version(self, conn: PgConnection, connection_id: int, at: datetime) -> int:
        # Called with the connection's row locked, so versions of one connection are
        # drawn (and committed) in order.
        version = self._next_version(conn)
        conn.execute(
            self._q(
                "UPDATE {s}.catalog_versions SET version = %s, updated_at = %s"
                " WHERE connection_id = %s"
            ),
            [version, at, connection_id],
        )
        conn.execute(
            self._q("UPDATE {s}.connections SET updated_at = %s WHERE id = %s"),
            [at, connection_id],
        )
        return version

    def _audit(self, conn: PgConnection, event: AuditEvent) -> None:
        # The details are checked again here: the event may have been tampered with after
        # it was built, and the store is the last line before the table.
        details = audit_details_document(event.details)
        conn.execute(
            self._q(
                "INSERT INTO {s}.audit_events"
                " (at, tenant, actor, action, connection, stage, details)"
                " VALUES (%s, %s, %s, %s, %s, %s, %s)"
            ),
            [
                check_utc(event.at),
                event.tenant,
                event.actor,
                event.action,
                event.connection,
                event.stage,
                Jsonb(details),
            ],
        )


# -- helpers -----------------------------------------------------------------------------

_CONNECTION_COLUMNS: Final = "tenant, name, kind, stages, secret_refs, version"
_AUDIT_COLUMNS: Final = "at, tenant, actor, action, connection, stage, details"


def _check_change(expected: int | None, actor: str, stage: str | None) -> None:
    check_expected_version(expected, "expected_catalog_version")
    check_actor(actor)
    check_stage_name(stage)


def _unreachable() -> SourceUnavailable:
    return SourceUnavailable(
        "the metadata store (PostgreSQL) could not be reached in time; check that the "
        "server is up and FABRIC_METADATA_URL points at it"
    )


def _connection_from_row(row: Sequence[Any]) -> Connection:
    tenant, name, kind, stages, secret_refs, version = row
    return connection_from_documents(tenant, name, kind, stages, secret_refs, int(version))


def _audit_from_row(row: Sequence[Any]) -> AuditEvent:
    at, tenant, actor, action, connection, stage, details = row
    return AuditEvent(
        at=at,
        tenant=tenant,
        actor=actor,
        action=action,
        connection=connection,
        stage=stage,
        details=details,
    )
