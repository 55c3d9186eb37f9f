"""The parts of a process, opened as the settings say: metadata store, secret store, KMS,
token verifier, and the catalog and connection administration on top of them."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from connectors import Connector
from fabric.catalog.manager import CatalogManager
from fabric.catalog.manager import ConnectorFactory as InspectorFactory
from fabric.catalog.metadata.open import open_metadata_store
from fabric.catalog.metadata.store import MetadataStore
from fabric.config import Settings
from fabric.context import DEFAULT_STAGE, DEFAULT_TENANT
from fabric.errors import FailedPrecondition, InvalidArgument
from fabric.model import Connection
from fabric.platform.connections import ConnectionAdmin
from fabric.platform.departure import ChangeListener, ChangeListeners
from fabric.platform.plane import Platform
from fabric.query.sources import (
    ConnectorFactory,
    SecretResolver,
    default_connector_factory,
    no_secret_store,
)
from fabric.security.kms import Kms, LocalKeyRing
from fabric.security.secrets import SealedFileSecretStore, SecretStore
from fabric.security.tokens import LocalKey, TokenConfig, TokenVerifier, mint_token


def open_store(settings: Settings) -> MetadataStore:
    """FABRIC_METADATA_URL (a postgresql:// URL or a SQLite path) when set, else the SQLite
    file under FABRIC_HOME."""
    return open_metadata_store(settings.metadata_url or settings.metadata_path)


def open_secret_store(settings: Settings) -> SecretStore:
    """Vault KV v2 when FABRIC_VAULT_ADDR is set, else the sealed local file."""
    if settings.vault_addr:
        from fabric.security.vault import VaultKvSecretStore, vault_client

        return VaultKvSecretStore(vault_client(settings.vault_addr, settings.vault_token))
    settings.home.mkdir(parents=True, exist_ok=True, mode=0o700)
    return SealedFileSecretStore(settings.secrets_path, LocalKeyRing.open(settings.keyring_path))


def open_kms(settings: Settings) -> Kms:
    """The KMS the platform and every replica share: Vault transit when FABRIC_VAULT_ADDR
    is set, else the local key ring under FABRIC_HOME (the same file for every process
    of one machine; on several machines use Vault)."""
    if settings.vault_addr:
        from fabric.security.vault import VaultTransitKms, vault_client

        return VaultTransitKms(vault_client(settings.vault_addr, settings.vault_token))
    settings.home.mkdir(parents=True, exist_ok=True, mode=0o700)
    return LocalKeyRing.open(settings.keyring_path)


def token_verifier(settings: Settings) -> TokenVerifier | None:
    """The verifier FABRIC_AUTH asks for: the local HS256 key (created on first use), the
    issuer's JWKS, or None when authentication is off."""
    if settings.auth == "none":
        return None
    if settings.auth == "local":
        key = LocalKey.load_or_generate(settings.token_key_path)
        return TokenVerifier(TokenConfig.for_local_key(key, max_lifetime=settings.jwt_max_lifetime))
    algorithms = tuple(a.strip() for a in settings.jwt_algorithms.split(",") if a.strip())
    try:
        config = TokenConfig(
            issuer=settings.jwt_issuer,
            audience=settings.jwt_audience,
            algorithms=algorithms,
            jwks_path=Path(settings.jwt_jwks),
            max_lifetime=settings.jwt_max_lifetime,
        )
    except ValueError as error:
        raise InvalidArgument(f"the JWT settings are not usable: {error}") from None
    return TokenVerifier(config)


def local_token(
    settings: Settings,
    *,
    tenant: str = DEFAULT_TENANT,
    stage: str = DEFAULT_STAGE,
    role: str = "admin",
    subject: str = "local",
    ttl: float = 3600.0,
) -> str:
    """A token signed with the local key (FABRIC_AUTH=local), for development and the CLI."""
    if settings.auth != "local":
        raise FailedPrecondition(
            "tokens can be minted only with FABRIC_AUTH=local; get one from your identity provider"
        )
    key = LocalKey.load_or_generate(settings.token_key_path)
    try:
        return mint_token(
            TokenConfig.for_local_key(key, max_lifetime=settings.jwt_max_lifetime),
            tenant=tenant,
            stage=stage,
            role=role,
            subject=subject,
            ttl=ttl,
        )
    except ValueError as error:
        # What the caller asked for (a lifetime, a tenant name) is not mintable; the
        # message names the rule and carries no secret.
        raise InvalidArgument(str(error)) from None


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


def catalog_manager(
    store: MetadataStore,
    secrets: SecretResolver = no_secret_store,
    connector_builder: ConnectorFactory = default_connector_factory,
) -> CatalogManager:
    """The catalog manager on `store`; its connectors are built by `connector_builder`
    with passwords from `secrets`."""
    return CatalogManager(store, stage_connector_factory(secrets, connector_builder))


def platform_plane(
    store: MetadataStore,
    listener: ChangeListener,
    *,
    secret_store: SecretStore | None = None,
    connector_builder: ConnectorFactory = default_connector_factory,
    inspectors: InspectorFactory | None = None,
) -> Platform:
    """The platform plane on `store`: connectors for discovery and tests are built by
    `connector_builder` with passwords from `secret_store` (None: no passwords), or, for
    stored connections, handed out by `inspectors` when given (a platform whose stages'
    replicas do that work: `fabric.app.source_access`); every committed change is
    announced to `listener`."""
    resolver = secret_store.get if secret_store is not None else no_secret_store
    manager = (
        CatalogManager(store, inspectors)
        if inspectors is not None
        else catalog_manager(store, resolver, connector_builder)
    )
    connections = ConnectionAdmin(
        manager, secret_store, listener, connector_builder=connector_builder
    )
    return Platform(manager, connections, listener)


def connection_admin(store: MetadataStore, secrets: SecretStore | None) -> ConnectionAdmin:
    """Connection administration for a process without a runtime of its own (the CLI, the
    demo's set-up): nothing to purge here, running gateways see the new catalog version
    on their next call."""
    return platform_plane(store, ChangeListeners(), secret_store=secrets).connections
