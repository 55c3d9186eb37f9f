"""The PostgreSQL data the portal tests look at: a schema of its own per run, with
composite keys, 10,000 rows to page through, and values and names holding markup."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg

# Markup that would run script if the page ever parsed a value as HTML. The CSP would
# stop an inline handler anyway; the page must not even build the element.
XSS_VALUE = '<img src=x onerror="window.__fabricXss=1;alert(1)">'
XSS_SCRIPT = "<script>window.__fabricXss=2</script>"
XSS_ALIAS = "<img src=y onerror=window.__fabricXss=3>"
XSS_TABLE = "<svg onload=window.__fabricXss=4>"
EVENT_ROWS = 10_000


def _schema_sql(schema: str) -> str:
    return f"""
    CREATE SCHEMA {schema};
    CREATE TABLE {schema}.customers (
        id integer PRIMARY KEY, name text NOT NULL, email text, country text);
    CREATE TABLE {schema}.orders (
        id integer PRIMARY KEY, customer_id integer REFERENCES {schema}.customers (id),
        amount numeric(12, 2), placed_at timestamptz);
    CREATE TABLE {schema}.order_lines (
        order_id integer REFERENCES {schema}.orders (id), line_no integer,
        product text, qty integer, PRIMARY KEY (order_id, line_no));
    CREATE TABLE {schema}.shipments (
        id integer PRIMARY KEY, order_id integer, line_no integer,
        CONSTRAINT shipments_line_fk FOREIGN KEY (order_id, line_no)
            REFERENCES {schema}.order_lines (order_id, line_no));
    CREATE TABLE {schema}.events (id integer PRIMARY KEY, label text NOT NULL);
    CREATE TABLE {schema}.notes (id integer PRIMARY KEY, body text);
    CREATE TABLE {schema}."{XSS_TABLE}" (id integer PRIMARY KEY);
    INSERT INTO {schema}.customers
        SELECT i, 'customer ' || i, 'c' || i || '@example.com',
               CASE WHEN i % 2 = 0 THEN 'FR' ELSE 'DE' END
        FROM generate_series(1, 20) AS i;
    INSERT INTO {schema}.orders
        SELECT i, 1 + i % 20, i * 1.5, TIMESTAMPTZ '2024-01-01 00:00:00+00' + i * INTERVAL '1 hour'
        FROM generate_series(1, 50) AS i;
    INSERT INTO {schema}.events SELECT i, 'event ' || i FROM generate_series(1, {EVENT_ROWS}) AS i;
    """


@contextmanager
def portal_schema(url: str) -> Iterator[str]:
    """A fresh schema for one run, dropped afterwards."""
    schema = f"portal_{secrets.token_hex(4)}"
    with psycopg.connect(url, autocommit=True) as connection:
        connection.execute(_schema_sql(schema).encode())
        connection.execute(
            f"INSERT INTO {schema}.notes VALUES (1, %s), (2, %s)".encode(), (XSS_VALUE, XSS_SCRIPT)
        )
    try:
        yield schema
    finally:
        with psycopg.connect(url, autocommit=True) as connection:
            connection.execute(f"DROP SCHEMA {schema} CASCADE".encode())
