"""CatalogManager against a real SQLite store and the real DuckDB connector."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import duckdb
import pytest

from connectors.base import Connector, ConnectorConfig, ParamStyle, QueryHandle
from connectors.duckdb import DuckDBConnector
from fabric.catalog.manager import CatalogManager
from fabric.catalog.metadata.sqlite import SqliteMetadataStore
from fabric.demo_data import create_demo_database
from fabric.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from fabric.model import Connection, Entity, TableInfo

T = "acme"
DEV = "development"


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo database plus a second schema that also has an `orders` table and a table
    whose name is not an SQL identifier."""
    path = tmp_path_factory.mktemp("source") / "shop.duckdb"
    create_demo_database(path)
    with duckdb.connect(str(path)) as con:
        con.execute("CREATE SCHEMA sales")
        con.execute("CREATE TABLE sales.orders (id INTEGER PRIMARY KEY, amount DECIMAL(10,2))")
        con.execute('CREATE TABLE sales."Weird Name" (x INTEGER)')
    return path


class Connectors:
    """A connector factory that records what it opened, to check everything is closed."""

    def __init__(self, wrap: Callable[[Connector], Connector] | None = None) -> None:
        self.opened: list[Connector] = []
        self.closed = 0
        self._wrap = wrap

    def __call__(self, connection: Connection, stage: str) -> Connector:
        settings = connection.settings_for(stage)
        assert settings is not None
        connector: Connector = DuckDBConnector(ConnectorConfig(settings=settings))
        if self._wrap is not None:
            connector = self._wrap(connector)
        original_close = connector.close

        def close() -> None:
            self.closed += 1
            original_close()

        connector.close = close  # type: ignore[method-assign]
        self.opened.append(connector)
        return connector


class EmailUnsupported(Connector):
    """The DuckDB connector, except that it reports `customers.email` as a type the
    gateway cannot carry (as a source's geometry or XML column would be)."""

    kind = "duckdb"
    dialect = "duckdb"
    param_style = ParamStyle.QMARK

    def __init__(self, inner: Connector) -> None:
        super().__init__(inner.config)
        self._inner = inner

    def test(self) -> None:
        self._inner.test()

    def introspect(self, schemas: Sequence[str] | None = None) -> list[TableInfo]:
        tables = self._inner.introspect(schemas)
        return [
            dataclasses.replace(
                t,
                columns=tuple(
                    dataclasses.replace(c, source_type="EMAIL_ADDRESS", arrow_type=None)
                    if c.name == "email"
                    else c
                    for c in t.columns
                ),
            )
            if t.name == "customers"
            else t
            for t in tables
        ]

    def execute(
        self,
        sql: str,
        params: Sequence[Any] = (),
        *,
        timeout: float | None = None,
        batch_rows: int = 65_536,
    ) -> QueryHandle:
        return self._inner.execute(sql, params, timeout=timeout, batch_rows=batch_rows)

    def close(self) -> None:
        self._inner.close()


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SqliteMetadataStore]:
    with SqliteMetadataStore(tmp_path / "meta.sqlite") as s:
        yield s


@pytest.fixture
def factory() -> Connectors:
    return Connectors()


@pytest.fixture
def manager(store: SqliteMetadataStore, factory: Connectors, source: Path) -> CatalogManager:
    m = CatalogManager(store, factory)
    m.create_connection(T, "shop", "duckdb", {DEV: {"path": str(source)}})
    return m


def names(entity: Entity) -> list[str]:
    return [c.name for c in entity.columns]


def test_create_connection(manager: CatalogManager) -> None:
    connection = manager.get_connection(T, "shop")
    assert connection.kind == "duckdb"
    assert [c.name for c in manager.list_connections(T)] == ["shop"]
    with pytest.raises(AlreadyExists):
        manager.create_connection(T, "shop", "duckdb", {DEV: {"path": "x"}})
    with pytest.raises(InvalidArgument, match="unknown connection kind 'oracle'"):
        manager.create_connection(T, "other", "oracle", {DEV: {"path": "x"}})
    with pytest.raises(InvalidArgument, match="secret store"):
        manager.create_connection(T, "pg", "postgres", {DEV: {"host": "h", "password": "p"}})


def test_test_connection(manager: CatalogManager, factory: Connectors) -> None:
    manager.test_connection(T, "shop", DEV)
    assert factory.closed == len(factory.opened) == 1


