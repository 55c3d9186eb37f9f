"""The SQL Server connector without a server: type mapping, discovery SQL, parameter
binding and error mapping. No TDS peer runs here; live behaviour is covered by the
conformance suite when FABRIC_TEST_MSSQL_URL is set."""

from __future__ import annotations

import datetime as dt
import uuid
from decimal import Decimal
from typing import Any

import pyarrow as pa
import pymssql
import pytest
import sqlglot
from pymssql import _mssql

from connectors import connector_class
from connectors.base import ConnectorConfig, ParamStyle
from connectors.sqlserver import (
    COLUMNS_SQL,
    DESCRIBE_SQL,
    KEYS_SQL,
    SqlServerConnector,
    bind_statement,
    build_tables,
    discovery_filter,
    map_mssql_error,
    mssql_arrow_type,
)
from fabric.errors import (
    FailedPrecondition,
    InvalidArgument,
    SourceQueryError,
    SourceUnavailable,
)

TYPE_TABLE: list[tuple[str, pa.DataType | None]] = [
    ("bit", pa.bool_()),
    ("tinyint", pa.uint8()),
    ("smallint", pa.int16()),
    ("int", pa.int32()),
    ("bigint", pa.int64()),
    ("decimal(38,10)", pa.decimal128(38, 10)),
    ("numeric(12, 3)", pa.decimal128(12, 3)),
    ("money", pa.decimal128(19, 4)),
    ("smallmoney", pa.decimal128(10, 4)),
    ("float", pa.float64()),
    ("float(24)", pa.float32()),
    ("real", pa.float32()),
    ("date", pa.date32()),
    ("time(7)", pa.time64("us")),
    ("datetime", pa.timestamp("us")),
    ("smalldatetime", pa.timestamp("us")),
    ("datetime2(7)", pa.timestamp("us")),
    ("datetimeoffset(7)", pa.timestamp("us", tz="UTC")),
    ("char(10)", pa.string()),
    ("varchar(max)", pa.string()),
    ("nchar(5)", pa.string()),
    ("nvarchar(50)", pa.string()),
    ("ntext", pa.string()),
    ("xml", pa.string()),
    ("varbinary(max)", pa.binary()),
    ("binary(16)", pa.binary()),
    ("uniqueidentifier", pa.string()),
    ("rowversion", pa.binary()),
    ("sql_variant", None),
]


@pytest.mark.parametrize(("type_name", "arrow_type"), TYPE_TABLE)
def test_type_mapping(type_name: str, arrow_type: pa.DataType | None) -> None:
    assert mssql_arrow_type(type_name) == arrow_type


def test_class_constants_and_registry() -> None:
    assert connector_class("sqlserver") is SqlServerConnector
    assert SqlServerConnector.dialect == "tsql"
    assert SqlServerConnector.param_style is ParamStyle.FORMAT
    with pytest.raises(InvalidArgument):
        SqlServerConnector(ConnectorConfig({"user": "u"}))
    with pytest.raises(InvalidArgument):
        SqlServerConnector(ConnectorConfig({"host": "h", "user": "u", "encryption": "maybe"}))


@pytest.mark.parametrize("name", ["COLUMNS_SQL", "KEYS_SQL", "DESCRIBE_SQL"])
@pytest.mark.parametrize("schemas", [None, ["sales", "o'brien"], []])
def test_discovery_sql_is_valid_tsql(name: str, schemas: list[str] | None) -> None:
    template = {"COLUMNS_SQL": COLUMNS_SQL, "KEYS_SQL": KEYS_SQL, "DESCRIBE_SQL": DESCRIBE_SQL}[
        name
    ]
    clause, schema_params = discovery_filter(schemas)
    sql = template.format(filter=clause) if "{filter}" in template else template
    params: tuple[str | None, ...] = schema_params * template.count("{filter}")  # as introspect
    if name == "DESCRIBE_SQL":
        params = ("SELECT 1 AS x", None)
    # pymssql's own substitution, as cursor.execute does it: placeholders == values
    text = _mssql.substitute_params(sql, params).decode()
    assert "%s" not in text
    tree = sqlglot.parse_one(text, read="tsql")
    assert tree is not None
    if schemas and name != "DESCRIBE_SQL":
        assert "N'o''brien'" in text


def test_discovery_rows_keep_composite_keys_whole() -> None:
    columns = [
        ("sales", "parent", "U ", "a", "int", "int", 4, 10, 0, False),
        ("sales", "parent", "U ", "b", "nvarchar", "nvarchar", 40, 0, 0, False),
        ("sales", "parent", "U ", "c", "numeric", "numeric", 9, 12, 3, True),
        ("sales", "parent", "U ", "f", "float", "float", 4, 24, 0, True),
        ("sales", "child", "U ", "x", "nvarchar", "nvarchar", 40, 0, 0, True),
        ("sales", "child", "U ", "y", "int", "int", 4, 10, 0, True),
        ("sales", "v", "V ", "a", "money", "money", 8, 19, 4, True),
    ]
    keys = [
        ("sales", "child", "FK", "fk_child", "x", 1, "sales", "parent", "b"),
        ("sales", "child", "FK", "fk_child", "y", 2, "sales", "parent", "a"),
        ("sales", "parent", "PK", "pk_parent", "b", 1, None, None, None),
        ("sales", "parent", "PK", "pk_parent", "a", 2, None, None, None),
    ]
    tables = {t.name: t for t in build_tables(columns, keys)}
    parent, child, view = tables["parent"], tables["child"], tables["v"]
    assert parent.primary_key == ("b", "a")
    assert [c.source_type for c in parent.columns] == [
        "int",
        "nvarchar(20)",
        "numeric(12,3)",
        "float",
    ]
    assert [c.arrow_type for c in parent.columns] == [
        pa.int32(),
        pa.string(),
        pa.decimal128(12, 3),
        pa.float32(),
    ]
    assert parent.columns[0].nullable is False
    (fk,) = child.foreign_keys
    assert (fk.columns, fk.referenced_columns) == (("x", "y"), ("b", "a"))
    assert (fk.referenced_schema, fk.referenced_table) == ("sales", "parent")
    assert view.kind.value == "view" and view.columns[0].arrow_type == pa.decimal128(19, 4)


