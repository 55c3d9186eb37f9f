"""The injection suite: hostile queries against a realistic selection, all refused.

The catalog is the golden-file one (tests/unit/test_compiler_golden.py): physically the
source also has customers.ssn, orders.secret and a payroll table, none of them selected.
Every query here must raise QueryRejected, on every target dialect, with a message that
names what was wrong (where one substring says it) and never repeats the query text.
"""

from __future__ import annotations

import contextlib

import pytest

from connectors.base import ParamStyle
from fabric.errors import QueryRejected
from fabric.query.compiler import TARGET_DIALECTS, StatementCompiler
from tests.support.cost import cpu_seconds, tokenize_seconds
from tests.unit.test_compiler_golden import sales_catalog

READ_ONLY = "only read-only SELECT queries are allowed"
ONE_STATEMENT = "only one statement is allowed"
PAYROLL = "table 'payroll' is not selected"
SSN = "'ssn' is not selected"
SECRET = "'secret' is not selected"
UNREADABLE = "could not be read"
SYNTAX = "syntax error"

# (sql, a substring of the message, or None where several refusals are equally right)
HOSTILE: list[tuple[str, str | None]] = [
    # -- stacked statements and comments that hide a second query -------------------------
    ("SELECT id FROM orders; SELECT * FROM payroll", ONE_STATEMENT),
    ("SELECT id FROM orders; DELETE FROM orders", ONE_STATEMENT),
    ("SELECT id FROM orders;-- trailing\nDROP TABLE orders", ONE_STATEMENT),
    ("SELECT id FROM orders /* */; DELETE FROM orders", ONE_STATEMENT),
    ("SELECT id FROM orders; /* hidden */ UPDATE orders SET amount = 0", ONE_STATEMENT),
    ("SELECT 1;;SELECT 2", ONE_STATEMENT),
    ("SELECT id FROM orders /* unterminated", UNREADABLE),
    ("SELECT id FROM orders /* /* nested */ still a comment; DROP TABLE x", UNREADABLE),
    ("SELECT id FROM orders WHERE status = 'x'; --'", ONE_STATEMENT),
    ("SELECT id FROM orders WHERE status = 'x\\'; DROP TABLE orders; --'", ONE_STATEMENT),
    ("/* SELECT */ DELETE FROM orders", READ_ONLY),
    ("-- SELECT\nDROP TABLE orders", READ_ONLY),
    ("SELECT id FROM orders\n;\nTRUNCATE orders", ONE_STATEMENT),
    # -- dangerous functions ---------------------------------------------------------------
    ("SELECT pg_read_file('/etc/passwd')", "function 'pg_read_file' is not allowed"),
    ("SELECT pg_read_binary_file('/etc/passwd')", "function 'pg_read_binary_file'"),
    ("SELECT pg_ls_dir('.')", "function 'pg_ls_dir'"),
    ("SELECT pg_stat_file('postgresql.conf')", "function 'pg_stat_file'"),
    ("SELECT query_to_xml('select * from payroll', true, true, '')", "function 'query_to_xml'"),
    ("SELECT table_to_xml('payroll', true, true, '')", "function 'table_to_xml'"),
    ("SELECT * FROM dblink('host=x', 'select 1') AS t(a int)", "table function 'dblink'"),
    ("SELECT id FROM customers WHERE id = dblink('x', 'y')", "function 'dblink'"),
    ("SELECT dblink_exec('x', 'drop table t')", "function 'dblink_exec'"),
    ("SELECT pg_sleep(5)", "function 'pg_sleep' is not allowed"),
    ("SELECT id FROM orders WHERE pg_sleep(1) IS NULL", "function 'pg_sleep'"),
    ("SELECT pg_sleep_for('5 minutes')", "function 'pg_sleep_for'"),
    ("SELECT pg_catalog.pg_sleep(1)", "function 'pg_catalog.pg_sleep' is not allowed"),
    ("SELECT set_config('search_path', 'evil', false)", "function 'set_config'"),
    ("SELECT current_setting('data_directory')", "function 'current_setting'"),
    ("SELECT lo_import('/etc/passwd')", "function 'lo_import'"),
    ("SELECT lo_export(1, '/tmp/x')", "function 'lo_export'"),
    ("SELECT pg_terminate_backend(1)", "function 'pg_terminate_backend'"),
    ("SELECT nextval('orders_id_seq')", "function 'nextval'"),
    ("SELECT txid_current()", "function 'txid_current'"),
    ("SELECT version()", "function 'version'"),
    ("SELECT current_user", "function 'current_user'"),
    ("SELECT session_user", "function 'session_user'"),
    ("SELECT current_database()", "function 'current_database'"),
    ("SELECT inet_server_addr()", "function 'inet_server_addr'"),
    ("SELECT row_to_json(o) FROM orders o", "function 'row_to_json'"),
    ("SELECT to_json(c) FROM customers c", "function 'to_json'"),
    ("SELECT hstore(c) FROM customers c", "function 'hstore'"),
    ("SELECT text(customers) FROM customers", "function 'text'"),
    ("SELECT ROW(o.*) FROM orders o", "function 'row'"),
    ("SELECT ARRAY(SELECT ssn FROM customers)", None),
    ("SELECT * FROM generate_series(1, 1000000000)", "table function 'generate_series'"),
    ("SELECT generate_series(1, 10)", "function 'generate_series'"),
    ("SELECT * FROM unnest(ARRAY[1, 2])", None),
    ("SELECT * FROM duckdb_settings()", "table function 'duckdb_settings'"),
    ("SELECT * FROM read_csv('/etc/passwd')", "table function 'read_csv'"),
    ("SELECT id FROM orders WHERE status ~ '^(a+)+$'", None),
    # -- system catalogs and other databases -----------------------------------------------
    ("SELECT * FROM pg_catalog.pg_authid", "system catalog 'pg_catalog.pg_authid'"),
    ("SELECT * FROM pg_authid", "system catalog 'pg_authid'"),
    ("SELECT * FROM PG_AUTHID", "system catalog 'pg_authid'"),
    ('SELECT * FROM "pg_authid"', "system catalog 'pg_authid'"),
    ("SELECT rolpassword FROM pg_shadow", "system catalog 'pg_shadow'"),
    ("SELECT usename, passwd FROM pg_catalog.pg_user", "system catalog"),
    ("SELECT * FROM pg_stat_activity", "system catalog 'pg_stat_activity'"),
    ("SELECT * FROM information_schema.tables", "system catalog 'information_schema.tables'"),
    ("SELECT * FROM INFORMATION_SCHEMA.COLUMNS", "system catalog"),
    ("SELECT * FROM sys.sql_logins", "system catalog 'sys.sql_logins'"),
    ("SELECT * FROM sys.objects", "system catalog 'sys.objects'"),
    ("SELECT * FROM master.sys.tables", "cross-database name 'master.sys.tables'"),
    ("SELECT * FROM mysql.user", "system catalog 'mysql.user'"),
    ("SELECT * FROM sqlite_master", "system catalog 'sqlite_master'"),
    ("SELECT * FROM other_db.sales.orders", "cross-database name"),
    ("SELECT * FROM sales.payroll", "schema-qualified name 'sales.payroll'"),
    ("SELECT id FROM orders WHERE id IN (SELECT oid FROM pg_class)", "system catalog"),
    ("SELECT 'pg_authid'::regclass", "type 'regclass' is not allowed"),
    ("SELECT CAST('pg_authid' AS regclass)", "type 'regclass'"),
    ("SELECT 'now'::regproc", "type 'regproc'"),
    ("SELECT 'public'::regnamespace", "type 'regnamespace'"),
    ("SELECT 1::oid", "type 'oid'"),
    ("SELECT '<a/>'::xml", "is not allowed"),
    # -- unselected tables, however they are reached ----------------------------------------
    ("SELECT * FROM payroll", PAYROLL),
    ('SELECT * FROM "payroll"', PAYROLL),
    ("SELECT * FROM PAYROLL", PAYROLL),
    ('SELECT * FROM "Payroll"', "table 'Payroll' is not selected"),
    ('SELECT id FROM "Orders"', "table 'Orders' is not selected"),
    ("WITH p AS (SELECT * FROM payroll) SELECT * FROM p", PAYROLL),
    ("WITH orders AS (SELECT * FROM payroll) SELECT * FROM orders", "shadows the selected entity"),
    ("WITH customers AS (SELECT 1 AS id) SELECT id FROM customers", "shadows the selected"),
    ("WITH a AS (SELECT * FROM payroll), payroll AS (SELECT 1 AS x) SELECT * FROM a", PAYROLL),
    ("WITH payroll AS (SELECT * FROM payroll) SELECT * FROM payroll", PAYROLL),
    ("SELECT id FROM customers WHERE id IN (SELECT id FROM payroll)", PAYROLL),
    ("SELECT (SELECT max(salary) FROM payroll)", PAYROLL),
    ("SELECT id FROM customers WHERE EXISTS (SELECT 1 FROM payroll)", PAYROLL),
    ("SELECT id FROM customers WHERE id = ANY (SELECT id FROM payroll)", PAYROLL),
    ("SELECT id FROM customers UNION SELECT id FROM payroll", PAYROLL),
    ("SELECT id FROM customers UNION ALL SELECT id FROM payroll", PAYROLL),
    ("SELECT id FROM customers INTERSECT SELECT id FROM payroll", PAYROLL),
    ("SELECT id FROM customers EXCEPT SELECT id FROM payroll", PAYROLL),
    ("(SELECT id FROM orders) UNION (SELECT id FROM payroll)", PAYROLL),
    ("((SELECT * FROM payroll))", PAYROLL),
    ("SELECT c.id FROM customers c, LATERAL (SELECT * FROM payroll) p", "LATERAL is not allowed"),
    ("SELECT c.id FROM customers c JOIN LATERAL (SELECT 1) p ON true", "LATERAL is not allowed"),
    ("SELECT c.id FROM customers c CROSS JOIN LATERAL (SELECT c.ssn) p", "LATERAL"),
    ("SELECT * FROM customers c LEFT JOIN payroll p ON p.id = c.id", PAYROLL),
    ("SELECT * FROM customers c, payroll p", PAYROLL),
    ("SELECT * FROM (SELECT * FROM payroll) p", PAYROLL),
    ("SELECT * FROM customers NATURAL JOIN payroll", "NATURAL joins are not allowed"),
    ("SELECT * FROM ONLY payroll", None),
    ("TABLE payroll", READ_ONLY),
    ("TABLE orders", READ_ONLY),
    ("SELECT * FROM (VALUES (1)) v(a)", "VALUES lists are not allowed"),
    ("VALUES (1), (2)", "VALUES lists are not allowed"),
    # -- hidden columns, however they are reached -------------------------------------------
    ("SELECT ssn FROM customers", SSN),
    ("SELECT c.ssn FROM customers c", "column 'customers.ssn' is not selected"),
    ('SELECT "ssn" FROM customers', SSN),
    ("SELECT SSN FROM customers", SSN),
    ("SELECT id FROM customers WHERE ssn = '123'", SSN),
    ("SELECT id FROM customers WHERE ssn LIKE '1%'", SSN),
    ("SELECT id FROM customers WHERE customers.ssn IS NOT NULL", "'customers.ssn' is not"),
    ("SELECT c.id FROM customers c JOIN orders o ON o.secret = c.id", "'orders.secret' is not"),
    ("SELECT c.id FROM customers c JOIN orders o ON secret = 1", SECRET),
    ("SELECT id FROM orders ORDER BY secret", SECRET),
    ("SELECT id FROM orders ORDER BY secret + 0", SECRET),
    ("SELECT count(*) FROM orders GROUP BY secret", SECRET),
    ("SELECT status FROM orders GROUP BY status HAVING max(secret) > 0", SECRET),
    ("SELECT rank() OVER (PARTITION BY secret) FROM orders", SECRET),
    ("SELECT sum(amount) OVER w FROM orders WINDOW w AS (PARTITION BY secret)", SECRET),
    ("SELECT count(*) FILTER (WHERE secret > 0) FROM orders", SECRET),
    ("SELECT left(string_agg(status, ',' ORDER BY secret), 100) FROM orders", SECRET),
    ("SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY secret) FROM orders", SECRET),
    ("SELECT DISTINCT ON (secret) id FROM orders", SECRET),
    ("SELECT secret AS id FROM orders", SECRET),
    ("SELECT id AS x FROM customers ORDER BY ssn", SSN),
    ("SELECT id FROM customers WHERE id IN (SELECT ssn FROM customers)", SSN),
    ("SELECT id FROM customers WHERE EXISTS (SELECT ssn FROM customers)", SSN),
    ("SELECT (SELECT ssn FROM customers LIMIT 1)", SSN),
    ("SELECT id FROM customers UNION ALL SELECT ssn FROM customers", SSN),
    ("SELECT id FROM customers EXCEPT SELECT ssn FROM customers", SSN),
    ("WITH x AS (SELECT * FROM customers) SELECT ssn FROM x", SSN),
    ("SELECT ssn FROM (SELECT * FROM customers) s", SSN),
    ("SELECT s.ssn FROM (SELECT c.* FROM customers c) s", "'s.ssn' does not exist"),
    ("SELECT id FROM customers c WHERE EXISTS (SELECT 1 FROM orders o WHERE o.id = c.ssn)", None),
    ("SELECT id FROM customers WHERE (id, ssn) = (1, '2')", SSN),
    ("SELECT id FROM customers WHERE ROW(id, ssn) = ROW(1, '2')", None),
    ("SELECT customers FROM customers", "column 'customers' is not selected"),
    ("SELECT c FROM customers c", "column 'c' is not selected"),
    ("SELECT id FROM customers c WHERE c IS NOT NULL", "column 'c' is not selected"),
    ("SELECT id FROM customers c WHERE c::text LIKE '%123%'", "column 'c' is not selected"),
    ("SELECT id FROM customers c ORDER BY c", "column 'c' is not selected"),
    ("SELECT count(DISTINCT c) FROM customers c", "column 'c' is not selected"),
    ("SELECT (c).ssn FROM customers c", "not allowed"),
    ("SELECT (c.*).ssn FROM customers c", "not allowed"),
    ("SELECT count(c.*) FROM customers c", "'table.*' is only allowed in the SELECT list"),
    ("SELECT id FROM customers c WHERE (c.*) IS NOT NULL", "'table.*' is only allowed"),
    ("SELECT customers.customers FROM customers", "'customers.customers' is not selected"),
    ("SELECT * FROM customers NATURAL JOIN orders", "NATURAL joins are not allowed"),
    ("SELECT * FROM customers JOIN orders USING (id)", "JOIN ... USING is not supported"),
    ("SELECT * FROM customers c JOIN orders o USING (secret)", "JOIN ... USING"),
    ("SELECT x.ssn FROM customers AS x(a, b, c, d, ssn)", "column aliases on a table"),
    # Hole found by this suite: GROUP BY an output alias named like a hidden column. The
    # databases group by the hidden input column first, so the compiler binds it there
    # and refuses; the alias must not pass through.
    ("SELECT 1 AS secret, min(id) FROM orders GROUP BY secret", SECRET),
    ("SELECT :p AS ssn, count(*) FROM customers GROUP BY ssn", "'ssn' is not selected"),
    ("SELECT max(id) AS ssn FROM customers GROUP BY ssn", "'ssn' is not selected"),
    ("SELECT id AS ssn, id AS ssn FROM customers GROUP BY ssn", "'ssn' is not selected"),
    # Hole found by this suite: an outer column qualified with an alias a subquery reuses.
    (
        "SELECT id FROM customers x WHERE EXISTS (SELECT 1 FROM orders x WHERE region = 'EU')",
        "column 'region' would come from 'x' in an outer query",
    ),
    (
        "SELECT (SELECT max(region) FROM products customers) FROM customers",
        "would come from 'customers' in an outer query",
    ),
    # -- quoting, escapes and case tricks --------------------------------------------------
    ('SELECT * FROM U&"payroll"', SYNTAX),
    ('SELECT * FROM U&"\\0070ayroll"', SYNTAX),
    ("SELECT * FROM U&\"!0070ayroll\" UESCAPE '!'", SYNTAX),
    ("SELECT id FROM customers WHERE name = U&'\\0041'", "not allowed"),
    ('SELECT "SSN" FROM customers', "'SSN' is not selected"),
    ('SELECT "ID" FROM orders', "'ID' is not selected"),
    ('SELECT id FROM "orders "', "table 'orders ' is not selected"),
    ('SELECT "i""d" FROM orders', "is not selected"),
    ("SELECT $$abc$$", "not allowed"),
    ("SELECT id FROM orders WHERE status = $tag$x'; DROP TABLE t; --$tag$", "not allowed"),
    ("SELECT id FROM orders WHERE status = E'\\x27; DROP TABLE t; --'", "not allowed"),
    ("SELECT id FROM orders WHERE status = E'\\''", "not allowed"),
    ("SELECT id FROM orders WHERE status = B'101'", "not allowed"),
    ("SELECT id FROM orders WHERE status = X'41'", "not allowed"),
    ("SELECT 'unterminated FROM orders", UNREADABLE),
    ('SELECT "unterminated FROM orders', UNREADABLE),
    ("SELECT date_part('year) FROM x); DROP TABLE t; --', ordered_at) FROM orders", "plain word"),
    # -- statements other than one read-only SELECT ----------------------------------------
    ("SELECT id INTO TEMP t FROM orders", "SELECT ... INTO is not allowed"),
    ("SELECT * INTO stolen FROM customers", "SELECT ... INTO is not allowed"),
    ("SELECT id FROM orders FOR UPDATE", "locking clauses"),
    ("SELECT id FROM orders FOR SHARE", "locking clauses"),
    ("SELECT id FROM orders FOR NO KEY UPDATE SKIP LOCKED", "locking clauses"),
    ("COPY orders TO STDOUT", READ_ONLY),
    ("COPY (SELECT * FROM payroll) TO '/tmp/x'", READ_ONLY),
    ("COPY orders FROM PROGRAM 'curl evil'", READ_ONLY),
    ("DO $$BEGIN PERFORM pg_sleep(1); END$$", READ_ONLY),
    ("CALL do_something()", READ_ONLY),
    ("EXPLAIN ANALYZE SELECT id FROM orders", READ_ONLY),
    ("EXPLAIN ANALYZE DELETE FROM orders", READ_ONLY),
    ("SET search_path = evil", READ_ONLY),
    ("SET LOCAL statement_timeout = 0", READ_ONLY),
    ("SET ROLE postgres", READ_ONLY),
    ("RESET ALL", READ_ONLY),
    ("SHOW ALL", READ_ONLY),
    ("LISTEN channel", READ_ONLY),
    ("NOTIFY channel, 'x'", READ_ONLY),
    ("PREPARE p AS SELECT * FROM payroll", READ_ONLY),
    ("EXECUTE p", READ_ONLY),
    ("DEALLOCATE ALL", READ_ONLY),
    ("BEGIN", READ_ONLY),
    ("COMMIT", READ_ONLY),
    ("VACUUM orders", READ_ONLY),
    ("GRANT SELECT ON payroll TO public", READ_ONLY),
    ("CREATE TABLE t AS SELECT * FROM payroll", READ_ONLY),
    ("ALTER TABLE orders DROP COLUMN secret", READ_ONLY),
    ("INSERT INTO orders (id) VALUES (1)", READ_ONLY),
    ("UPDATE orders SET amount = 0", READ_ONLY),
    ("DELETE FROM orders", READ_ONLY),
    ("MERGE INTO orders USING customers ON true WHEN MATCHED THEN DELETE", READ_ONLY),
    ("WITH d AS (DELETE FROM orders RETURNING *) SELECT * FROM d", "(found DELETE)"),
    ("WITH u AS (UPDATE orders SET amount = 0 RETURNING id) SELECT id FROM u", "(found UPDATE)"),
    ("WITH i AS (INSERT INTO orders (id) VALUES (1) RETURNING id) SELECT id FROM i", "INSERT"),
    ("WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r) SELECT n FROM r", None),
    # -- parameters and limits -------------------------------------------------------------
    ("SELECT id FROM orders WHERE id = $1", "positional parameters"),
    ("SELECT id FROM orders WHERE id = ?", "positional parameters"),
    ("SELECT id FROM orders WHERE id = %s", "positional parameters"),
    ("SELECT id FROM orders LIMIT :n", "LIMIT of the outermost query must be an integer literal"),
    ("SELECT id FROM orders TABLESAMPLE SYSTEM (10)", "TABLESAMPLE is not allowed"),
    ("SELECT max(id) FROM orders GROUP BY ROLLUP (secret)", "not allowed"),
]


