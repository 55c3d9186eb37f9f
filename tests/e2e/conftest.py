"""A real gateway over a real DuckDB file, reached through the real gRPC client."""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb
import grpc
import pytest

from connectors import Connector, QueryHandle
from fabric.api.background import BackgroundGateway
from fabric.app.gateway import assemble_gateway
from fabric.app.parts import catalog_manager
from fabric.catalog.metadata.sqlite import SqliteMetadataStore
from fabric.clock import FakeClock
from fabric.config import Settings
from fabric.context import DEFAULT_STAGE, DEFAULT_TENANT, RequestContext, Role
from fabric.model import Connection, SettingValue
from fabric.query.engine import QueryEngine
from fabric.query.sources import default_connector_factory
from fabric.security.tokens import LocalKey, TokenConfig, TokenVerifier


class RecordingConnector(Connector):
    """The real connector, with every statement it is asked to run written down."""

    def __init__(
        self, inner: Connector, log: list[tuple[str, tuple[Any, ...]]], gate: threading.Event
    ) -> None:
        super().__init__(inner.config)
        self.inner = inner
        self.log = log
        self.gate = gate
        self.kind = inner.kind  # type: ignore[misc]
        self.dialect = inner.dialect  # type: ignore[misc]
        self.param_style = inner.param_style  # type: ignore[misc]

    def test(self) -> None:
        self.inner.test()

    def introspect(self, schemas: Sequence[str] | None = None) -> Any:
        return self.inner.introspect(schemas)

    def execute(
        self,
        sql: str,
        params: Sequence[Any] = (),
        *,
        timeout: float | None = None,
        batch_rows: int = 65_536,
    ) -> QueryHandle:
        self.log.append((sql, tuple(params)))
        # A test may hold queries at the source's door (the gate) to line up callers.
        if not self.gate.wait(timeout=30):
            raise TimeoutError("the test never opened the gate")
        return self.inner.execute(sql, params, timeout=timeout, batch_rows=batch_rows)

    def close(self) -> None:
        self.inner.close()


@dataclass
class Harness:
    gateway: BackgroundGateway
    engine: QueryEngine
    clock: FakeClock
    store: SqliteMetadataStore
    executed: list[tuple[str, tuple[Any, ...]]] = field(default_factory=list)
    gate: threading.Event = field(default_factory=threading.Event)

    @property
    def address(self) -> str:
        return self.gateway.address


def make_shop(path: Path) -> None:
    with duckdb.connect(str(path)) as con:
        con.execute("""
            CREATE TABLE customers (id INTEGER PRIMARY KEY, name VARCHAR, email VARCHAR,
                                    country VARCHAR);
            CREATE TABLE orders (id INTEGER PRIMARY KEY, customer_id INTEGER
                                 REFERENCES customers(id), amount DECIMAL(12,2),
                                 placed_at TIMESTAMPTZ, note VARCHAR);
            CREATE TABLE payroll (id INTEGER PRIMARY KEY, salary DECIMAL(12,2));
            INSERT INTO customers SELECT i, 'customer ' || i, 'c' || i || '@example.com',
                CASE WHEN i % 3 = 0 THEN 'FR' WHEN i % 3 = 1 THEN 'DE' ELSE 'ÉIRE' END
                FROM range(1, 101) t(i);
            INSERT INTO orders SELECT i, 1 + (i % 100), (i % 997) * 1.25,
                TIMESTAMPTZ '2024-01-01 00:00:00+00' + INTERVAL (i) MINUTE,
                CASE WHEN i % 10 = 0 THEN NULL ELSE 'n' || i END
                FROM range(1, 20001) t(i);
            INSERT INTO payroll VALUES (1, 100000);
        """)


def tenant_from_metadata(context: grpc.aio.ServicerContext) -> RequestContext:
    """Test-only identity: tenant and stage from call metadata, so the harness can act as
    any tenant without minting tokens (token verification has its own tests)."""
    metadata = dict(context.invocation_metadata() or ())
    return RequestContext(
        tenant=metadata.get("x-tenant", DEFAULT_TENANT),
        stage=metadata.get("x-stage", DEFAULT_STAGE),
        role=Role.ADMIN,
        principal="local",
    )


def start_harness(
    tmp_path: Path,
    *,
    verifier: Any = None,
    flight: bool = False,
    http: bool = False,
    sign_in: Any = None,
    **overrides: Any,
) -> Harness:
    """The gateway over the shop database; with `flight`, Flight SQL on a port of its own
    (`harness.gateway.flight_uri`); with `http`, the REST API (`harness.gateway.http_url`),
    exchanging sign-in codes with `sign_in`."""
    database = tmp_path / "shop.duckdb"
    make_shop(database)
    store = SqliteMetadataStore(tmp_path / "metadata.sqlite")
    manager = catalog_manager(store)
    for tenant in (DEFAULT_TENANT, "other"):
        manager.create_connection(tenant, "shop", "duckdb", {"*": {"path": str(database)}})
    manager.create_connection(
        "default", "prod_only", "duckdb", {"production": {"path": str(database)}}
    )
    manager.select("default", "prod_only", "production", "orders")
    manager.create_connection("other", "b_only", "duckdb", {"*": {"path": str(database)}})
    manager.select("other", "b_only", DEFAULT_STAGE, "orders")
    for tenant in (DEFAULT_TENANT, "other"):
        manager.select(tenant, "shop", DEFAULT_STAGE, "customers", ["id", "name", "country"])
        manager.select(tenant, "shop", DEFAULT_STAGE, "orders")
    executed: list[tuple[str, tuple[Any, ...]]] = []
    gate = threading.Event()
    gate.set()
    lock = threading.Lock()

    def factory(
        connection: Connection, settings: Mapping[str, SettingValue], password: str | None
    ) -> Connector:
        with lock:
            return RecordingConnector(
                default_connector_factory(connection, settings, password), executed, gate
            )

    clock = FakeClock()
    settings = Settings(home=tmp_path, metrics_port=0, **overrides)
    engine = QueryEngine(store, settings, clock=clock, connector_factory=factory)
    gateway = BackgroundGateway(
        assemble_gateway(engine, verifier=verifier, sign_in=sign_in)
        if verifier is not None
        else assemble_gateway(engine, context_provider=tenant_from_metadata, sign_in=sign_in),
        flight_address="127.0.0.1:0" if flight else "",
        http_address="127.0.0.1:0" if http else "",
    ).start()
    return Harness(gateway, engine, clock, store, executed, gate)


@pytest.fixture
def harness(tmp_path: Path) -> Iterator[Harness]:
    h = start_harness(tmp_path)
    try:
        yield h
    finally:
        h.gateway.stop()
        h.store.close()


@pytest.fixture
def secured(tmp_path: Path) -> Iterator[tuple[Harness, TokenConfig]]:
    """A harness whose gateway verifies tokens signed with a fresh local key."""
    config = TokenConfig.for_local_key(LocalKey.generate(tmp_path / "token.key"))
    h = start_harness(tmp_path, verifier=TokenVerifier(config))
    try:
        yield h, config
    finally:
        h.gateway.stop()
        h.store.close()
