"""The metadata store contract: connections, selected entities, catalog versions, audit.

It keeps metadata only: never a secret, a row or a parameter value. One implementation,
`fabric.catalog.metadata.sql_store.SqlMetadataStore`, runs on SQLite
(`SqliteMetadataStore`, the embedded default) and PostgreSQL (`PostgresMetadataStore`), and
passes the same test suite on both (tests/integration/test_metadata_stores.py);
`fabric.catalog.metadata.open.open_metadata_store` picks one from a URL or a path.

Semantics every implementation keeps:

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
- **Validation first**: input is checked (fabric.catalog.serialization) before anything
  is sent to the database, so a refused value never reaches a file, a table or a log.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol

from fabric.catalog.audit import AuditEvent
from fabric.model import (
    CatalogSnapshot,
    Connection,
    Entity,
    SettingValue,
)


class MetadataStore(Protocol):
    # -- connections ---------------------------------------------------------------------

    def create_connection(
        self,
        tenant: str,
        name: str,
        kind: str,
        stages: Mapping[str, Mapping[str, SettingValue]],
        secret_refs: Mapping[str, str] | None = None,
        *,
        actor: str = "system",
    ) -> Connection:
        """Register a connection at version 1; AlreadyExists when the tenant has one of
        that name; InvalidArgument for malformed input or a setting that names a secret."""
        ...

    def get_connection(self, tenant: str, name: str) -> Connection:
        """NotFound when the tenant has no connection of that name."""
        ...

    def list_connections(self, tenant: str) -> list[Connection]:
        """The tenant's connections, by name."""
        ...

    def update_connection(
        self,
        tenant: str,
        name: str,
        *,
        stages: Mapping[str, Mapping[str, SettingValue]] | None = None,
        secret_refs: Mapping[str, str] | None = None,
        expected_version: int,
        actor: str = "system",
    ) -> Connection:
        """Replace the stages and/or secret references (None keeps them) if the connection
        is still at `expected_version`; returns it at the next version, with a new catalog
        version. FailedPrecondition when it changed meanwhile (reload and retry), NotFound,
        InvalidArgument (nothing to update, malformed input, a secret-looking setting)."""
        ...

    def delete_connection(
        self,
        tenant: str,
        name: str,
        *,
        expected_version: int | None = None,
        actor: str = "system",
    ) -> None:
        """Delete the connection and its selected entities (its audit events stay);
        NotFound if absent, FailedPrecondition if not at `expected_version` (when given)."""
        ...

    # -- selection -----------------------------------------------------------------------

    def select_entities(
        self,
        tenant: str,
        connection: str,
        entities: Sequence[Entity],
        *,
        expected_catalog_version: int | None = None,
        actor: str = "system",
        stage: str | None = None,
    ) -> int:
        """Add or replace the given entities (by entity name) in the selection, all or none;
        returns the new catalog version. Entity names are unique per connection,
        case-insensitively. InvalidArgument for an empty list, a name that is not a plain
        SQL identifier, two entities whose names differ only in case, or an entity that is
        not consistent (no columns, duplicate columns, key columns that are not among its
        columns). FailedPrecondition when the catalog is no longer at
        `expected_catalog_version` (when given)."""
        ...

    def unselect_entities(
        self,
        tenant: str,
        connection: str,
        names: Sequence[str],
        *,
        expected_catalog_version: int | None = None,
        actor: str = "system",
        stage: str | None = None,
    ) -> int:
        """Remove entities (names compared ignoring case) from the selection, all or none
        (NotFound names the ones not selected); returns the new catalog version."""
        ...

    def replace_entities(
        self,
        tenant: str,
        connection: str,
        entities: Sequence[Entity],
        *,
        expected_catalog_version: int | None = None,
        actor: str = "system",
        stage: str | None = None,
    ) -> int:
        """Make `entities` (possibly none) the whole selection, atomically; returns the new
        catalog version. Same checks as `select_entities`, an empty list aside. What
        `refresh` uses after re-reading the remote schema."""
        ...

    def bump_catalog_version(
        self,
        tenant: str,
        connection: str,
        *,
        actor: str = "system",
        stage: str | None = None,
    ) -> int:
        """Move the catalog version on without changing the selection (the remote schema
        changed); returns the new version."""
        ...

    def catalog(self, tenant: str, connection: str) -> CatalogSnapshot:
        """The selected entities (keyed by lower-cased name, in name order) and the catalog
        version, read together; NotFound if no such connection."""
        ...

    def catalog_version(self, tenant: str, connection: str) -> int:
        """Cheap read of the current catalog version (used on the hot path)."""
        ...

    def known_catalog_version(self, tenant: str, connection: str) -> int | None:
        """The current catalog version when the store has it without a round trip to a
        server (a local file, or versions kept in memory), else None. The query path
        calls it on the event loop and goes to a worker thread only on None. NotFound
        when the store knows there is no such connection."""
        ...

    # -- audit ---------------------------------------------------------------------------

    def record_audit(self, event: AuditEvent) -> None:
        """Record an administrative action the store did not make itself (the store's
        own changes are recorded with them). InvalidArgument for a secret-looking detail."""
        ...

    def list_audit(
        self, tenant: str, *, connection: str | None = None, limit: int = 100
    ) -> list[AuditEvent]:
        """The tenant's audit events, newest first, optionally about one connection
        (including a deleted one); `limit` between 1 and 10,000."""
        ...

    # -- lifecycle -----------------------------------------------------------------------

    def schema_version(self) -> int:
        """The store's schema version (its last applied migration)."""
        ...

    def close(self) -> None:
        """Release the store's resources; idempotent. Later calls raise FailedPrecondition."""
        ...
