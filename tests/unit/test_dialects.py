"""Dialect proofs for the compiler's T-SQL output, and rejections in every dialect.

No SQL Server runs here, so the T-SQL output is parsed back with sqlglot's tsql reader
and checked for constructs SQL Server refuses. A case a dialect cannot express must be
rejected with a QueryRejected naming the problem. The MySQL output is run on a real
MariaDB in tests/integration/test_dialects_mysql.py, over the same cases.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
import sqlglot
from sqlglot import exp

from connectors.base import ParamStyle
from fabric.errors import QueryRejected
from fabric.model import CatalogSnapshot
from fabric.query.compiler import StatementCompiler
from tests.unit.test_compiler_golden import GOLDEN_DIR, sales_catalog

ACCEPTED = [
    case
    for path in sorted(GOLDEN_DIR.glob("*.json"))
    for case in json.loads(path.read_text(encoding="utf-8"))
    if "error" not in case
]

# Queries beyond the golden files that exercise each rewrite.
EXTRA = {
    "boolean_projection": "SELECT id, amount > 10 AS big, NOT (amount > 10) AS small FROM orders",
    "string_concatenation": "SELECT name || ' (' || region || ')' AS label FROM customers",
    "date_plus_interval": (
        "SELECT ordered_at + INTERVAL '3' DAY AS later, ordered_at - INTERVAL '2 months' AS "
        "earlier FROM orders WHERE ordered_at >= current_date - INTERVAL '10' YEAR"
    ),
    "count_star_filter": (
        "SELECT count(*) FILTER (WHERE status = 'paid') AS paid, "
        "sum(amount) FILTER (WHERE status = :status) AS s FROM orders"
    ),
    "cast_to_text": "SELECT CAST(id AS text) AS t, CAST(amount AS varchar(20)) AS v FROM orders",
    "limit_offset": "SELECT id FROM orders ORDER BY id LIMIT 3 OFFSET 1",
    "where_boolean_connectives": (
        "SELECT id FROM orders WHERE (amount > :lo OR status IS NULL) AND NOT status = 'void'"
    ),
}


def compile_for(sql: str, catalog: CatalogSnapshot, dialect: str) -> Any:
    return StatementCompiler().compile(
        sql, catalog, dialect=dialect, param_style=ParamStyle.FORMAT, max_rows=100
    )


# -- T-SQL, parsed back ------------------------------------------------------------------

_TSQL_FORBIDDEN = (
    " LIMIT ",
    "INTERVAL",
    "FILTER(",
    "FILTER (",
    "WITHIN GROUP",
    "||",
    "NULLS FIRST",
    "NULLS LAST",
    "::",
    " TRUE",
    " FALSE",
    "CURRENT_DATE",
)


def _check_tsql(text: str) -> None:
    upper = text.upper()
    for construct in _TSQL_FORBIDDEN:
        assert construct not in upper, f"T-SQL has no {construct.strip()}: {text}"
    tree = sqlglot.parse_one(text.replace("%%", "%").replace("%s", "@p"), read="tsql")
    for select in tree.find_all(exp.Select):
        aliases = {p.alias for p in select.expressions if isinstance(p, exp.Alias)}
        group = select.args.get("group")
        if group is not None:
            for column in group.find_all(exp.Column):
                assert column.table or column.name not in aliases, (
                    f"T-SQL cannot GROUP BY an output alias: {text}"
                )
        for projection in select.expressions:
            value = projection.this if isinstance(projection, exp.Alias) else projection
            assert not isinstance(value, exp.Predicate | exp.Connector | exp.Not), (
                f"T-SQL has no boolean values in a SELECT list: {text}"
            )
        if select is not tree and select.args.get("order") is not None:
            assert select.args.get("limit") or select.args.get("offset"), (
                f"T-SQL refuses ORDER BY in a subquery without TOP/OFFSET: {text}"
            )


@pytest.mark.parametrize("case", ACCEPTED, ids=[c["name"] for c in ACCEPTED])
def test_golden_tsql_is_valid(case: dict[str, Any]) -> None:
    try:
        compiled = compile_for(case["sql"], sales_catalog(), "tsql")
    except QueryRejected as error:
        assert "tsql" in str(error) or "not supported" in str(error), str(error)
        assert "tsql" not in case["expect"], "golden file expects T-SQL the compiler rejects"
        return
    _check_tsql(compiled.sql)


@pytest.mark.parametrize("name", sorted(EXTRA))
def test_extra_tsql_is_valid(name: str) -> None:
    _check_tsql(compile_for(EXTRA[name], sales_catalog(), "tsql").sql)


def test_tsql_rewrites() -> None:
    catalog = sales_catalog()
    text = compile_for(EXTRA["date_plus_interval"], catalog, "tsql").sql
    assert "DATEADD(DAY, 3, [orders].[ordered_at])" in text
    assert "DATEADD(MONTH, -2, [orders].[ordered_at])" in text
    assert "DATEADD(YEAR, -10, CAST(GETDATE() AS DATE))" in text
    text = compile_for(EXTRA["boolean_projection"], catalog, "tsql").sql
    assert "CASE WHEN [orders].[amount] > 10 THEN CAST(1 AS BIT)" in text
    text = compile_for(EXTRA["string_concatenation"], catalog, "tsql").sql
    assert "CAST([customers].[name] AS NVARCHAR(MAX)) + ' ('" in text
    text = compile_for(EXTRA["cast_to_text"], catalog, "tsql").sql
    assert "NVARCHAR" in text and "AS VARCHAR" not in text
    text = compile_for(EXTRA["limit_offset"], catalog, "tsql").sql
    assert "OFFSET 1 ROWS FETCH" in text


@pytest.mark.parametrize("dialect", ["tsql", "mysql"])
@pytest.mark.parametrize(
    ("sql", "message"),
    [
        (
            "SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY amount) AS m FROM orders",
            "WITHIN GROUP",
        ),
        ("SELECT ordered_at - INTERVAL '1 day 2 hours' AS t FROM orders", "INTERVAL"),
        ("SELECT array_agg(id) FILTER (WHERE id > 1) AS a FROM orders", "array_agg"),
    ],
)
def test_rejected_with_clear_message(dialect: str, sql: str, message: str) -> None:
    try:
        compile_for(sql, sales_catalog(), dialect)
    except QueryRejected as error:
        assert message in str(error) or "not supported" in str(error)
        return
    if "FILTER" in message and dialect == "tsql":
        return  # sqlglot rewrites FILTER for T-SQL itself (IIF)
    pytest.fail(f"{dialect} accepted {sql!r}")
