"""Golden files for the query compiler: input SQL, selection, expected SQL per dialect.

Each file in tests/golden/compiler/*.json is a list of cases:

    {"name": ..., "sql": ..., "catalog": "sales", "max_rows": 100,
     "expect": {"duckdb": {"sql": ..., "params": [...], "row_limit": 101}, "postgres": ...}}
    {"name": ..., "sql": ..., "error": "substring of the QueryRejected message"}

Every dialect of a registered connector kind (`connectors.registry`) is generated with
the parameter style its connector uses. To rewrite the expectations after a deliberate change, run
`FABRIC_UPDATE_GOLDEN=1 pytest tests/unit/test_compiler_golden.py` and review the diff.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from connectors import registry
from fabric.errors import QueryRejected
from fabric.model import CatalogSnapshot, ColumnInfo, Entity
from fabric.query.compiler import StatementCompiler

GOLDEN_DIR = Path(__file__).resolve().parents[1] / "golden" / "compiler"
DIALECTS = registry.dialects()
PARAM_STYLES = {spec.dialect: spec.param_style for spec in reversed(registry.specs())}


def _columns(*names: str) -> tuple[ColumnInfo, ...]:
    return tuple(ColumnInfo(name, "integer", pa.int64()) for name in names)


def sales_catalog(version: int = 1) -> CatalogSnapshot:
    """The shared fixture: a sales schema where some columns and one table are hidden.

    Physically the source also has customers.ssn, orders.secret and a payroll table; they
    are not selected, so they are not among the columns, exactly as the Studio would leave
    them (the entities name the hidden columns, as a selection records them).
    """
    entities = {
        "customers": Entity(
            "customers",
            "sales",
            "customers",
            _columns("id", "name", "region", "Signup Date"),
            hidden_columns=("ssn",),
        ),
        "orders": Entity(
            "orders",
            "sales",
            "orders",
            _columns("id", "customer_id", "amount", "status", "ordered_at"),
            hidden_columns=("secret",),
        ),
        # Entity name differs from the physical table name.
        "order_items": Entity(
            "order_items",
            "sales",
            "order_lines",
            _columns("order_id", "product_id", "qty", "price"),
            hidden_columns=(),
        ),
        "products": Entity(
            "products",
            "sales",
            "products",
            _columns("id", "name", "category", "price"),
            hidden_columns=(),
        ),
        # Physical names that need quoting (space, mixed case, embedded quote).
        "web_events": Entity(
            "web_events",
            "Analytics",
            'Web "Events"',
            _columns("EventId", "kind", "occurred_at"),
            hidden_columns=(),
        ),
    }
    return CatalogSnapshot(tenant="acme", connection="sales", version=version, entities=entities)


CATALOGS = {"sales": sales_catalog}


def _cases() -> list[tuple[Path, dict[str, Any]]]:
    cases = []
    for path in sorted(GOLDEN_DIR.glob("*.json")):
        for case in json.loads(path.read_text(encoding="utf-8")):
            cases.append((path, case))
    return cases


def _compile(case: dict[str, Any], dialect: str) -> Any:
    compiler = StatementCompiler()
    catalog = CATALOGS[case.get("catalog", "sales")]()
    return compiler.compile(
        case["sql"],
        catalog,
        dialect=dialect,
        param_style=PARAM_STYLES[dialect],
        max_rows=case.get("max_rows", 100),
    )


def _update() -> None:  # pragma: no cover - maintenance helper
    for path in sorted(GOLDEN_DIR.glob("*.json")):
        cases = json.loads(path.read_text(encoding="utf-8"))
        for case in cases:
            if "error" in case:
                continue
            expect = {}
            for dialect in DIALECTS:
                try:
                    compiled = _compile(case, dialect)
                except QueryRejected:
                    if dialect in ("duckdb", "postgres"):
                        raise
                    continue  # other dialects are best effort
                expect[dialect] = {
                    "sql": compiled.sql,
                    "params": list(compiled.param_names),
                    "row_limit": compiled.row_limit,
                }
            case["expect"] = expect
        path.write_text(json.dumps(cases, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


if os.environ.get("FABRIC_UPDATE_GOLDEN") == "1":  # pragma: no cover
    _update()

CASES = _cases()


def test_golden_files_have_enough_cases() -> None:
    names = [case["name"] for _, case in CASES]
    assert len(names) >= 40
    assert len(names) == len(set(names)), "case names must be unique"
    assert sum(1 for _, case in CASES if "error" in case) >= 15
    assert sum(1 for _, case in CASES if "error" not in case) >= 20


@pytest.mark.parametrize(("path", "case"), CASES, ids=[case["name"] for _, case in CASES])
def test_golden(path: Path, case: dict[str, Any]) -> None:
    if "error" in case:
        for dialect in ("duckdb", "postgres"):
            with pytest.raises(QueryRejected) as caught:
                _compile(case, dialect)
            assert case["error"] in str(caught.value)
        return
    expected = case["expect"]
    for dialect in DIALECTS:
        if dialect not in expected:
            continue
        compiled = _compile(case, dialect)
        got = {
            "sql": compiled.sql,
            "params": list(compiled.param_names),
            "row_limit": compiled.row_limit,
        }
        assert got == expected[dialect], f"{case['name']} [{dialect}]"
    # DuckDB and PostgreSQL read Fabric SQL's own constructs: every accepted case runs
    # there. Other dialects may refuse a case they cannot express.
    assert {"duckdb", "postgres"} <= set(expected)


def test_every_registered_dialect_has_golden_expectations() -> None:
    covered = {dialect for _, case in CASES for dialect in case.get("expect", {})}
    missing = sorted(set(DIALECTS) - covered)
    assert not missing, f"no golden SQL for {missing}: run with FABRIC_UPDATE_GOLDEN=1"
