"""Gateway settings: one frozen value object, read once at start-up.

Every setting is declared once, below, with its type (the default's), its default and its
help (the docstring under it). Values come from, in rising order: the default, the
configuration file (TOML, named by `--config` or FABRIC_CONFIG; keys are the setting
names, unknown keys are errors), and the environment (FABRIC_<NAME>), which wins. Only
the gateway and the CLI read them; connectors and stores get explicit values.
"""

from __future__ import annotations

import ast
import difflib
import itertools
import json
import os
import re
import textwrap
import tomllib
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
    flight_listen: str = ""
    """Arrow Flight SQL listen address (FABRIC_FLIGHT_LISTEN), served by `fabric serve`
    (every role: a runtime replica serves its own stage's tokens only) next to the gRPC
    API, with the same tokens, TLS and rules;
    unset: no Flight SQL endpoint."""
    http_listen: str = ""
    """HTTP(S) listen address of the REST/JSON API and the portal page (FABRIC_HTTP_LISTEN),
    served by `fabric serve` (roles all and platform) in the gateway's process, with the
    gateway's TLS settings and tokens; refused on a non-loopback address without TLS, as
    the gRPC address is. Unset: no HTTP endpoint."""
    http_max_body: int = MIB
    """Largest request body, in bytes, the REST API accepts (FABRIC_HTTP_MAX_BODY); a larger
    one is refused with 413 before it is read."""
    tls_cert: str = ""
    """PEM certificate chain the gateway serves (FABRIC_TLS_CERT); with tls_key, TLS is on."""
    tls_key: str = ""
    """PEM private key of tls_cert (FABRIC_TLS_KEY)."""
    tls_client_ca: str = ""
    """PEM CA bundle; when set, clients must present a certificate it signed (mutual TLS)."""
    tls_ca: str = ""
    """Client side (the CLI): PEM CA bundle the gateway's certificate must chain to
    (FABRIC_TLS_CA); set, the CLI talks TLS (the CLI's --tls-ca)."""
    tls_client_cert: str = ""
    """Client side: PEM certificate the CLI presents for mutual TLS (FABRIC_TLS_CLIENT_CERT,
    the CLI's --tls-cert)."""
    tls_client_key: str = ""
    """Client side: PEM private key of tls_client_cert (FABRIC_TLS_CLIENT_KEY, --tls-key)."""
    metrics_port: int = 9464
    """Prometheus endpoint port on 127.0.0.1 (FABRIC_METRICS_PORT); 0 disables it."""
    metrics_listen: str = ""
    """host:port of the Prometheus endpoint (FABRIC_METRICS_LISTEN), for example
    `0.0.0.0:9464` in a pod so Prometheus can scrape it; when set it replaces
    FABRIC_METRICS_PORT's 127.0.0.1 address (port 0 picks a free port)."""
    auth: str = "local"
    """How calls authenticate (FABRIC_AUTH): `local` (HS256 tokens signed with a key under
    FABRIC_HOME, minted by `fabric token`), `jwt` (tokens from your issuer, verified with
    FABRIC_JWT_* settings) or `none` (every call is the default tenant; loopback only)."""
    jwt_issuer: str = ""
    """The `iss` a token must carry with FABRIC_AUTH=jwt (FABRIC_JWT_ISSUER)."""
    jwt_audience: str = ""
    """The `aud` a token must name with FABRIC_AUTH=jwt (FABRIC_JWT_AUDIENCE)."""
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
    otel_endpoint: str = ""
    """OTLP/HTTP collector the process sends its traces to (FABRIC_OTEL_ENDPOINT, e.g.
    `http://otel-collector:4318`; spans go to `<endpoint>/v1/traces`); unset: the
    standard OTEL_EXPORTER_OTLP_TRACES_ENDPOINT or OTEL_EXPORTER_OTLP_ENDPOINT, and with
    none of them no tracing at all. The exporter's standard OTEL_EXPORTER_OTLP_HEADERS,
    _TIMEOUT and _CERTIFICATE variables apply."""
    otel_service_name: str = ""
    """service.name of this process's spans (FABRIC_OTEL_SERVICE_NAME); unset: the
    standard OTEL_SERVICE_NAME, else `fabric-<role>` (fabric-platform, fabric-runtime,
    fabric-all)."""
    access_log: bool = True
    """One line per call on the `fabric.access` logger (FABRIC_ACCESS_LOG): request id,
    protocol, method, status, principal, tenant, stage, connection, statement
    fingerprint, rows, bytes, cache, duration; never a value. false: no lines (request
    ids are still returned to callers)."""
    max_rows: int = 10_000_000
    """Cap on rows one query may return (FABRIC_MAX_ROWS); also the default."""
    max_result_bytes: int = 256 * MIB
    """Cap on the bytes of one query's result, counted as Arrow data while it streams
    (FABRIC_MAX_RESULT_BYTES); also the default. Past it the result ends truncated, as
    past the row cap."""
    max_type_length: int = 65_535
    """Longest `char(n)` / `varchar(n)` a query may write, below each source's own
    maximum (FABRIC_MAX_TYPE_LENGTH); also the longest cut of a `string_agg`."""
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
    """Seconds between sweeps that reclaim idle open statements
    (FABRIC_STATEMENT_SWEEP_INTERVAL)."""
    max_open_statements: int = 1000
    """Statements open for paging in the whole gateway (FABRIC_MAX_OPEN_STATEMENTS)."""
    tenant_max_statements: int = 200
    """Statements one tenant may hold open (FABRIC_TENANT_MAX_STATEMENTS)."""
    principal_max_statements: int = 50
    """Statements one principal (token subject) may hold open
    (FABRIC_PRINCIPAL_MAX_STATEMENTS)."""
    statement_buffer_bytes: int = 8 * MIB
    """Bytes of rows an open statement reads ahead of its caller
    (FABRIC_STATEMENT_BUFFER_BYTES): a result that fits is read whole when the statement
    opens and its source connection goes back to the pool at once; a larger one keeps
    its connection between pages."""
    statement_pinned_idle_limit: float = 30.0
    """Seconds an open statement that still holds a source connection may sit idle before
    it is purged (FABRIC_STATEMENT_PINNED_IDLE_LIMIT)."""
    tenant_max_queries: int = 32
    """Queries one tenant runs at sources at once (FABRIC_TENANT_MAX_QUERIES); an open
    statement holding its connection counts as one."""
    principal_max_queries: int = 8
    """Queries one principal runs at sources at once (FABRIC_PRINCIPAL_MAX_QUERIES)."""
    short_query_rows: int = 1_000
    """A query proven to return at most this many rows (a key lookup, a LIMIT, max_rows)
    is short: it may use the connections held back for short queries
    (FABRIC_SHORT_QUERY_ROWS)."""
    short_query_reserve: int = 1
    """Connections of each source's pool held back for short queries
    (FABRIC_SHORT_QUERY_RESERVE); a pool of one connection holds none back."""
    admission_wait: float = 30.0
    """Longest wait, in seconds, of a query for its share, a source connection or memory
    before it is refused with RESOURCE_EXHAUSTED (FABRIC_ADMISSION_WAIT); never past the
    call's deadline."""
    memory_budget: int = 2048 * MIB
    """Bytes the gateway's results may hold (FABRIC_MEMORY_BUDGET): queries running at
    sources (query_memory each), results being built for the cache, the cache, evicted
    entries still being sent, rows open statements read ahead."""
    query_memory: int = 128 * MIB
    """Bytes reserved on the memory budget for each query running at a source that is not
    short (FABRIC_QUERY_MEMORY); a short one reserves max_message_bytes."""
    federation_memory: int = 512 * MIB
    """Bytes the DuckDB part of one federated query may hold before it spills to a
    temporary directory under FABRIC_HOME (FABRIC_FEDERATION_MEMORY)."""
    federation_threads: int = 2
    """DuckDB threads of one federated query (FABRIC_FEDERATION_THREADS)."""
    federation_dynamic_filter_rows: int = 20_000
    """A join side of a federated query with at most this many rows sends its join keys
    to the other side's source as a bound IN list (FABRIC_FEDERATION_DYNAMIC_FILTER_ROWS;
    a larger side sends none)."""
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
    """Most rows per record batch read from a source."""
    batch_bytes: int = 8 * MIB
    """Bytes a record batch read from a source is sized for (FABRIC_BATCH_BYTES): a
    driver holds a batch's rows before they can be counted, so a query that can make
    wide rows (padded casts, long literals or parameters on every row) is read in
    fewer rows per batch (`CompiledStatement.batch_rows`); and the most bytes a query
    may add to one row itself (`fabric.query.compiler.widths`)."""
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
    health_listen: str = ""
    """A second address serving gRPC health only, without TLS (FABRIC_HEALTH_LISTEN), for
    probes that cannot speak TLS (the kubelet's gRPC probe); unset: health is served on
    the gRPC address only."""
    platform_app_queries: bool = False
    """Whether a platform process (`--role platform`) also serves app tokens' queries
    (FABRIC_PLATFORM_APP_QUERIES), forwarding them over NATS to the stage's runtime
    replicas; off (the default), apps query their stage's replicas directly and the
    platform refuses an app token's query with PERMISSION_DENIED. Developer and admin
    tokens are served either way (previews, the Studio's queries)."""
    platform_source_access: bool = True
    """Whether a platform process (`--role platform`) may open connections to sources
    itself (FABRIC_PLATFORM_SOURCE_ACCESS). Testing a stored connection, discovery,
    selection and refresh in a stage go to that stage's runtime replicas over NATS, which
    resolve the passwords themselves; with this on, the platform does them itself when no
    replica of the stage is serving, and can test a new connection's settings before storing
    them (`verify`). Off, it never connects to a source, so it needs no network reach to
    the stages' databases (paging, which runs on its own engine, is refused). `--role all`
    always does this work itself."""
    bus_source_timeout: float = 60.0
    """Seconds a runtime replica may take to test a connection or read a schema for the
    platform (FABRIC_BUS_SOURCE_TIMEOUT)."""
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

    def metrics_address(self) -> tuple[str, int] | None:
        """(host, port) the Prometheus endpoint listens on; None: no endpoint."""
        if not self.metrics_listen:
            return ("127.0.0.1", self.metrics_port) if self.metrics_port else None
        host, sep, port = self.metrics_listen.rpartition(":")
        if not sep or not host or not port.isdigit() or int(port) > 65535:
            raise InvalidArgument("FABRIC_METRICS_LISTEN must be host:port, e.g. 0.0.0.0:9464")
        return host.strip("[]"), int(port)

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
    def federation_temp_root(self) -> Path:
        """Where federated queries spill (one directory per query, wiped when it ends,
        the whole root wiped when the gateway starts)."""
        return self.home / "federation-tmp"

    @property
    def metadata_path(self) -> Path:
        return self.home / "metadata.sqlite"

    @classmethod
    def from_env(
        cls,
        environ: Mapping[str, str] | None = None,
        *,
        config_file: Path | None = None,
        **overrides: Any,
    ) -> Settings:
        """Settings from the defaults, the configuration file (`config_file`, else the
        one FABRIC_CONFIG names, else none) and the environment, which wins."""
        return resolve_settings(environ, config_file=config_file, **overrides).settings

    def validate(self) -> None:
        positive = (
            "max_rows",
            "max_result_bytes",
            "max_type_length",
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
            "batch_bytes",
            "worker_threads",
            "max_open_statements",
            "tenant_max_statements",
            "principal_max_statements",
            "statement_buffer_bytes",
            "tenant_max_queries",
            "principal_max_queries",
            "short_query_rows",
            "memory_budget",
            "query_memory",
            "federation_memory",
            "federation_threads",
            "federation_dynamic_filter_rows",
            "http_max_body",
        )
        for name in positive:
            if getattr(self, name) <= 0:
                raise InvalidArgument(f"setting {name} must be positive")
        for name in (
            "query_timeout",
            "statement_idle_limit",
            "statement_sweep_interval",
            "statement_pinned_idle_limit",
            "admission_wait",
            "metadata_stale_after",
            "metadata_sweep_interval",
            "bus_connect_timeout",
            "bus_timeout",
            "bus_source_timeout",
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
        if self.metrics_listen:
            self.metrics_address()  # refuses a malformed address at start-up
        if bool(self.tls_cert) != bool(self.tls_key):
            raise InvalidArgument("TLS needs both FABRIC_TLS_CERT and FABRIC_TLS_KEY")
        if self.tls_client_ca and not self.tls_cert:
            raise InvalidArgument(
                "mutual TLS (FABRIC_TLS_CLIENT_CA) needs a server certificate and key too"
            )
        if bool(self.tls_client_cert) != bool(self.tls_client_key):
            raise InvalidArgument(
                "a client certificate needs both FABRIC_TLS_CLIENT_CERT and FABRIC_TLS_CLIENT_KEY"
            )
        if self.bus_retries < 0:
            raise InvalidArgument("setting bus_retries must not be negative")
        if self.shutdown_grace < 0:
            raise InvalidArgument("setting shutdown_grace must not be negative")
        if self.cache_max_ttl < 0:
            raise InvalidArgument("setting cache_max_ttl must not be negative")
        if self.short_query_reserve < 0:
            raise InvalidArgument("setting short_query_reserve must not be negative")
        if self.memory_budget < self.cache_max_bytes + self.query_memory:
            raise InvalidArgument(
                "FABRIC_MEMORY_BUDGET must hold the result cache (FABRIC_CACHE_MAX_BYTES) "
                "and one query (FABRIC_QUERY_MEMORY)"
            )


SECRET_SETTINGS = frozenset({"vault_token"})
"""Settings shown only as redacted."""
_URL_PASSWORD = re.compile(r"(://[^:/@\s]+:)[^@\s]*(@)")


@dataclass(frozen=True, slots=True)
class ResolvedSettings:
    settings: Settings
    origins: dict[str, str]
    """Where each setting that is not its default came from: `file` or `environment`."""
    config_file: Path | None


def setting_names() -> list[str]:
    return [f.name for f in fields(Settings)]


def setting_help(name: str) -> str:
    """The docstring under a setting's declaration (empty when it has none)."""
    return _SETTING_HELP.get(name, "")


def resolve_settings(
    environ: Mapping[str, str] | None = None,
    *,
    config_file: Path | None = None,
    **overrides: Any,
) -> ResolvedSettings:
    env = os.environ if environ is None else environ
    defaults = Settings()
    values: dict[str, Any] = {}
    origins: dict[str, str] = {}
    if config_file is None and env.get("FABRIC_CONFIG"):
        config_file = Path(env["FABRIC_CONFIG"]).expanduser()
    if config_file is not None:
        for name, value in _read_config_file(config_file, defaults).items():
            values[name] = value
            origins[name] = "file"
    for f in fields(Settings):
        variable = f"FABRIC_{f.name.upper()}"
        raw = env.get(variable)
        if raw is None:
            continue
        values[f.name] = _from_text(variable, raw, getattr(defaults, f.name))
        origins[f.name] = "environment"
    for name in overrides:
        origins[name] = "argument"
    settings = replace(defaults, **{**values, **overrides})
    settings.validate()
    return ResolvedSettings(settings, origins, config_file)


def _from_text(variable: str, raw: str, default: Any) -> Any:
    try:
        if isinstance(default, Path):
            return Path(raw).expanduser()
        if isinstance(default, bool):
            return raw.lower() in ("1", "true", "yes")
        if isinstance(default, int):
            return int(raw)
        if isinstance(default, float):
            return float(raw)
        return raw
    except ValueError:
        raise InvalidArgument(f"{variable} must be a {type(default).__name__}") from None


_TOML_KINDS = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}


