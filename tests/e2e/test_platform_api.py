"""The platform API end to end: a real gateway on a real port, a real DuckDB file, the
sealed local secret store, and the gRPC stubs of ConnectionService and CatalogService."""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
import grpc
import pytest
from google.protobuf.message import Message

from fabric.api.background import BackgroundGateway
from fabric.api.server import Gateway
from fabric.app.gateway import assemble_gateway
from fabric.catalog.metadata.sqlite import SqliteMetadataStore
from fabric.client import FabricClient
from fabric.clock import FakeClock
from fabric.config import Settings
from fabric.context import DEFAULT_TENANT, RequestContext, Role
from fabric.errors import NotFound, QueryRejected, SelectionChanged
from fabric.query.engine import QueryEngine
from fabric.query.sources import ConnectorFactory, default_connector_factory
from fabric.security.kms import LocalKeyRing
from fabric.security.secrets import SealedFileSecretStore
from fabric.v1 import platform_pb2 as pb
from fabric.v1 import platform_pb2_grpc as pb_grpc
from tests.support.leaks import files_containing

PASSWORD = "Platform-Canary-9f3c2a"


def caller(context: grpc.aio.ServicerContext) -> RequestContext:
    """Test identity from call metadata: stage and principal (tokens are tested elsewhere)."""
    metadata = dict(context.invocation_metadata() or ())
    return RequestContext(
        tenant=metadata.get("x-tenant", DEFAULT_TENANT),
        stage=metadata.get("x-stage", "development"),
        role=Role.ADMIN,
        principal=metadata.get("x-principal", "local"),
    )


@dataclass
class Platform:
    """A running gateway with both planes and stubs to call it."""

    home: Path
    background: BackgroundGateway
    gateway: Gateway
    store: SqliteMetadataStore
    secrets: SealedFileSecretStore
    clock: FakeClock
    channel: grpc.Channel
    connections: pb_grpc.ConnectionServiceStub
    catalog: pb_grpc.CatalogServiceStub
    responses: list[Message]

    @property
    def engine(self) -> QueryEngine:
        return self.gateway.engine

    def call(
        self,
        method: Any,
        request: Message,
        *,
        stage: str = "development",
        principal: str = "alice@example.com",
    ) -> Any:
        """Call a platform method; every response is kept, to scan for secrets later."""
        response = method(
            request, timeout=60, metadata=[("x-stage", stage), ("x-principal", principal)]
        )
        self.responses.append(response)
        return response

    def client(self, stage: str = "development") -> FabricClient:
        return FabricClient(self.background.address, timeout=60, metadata=[("x-stage", stage)])


def start_platform(
    home: Path, connector_factory: ConnectorFactory = default_connector_factory
) -> Platform:
    """A platform on a SQLite store under `home`, its connectors (of queries, discovery and
    tests alike) built by `connector_factory`."""
    store = SqliteMetadataStore(home / "metadata.sqlite")
    secrets = SealedFileSecretStore(
        home / "secrets.sealed", LocalKeyRing.open(home / "keyring.json")
    )
    clock = FakeClock()
    engine = QueryEngine(
        store,
        Settings(home=home, metrics_port=0),
        clock=clock,
        secrets=secrets.get,
        connector_factory=connector_factory,
    )
    gateway = assemble_gateway(
        engine,
        context_provider=caller,
        secret_store=secrets,
        clock=clock,
        connector_builder=connector_factory,
    )
    background = BackgroundGateway(gateway).start()
    channel = grpc.insecure_channel(background.address)
    return Platform(
        home,
        background,
        gateway,
        store,
        secrets,
        clock,
        channel,
        pb_grpc.ConnectionServiceStub(channel),
        pb_grpc.CatalogServiceStub(channel),
        [],
    )


def stop_platform(platform: Platform) -> None:
    platform.channel.close()
    platform.background.stop()
    platform.store.close()


def rpc_error(fn: Any, *args: Any, **kwargs: Any) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        fn(*args, **kwargs)
    error: grpc.RpcError = caught.value
    return error


