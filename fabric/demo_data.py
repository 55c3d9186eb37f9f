"""Sample retail data for the demo, generated locally into a DuckDB file.

Nothing is downloaded: every value comes from DuckDB SQL over `range()`, made
pseudo-random by hashing (seed, row key, purpose). The same seed gives the same data with
the same DuckDB release. Tables, in schema `main`:

    regions      (id PK, name)
    customers    (id PK, name, email, region_id FK -> regions, signup_date, segment)
    products     (id PK, name, category, unit_price DECIMAL(10,2))
    orders       (id PK, customer_id FK -> customers, order_date DATE, status,
                  ordered_at TIMESTAMPTZ)
    order_items  ((order_id, line_no) PK, order_id FK -> orders, product_id FK -> products,
                  quantity INTEGER, unit_price DECIMAL(10,2), discount DECIMAL(4,2))

`customers.email` is the personal data the demo leaves unselected. Every address is at
example.com, a domain reserved for examples.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from pathlib import Path
from typing import Final

import duckdb

TABLES: Final = ("regions", "customers", "products", "orders", "order_items")
"""The demo tables, parents before children."""

CUSTOMERS_PER_SCALE: Final = 5_000
PRODUCTS_PER_SCALE: Final = 250
ORDERS_PER_SCALE: Final = 50_000

_REGIONS: Final = (
    "North America",
    "South America",
    "Western Europe",
    "Northern Europe",
    "Eastern Europe",
    "Middle East & Africa",
    "South Asia",
    "East Asia & Pacific",
)
_FIRST_NAMES: Final = (
    "Ada", "Alan", "Amara", "Ana", "Ben", "Carla", "Chen", "Dana", "David", "Elena",
    "Emma", "Farah", "Felix", "Grace", "Hana", "Hugo", "Ines", "Ivan", "Jamal", "Julia",
    "Kai", "Karin", "Leila", "Liam", "Lucia", "Marco", "Maya", "Mei", "Nadia", "Noah",
    "Olga", "Omar", "Priya", "Rafael", "Rosa", "Sami", "Sofia", "Tariq", "Yuki", "Zoe",
)  # fmt: skip
_LAST_NAMES: Final = (
    "Adams", "Almeida", "Bauer", "Brown", "Costa", "Dubois", "Eriksson", "Fischer",
    "Garcia", "Haddad", "Ivanova", "Jensen", "Kim", "Kowalski", "Lopez", "Martin",
    "Meyer", "Mensah", "Nakamura", "Novak", "Okafor", "Patel", "Rossi", "Santos",
    "Schmidt", "Silva", "Singh", "Smith", "Tanaka", "Virtanen", "Wang", "Yilmaz",
)  # fmt: skip
# (category, nouns, lowest price, highest price)
_CATEGORIES: Final = (
    ("Electronics", ("Headphones", "Speaker", "Charger", "Keyboard", "Webcam"), 15, 400),
    ("Home", ("Lamp", "Kettle", "Blanket", "Vase", "Clock"), 8, 150),
    ("Kitchen", ("Knife Set", "Pan", "Blender", "Cutting Board", "Mug Set"), 6, 250),
    ("Outdoors", ("Backpack", "Tent", "Water Bottle", "Headlamp", "Camp Chair"), 10, 350),
    ("Sports", ("Yoga Mat", "Dumbbells", "Running Cap", "Jump Rope", "Ball"), 5, 120),
    ("Books", ("Cookbook", "Novel", "Atlas", "Field Guide", "Notebook"), 4, 60),
    ("Toys", ("Puzzle", "Building Set", "Plush Bear", "Kite", "Board Game"), 5, 90),
    ("Beauty", ("Face Cream", "Shampoo", "Soap Bar", "Perfume", "Brush Set"), 3, 110),
)
_ADJECTIVES: Final = (
    "Classic", "Compact", "Deluxe", "Eco", "Essential", "Everyday", "Premium", "Pro",
    "Smart", "Travel", "Ultra", "Urban",
)  # fmt: skip

_SCHEMA: Final = (
    """
    CREATE TABLE regions (
        id   INTEGER PRIMARY KEY,
        name VARCHAR NOT NULL
    )
    """,
    """
    CREATE TABLE customers (
        id          INTEGER PRIMARY KEY,
        name        VARCHAR NOT NULL,
        email       VARCHAR NOT NULL,
        region_id   INTEGER NOT NULL REFERENCES regions (id),
        signup_date DATE    NOT NULL,
        segment     VARCHAR NOT NULL
    )
    """,
    """
    CREATE TABLE products (
        id         INTEGER PRIMARY KEY,
        name       VARCHAR       NOT NULL,
        category   VARCHAR       NOT NULL,
        unit_price DECIMAL(10,2) NOT NULL
    )
    """,
    """
    CREATE TABLE orders (
        id          INTEGER     PRIMARY KEY,
        customer_id INTEGER     NOT NULL REFERENCES customers (id),
        order_date  DATE        NOT NULL,
        status      VARCHAR     NOT NULL,
        ordered_at  TIMESTAMPTZ NOT NULL
    )
    """,
    """
    CREATE TABLE order_items (
        order_id   INTEGER       NOT NULL REFERENCES orders (id),
        line_no    INTEGER       NOT NULL,
        product_id INTEGER       NOT NULL REFERENCES products (id),
        quantity   INTEGER       NOT NULL,
        unit_price DECIMAL(10,2) NOT NULL,
        discount   DECIMAL(4,2)  NOT NULL,
        PRIMARY KEY (order_id, line_no)
    )
    """,
)


def _sql_list(values: tuple[str, ...]) -> str:
    return "[" + ", ".join("'" + value.replace("'", "''") + "'" for value in values) + "]"


def _fill(con: duckdb.DuckDBPyConnection, seed: int, scale: int) -> None:
    customers = CUSTOMERS_PER_SCALE * scale
    products = PRODUCTS_PER_SCALE * scale
    orders = ORDERS_PER_SCALE * scale
    # u(a, b, salt): a uniform double in [0, 1), a pure function of (seed, a, b, salt).
    # The outer hash matters: DuckDB combines the hashes of several arguments so cheaply
    # that two salts would give strongly correlated values; re-hashing decorrelates them.
    con.execute(
        f"CREATE TEMP MACRO u(a, b, salt) AS "
        f"(hash(hash({seed}::BIGINT, a, b, salt)) >> 11)::DOUBLE / 9007199254740992.0"
    )
    # pick(list, x): the element of a list at the position x in [0, 1) falls on.
    con.execute("CREATE TEMP MACRO pick(l, x) AS l[1 + floor(x * len(l))::INTEGER]")

    regions = ", ".join(
        f"({i}, '{name.replace(chr(39), chr(39) * 2)}')" for i, name in enumerate(_REGIONS, 1)
    )
    con.execute(f"INSERT INTO regions VALUES {regions}")

    con.execute(
        f"""
        INSERT INTO customers
        SELECT id,
               first || ' ' || last,
               lower(first) || '.' || lower(last) || id || '@example.com',
               1 + floor(pow(u(id, 0, 'region'), 1.3) * {len(_REGIONS)})::INTEGER,
               DATE '2021-01-01' + floor(u(id, 0, 'signup') * 1095)::INTEGER,
               CASE WHEN s < 0.60 THEN 'consumer'
                    WHEN s < 0.85 THEN 'small_business'
                    ELSE 'corporate' END
        FROM (
            SELECT id,
                   pick({_sql_list(_FIRST_NAMES)}, u(id, 0, 'first')) AS first,
                   pick({_sql_list(_LAST_NAMES)}, u(id, 0, 'last')) AS last,
                   u(id, 0, 'segment') AS s
            FROM range(1, {customers} + 1) r(id)
        )
        ORDER BY id
        """
    )

    categories = ", ".join(
        f"('{name}', {_sql_list(nouns)}, {low}, {high})" for name, nouns, low, high in _CATEGORIES
    )
    con.execute(
        f"""
        INSERT INTO products
        SELECT p.id,
               pick({_sql_list(_ADJECTIVES)}, u(p.id, 0, 'adjective')) || ' '
                   || pick(c.nouns, u(p.id, 0, 'noun')) || ' ' || (100 + p.id),
               c.category,
               (floor(c.low + pow(u(p.id, 0, 'price'), 2) * (c.high - c.low)) + 0.99)
                   ::DECIMAL(10,2)
        FROM (
            SELECT id, 1 + floor(u(id, 0, 'category') * {len(_CATEGORIES)})::INTEGER AS c_no
            FROM range(1, {products} + 1) r(id)
        ) p
        JOIN (
            SELECT row_number() OVER () AS c_no, category, nouns, low, high
            FROM (VALUES {categories}) v(category, nouns, low, high)
        ) c USING (c_no)
        ORDER BY p.id
        """
    )

    # A few customers order a lot, most order a little (skewed pick); an order falls
    # between the customer's signup and the end of 2025, at a second of that day (UTC).
    con.execute(
        f"""
        INSERT INTO orders
        SELECT o.id,
               o.customer_id,
               d.order_date,
               CASE WHEN d.order_date > DATE '2025-12-24'
                        THEN CASE WHEN u(o.id, 0, 'status') < 0.5 THEN 'processing'
                                  ELSE 'shipped' END
                    WHEN u(o.id, 0, 'status') < 0.86 THEN 'delivered'
                    WHEN u(o.id, 0, 'status') < 0.94 THEN 'cancelled'
                    ELSE 'returned' END,
               to_timestamp(epoch(d.order_date) + floor(u(o.id, 0, 'second') * 86400))
        FROM (
            SELECT id,
                   1 + floor(pow(u(id, 0, 'customer'), 1.6) * {customers})::INTEGER
                       AS customer_id
            FROM range(1, {orders} + 1) r(id)
        ) o
        JOIN customers c ON c.id = o.customer_id
        CROSS JOIN LATERAL (
            SELECT c.signup_date + floor(
                       u(o.id, 0, 'day') * (DATE '2025-12-31' - c.signup_date + 1)
                   )::INTEGER AS order_date
        ) d
        ORDER BY o.id
        """
    )

    con.execute(
        f"""
        INSERT INTO order_items
        SELECT i.order_id,
               i.line_no,
               i.product_id,
               1 + floor(pow(u(i.order_id, i.line_no, 'quantity'), 3) * 6)::INTEGER,
               p.unit_price,
               CASE WHEN x < 0.70 THEN 0.00
                    WHEN x < 0.85 THEN 0.05
                    WHEN x < 0.95 THEN 0.10
                    ELSE 0.20 END::DECIMAL(4,2)
        FROM (
            SELECT order_id, line_no,
                   1 + floor(u(order_id, line_no, 'product') * {products})::INTEGER
                       AS product_id,
                   u(order_id, line_no, 'discount') AS x
            FROM (
                SELECT id AS order_id,
                       unnest(range(1, 2 + floor(pow(u(id, 0, 'lines'), 2) * 5)::INTEGER))
                           AS line_no
                FROM orders
            )
        ) i
        JOIN products p ON p.id = i.product_id
        ORDER BY i.order_id, i.line_no
        """
    )


def create_demo_database(path: Path, *, seed: int = 7, scale: int = 1) -> dict[str, int]:
    """Write the demo DuckDB file at `path` and return each table's row count.

    `scale` multiplies the customers (5,000), products (250) and orders (50,000); order
    lines average about two per order. The file is built next to `path` and renamed over
    it, so a reader sees the old file or the new one, never half of one. Deterministic
    for a given seed (with a given DuckDB release).
    """
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError("seed must be an integer")
    if isinstance(scale, bool) or not isinstance(scale, int) or scale < 1:
        raise ValueError("scale must be a positive integer")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        con = duckdb.connect(str(tmp))
        try:
            con.execute("SET TimeZone = 'UTC'")
            con.execute("BEGIN TRANSACTION")
            for statement in _SCHEMA:
                con.execute(statement)
            _fill(con, seed, scale)
            con.execute("COMMIT")
            counts: dict[str, int] = {}
            for table in TABLES:
                row = con.execute(f"SELECT count(*) FROM main.{table}").fetchone()
                assert row is not None
                counts[table] = int(row[0])
            con.execute("CHECKPOINT")
        finally:
            con.close()
        # A write-ahead log left by a crashed writer of the old file must not be replayed
        # onto the new one.
        with contextlib.suppress(FileNotFoundError):
            os.remove(f"{path}.wal")
        os.replace(tmp, path)
    finally:
        for leftover in (tmp, Path(f"{tmp}.wal")):
            with contextlib.suppress(FileNotFoundError):
                os.remove(leftover)
    return counts