def _read_config_file(path: Path, defaults: Settings) -> dict[str, Any]:
    """The settings a TOML file sets, each checked against its declared type."""
    try:
        with path.open("rb") as file:
            document = tomllib.load(file)
    except FileNotFoundError:
        raise InvalidArgument(f"configuration file {path} does not exist") from None
    except OSError as error:
        raise InvalidArgument(
            f"configuration file {path} cannot be read ({error.strerror})"
        ) from None
    except tomllib.TOMLDecodeError as error:
        raise InvalidArgument(f"configuration file {path} is not valid TOML: {error}") from None
    names = setting_names()
    values: dict[str, Any] = {}
    for key, value in document.items():
        if key not in names:
            close = difflib.get_close_matches(key, names, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise InvalidArgument(f"{path}: unknown setting {key!r}{hint}")
        default = getattr(defaults, key)
        kind = str if isinstance(default, Path) else type(default)
        accepted = (int, float) if kind is float else (kind,)
        if isinstance(value, bool) is not (kind is bool) or not isinstance(value, accepted):
            raise InvalidArgument(f"{path}: setting {key!r} must be {_TOML_KINDS[kind]}")
        if kind is float:
            value = float(value)
        values[key] = Path(value).expanduser() if isinstance(default, Path) else value
    return values


def redacted(name: str, value: Any) -> Any:
    """A setting's value as it may be shown: secrets hidden, passwords cut from URLs."""
    if name in SECRET_SETTINGS:
        return "<redacted>" if value else ""
    if isinstance(value, str):
        return _URL_PASSWORD.sub(r"\1<redacted>\2", value)
    return value


def describe_settings(resolved: ResolvedSettings) -> str:
    """Every setting as TOML that could be a configuration file (secrets redacted), each
    with its help and where its value came from."""
    source = f"file {resolved.config_file}" if resolved.config_file else "no configuration file"
    lines = [
        "# Fabric settings: default < configuration file < environment (FABRIC_<NAME>)",
        f"# ({source})",
    ]
    for name in setting_names():
        value = redacted(name, getattr(resolved.settings, name))
        origin = {"file": "from the file", "environment": f"from FABRIC_{name.upper()}"}.get(
            resolved.origins.get(name, ""), "default"
        )
        lines.append("")
        lines.extend(f"# {line}" for line in _wrap(setting_help(name)))
        line = f"{name} = {_toml_value(value)}  # {origin}"
        # a redacted secret stays a comment, so the output can serve as a file as is
        lines.append(f"# {line}" if name in SECRET_SETTINGS and value else line)
    return "\n".join(lines) + "\n"


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    return json.dumps(str(value), ensure_ascii=False)  # a valid TOML basic string


def _wrap(text: str, width: int = 86) -> list[str]:
    return textwrap.wrap(text, width) or [""]


def _declared_help() -> dict[str, str]:
    """Each setting's docstring, read from this module's source: the declaration is the
    one place a setting is described."""
    try:
        tree = ast.parse(Path(__file__).read_text(encoding="utf-8"))
    except OSError:
        return {}
    helps: dict[str, str] = {}
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and node.name == "Settings":
            body = node.body
            for current, following in itertools.pairwise(body):
                if (
                    isinstance(current, ast.AnnAssign)
                    and isinstance(current.target, ast.Name)
                    and isinstance(following, ast.Expr)
                    and isinstance(following.value, ast.Constant)
                    and isinstance(following.value.value, str)
                ):
                    helps[current.target.id] = " ".join(following.value.value.split())
    return helps


_SETTING_HELP = _declared_help()
