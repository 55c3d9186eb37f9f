"""How the parts are put together for one process: store, secrets, catalog manager."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from connectors import Connector
from fabric.catalog.manager import CatalogManager
from fabric.catalog.metadata.contract import MetadataStore
from fabric.catalog.metadata.open import open_metadata_store
from fabric.config import Settings
from fabric.context import DEFAULT_STAGE, DEFAULT_TENANT
from fabric.errors import FailedPrecondition, InvalidArgument
from fabric.model import Connection, SettingValue
from fabric.query.sources import (
    ConnectorFactory,
    SecretResolver,
    default_connector_factory,
    no_secret_store,
)
from fabric.security.kms import LocalKeyRing
from fabric.security.secrets import SealedFileSecretStore, SecretStore
from fabric.security.tokens import LocalKey, TokenConfig, TokenVerifier, mint_token


def open_store(settings: Settings) -> MetadataStore:
    """FABRIC_METADATA_URL (a postgresql:// URL or a SQLite path) when set, else the SQLite
    file under FABRIC_HOME."""
    return open_metadata_store(settings.metadata_url or settings.metadata_path)


def token_verifier(settings: Settings) -> TokenVerifier | None:
    """The verifier FABRIC_AUTH asks for: the local HS256 key (created on first use), the
    issuer's JWKS, or None when authentication is off."""
    if settings.auth == "none":
        return None
    if settings.auth == "local":
        key = LocalKey.load_or_generate(settings.token_key_path)
        return TokenVerifier(TokenConfig.for_local_key(key))
    algorithms = tuple(a.strip() for a in settings.jwt_algorithms.split(",") if a.strip())
    try:
        config = TokenConfig(
            issuer=settings.jwt_issuer,
            audience=settings.jwt_audience,
            algorithms=algorithms,
            jwks_path=Path(settings.jwt_jwks),
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
    return mint_token(
        TokenConfig.for_local_key(key),
        tenant=tenant,
        stage=stage,
        role=role,
        subject=subject,
        ttl=ttl,
    )


def open_secret_store(settings: Settings) -> SecretStore:
    """Vault KV v2 when FABRIC_VAULT_ADDR is set, else the sealed local file."""
    if settings.vault_addr:
        from fabric.security.vault import VaultKvSecretStore, vault_client

        return VaultKvSecretStore(vault_client(settings.vault_addr, settings.vault_token))
    settings.home.mkdir(parents=True, exist_ok=True, mode=0o700)
    return SealedFileSecretStore(settings.secrets_path, LocalKeyRing.open(settings.keyring_path))


def secret_ref(tenant: str, connection: str, stage: str) -> str:
    """Where a connection's password for a stage lives in the secret store."""
    stage_part = "all" if stage == "*" else stage
    return f"connections/{tenant}/{connection}/{stage_part}"


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
    store: MetadataStore, secrets: SecretResolver = no_secret_store
) -> CatalogManager:
    return CatalogManager(store, stage_connector_factory(secrets))


def create_connection(
    manager: CatalogManager,
    secrets: SecretStore,
    tenant: str,
    name: str,
    kind: str,
    stage: str,
    settings: dict[str, SettingValue],
    password: str | None,
) -> Connection:
    """Register a connection; its password (if any) goes to the secret store only.

    The record is created first, so a duplicate name fails before any secret is written
    (and cannot overwrite another connection's password); a failed secret write removes
    the record again, so nothing half-made remains.
    """
    ref = secret_ref(tenant, name, stage) if password is not None else None
    connection = manager.create_connection(
        tenant, name, kind, {stage: settings}, {stage: ref} if ref else None
    )
    if ref is not None and password is not None:
        try:
            secrets.put(ref, password)
        except BaseException:
            manager.delete_connection(tenant, name)
            raise
    return connection


def delete_connection(
    manager: CatalogManager, secrets: SecretStore, tenant: str, name: str
) -> None:
    """Delete a connection's metadata and every secret it refers to."""
    connection = manager.get_connection(tenant, name)
    manager.delete_connection(tenant, name)
    for ref in set(connection.secret_refs.values()):
        secrets.delete(ref)
