"""The parts of a process, opened as the settings say: metadata store, secret store, KMS,
token verifier, and the catalog and connection administration on top of them."""

from __future__ import annotations

from pathlib import Path

from fabric.catalog.manager import CatalogManager
from fabric.catalog.store import MetadataStore
from fabric.catalog.stores import open_metadata_store
from fabric.config import Settings
from fabric.context import DEFAULT_STAGE, DEFAULT_TENANT
from fabric.errors import FailedPrecondition, InvalidArgument
from fabric.platform.connections import ConnectionAdmin
from fabric.platform.departure import ChangeListeners
from fabric.platform.plane import stage_connector_factory
from fabric.query.sources import SecretResolver, no_secret_store
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


def catalog_manager(
    store: MetadataStore, secrets: SecretResolver = no_secret_store
) -> CatalogManager:
    """The catalog manager on `store`; its connectors get passwords from `secrets`."""
    return CatalogManager(store, stage_connector_factory(secrets))


def connection_admin(store: MetadataStore, secrets: SecretStore | None) -> ConnectionAdmin:
    """Connection administration for a process without a runtime of its own (the CLI, the
    demo's set-up): nothing to purge here, running gateways see the new catalog version
    on their next call."""
    resolver = secrets.get if secrets is not None else no_secret_store
    return ConnectionAdmin(catalog_manager(store, resolver), secrets, ChangeListeners())