def setting(value: str | int) -> pb.SettingValue:
    if isinstance(value, int):
        return pb.SettingValue(int_value=value)
    return pb.SettingValue(string_value=value)


def stage_config(stage: str, password: str | None = None, **settings: str | int) -> pb.StageConfig:
    config = pb.StageConfig(stage=stage, settings={k: setting(v) for k, v in settings.items()})
    if password is not None:
        config.password = password
    return config


def make_source(path: Path) -> None:
    """A DuckDB file whose two stages name the same data differently: development reads
    dev_sales.orders, production prod_sales.orders_p (other rows, to tell them apart)."""
    with duckdb.connect(str(path)) as con:
        con.execute("""
            CREATE SCHEMA dev_sales; CREATE SCHEMA prod_sales;
            CREATE TABLE dev_sales.orders (id INTEGER PRIMARY KEY, amount INTEGER,
                                           note VARCHAR);
            CREATE TABLE prod_sales.orders_p (id INTEGER PRIMARY KEY, amount INTEGER,
                                              note VARCHAR);
            CREATE TABLE prod_sales.narrow (id INTEGER PRIMARY KEY);
            INSERT INTO dev_sales.orders SELECT i, i, 'dev' FROM range(1, 4) t(i);
            INSERT INTO prod_sales.orders_p SELECT i, i * 100, 'prod' FROM range(1, 6) t(i);
            INSERT INTO prod_sales.narrow VALUES (1);
        """)


@pytest.fixture
def platform(tmp_path: Path) -> Iterator[Platform]:
    make_source(tmp_path / "shop.duckdb")
    running = start_platform(tmp_path)
    try:
        yield running
    finally:
        stop_platform(running)


def create_shop(p: Platform, name: str = "shop", password: str | None = PASSWORD) -> pb.Connection:
    return p.call(
        p.connections.CreateConnection,
        pb.CreateConnectionRequest(
            name=name,
            kind="duckdb",
            stages=[stage_config("*", password, path=str(p.home / "shop.duckdb"))],
        ),
    )


def select_orders(p: Platform) -> pb.SelectResponse:
    return p.call(
        p.catalog.Select,
        pb.SelectRequest(
            connection="shop",
            tables=[
                pb.TableSelection(
                    table="dev_sales.orders",
                    entity_name="orders",
                    stage_tables={"production": "prod_sales.orders_p"},
                )
            ],
        ),
    )


def state(p: Platform) -> tuple[Any, ...]:
    """Everything at rest a bad request must leave as it was (the audit trail's record of
    a refused attempt aside: that is the one thing a refusal writes)."""
    connections = p.store.list_connections(DEFAULT_TENANT)
    catalogs = {c.name: p.store.catalog(DEFAULT_TENANT, c.name) for c in connections}
    events = p.store.list_audit(DEFAULT_TENANT, limit=10_000)
    return (
        connections,
        catalogs,
        p.secrets.refs(),
        len([e for e in events if not e.action.endswith(".refused")]),
    )


# -- connections ----------------------------------------------------------------------------


