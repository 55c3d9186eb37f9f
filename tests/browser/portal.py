"""The gateway the portal tests sign in to: tokens and sign-in codes minted with its
local key, and the few REST calls a test makes to set the scene without the page."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlparse

import psycopg

from fabric.security.signin import mint_sign_in_code
from fabric.security.tokens import TokenConfig, mint_token

TENANT = "default"
STAGE = "development"


@dataclass(frozen=True)
class Portal:
    url: str
    """Where the page is: http://127.0.0.1:PORT"""
    tokens: TokenConfig
    secret: bytes
    postgres_url: str
    schema: str
    """The PostgreSQL schema holding this run's tables."""

    def token(self, role: str, subject: str) -> str:
        return mint_token(
            self.tokens, tenant=TENANT, stage=STAGE, role=role, subject=subject, ttl=600
        )

    def sign_in_code(self, role: str, subject: str) -> str:
        return mint_sign_in_code(
            self.secret, tenant=TENANT, stage=STAGE, role=role, subject=subject
        )

    @property
    def _pg(self) -> Any:
        return urlparse(self.postgres_url)

    @property
    def pg_host(self) -> str:
        return str(self._pg.hostname or "127.0.0.1")

    @property
    def pg_port(self) -> int:
        return int(self._pg.port or 5432)

    @property
    def pg_database(self) -> str:
        return str(self._pg.path.lstrip("/") or "test")

    @property
    def pg_user(self) -> str:
        return str(self._pg.username or "postgres")

    def page_headers(self) -> dict[str, str]:
        """The headers the page itself is served with."""
        with urllib.request.urlopen(self.url + "/", timeout=30) as response:
            return {k.lower(): v for k, v in response.headers.items()}

    @contextmanager
    def table_locked(self, table: str) -> Iterator[None]:
        """Holds an exclusive lock on a table of the run's schema: a query of it waits."""
        with psycopg.connect(self.postgres_url) as connection:
            connection.execute(
                f"LOCK TABLE {self.schema}.{table} IN ACCESS EXCLUSIVE MODE".encode()
            )
            try:
                yield
            finally:
                connection.rollback()

    def source_sql(self, statement: str) -> None:
        """Change the source behind the gateway's back (a schema change to refresh)."""
        with psycopg.connect(self.postgres_url, autocommit=True) as connection:
            connection.execute(statement.encode())

    def api(self, method: str, path: str, body: Any, token: str) -> Any:
        request = urllib.request.Request(
            self.url + path,
            method=method,
            data=None if body is None else json.dumps(body).encode(),
            headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                return json.loads(response.read() or b"null")
        except urllib.error.HTTPError as error:
            detail = error.read().decode(errors="replace")
            error.close()
            raise AssertionError(f"{method} {path}: {error.code} {detail}") from None

    def create_connection(self, name: str, token: str) -> None:
        settings = {
            "host": self.pg_host,
            "port": self.pg_port,
            "database": self.pg_database,
            "user": self.pg_user,
        }
        stages = [{"stage": "*", "settings": settings, "password": "unused-by-trust-auth"}]
        self.api(
            "POST",
            "/api/v1/connections",
            {"name": name, "kind": "postgres", "stages": stages, "verify": True},
            token,
        )

    def select(self, connection: str, table: str, token: str) -> None:
        self.api(
            "POST",
            f"/api/v1/connections/{connection}/entities",
            {"schema": self.schema, "table": table},
            token,
        )
