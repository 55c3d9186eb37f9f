"""`fabric demo`: the whole path on the embedded default, no servers needed.

It generates a DuckDB retail database, registers it, selects its tables (leaving the
customers' e-mail addresses out, as an administrator would), starts the gateway in this
process and runs realistic aggregate queries through the real gRPC client.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import time
from dataclasses import replace
from typing import Any

from fabric.api.background import BackgroundGateway
from fabric.app.gateway import configured_gateway
from fabric.app.parts import connection_admin, local_token
from fabric.app.portal import sign_in_link
from fabric.catalog.metadata.sqlite import SqliteMetadataStore
from fabric.client import FabricClient
from fabric.config import Settings
from fabric.console import format_table
from fabric.context import DEFAULT_STAGE, DEFAULT_TENANT
from fabric.demo_data import create_demo_database
from fabric.errors import FabricError, NotFound
from fabric.model import ALL_STAGES
from fabric.platform.connections import StageInput

CONNECTION = "retail"

QUERIES: list[tuple[str, str, dict[str, Any]]] = [
    (
        "Revenue by region for one quarter (named parameters, bound at the source)",
        """
        SELECT r.name AS region,
               COUNT(DISTINCT o.id) AS orders,
               SUM(i.quantity * i.unit_price * (1 - i.discount)) AS revenue
        FROM orders o
        JOIN customers c ON c.id = o.customer_id
        JOIN regions r ON r.id = c.region_id
        JOIN order_items i ON i.order_id = o.id
        WHERE o.order_date >= :start AND o.order_date < :end AND o.status <> 'cancelled'
        GROUP BY r.name
        ORDER BY revenue DESC
        """,
        {"start": dt.date(2024, 1, 1), "end": dt.date(2024, 4, 1)},
    ),
    (
        "Top five products of a category, ranked with a window function",
        """
        WITH sales AS (
            SELECT p.name AS product, SUM(i.quantity) AS units
            FROM order_items i JOIN products p ON p.id = i.product_id
            WHERE p.category = :category
            GROUP BY p.name
        )
        SELECT product, units, RANK() OVER (ORDER BY units DESC) AS rank
        FROM sales
        ORDER BY rank, product
        LIMIT 5
        """,
        {"category": "Books"},
    ),
    (
        "Customers per segment and signup year",
        """
        SELECT segment, EXTRACT(YEAR FROM signup_date) AS signup_year, COUNT(*) AS customers
        FROM customers
        GROUP BY segment, EXTRACT(YEAR FROM signup_date)
        ORDER BY segment, signup_year
        """,
        {},
    ),
]

CACHED = (
    "Monthly order counts, asked twice with a 60 s cache lifetime",
    """
    SELECT DATE_TRUNC('month', order_date) AS month, status, COUNT(*) AS orders
    FROM orders
    GROUP BY DATE_TRUNC('month', order_date), status
    ORDER BY month, status
    """,
)

REJECTED = (
    "An app asks for a column the administrator did not select",
    "SELECT name, email FROM customers WHERE id = :id",
)


def _heading(text: str) -> None:
    print(f"\n== {text}")


def prepare(settings: Settings, scale: int = 1) -> SqliteMetadataStore:
    """Generate the sample database and fill a fresh catalog for it."""
    demo_home = settings.home / "demo"
    demo_home.mkdir(parents=True, exist_ok=True)
    database = demo_home / "retail.duckdb"
    started = time.perf_counter()
    counts = create_demo_database(database, scale=scale)
    print(
        f"generated {database} in {time.perf_counter() - started:.1f} s: "
        + ", ".join(f"{n} {t}" for t, n in counts.items())
    )
    store = SqliteMetadataStore(demo_home / "metadata.sqlite")
    admin = connection_admin(store, secrets=None)
    manager = admin.manager
    with contextlib.suppress(NotFound):
        admin.delete(DEFAULT_TENANT, CONNECTION)
    admin.create(
        DEFAULT_TENANT, CONNECTION, "duckdb", {ALL_STAGES: StageInput({"path": str(database)})}
    )
    for table in ("regions", "products", "orders", "order_items"):
        manager.select(DEFAULT_TENANT, CONNECTION, DEFAULT_STAGE, table)
    manager.select(
        DEFAULT_TENANT,
        CONNECTION,
        DEFAULT_STAGE,
        "customers",
        ["id", "name", "region_id", "signup_date", "segment"],
    )
    names = ", ".join(e.name for e in manager.list_entities(DEFAULT_TENANT, CONNECTION))
    print(f"registered connection {CONNECTION!r} and selected: {names} (customers.email left out)")
    return store


def run_demo(settings: Settings, scale: int = 1, *, serve: bool = False) -> None:
    """Run the demo's queries against an embedded gateway; with `serve`, keep the gateway
    and its portal running afterwards until interrupted (Ctrl-C)."""
    store = prepare(settings, scale)
    demo_settings = replace(settings, metrics_port=0)
    token = (
        local_token(demo_settings, subject="fabric-demo", ttl=600)
        if demo_settings.auth == "local"
        else None
    )
    with (
        BackgroundGateway(
            configured_gateway(demo_settings, store),
            flight_address="127.0.0.1:0",
            http_address=demo_settings.http_listen or "127.0.0.1:0",
        ) as gateway,
        FabricClient(gateway.address, token, timeout=60) as client,
    ):
        print(
            f"gateway listening on {gateway.address} (gRPC, Arrow IPC results) and "
            f"{gateway.flight_uri} (Arrow Flight SQL)"
        )
        for title, sql, params in QUERIES:
            _heading(title)
            result = client.execute(CONNECTION, sql, params)
            print(format_table(result.table))
            print(f"-- {result.summary.rows} rows, {result.summary.elapsed_us / 1000:.1f} ms")

        title, sql = CACHED
        _heading(title)
        first = client.execute(CONNECTION, sql, cache_ttl=60)
        second = client.execute(CONNECTION, sql, cache_ttl=60)
        print(format_table(first.table.slice(0, 6)))
        print(
            f"-- first run: {first.summary.rows} rows from the source in "
            f"{first.summary.elapsed_us / 1000:.2f} ms"
        )
        print(
            f"-- second run: {'served from memory' if second.summary.from_cache else 'MISSED'}"
            f" in {second.summary.elapsed_us / 1000:.2f} ms; identical: "
            f"{first.table.equals(second.table)}"
        )

        title, sql = REJECTED
        _heading(title)
        try:
            client.query(CONNECTION, sql, {"id": 1})
            print("!! the query was not rejected")
        except FabricError as error:
            print(f"rejected before reaching the database ({error.code}): {error.message}")

        _heading("The same engine through Arrow Flight SQL (ADBC), with a ? parameter")
        _flight_sql(gateway.flight_uri, token)

        _heading("The portal and the REST API")
        _portal(demo_settings, gateway)
        if serve:
            print("serving until interrupted (Ctrl-C)")
            with contextlib.suppress(KeyboardInterrupt):
                gateway.wait()
    store.close()


def _portal(settings: Settings, gateway: BackgroundGateway) -> None:
    print(f"REST API and portal at {gateway.http_url} (OpenAPI: /api/v1/openapi.json)")
    if settings.auth == "local":
        link = sign_in_link(
            settings,
            tenant=DEFAULT_TENANT,
            stage=DEFAULT_STAGE,
            role="admin",
            subject="fabric-demo",
            port=gateway.gateway.http_port,
            host="127.0.0.1",
        )
        port = gateway.gateway.http_port
        print(f"sign in (once, within 2 minutes): {link}")
        print(f"another link: FABRIC_HTTP_LISTEN=127.0.0.1:{port} fabric portal")
    print("`fabric demo --serve` keeps the gateway and the portal running after the demo")


FLIGHT_SQL = (
    "SELECT segment, COUNT(*) AS customers FROM customers "
    "WHERE signup_date >= ? GROUP BY segment ORDER BY segment"
)


def _flight_sql(uri: str, token: str | None) -> None:
    """One query through the ADBC Flight SQL driver, as an app in any language would."""
    try:
        import adbc_driver_flightsql.dbapi as flight_sql
    except ImportError:
        print(f"(install adbc-driver-flightsql to query {uri} from Python)")
        return
    options = {"adbc.flight.sql.rpc.call_header.x-fabric-connection": CONNECTION}
    if token is not None:
        options["adbc.flight.sql.authorization_header"] = f"Bearer {token}"
    with (
        flight_sql.connect(uri, db_kwargs=options, autocommit=True) as conn,
        conn.cursor() as cursor,
    ):
        cursor.execute(FLIGHT_SQL, (dt.date(2023, 1, 1),))
        print(format_table(cursor.fetch_arrow_table()))
