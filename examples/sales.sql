-- Sample data for the README's walk-through: a `sales` schema with customers and orders.
-- psql -h 127.0.0.1 -U postgres -d test -f examples/sales.sql   (run again to start over)
SET client_min_messages = warning;
DROP SCHEMA IF EXISTS sales CASCADE;
CREATE SCHEMA sales;

CREATE TABLE sales.customers (
    id      integer PRIMARY KEY,
    name    text NOT NULL,
    email   text NOT NULL,
    country text NOT NULL
);

CREATE TABLE sales.orders (
    id          integer PRIMARY KEY,
    customer_id integer NOT NULL REFERENCES sales.customers (id),
    amount      numeric(12, 2) NOT NULL,
    placed_at   timestamptz NOT NULL
);

INSERT INTO sales.customers
SELECT i,
       'customer ' || i,
       'customer' || i || '@example.com',
       (ARRAY['FR', 'DE', 'IE', 'ES', 'JP'])[1 + i % 5]
FROM generate_series(1, 200) AS i;

INSERT INTO sales.orders
SELECT i,
       1 + i % 200,
       round((10 + (i * 37) % 990)::numeric + (i % 100) / 100.0, 2),
       timestamptz '2023-07-01 00:00:00+00' + (i * interval '37 minutes')
FROM generate_series(1, 20000) AS i;
