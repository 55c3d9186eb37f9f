"""A real gateway with its REST API on a free port, over a real PostgreSQL schema and a
real DuckDB file, with tokens of each role; for the REST API's end-to-end tests."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psycopg

from fabric.api.background import BackgroundGateway
from fabric.api.server import Gateway
from fabric.app.gateway import assemble_gateway
from fabric.catalog.metadata.sqlite import SqliteMetadataStore
from fabric.config import Settings
from fabric.context import DEFAULT_STAGE, DEFAULT_TENANT
from fabric.query.engine import QueryEngine
from fabric.security.kms import LocalKeyRing
from fabric.security.secrets import SealedFileSecretStore
from fabric.security.signin import SignInExchange
from fabric.security.tokens import LocalKey, TokenConfig, TokenVerifier, mint_token
from tests.e2e.conftest import make_shop

PASSWORD = "Rest-Canary-4b7e1d"
ROWS = 2_500


@dataclass
class RestGateway:
    home: Path
    background: BackgroundGateway
    store: SqliteMetadataStore
    config: TokenConfig
    key: LocalKey
    pg_url: str
    pg_schema: str
    http: httpx.Client
    tokens: dict[str, str] = field(default_factory=dict)

    @property
    def gateway(self) -> Gateway:
        return self.background.gateway

    @property
    def engine(self) -> QueryEngine:
        return self.gateway.engine

    def token(self, role: str, subject: str | None = None, tenant: str = DEFAULT_TENANT) -> str:
        key = f"{tenant}/{role}/{subject}"
        if key not in self.tokens:
            self.tokens[key] = mint_token(
                self.config,
                tenant=tenant,
                stage=DEFAULT_STAGE,
                role=role,
                subject=subject or f"{role}@example.com",
                ttl=3600,
            )
        return self.tokens[key]

    def call(
        self,
        method: str,
        path: str,
        role: str | None = "admin",
        *,
        subject: str | None = None,
        tenant: str = DEFAULT_TENANT,
        **kwargs: Any,
    ) -> httpx.Response:
        headers = dict(kwargs.pop("headers", {}))
        if role is not None:
            headers["Authorization"] = f"Bearer {self.token(role, subject, tenant)}"
        return self.http.request(method, path, headers=headers, **kwargs)

    def ok(self, method: str, path: str, role: str = "admin", **kwargs: Any) -> Any:
        response = self.call(method, path, role, **kwargs)
        assert response.status_code in (200, 201), (response.status_code, response.text)
        return response.json()

    def pg_settings(self) -> dict[str, Any]:
        url = httpx.URL(self.pg_url)
        return {
            "host": url.host,
            "port": url.port or 5432,
            "user": url.username or "postgres",
            "database": url.path.lstrip("/"),
        }


def make_pg_schema(url: str) -> str:
    """A schema of its own in the test database: items (every value kind the REST API
    encodes), a composite-key parent/child pair, and ROWS rows to page through."""
    schema = f"rest_{secrets.token_hex(4)}"
    with psycopg.connect(url, autocommit=True) as con:
        con.execute(f"""
            CREATE SCHEMA {schema};
            CREATE TABLE {schema}.items (
                id INTEGER PRIMARY KEY, label TEXT, price NUMERIC(12, 2), big BIGINT,
                ratio DOUBLE PRECISION, at TIMESTAMPTZ, day DATE, data BYTEA, secret TEXT);
            INSERT INTO {schema}.items
                SELECT i, 'item ' || i, i * 1.25, 9007199254740993 + i, i / 4.0,
                       TIMESTAMPTZ '2024-01-01 00:00:00+00' + make_interval(mins => i),
                       DATE '2024-01-01' + i, '\\x0001ff'::bytea, 'hidden ' || i
                FROM generate_series(1, {ROWS}) AS t(i);
            UPDATE {schema}.items SET ratio = 'NaN' WHERE id = 1;
            UPDATE {schema}.items SET ratio = '-Infinity' WHERE id = 2;
            CREATE TABLE {schema}.regions (
                country TEXT, code TEXT, name TEXT, PRIMARY KEY (country, code));
            CREATE TABLE {schema}.shops (
                id INTEGER PRIMARY KEY, country TEXT, code TEXT,
                FOREIGN KEY (country, code) REFERENCES {schema}.regions (country, code));
        """)
    return schema


def drop_pg_schema(url: str, schema: str) -> None:
    with psycopg.connect(url, autocommit=True) as con:
        con.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")


def start_rest_gateway(
    home: Path, pg_url: str, *, verify: Any = True, **overrides: Any
) -> Iterator[RestGateway]:
    """The gateway (settings `overrides`), its httpx client (`verify`: how it checks the
    server's certificate under TLS), torn down after."""
    make_shop(home / "shop.duckdb")
    schema = make_pg_schema(pg_url)
    key = LocalKey.generate(home / "token.key")
    config = TokenConfig.for_local_key(key)
    store = SqliteMetadataStore(home / "metadata.sqlite")
    secret_store = SealedFileSecretStore(
        home / "secrets.sealed", LocalKeyRing.open(home / "keyring.json")
    )
    settings = Settings(home=home, metrics_port=0, **overrides)
    engine = QueryEngine(store, settings, secrets=secret_store.get)
    gateway = assemble_gateway(
        engine,
        verifier=TokenVerifier(config),
        secret_store=secret_store,
        sign_in=SignInExchange(key.secret),
    )
    background = BackgroundGateway(gateway, http_address="127.0.0.1:0").start()
    client = httpx.Client(base_url=background.http_url, timeout=60, verify=verify)
    rest = RestGateway(home, background, store, config, key, pg_url, schema, client)
    try:
        yield rest
    finally:
        client.close()
        background.stop()
        store.close()
        drop_pg_schema(pg_url, schema)
