"""The platform plane of one process: catalog manager, connection admin, change listener."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from connectors import Connector
from fabric.catalog.manager import CatalogManager
from fabric.catalog.store import MetadataStore
from fabric.errors import FailedPrecondition
from fabric.model import Connection
from fabric.platform.connections import ConnectionAdmin
from fabric.platform.departure import ChangeListener
from fabric.query.sources import (
    ConnectorFactory,
    SecretResolver,
    default_connector_factory,
    no_secret_store,
)
from fabric.security.secrets import SecretStore


def stage_connector_factory(
    secrets: SecretResolver = no_secret_store,
    builder: ConnectorFactory = default_connector_factory,
) -> Callable[[Connection, str], Connector]:
    """A (connection, stage) -> connector factory for the catalog manager, resolving the
    stage's settings and password the same way the runtime does."""

    def build(connection: Connection, stage: str) -> Connector:
        settings = connection.settings_for(stage)
        if settings is None:
            raise FailedPrecondition(
                f"connection {connection.name!r} has no settings for stage {stage!r}"
            )
        ref = connection.secret_ref_for(stage)
        return builder(connection, settings, secrets(ref) if ref else None)

    return build


@dataclass(frozen=True, slots=True)
class Platform:
    """What the platform servicers work with."""

    manager: CatalogManager
    connections: ConnectionAdmin
    listener: ChangeListener

    @classmethod
    def build(
        cls,
        store: MetadataStore,
        listener: ChangeListener,
        *,
        secret_store: SecretStore | None = None,
        connector_builder: ConnectorFactory = default_connector_factory,
    ) -> Platform:
        """The plane on `store`: connectors for discovery and tests are built by
        `connector_builder` with passwords from `secret_store` (None: no passwords)."""
        resolver = secret_store.get if secret_store is not None else no_secret_store
        manager = CatalogManager(store, stage_connector_factory(resolver, connector_builder))
        connections = ConnectionAdmin(
            manager, secret_store, listener, connector_builder=connector_builder
        )
        return cls(manager, connections, listener)
