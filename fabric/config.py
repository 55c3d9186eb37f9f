"""Gateway settings: one frozen value object, read from the environment once at start-up.

Only the gateway reads the environment; connectors and stores get explicit values.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from fabric.errors import InvalidArgument

MIB = 1 << 20


@dataclass(frozen=True, slots=True)
class Settings:
    home: Path = field(default_factory=lambda: Path("~/.fabric").expanduser())
    """Data directory (FABRIC_HOME): metadata store and demo files live here."""
    metadata_url: str = ""
    """Metadata store (FABRIC_METADATA_URL): `postgresql://...` in production; unset, a
    SQLite file under FABRIC_HOME."""
    listen: str = "127.0.0.1:50051"
    """gRPC listen address (FABRIC_LISTEN)."""
    tls_cert: str = ""
    """PEM certificate chain the gateway serves (FABRIC_TLS_CERT); with tls_key, TLS is on."""
    tls_key: str = ""
    """PEM private key of tls_cert (FABRIC_TLS_KEY)."""
    tls_client_ca: str = ""
    """PEM CA bundle; when set, clients must present a certificate it signed (mutual TLS)."""
    metrics_port: int = 9464
    """Prometheus endpoint port on 127.0.0.1 (FABRIC_METRICS_PORT); 0 disables it."""
    auth: str = "local"
    """How calls authenticate (FABRIC_AUTH): `local` (HS256 tokens signed with a key under
    FABRIC_HOME, minted by `fabric token`), `jwt` (tokens from your issuer, verified with
    FABRIC_JWT_* settings) or `none` (every call is the default tenant; loopback only)."""
    jwt_issuer: str = ""
    jwt_audience: str = ""
    jwt_algorithms: str = "RS256,ES256"
    """Comma-separated algorithms accepted (pinned; never taken from the token)."""
    jwt_jwks: str = ""
    """Path of a JWKS file with the issuer's public keys (read at start-up, never fetched)."""
    jwt_max_lifetime: float = 24 * 3600.0
    """Longest lifetime, in seconds, of a token the gateway accepts (FABRIC_JWT_MAX_LIFETIME):
    `exp - iat`, or `exp - now` without `iat`; longer-lived tokens are refused, local and
    issuer tokens alike, and `fabric token --ttl` may not exceed it. Must be positive."""
    vault_addr: str = ""
    """Vault address (FABRIC_VAULT_ADDR): secrets in KV v2, keys in transit. Unset: a
    sealed local file and a local key ring under FABRIC_HOME."""
    vault_token: str = field(default="", repr=False)
    """Vault token (FABRIC_VAULT_TOKEN); never logged."""
    log_level: str = "warning"
    """debug, info, warning or error (FABRIC_LOG_LEVEL)."""
    log_format: str = "text"
    """text or json: one JSON object per line (FABRIC_LOG_FORMAT)."""
    max_rows: int = 10_000_000
    """Cap on rows one query may return (FABRIC_MAX_ROWS); also the default."""
    query_timeout: float = 300.0
    """Seconds a query may take unless the caller's deadline is sooner
    (FABRIC_QUERY_TIMEOUT): past it the call ends with DEADLINE_EXCEEDED whatever the
    source does, and the query is stopped there."""
    cache_max_bytes: int = 256 * MIB
    """Hard byte budget of the result cache (FABRIC_CACHE_MAX_BYTES)."""
    cache_max_ttl: float = 3600.0
    """Longest cache lifetime a query may ask for, in seconds (FABRIC_CACHE_MAX_TTL)."""
    statement_idle_limit: float = 300.0
    """Seconds an open statement may sit idle before it is purged."""
    statement_sweep_interval: float = 10.0
    max_open_statements: int = 1000
    page_rows: int = 10_000
    """Default rows per page of the statement API."""
    preview_rows: int = 100
    """Default rows of a preview."""
    max_message_bytes: int = 4 * MIB
    """Largest Arrow IPC payload in one gRPC message."""
    compiled_statements: int = 4096
    """Entries of the compiled-statement cache."""
    max_sql_length: int = 100_000
    """Characters of one query's SQL text (FABRIC_MAX_SQL_LENGTH); a longer text is
    refused before any other work on it."""
    max_sql_tokens: int = 20_000
    """Tokens (words, names, literals, operators) of one query (FABRIC_MAX_SQL_TOKENS)."""
    max_query_depth: int = 64
    """Nesting levels of one query: parentheses, brackets, CASE, prefix operators
    (FABRIC_MAX_QUERY_DEPTH)."""
    max_query_chain: int = 32
    """Subscripts, field accesses, casts and collations chained on one value
    (FABRIC_MAX_QUERY_CHAIN)."""
    max_query_parts: int = 100
    """Subqueries, CTEs, joins, set-operation branches, and arms of one CASE a query may
    have, each counted on its own (FABRIC_MAX_QUERY_PARTS)."""
    batch_rows: int = 65_536
    """Rows per record batch read from a source."""
    worker_threads: int = 16
    """Threads that run blocking driver calls off the event loop."""
    metadata_stale_after: float = 4 * 3600.0
    """Seconds after which in-memory metadata of a connection whose environment is gone,
    and that could not be confirmed since, is dropped (FABRIC_METADATA_STALE_AFTER)."""
    metadata_sweep_interval: float = 60.0
    """Seconds between sweeps for stale in-memory metadata."""
    nats_url: str = ""
    """NATS server URL(s), comma-separated (FABRIC_NATS_URL); user and password may be in
    the URL. Unset: the in-process bus (one process, `--role all`)."""
    nats_creds: str = ""
    """NATS credentials file (JWT + nkey seed) (FABRIC_NATS_CREDS)."""
    nats_tls_ca: str = ""
    """PEM CA bundle that signed the NATS servers' certificates, for tls:// URLs
    (FABRIC_NATS_TLS_CA); unset: the system's trust store."""
    replica_id: str = ""
    """This runtime replica's id (FABRIC_REPLICA_ID): names its durable event consumer,
    so it must be unique per replica and stable across restarts. Default: host name and
    stage."""
    health_listen: str = "127.0.0.1:0"
    """Address of a runtime replica's gRPC health endpoint when it serves no QueryService
    (`fabric serve --role runtime` without --listen) (FABRIC_HEALTH_LISTEN); port 0 picks
    a free port and prints it."""
    bus_connect_timeout: float = 10.0
    """Seconds the first connection to NATS may take before start-up fails
    (FABRIC_BUS_CONNECT_TIMEOUT)."""
    bus_timeout: float = 10.0
    """Longest silence, in seconds, a forwarded query accepts from a runtime replica
    (acceptance, then between result chunks) (FABRIC_BUS_TIMEOUT)."""
    bus_retries: int = 2
    """Extra attempts of a forwarded query before its first result byte (FABRIC_BUS_RETRIES)."""
    bus_publish_timeout: float = 5.0
    """Seconds JetStream may take to confirm a platform event (FABRIC_BUS_PUBLISH_TIMEOUT)."""
    shutdown_grace: float = 10.0
    """Seconds `fabric serve` lets running calls finish after SIGTERM before it closes its
    port (FABRIC_SHUTDOWN_GRACE; a runtime replica gives it to its bus queries, then to
    its gRPC calls); the process is gone at most twice the grace plus 30 s after the
    signal, even with a driver call stuck on a source that stopped answering."""
    bus_max_concurrent: int = 64
    """Queries one runtime replica runs at once; more are refused as busy and retried on
    another replica (FABRIC_BUS_MAX_CONCURRENT)."""

    @property
    def tls(self) -> bool:
        return bool(self.tls_cert)

    @property
    def nats_servers(self) -> list[str]:
        """The NATS URLs of FABRIC_NATS_URL (empty: no NATS, the in-process bus)."""
        return [url.strip() for url in self.nats_url.split(",") if url.strip()]

    @property
    def token_key_path(self) -> Path:
        return self.home / "token.key"

    @property
    def keyring_path(self) -> Path:
        return self.home / "keyring.json"

    @property
    def secrets_path(self) -> Path:
        return self.home / "secrets.sealed"

    @property
    def metadata_path(self) -> Path:
        return self.home / "metadata.sqlite"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        defaults = cls()
        for f in fields(cls):
            raw = env.get(f"FABRIC_{f.name.upper()}")
            if raw is None:
                continue
            default = getattr(defaults, f.name)
            try:
                if isinstance(default, Path):
                    values[f.name] = Path(raw).expanduser()
                elif isinstance(default, bool):
                    values[f.name] = raw.lower() in ("1", "true", "yes")
                elif isinstance(default, int):
                    values[f.name] = int(raw)
                elif isinstance(default, float):
                    values[f.name] = float(raw)
                else:
                    values[f.name] = raw
            except ValueError:
                raise InvalidArgument(
                    f"FABRIC_{f.name.upper()} must be a {type(default).__name__}"
                ) from None
        settings = replace(defaults, **{**values, **overrides})
        settings.validate()
        return settings

    def validate(self) -> None:
        positive = (
            "max_rows",
            "cache_max_bytes",
            "page_rows",
            "preview_rows",
            "max_message_bytes",
            "compiled_statements",
            "max_sql_length",
            "max_sql_tokens",
            "max_query_depth",
            "max_query_chain",
            "max_query_parts",
            "batch_rows",
            "worker_threads",
            "max_open_statements",
        )
        for name in positive:
            if getattr(self, name) <= 0:
                raise InvalidArgument(f"setting {name} must be positive")
        for name in (
            "query_timeout",
            "statement_idle_limit",
            "statement_sweep_interval",
            "metadata_stale_after",
            "metadata_sweep_interval",
            "bus_connect_timeout",
            "bus_timeout",
            "bus_publish_timeout",
            "bus_max_concurrent",
            "jwt_max_lifetime",
        ):
            if getattr(self, name) <= 0:
                raise InvalidArgument(f"setting {name} must be positive")
        if self.auth not in ("local", "jwt", "none"):
            raise InvalidArgument("FABRIC_AUTH must be local, jwt or none")
        if self.auth == "jwt" and not (self.jwt_issuer and self.jwt_audience and self.jwt_jwks):
            raise InvalidArgument(
                "FABRIC_AUTH=jwt needs FABRIC_JWT_ISSUER, FABRIC_JWT_AUDIENCE and FABRIC_JWT_JWKS"
            )
        if self.log_level.lower() not in ("debug", "info", "warning", "error"):
            raise InvalidArgument("FABRIC_LOG_LEVEL must be debug, info, warning or error")
        if self.log_format not in ("text", "json"):
            raise InvalidArgument("FABRIC_LOG_FORMAT must be text or json")
        if bool(self.tls_cert) != bool(self.tls_key):
            raise InvalidArgument("TLS needs both FABRIC_TLS_CERT and FABRIC_TLS_KEY")
        if self.tls_client_ca and not self.tls_cert:
            raise InvalidArgument(
                "mutual TLS (FABRIC_TLS_CLIENT_CA) needs a server certificate and key too"
            )
        if self.bus_retries < 0:
            raise InvalidArgument("setting bus_retries must not be negative")
        if self.shutdown_grace < 0:
            raise InvalidArgument("setting shutdown_grace must not be negative")
        if self.cache_max_ttl < 0:
            raise InvalidArgument("setting cache_max_ttl must not be negative")
