"""The platform plane of one process: catalog manager, connection admin, change listener."""

from __future__ import annotations

from dataclasses import dataclass

from fabric.catalog.manager import CatalogManager
from fabric.catalog.metadata.contract import MetadataStore
from fabric.platform.connections import ConnectionAdmin
from fabric.platform.departure import ChangeListener
from fabric.query.sources import ConnectorFactory, default_connector_factory, no_secret_store
from fabric.security.secrets import SecretStore
from fabric.wiring import stage_connector_factory


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