def test_connection_lifecycle_with_a_write_only_password(
    platform: Platform, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    p = platform
    created = create_shop(p)
    assert created.version == 1 and created.kind == "duckdb"
    assert [(s.stage, s.has_password, s.HasField("password")) for s in created.stages] == [
        ("*", True, False)
    ]
    assert p.secrets.refs() == ["connections/default/shop/all"]

    got = p.call(p.connections.GetConnection, pb.GetConnectionRequest(name="shop"))
    assert got.stages[0].settings["path"].string_value.endswith("shop.duckdb")
    listed = p.call(p.connections.ListConnections, pb.ListConnectionsRequest())
    assert [c.name for c in listed.connections] == ["shop"]
    tested = p.call(p.connections.TestConnection, pb.TestConnectionRequest(name="shop"))
    assert tested.stage == "development"

    # A new password for production only: a new reference, the old one still serves '*'.
    rotated = "Rotated-" + PASSWORD
    updated = p.call(
        p.connections.UpdateConnection,
        pb.UpdateConnectionRequest(
            name="shop",
            expected_version=1,
            stages=[stage_config("production", rotated, path=str(p.home / "shop.duckdb"))],
        ),
    )
    assert updated.version == 2
    assert {s.stage: s.has_password for s in updated.stages} == {"*": True, "production": True}
    assert p.secrets.refs() == [
        "connections/default/shop/all",
        "connections/default/shop/production-v2",
    ]
    cleared = p.call(
        p.connections.UpdateConnection,
        pb.UpdateConnectionRequest(name="shop", clear_password_stages=["production"]),
    )
    assert cleared.version == 3 and p.secrets.refs() == ["connections/default/shop/all"]

    deleted = p.call(p.connections.DeleteConnection, pb.DeleteConnectionRequest(name="shop"))
    assert deleted.secrets_removed == 1 and p.secrets.refs() == []
    error = rpc_error(p.connections.GetConnection, pb.GetConnectionRequest(name="shop"))
    assert error.code() == grpc.StatusCode.NOT_FOUND

    for secret in (PASSWORD, rotated):
        assert all(secret.encode() not in r.SerializeToString() for r in p.responses)
        assert secret not in caplog.text
        assert files_containing(p.home, secret) == []


def test_bad_input_gets_the_right_status_and_changes_nothing(platform: Platform) -> None:
    p = platform
    create_shop(p)
    select_orders(p)
    before = state(p)
    path = str(p.home / "shop.duckdb")
    cases: list[tuple[Any, Message, grpc.StatusCode, str]] = [
        (
            p.connections.CreateConnection,
            pb.CreateConnectionRequest(
                name="x", kind="oracle", stages=[stage_config("*", path=path)]
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
            "unknown connection kind",
        ),
        (
            p.connections.CreateConnection,
            pb.CreateConnectionRequest(name="x", kind="duckdb"),
            grpc.StatusCode.INVALID_ARGUMENT,
            "at least one stage",
        ),
        (
            p.connections.CreateConnection,
            pb.CreateConnectionRequest(
                name="shop", kind="duckdb", stages=[stage_config("*", "other-pw", path=path)]
            ),
            grpc.StatusCode.ALREADY_EXISTS,
            "already exists",
        ),
        (
            p.connections.CreateConnection,
            pb.CreateConnectionRequest(
                name="pg",
                kind="postgres",
                verify=True,
                stages=[
                    stage_config("*", PASSWORD, host="127.0.0.1", port=1, database="x", user="u")
                ],
            ),
            grpc.StatusCode.UNAVAILABLE,
            "",
        ),
        (
            p.connections.CreateConnection,
            pb.CreateConnectionRequest(
                name="x", kind="duckdb", stages=[stage_config("*", path=path, db_password="v")]
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
            "looks like a secret",
        ),
        (
            p.connections.UpdateConnection,
            pb.UpdateConnectionRequest(
                name="shop", expected_version=7, stages=[stage_config("test", path=path)]
            ),
            grpc.StatusCode.FAILED_PRECONDITION,
            "changed since version 7",
        ),
        (
            p.connections.UpdateConnection,
            pb.UpdateConnectionRequest(name="shop", remove_stages=["nowhere"]),
            grpc.StatusCode.NOT_FOUND,
            "no stage 'nowhere'",
        ),
        (
            p.connections.DeleteConnection,
            pb.DeleteConnectionRequest(name="ghost"),
            grpc.StatusCode.NOT_FOUND,
            "ghost",
        ),
        (
            p.catalog.Select,
            pb.SelectRequest(
                connection="shop", tables=[pb.TableSelection(table="dev_sales.nothing")]
            ),
            grpc.StatusCode.NOT_FOUND,
            "dev_sales.nothing",
        ),
        (
            p.catalog.Select,
            pb.SelectRequest(
                connection="shop",
                tables=[
                    pb.TableSelection(table="dev_sales.orders", columns=["id", "ghost_column"])
                ],
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
            "ghost_column",
        ),
        # All or none: a good table and a bad one select neither.
        (
            p.catalog.Select,
            pb.SelectRequest(
                connection="shop",
                tables=[
                    pb.TableSelection(table="prod_sales.narrow"),
                    pb.TableSelection(table="dev_sales.orders", columns=["nope"]),
                ],
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
            "nope",
        ),
        # The production table must have every selected column.
        (
            p.catalog.Select,
            pb.SelectRequest(
                connection="shop",
                tables=[
                    pb.TableSelection(
                        table="dev_sales.orders",
                        entity_name="orders2",
                        stage_tables={"production": "prod_sales.narrow"},
                    )
                ],
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
            "no column 'amount'",
        ),
        (
            p.catalog.Select,
            pb.SelectRequest(
                connection="shop",
                tables=[pb.TableSelection(table="prod_sales.orders_p", entity_name="orders")],
            ),
            grpc.StatusCode.ALREADY_EXISTS,
            "already stands for",
        ),
        (
            p.catalog.Unselect,
            pb.UnselectRequest(connection="shop", entities=["ghost"]),
            grpc.StatusCode.NOT_FOUND,
            "ghost",
        ),
        (
            p.catalog.Unselect,
            pb.UnselectRequest(connection="shop", entities=["orders"], expected_catalog_version=1),
            grpc.StatusCode.FAILED_PRECONDITION,
            "changed since version 1",
        ),
        (
            p.catalog.Discover,
            pb.DiscoverRequest(connection="nope"),
            grpc.StatusCode.NOT_FOUND,
            "nope",
        ),
    ]
    for method, request, code, text in cases:
        error = rpc_error(method, request, timeout=60)
        assert error.code() == code, (request, error.details())
        assert text in (error.details() or ""), (request, error.details())
        assert PASSWORD not in (error.details() or "")
        assert state(p) == before, request
    # The two version conflicts are on the audit trail, as refused attempts.
    refused = [
        (e.action, dict(e.details)["reason"], e.connection)
        for e in p.store.list_audit(DEFAULT_TENANT)
        if e.action.endswith(".refused")
    ]
    assert sorted(refused) == [
        ("catalog.unselect.refused", "version_conflict", "shop"),
        ("connection.update.refused", "version_conflict", "shop"),
    ]
    # A stage the connection has no settings for.
    p.call(
        p.connections.UpdateConnection,
        pb.UpdateConnectionRequest(
            name="shop", stages=[stage_config("test", path=path)], remove_stages=["*"]
        ),
    )
    before = state(p)
    error = rpc_error(
        p.catalog.Discover, pb.DiscoverRequest(connection="shop", stage="qa"), timeout=60
    )
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "no settings for stage 'qa'" in (error.details() or "")
    assert state(p) == before


# -- catalog --------------------------------------------------------------------------------


def test_discovery_shows_keys_and_selects_nothing(platform: Platform) -> None:
    p = platform
    create_shop(p)
    found = p.call(
        p.catalog.Discover, pb.DiscoverRequest(connection="shop", schemas=["prod_sales"])
    )
    tables = {f"{t.schema}.{t.name}": t for t in found.tables}
    assert set(tables) == {"prod_sales.orders_p", "prod_sales.narrow"}
    orders = tables["prod_sales.orders_p"]
    assert list(orders.primary_key) == ["id"]
    assert [(c.name, c.arrow_type, c.supported) for c in orders.columns] == [
        ("id", "int32", True),
        ("amount", "int32", True),
        ("note", "string", True),
    ]
    listed = p.call(p.catalog.ListEntities, pb.ListEntitiesRequest(connection="shop"))
    assert list(listed.entities) == []


def test_entity_names_map_to_each_stages_own_table(platform: Platform) -> None:
    p = platform
    create_shop(p)
    selected = select_orders(p)
    [entity] = selected.entities
    assert (entity.name, entity.schema, entity.table) == ("orders", "dev_sales", "orders")
    assert [(s.stage, s.schema, s.table) for s in entity.stage_tables] == [
        ("production", "prod_sales", "orders_p")
    ]
    sql = "SELECT COUNT(*) AS n, SUM(amount) AS total, MIN(note) AS note FROM orders"
    with p.client("development") as dev, p.client("production") as prod:
        assert dev.query("shop", sql).to_pylist() == [{"n": 3, "total": 6, "note": "dev"}]
        assert prod.query("shop", sql).to_pylist() == [{"n": 5, "total": 1500, "note": "prod"}]
        # Any other stage uses the entity's own table.
        with p.client("test") as test:
            assert test.query("shop", sql).to_pylist()[0]["note"] == "dev"
    # Same text, same catalog version, three stages: three compiled statements.
    assert p.engine.statements.size == 3
    # Selecting again keeps the stage mapping.
    again = p.call(
        p.catalog.Select,
        pb.SelectRequest(
            connection="shop",
            tables=[
                pb.TableSelection(
                    table="dev_sales.orders", entity_name="orders", columns=["id", "amount"]
                )
            ],
        ),
    )
    assert [c.name for c in again.entities[0].columns] == ["id", "amount"]
    assert len(again.entities[0].stage_tables) == 1


def test_a_refresh_that_finds_nothing_changes_nothing(platform: Platform) -> None:
    """No drift: no `new_column` for the columns left unselected, the catalog version
    stays, and what is held in memory (a cached result, a compiled statement) stays."""
    p = platform
    create_shop(p)
    before = p.call(
        p.catalog.Select,
        pb.SelectRequest(
            connection="shop",
            tables=[
                pb.TableSelection(
                    table="dev_sales.orders",
                    entity_name="orders",
                    columns=["id", "amount"],
                    stage_tables={"production": "prod_sales.orders_p"},
                )
            ],
        ),
    ).catalog_version
    sql = "SELECT id, amount FROM orders ORDER BY id"
    with p.client() as client:
        assert client.execute("shop", sql, cache_ttl=600).summary.from_cache is False
        held = p.engine.snapshot()
        for stage in ("development", "production"):
            refreshed = p.call(p.catalog.Refresh, pb.RefreshRequest(connection="shop"), stage=stage)
            assert list(refreshed.drift) == [], stage  # `note` is unselected, not new
            assert refreshed.previous_catalog_version == refreshed.catalog_version == before
            assert [e.name for e in refreshed.entities] == ["orders"]
        assert client.execute("shop", sql, cache_ttl=600).summary.from_cache is True
    after = p.engine.snapshot()
    assert after["purge_connection_purged"] == held["purge_connection_purged"]
    assert after["result_cache_entries"] == 1 and after["compiled_statements"] == 1
    assert p.store.catalog_version(DEFAULT_TENANT, "shop") == before


# -- departure --------------------------------------------------------------------------------


def purges(p: Platform) -> dict[str, float]:
    from prometheus_client import generate_latest

    text = generate_latest(p.engine.metrics.registry).decode()
    found: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("fabric_purges_total{"):
            reason = line.split('reason="', 1)[1].split('"', 1)[0]
            found[reason] = float(line.rsplit(" ", 1)[1])
    return found


def test_delete_purges_everything_at_rest_and_in_memory(platform: Platform) -> None:
    p = platform
    create_shop(p)
    select_orders(p)
    sql = "SELECT id, amount FROM orders ORDER BY id"
    with p.client() as client:
        assert client.execute("shop", sql, cache_ttl=600).summary.from_cache is False
        assert client.execute("shop", sql, cache_ttl=600).summary.from_cache is True
        statement = client.open_statement("shop", sql, page_rows=1)
        assert statement.fetch() is not None  # the first page, sent with the open
        assert p.engine.open_statements.stats.open == 1
        assert p.engine.results.stats.entries == 1 and p.engine.statements.size == 1

        p.call(p.connections.DeleteConnection, pb.DeleteConnectionRequest(name="shop"))

        assert p.engine.results.stats.entries == 0
        assert p.engine.open_statements.stats.open == 0
        assert p.engine.statements.size == 0
        assert p.engine.sources.held() == []
        # The statement opened before the delete is told why it stopped, once.
        with pytest.raises(SelectionChanged, match="connection 'shop' was deleted"):
            statement.fetch()
        with pytest.raises(NotFound):
            statement.fetch()
        with pytest.raises(NotFound):
            client.execute("shop", sql, cache_ttl=600)
    counted = purges(p)
    assert counted["statement_revoked"] == 1
    assert counted["connection_deleted"] == 1 and counted["result_purged"] == 1
    # Purged once when the selection was made (nothing held yet), once by the delete.
    assert counted["compiled_purged"] == 1 and counted["connection_purged"] == 2
    # At rest: no record, no selection, no secret.
    assert p.store.list_connections(DEFAULT_TENANT) == [] and p.secrets.refs() == []
    with pytest.raises(NotFound):
        p.store.catalog(DEFAULT_TENANT, "shop")
    # Created again under the same name, nothing of the old one comes back.
    create_shop(p, password=None)
    with p.client() as client, pytest.raises(QueryRejected, match="orders"):
        client.execute("shop", sql, cache_ttl=600)


def test_stale_metadata_is_dropped_after_the_configured_time(platform: Platform) -> None:
    p = platform
    create_shop(p)
    select_orders(p)
    with p.client() as client:
        client.query("shop", "SELECT id FROM orders")
    assert p.engine.sources.held() == [(DEFAULT_TENANT, "shop", "development")]
    sweeper = p.gateway.stale_sweeper
    assert sweeper.max_age == 4 * 3600
    assert sweeper.sweep() == 0  # confirmed: the connection is there
    # Gone behind the runtime's back (another process, an event that never came).
    p.store.delete_connection(DEFAULT_TENANT, "shop")
    p.clock.advance(4 * 3600 - 1)
    assert sweeper.sweep() == 0 and p.engine.sources.held() != []
    p.clock.advance(1)  # 4 h since it was last confirmed
    assert sweeper.sweep() == 1
    assert p.engine.sources.held() == [] and p.engine.statements.size == 0
    assert purges(p)["metadata_stale"] == 1


# -- audit ---------------------------------------------------------------------------------------


def test_audit_lists_every_change_with_actor_and_stage_and_no_secret(platform: Platform) -> None:
    p = platform
    create_shop(p)
    select_orders(p)
    p.call(p.catalog.Refresh, pb.RefreshRequest(connection="shop"), stage="production")
    p.call(
        p.connections.UpdateConnection,
        pb.UpdateConnectionRequest(name="shop", stages=[stage_config("*", "New-" + PASSWORD)]),
        principal="bob",
    )
    p.call(p.catalog.Unselect, pb.UnselectRequest(connection="shop", entities=["orders"]))
    p.call(p.connections.DeleteConnection, pb.DeleteConnectionRequest(name="shop"))
    events = p.call(p.connections.ListAudit, pb.ListAuditRequest(connection="shop")).events
    seen = [(e.action, e.actor, e.connection, e.stage) for e in reversed(events)]
    assert seen == [
        ("connection.create", "alice@example.com", "shop", "*"),
        ("catalog.select", "alice@example.com", "shop", "development"),
        # A refresh that found nothing changed nothing: no catalog bump.
        ("catalog.refresh", "alice@example.com", "shop", "production"),
        ("connection.update", "bob", "shop", "*"),
        ("catalog.unselect", "alice@example.com", "shop", "development"),
        ("connection.delete", "alice@example.com", "shop", ""),
    ]
    assert all(e.at.endswith("+00:00") for e in events)
    for event in events:
        assert PASSWORD not in event.SerializeToString().decode(errors="replace")


def _names(items: Sequence[Any]) -> list[str]:
    return [item.name for item in items]