def test_discover_finds_tables_and_keys(manager: CatalogManager, factory: Connectors) -> None:
    tables = {(t.schema, t.name): t for t in manager.discover(T, "shop", DEV)}
    assert {
        ("main", "regions"),
        ("main", "customers"),
        ("main", "products"),
        ("main", "orders"),
        ("main", "order_items"),
        ("sales", "orders"),
        ("sales", "Weird Name"),
    } <= set(tables)
    items = tables[("main", "order_items")]
    assert items.primary_key == ("order_id", "line_no")
    assert {(fk.columns, fk.referenced_table) for fk in items.foreign_keys} == {
        (("order_id",), "orders"),
        (("product_id",), "products"),
    }
    only_sales = manager.discover(T, "shop", DEV, schemas=["sales"])
    assert {t.schema for t in only_sales} == {"sales"}
    assert factory.closed == len(factory.opened) == 2
    assert manager.list_entities(T, "shop") == []  # discovery stores nothing


def test_select_columns_always_includes_the_primary_key(manager: CatalogManager) -> None:
    before = manager.catalog_version(T, "shop")
    customers = manager.select(T, "shop", DEV, "main.customers", ["name", "region_id"])
    assert customers.name == "customers"
    assert (customers.schema, customers.table) == ("main", "customers")
    assert names(customers) == ["id", "name", "region_id"]  # table order; no email
    assert customers.primary_key == ("id",)
    assert [(fk.columns, fk.referenced_table) for fk in customers.foreign_keys] == [
        (("region_id",), "regions")
    ]
    assert manager.catalog_version(T, "shop") > before
    assert manager.list_entities(T, "shop") == [customers]
    # What the table has but apps may not read is recorded by name, for the compiler.
    assert customers.hidden_columns == ("email", "signup_date", "segment")


def test_select_keeps_only_foreign_keys_whose_columns_are_selected(
    manager: CatalogManager,
) -> None:
    items = manager.select(T, "shop", DEV, "order_items", ["quantity"], entity_name="lines")
    assert items.name == "lines"
    assert names(items) == ["order_id", "line_no", "quantity"]
    assert items.primary_key == ("order_id", "line_no")
    assert [fk.columns for fk in items.foreign_keys] == [("order_id",)]


def test_select_all_columns_by_default(manager: CatalogManager) -> None:
    products = manager.select(T, "shop", DEV, "products")
    assert names(products) == ["id", "name", "category", "unit_price"]
    assert str(products.columns[3].arrow_type) == "decimal128(10, 2)"


def test_ambiguous_table_lists_candidates(manager: CatalogManager) -> None:
    with pytest.raises(
        InvalidArgument, match=r"'orders' is ambiguous.*main\.orders, sales\.orders"
    ):
        manager.select(T, "shop", DEV, "orders")
    assert manager.select(T, "shop", DEV, "sales.orders", entity_name="sales_orders").schema == (
        "sales"
    )


def test_table_names_match_ignoring_case(manager: CatalogManager) -> None:
    entity = manager.select(T, "shop", DEV, "MAIN.Customers", ["NAME"])
    assert (entity.schema, entity.table, entity.name) == ("main", "customers", "customers")
    assert names(entity) == ["id", "name"]


def test_unknown_table_and_column(manager: CatalogManager) -> None:
    with pytest.raises(NotFound, match=r"'main\.nope'"):
        manager.select(T, "shop", DEV, "main.nope")
    with pytest.raises(InvalidArgument, match="no column 'salary'"):
        manager.select(T, "shop", DEV, "customers", ["name", "salary"])
    assert manager.list_entities(T, "shop") == []


def test_entity_names(manager: CatalogManager) -> None:
    with pytest.raises(InvalidArgument, match="not a valid SQL identifier"):
        manager.select(T, "shop", DEV, "customers", entity_name="1st")
    with pytest.raises(InvalidArgument, match="pass entity_name"):
        manager.select(T, "shop", DEV, "sales.Weird Name")
    weird = manager.select(T, "shop", DEV, "sales.Weird Name", entity_name="weird")
    assert (weird.schema, weird.table) == ("sales", "Weird Name")

    manager.select(T, "shop", DEV, "main.orders")
    with pytest.raises(AlreadyExists, match=r"already stands for main\.orders"):
        manager.select(T, "shop", DEV, "sales.orders", entity_name="ORDERS")
    # The same table again under the same name (any case) refreshes the entity.
    refreshed = manager.select(T, "shop", DEV, "main.orders", ["status"], entity_name="Orders")
    assert names(refreshed) == ["id", "status"]
    assert [e.name for e in manager.list_entities(T, "shop")] == ["Orders", "weird"]


