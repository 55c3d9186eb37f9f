"""How the parts are put together for one process: store, catalog manager, connectors."""

from __future__ import annotations

from connectors import Connector
from fabric.catalog.manager import CatalogManager
from fabric.catalog.model import Connection
from fabric.catalog.sqlite_store import SqliteMetadataStore
from fabric.config import Settings
from fabric.errors import FailedPrecondition
from fabric.query.sources import SecretResolver, default_connector_factory, no_secret_store


def open_store(settings: Settings) -> SqliteMetadataStore:
    return SqliteMetadataStore(settings.metadata_path)


def stage_connector_factory(secrets: SecretResolver = no_secret_store):  # type: ignore[no-untyped-def]
    """A (connection, stage) -> connector factory for the catalog manager, resolving the
    stage's settings and password the same way the runtime does."""

    def build(connection: Connection, stage: str) -> Connector:
        settings = connection.settings_for(stage)
        if settings is None:
            raise FailedPrecondition(
                f"connection {connection.name!r} has no settings for stage {stage!r}")
        ref = connection.secret_ref_for(stage)
        return default_connector_factory(connection, settings, secrets(ref) if ref else None)

    return build


def catalog_manager(store: SqliteMetadataStore,
                    secrets: SecretResolver = no_secret_store) -> CatalogManager:
    return CatalogManager(store, stage_connector_factory(secrets))
