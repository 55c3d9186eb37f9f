"""The metadata store contract: connections, selected entities, catalog versions.

It keeps metadata only: never a secret, a row or a parameter value.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol

from fabric.catalog.model import (
    CatalogSnapshot,
    Connection,
    ConnectionKind,
    Entity,
    SettingValue,
)


class MetadataStore(Protocol):
    def create_connection(
        self,
        tenant: str,
        name: str,
        kind: ConnectionKind,
        stages: Mapping[str, Mapping[str, SettingValue]],
        secret_refs: Mapping[str, str] | None = None,
    ) -> Connection:
        """Register a connection; AlreadyExists when the tenant has one of that name."""
        ...

    def get_connection(self, tenant: str, name: str) -> Connection:
        """NotFound when the tenant has no connection of that name."""
        ...

    def list_connections(self, tenant: str) -> list[Connection]: ...

    def delete_connection(self, tenant: str, name: str) -> None:
        """Deletes the connection and its selected entities; NotFound if absent."""
        ...

    def select_entities(self, tenant: str, connection: str, entities: Sequence[Entity]) -> int:
        """Add or replace the given entities (by entity name) in the selection; returns the
        new catalog version. Entity names are unique per connection, case-insensitively."""
        ...

    def unselect_entities(self, tenant: str, connection: str, names: Sequence[str]) -> int:
        """Remove entities from the selection; returns the new catalog version."""
        ...

    def catalog(self, tenant: str, connection: str) -> CatalogSnapshot:
        """The selected entities and the catalog version; NotFound if no such connection."""
        ...

    def catalog_version(self, tenant: str, connection: str) -> int:
        """Cheap read of the current catalog version (used on the hot path)."""
        ...

    def close(self) -> None: ...