def test_stage_without_settings(manager: CatalogManager, factory: Connectors) -> None:
    with pytest.raises(FailedPrecondition, match="no settings for stage 'production'"):
        manager.discover(T, "shop", "production")
    assert factory.opened == []
    with pytest.raises(NotFound):
        manager.discover(T, "missing", DEV)


def test_select_all_and_unselect(manager: CatalogManager, factory: Connectors) -> None:
    main = manager.select_all(T, "shop", DEV, schemas=["main"])
    assert sorted(e.name for e in main) == [
        "customers",
        "order_items",
        "orders",
        "products",
        "regions",
    ]
    assert manager.list_entities(T, "shop") == sorted(main, key=lambda e: e.name)
    customers = next(e for e in main if e.name == "customers")
    assert "email" in names(customers)  # every supported column

    with pytest.raises(AlreadyExists, match=r"'orders' already stands for main\.orders"):
        manager.select(T, "shop", DEV, "sales.orders", entity_name="orders")

    # Across all schemas, tables sharing a name get schema-qualified entity names.
    manager.unselect(T, "shop", "orders")
    everything = manager.select_all(T, "shop", DEV)
    assert {e.name for e in everything} == {
        "customers",
        "order_items",
        "main_orders",
        "products",
        "regions",
        "sales_orders",
        "Weird_Name",
    }
    version = manager.unselect(T, "shop", ["main_orders", "SALES_ORDERS"])
    assert version == manager.catalog_version(T, "shop")
    assert "main_orders" not in {e.name for e in manager.list_entities(T, "shop")}
    with pytest.raises(NotFound, match="'ghost'"):
        manager.unselect(T, "shop", ["ghost"])
    assert factory.closed == len(factory.opened)


def test_hidden_columns_of_every_stage_read_are_kept(
    store: SqliteMetadataStore, factory: Connectors, source: Path
) -> None:
    manager = CatalogManager(store, factory)
    both = {"path": str(source)}
    manager.create_connection(T, "shop", "duckdb", {DEV: both, "production": both})
    # Production reads the entity from sales.orders, which has an `amount` main.orders lacks.
    orders = manager.select(
        T, "shop", DEV, "main.orders", ["id"], stage_tables={"production": "sales.orders"}
    )
    assert orders.hidden_columns == ("customer_id", "order_date", "status", "ordered_at", "amount")
    # Selecting more columns later takes them out; what only production showed stays.
    wider = manager.select(T, "shop", DEV, "main.orders", ["id", "status"])
    assert wider.hidden_columns == ("customer_id", "order_date", "ordered_at", "amount")
    assert manager.list_entities(T, "shop") == [wider]


def test_unsupported_columns(store: SqliteMetadataStore, source: Path) -> None:
    factory = Connectors(wrap=EmailUnsupported)
    manager = CatalogManager(store, factory)
    manager.create_connection(T, "shop", "duckdb", {DEV: {"path": str(source)}})

    customers = manager.select(T, "shop", DEV, "customers")
    assert "email" not in names(customers)
    assert names(customers) == ["id", "name", "region_id", "signup_date", "segment"]
    with pytest.raises(InvalidArgument, match=r"'email'.*'EMAIL_ADDRESS'.*not support"):
        manager.select(T, "shop", DEV, "customers", ["name", "email"])
    assert customers.hidden_columns == ("email",)  # a column of an unsupported type too
    everything = manager.select_all(T, "shop", DEV, ["main"])
    assert all(c.supported for e in everything for c in e.columns)
    assert factory.closed == len(factory.opened) == 3


def test_connectors_are_closed_when_a_call_fails(
    manager: CatalogManager, factory: Connectors
) -> None:
    with pytest.raises(InvalidArgument):
        manager.select(T, "shop", DEV, "orders")
    assert len(factory.opened) == 1 and factory.closed == 1
