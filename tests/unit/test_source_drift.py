"""The source says a column or table is undefined: the gateway names it from its own
compiled statement, for every dialect's SQLSTATE (PostgreSQL's 42703 and 42P01; MySQL,
MariaDB and SQL Server report 42S22 and 42S02), and never repeats the source's text."""

from __future__ import annotations

from collections.abc import Sequence

import pyarrow as pa
import pytest

from fabric.errors import FabricError, SchemaMismatch, SourceQueryError
from fabric.model import TableInfo
from fabric.query.drift import explain_source_error
from fabric.query.revocation import EntityRead, Grant
from fabric.query.sources import SourceIdentity
from tests.support.memory_connector import MemoryConnector

GRANT = Grant(
    "acme",
    "shop",
    "development",
    SourceIdentity("duckdb", (), None),
    (
        EntityRead("orders", ("main", "orders"), ("amount", "id", "note")),
        EntityRead("people", ("main", "people"), ("id",)),
    ),
)
SOURCE_TEXT = "ERROR: column o.note does not exist at character 17, near 'secret-value'"


def source(**tables: pa.Table) -> MemoryConnector:
    return MemoryConnector(dict(tables))


NOW = source(
    orders=pa.table({"id": [1], "amount": [2]}),  # `note` is gone
    people=pa.table({"id": [1]}),
)


def explain(error: FabricError, connector: MemoryConnector | None = NOW) -> FabricError:
    explained = explain_source_error(error, GRANT, connector)
    assert explained is not None
    return explained()


@pytest.mark.parametrize("sqlstate", ["42703", "42S22"])
def test_an_undefined_column_is_named_from_the_statement(sqlstate: str) -> None:
    told = explain(SourceQueryError(SOURCE_TEXT, sqlstate=sqlstate))
    assert isinstance(told, SchemaMismatch) and told.sqlstate == sqlstate
    assert "column 'orders.note' no longer exists at the source" in told.message
    assert "people" not in told.message and "amount" not in told.message
    assert "refresh the catalog of connection 'shop' in stage 'development'" in told.message
    assert "secret-value" not in told.message and "o.note" not in told.message


@pytest.mark.parametrize("sqlstate", ["42P01", "42S02"])
def test_an_undefined_table_is_named_from_the_statement(sqlstate: str) -> None:
    orders = pa.table({"id": [1], "amount": [2], "note": ["n"]})
    told = explain(SourceQueryError(SOURCE_TEXT, sqlstate=sqlstate), source(orders=orders))
    assert "table main.people of entity 'people' no longer exists" in told.message
    assert "orders" not in told.message


class Unreachable(MemoryConnector):
    def introspect(self, schemas: Sequence[str] | None = None) -> list[TableInfo]:
        raise OSError("the source went away")


def test_without_the_source_the_columns_read_are_listed() -> None:
    told = explain(SourceQueryError(SOURCE_TEXT, sqlstate="42703"), Unreachable({}))
    assert "orders.amount, orders.id, orders.note, people.id" in told.message
    assert isinstance(told, SchemaMismatch)


@pytest.mark.parametrize(
    "error",
    [
        SourceQueryError("division by zero", sqlstate="22012"),
        SourceQueryError("no sqlstate"),
        FabricError("not a source error", sqlstate="42703"),
    ],
)
def test_other_errors_stay_as_they_are(error: FabricError) -> None:
    assert explain_source_error(error, GRANT, NOW) is None