def _compile(sql: str, dialect: str, compiler: StatementCompiler | None = None) -> None:
    style = ParamStyle.QMARK if dialect == "duckdb" else ParamStyle.FORMAT
    (compiler or StatementCompiler()).compile(
        sql, sales_catalog(), dialect=dialect, param_style=style, max_rows=100
    )


def test_the_suite_is_large_and_unique() -> None:
    queries = [sql for sql, _ in HOSTILE]
    assert len(queries) >= 100
    assert len(queries) == len(set(queries))


@pytest.mark.parametrize(("sql", "match"), HOSTILE, ids=[f"q{i:03d}" for i in range(len(HOSTILE))])
def test_hostile_query_is_rejected(sql: str, match: str | None) -> None:
    for dialect in sorted(TARGET_DIALECTS):
        with pytest.raises(QueryRejected) as caught:
            _compile(sql, dialect)
        message = str(caught.value)
        if match is not None:
            assert match in message, f"[{dialect}] {message}"
        if len(sql.strip()) > 8:  # a bare keyword (BEGIN) may be named in the message
            assert sql.strip() not in message, f"[{dialect}] the message repeats the query"


# -- shapes that attack the compiler itself ------------------------------------------------


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT " + "(" * 20_000 + "1" + ")" * 20_000,
        "SELECT id FROM orders WHERE " + "NOT " * 10_000 + "true",
        "SELECT " + "- " * 10_000 + "1",
        "SELECT " + "CASE WHEN true THEN " * 3_000 + "1" + " END" * 3_000,
        "SELECT id FROM orders WHERE id IN " + "(SELECT id FROM orders WHERE id IN " * 1_500,
        "SELECT " + "ARRAY[" * 5_000 + "1" + "]" * 5_000,
        "SELECT * FROM " + "(SELECT * FROM " * 3_000 + "orders" + ") s" * 3_000,
    ],
    ids=["parens", "not", "neg", "case", "in-subquery", "array", "derived"],
)
def test_deeply_nested_input_is_rejected_fast(sql: str) -> None:
    compiler = StatementCompiler(max_sql_length=1_000_000)
    with pytest.raises(QueryRejected, match="nested too deeply") as caught:
        _compile(sql, "postgres", compiler)
    assert len(str(caught.value)) < 200
    # Rejected after one tokenizer pass, before any parser recursion (measured ~1x).
    rejecting = cpu_seconds(lambda: _compile(sql, "postgres", compiler))
    assert rejecting <= 10 * tokenize_seconds(sql)


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT id FROM orders WHERE status = '" + "x" * 200_000 + "'",
        "SELECT id FROM orders -- " + "x" * 200_000,
        "SELECT " + ", ".join(["id"] * 50_000) + " FROM orders",
        "SELECT 1" + "; SELECT 1" * 50_000,
    ],
    ids=["string", "comment", "columns", "statements"],
)
def test_huge_input_is_rejected_before_parsing(sql: str) -> None:
    with pytest.raises(QueryRejected, match="longer than 100000 characters") as caught:
        _compile(sql, "postgres")
    assert len(str(caught.value)) < 200
    # Rejected on its length: less work than even tokenizing it (measured <= 0.4x).
    assert cpu_seconds(lambda: _compile(sql, "postgres")) <= tokenize_seconds(sql)


@pytest.mark.parametrize(
    "sql",
    ["", "   ", "\n\t", "-- only a comment", "/* only a comment */", ";"],
)
def test_empty_or_comment_only_input(sql: str) -> None:
    with pytest.raises(QueryRejected):
        _compile(sql, "postgres")


def test_binary_garbage_is_rejected_not_crashed() -> None:
    for sql in ("\x00SELECT 1", "SELECT \x00", "SELECT '\x00'", "\ufeffSELECT 1", "SELECT 1\x1a"):
        with contextlib.suppress(QueryRejected):  # accepted or refused, never a crash
            _compile(sql, "postgres")