def test_binding_uses_sp_executesql_with_typed_values() -> None:
    sql = "SELECT TOP 101 [t].[a] FROM [s].[t] AS [t] WHERE [t].[n] LIKE 'a%%' AND [t].[a] = %s"
    statement, declarations, batch = bind_statement(sql, ["x'); DROP TABLE t; --"])
    assert statement.endswith("LIKE 'a%' AND [t].[a] = @P1")
    assert declarations == "@P1 NVARCHAR(MAX)"
    assert batch.startswith("EXEC sp_executesql N'SELECT TOP 101")
    assert "@P1 = N'x''); DROP TABLE t; --'" in batch
    parsed = sqlglot.parse(batch, read="tsql")
    assert len([p for p in parsed if p is not None]) == 1  # one statement, nothing smuggled


@pytest.mark.parametrize(
    ("value", "declared", "literal"),
    [
        (7, "BIGINT", "7"),
        (-(2**63), "BIGINT", str(-(2**63))),
        (2**70, "DECIMAL(38, 0)", str(2**70)),
        (1.25, "FLOAT", "1.25E0"),
        (Decimal("12345.6789"), "DECIMAL(38, 4)", "12345.6789"),
        ("héllo 😀", "NVARCHAR(MAX)", "N'héllo 😀'"),
        (True, "BIT", "1"),
        (b"\x00\x01\xff", "VARBINARY(MAX)", "0x0001ff"),
        (dt.date(2024, 2, 29), "DATE", "'2024-02-29'"),
        (dt.datetime(2024, 1, 2, 3, 4, 5, 123456), "DATETIME2(7)", "'2024-01-02T03:04:05.123456'"),
        (
            dt.datetime(2024, 1, 2, 3, 4, 5, 123456, tzinfo=dt.timezone(dt.timedelta(hours=2))),
            "DATETIMEOFFSET(7)",
            "'2024-01-02T03:04:05.123456+02:00'",
        ),
        (dt.time(1, 2, 3, 250000), "TIME(7)", "'01:02:03.250000'"),
        (uuid.UUID(int=1), "UNIQUEIDENTIFIER", "'00000000-0000-0000-0000-000000000001'"),
        (None, "NVARCHAR(1)", "NULL"),
    ],
)
def test_parameter_types(value: Any, declared: str, literal: str) -> None:
    _, declarations, batch = bind_statement("SELECT %s AS v", [value])
    assert declarations == f"@P1 {declared}"
    assert batch.endswith(f"@P1 = {literal}")
    assert sqlglot.parse_one(batch, read="tsql") is not None


def test_binding_checks_counts_and_types() -> None:
    with pytest.raises(InvalidArgument, match="2 placeholder"):
        bind_statement("SELECT %s, %s", [1])
    with pytest.raises(InvalidArgument, match="1 placeholder"):
        bind_statement("SELECT %s", [1, 2])
    with pytest.raises(InvalidArgument):
        bind_statement("SELECT 5 % 2", [])
    with pytest.raises(InvalidArgument):
        bind_statement("SELECT %s", [[1, 2]])
    with pytest.raises(InvalidArgument):
        bind_statement("SELECT %s", [float("nan")])
    statement, declarations, batch = bind_statement("SELECT 5 %% 2 AS m", [])
    assert statement == batch == "SELECT 5 % 2 AS m" and declarations == ""


def _db_error(number: int, message: bytes) -> pymssql.OperationalError:
    return pymssql.OperationalError(number, message)


def test_error_mapping_never_echoes_the_message() -> None:
    where = "db.example:1433"
    secret = b"Conversion failed when converting the nvarchar value 'secret-value-123' to int."
    error = map_mssql_error(_db_error(245, secret), where)
    assert isinstance(error, SourceQueryError)
    assert error.sqlstate == "22018"
    assert "secret-value-123" not in str(error) and "245" in str(error)
    error = map_mssql_error(_db_error(8134, b"Divide by zero error encountered."), where)
    assert isinstance(error, SourceQueryError) and error.sqlstate == "22012"
    login = map_mssql_error(_db_error(18456, b"Login failed for user 'sa'. pw=hunter2"), where)
    assert isinstance(login, FailedPrecondition) and "hunter2" not in str(login)
    assert "authentication failed" in str(login) and "login_failed" in str(login)
    database = map_mssql_error(_db_error(4060, b"Cannot open database 'sales_db'"), where)
    assert isinstance(database, FailedPrecondition) and "sales_db" not in str(database)
    assert "`database` setting" in str(database)
    down = map_mssql_error(_db_error(20009, b"Unable to connect: Adaptive Server"), where)
    assert isinstance(down, SourceUnavailable)
    timeout = map_mssql_error(_db_error(20003, b"Adaptive Server connection timed out"), where)
    assert isinstance(timeout, SourceUnavailable) and "stopped answering" in str(timeout)
    raw = _mssql.MSSQLDatabaseException((3906, b"Failed to update database because read-only"))
    read_only = map_mssql_error(raw, where)
    assert isinstance(read_only, SourceQueryError) and read_only.sqlstate == "25006"
    interface = map_mssql_error(pymssql.InterfaceError("Connection is closed."), where)
    assert isinstance(interface, SourceUnavailable)
