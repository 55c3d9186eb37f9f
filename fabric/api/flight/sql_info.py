"""GetSqlInfo and GetXdbcTypeInfo: what Fabric is and which SQL its compiler accepts."""

from __future__ import annotations

import importlib.metadata
from collections.abc import Mapping, Sequence
from types import MappingProxyType

import pyarrow as pa
from sqlglot import exp

from fabric.config import Settings

# -- GetSqlInfo ----------------------------------------------------------------------------

_STRING, _BOOL, _BIGINT, _INT32, _STRING_LIST = 0, 1, 2, 3, 4
_VALUE_TYPE = pa.dense_union(
    [
        pa.field("string_value", pa.utf8(), False),
        pa.field("bool_value", pa.bool_(), False),
        pa.field("bigint_value", pa.int64(), False),
        pa.field("int32_bitmask", pa.int32(), False),
        pa.field("string_list", pa.list_(pa.utf8()), False),
        pa.field("int32_to_int32_list_map", pa.map_(pa.int32(), pa.list_(pa.int32())), False),
    ]
)
SQL_INFO_SCHEMA = pa.schema(
    [pa.field("info_name", pa.uint32(), False), pa.field("value", _VALUE_TYPE, False)]
)

# The functions of the allow-list (fabric.query.functions) as PostgreSQL spells them,
# by the category Flight SQL asks for; a test keeps this in step with the allow-list.
NUMERIC_FUNCTIONS: Mapping[type[exp.Expr], tuple[str, ...]] = MappingProxyType(
    {
        exp.Abs: ("ABS",),
        exp.Round: ("ROUND",),
        exp.Floor: ("FLOOR",),
        exp.Ceil: ("CEIL", "CEILING"),
        exp.Trunc: ("TRUNC",),
        exp.Sqrt: ("SQRT",),
        exp.Cbrt: ("CBRT",),
        exp.Pow: ("POWER",),
        exp.Ln: ("LN",),
        exp.Log: ("LOG",),
        exp.Exp: ("EXP",),
        exp.Sign: ("SIGN",),
    }
)
STRING_FUNCTIONS: Mapping[type[exp.Expr], tuple[str, ...]] = MappingProxyType(
    {
        exp.Lower: ("LOWER",),
        exp.Upper: ("UPPER",),
        exp.Length: ("LENGTH",),
        exp.Substring: ("SUBSTRING",),
        exp.Trim: ("TRIM",),
        exp.Concat: ("CONCAT",),
        exp.ConcatWs: ("CONCAT_WS",),
        exp.Replace: ("REPLACE",),
        exp.StrPosition: ("POSITION", "STRPOS"),
        exp.Left: ("LEFT",),
        exp.Right: ("RIGHT",),
        exp.StartsWith: ("STARTS_WITH",),
    }
)
DATETIME_FUNCTIONS: Mapping[type[exp.Expr], tuple[str, ...]] = MappingProxyType(
    {
        exp.Extract: ("EXTRACT", "DATE_PART"),
        exp.DateTrunc: ("DATE_TRUNC",),
        exp.TimestampTrunc: ("DATE_TRUNC",),
        exp.CurrentDate: ("CURRENT_DATE",),
        exp.CurrentTimestamp: ("CURRENT_TIMESTAMP", "NOW"),
    }
)
SYSTEM_FUNCTIONS: Mapping[type[exp.Expr], tuple[str, ...]] = MappingProxyType(
    {
        exp.Coalesce: ("COALESCE",),
        exp.Nullif: ("NULLIF",),
        exp.Greatest: ("GREATEST",),
        exp.Least: ("LEAST",),
    }
)
CONSTRUCTS: frozenset[type[exp.Expr]] = frozenset({exp.Case, exp.If, exp.Cast, exp.Exists})
"""Allowed function-like constructs that are syntax, not functions a client lists."""


def _names(functions: Mapping[type[exp.Expr], tuple[str, ...]]) -> list[str]:
    return sorted({name for names in functions.values() for name in names})


def _server_version() -> str:
    try:
        return importlib.metadata.version("fabric-gateway")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def sql_info_values(settings: Settings) -> dict[int, tuple[int, object]]:
    """Every SqlInfo Fabric answers: id -> (union type code, value)."""
    return {
        0: (_STRING, "Fabric"),  # FLIGHT_SQL_SERVER_NAME
        1: (_STRING, _server_version()),  # FLIGHT_SQL_SERVER_VERSION
        2: (_STRING, pa.__version__),  # FLIGHT_SQL_SERVER_ARROW_VERSION
        3: (_BOOL, True),  # FLIGHT_SQL_SERVER_READ_ONLY
        4: (_BOOL, True),  # FLIGHT_SQL_SERVER_SQL
        5: (_BOOL, False),  # FLIGHT_SQL_SERVER_SUBSTRAIT
        8: (_INT32, 0),  # FLIGHT_SQL_SERVER_TRANSACTION: SQL_SUPPORTED_TRANSACTION_NONE
        9: (_BOOL, True),  # FLIGHT_SQL_SERVER_CANCEL
        10: (_BOOL, False),  # FLIGHT_SQL_SERVER_BULK_INGESTION
        # FLIGHT_SQL_SERVER_STATEMENT_TIMEOUT: idle prepared statements are dropped (ms)
        100: (_INT32, min(int(settings.statement_idle_limit * 1000), 2**31 - 1)),
        500: (_BOOL, False),  # SQL_DDL_CATALOG
        501: (_BOOL, False),  # SQL_DDL_SCHEMA
        502: (_BOOL, False),  # SQL_DDL_TABLE
        503: (_INT32, 3),  # SQL_IDENTIFIER_CASE: unquoted names fold to lower case
        504: (_STRING, '"'),  # SQL_IDENTIFIER_QUOTE_CHAR
        506: (_BOOL, True),  # SQL_ALL_TABLES_ARE_SELECTABLE: every listed entity is
        509: (_STRING_LIST, _names(NUMERIC_FUNCTIONS)),  # SQL_NUMERIC_FUNCTIONS
        510: (_STRING_LIST, _names(STRING_FUNCTIONS)),  # SQL_STRING_FUNCTIONS
        511: (_STRING_LIST, _names(SYSTEM_FUNCTIONS)),  # SQL_SYSTEM_FUNCTIONS
        512: (_STRING_LIST, _names(DATETIME_FUNCTIONS)),  # SQL_DATETIME_FUNCTIONS
        513: (_STRING, "\\"),  # SQL_SEARCH_STRING_ESCAPE
        515: (_BOOL, True),  # SQL_SUPPORTS_COLUMN_ALIASING
        516: (_BOOL, True),  # SQL_NULL_PLUS_NULL_IS_NULL
        518: (_BOOL, True),  # SQL_SUPPORTS_TABLE_CORRELATION_NAMES
        520: (_BOOL, True),  # SQL_SUPPORTS_EXPRESSIONS_IN_ORDER_BY
        522: (_INT32, 0b11),  # SQL_SUPPORTED_GROUP_BY: unrelated, beyond select
        528: (_INT32, 2),  # SQL_OUTER_JOINS_SUPPORT_LEVEL: SQL_FULL_OUTER_JOINS
        529: (_STRING, "schema"),  # SQL_SCHEMA_TERM
        531: (_STRING, "connection"),  # SQL_CATALOG_TERM
        536: (_BOOL, False),  # SQL_SELECT_FOR_UPDATE_SUPPORTED
        537: (_BOOL, False),  # SQL_STORED_PROCEDURES_SUPPORTED
        538: (_INT32, 0b1111),  # SQL_SUPPORTED_SUBQUERIES: comparisons, EXISTS, IN, ANY/ALL
        539: (_BOOL, True),  # SQL_CORRELATED_SUBQUERIES_SUPPORTED
        540: (_INT32, 0b11),  # SQL_SUPPORTED_UNIONS: UNION, UNION ALL
        557: (_BIGINT, settings.max_sql_length),  # SQL_MAX_STATEMENT_LENGTH
        563: (_BOOL, False),  # SQL_TRANSACTIONS_SUPPORTED
        573: (_BOOL, False),  # SQL_SAVEPOINTS_SUPPORTED
        574: (_BOOL, True),  # SQL_NAMED_PARAMETERS_SUPPORTED
    }


def sql_info(settings: Settings, wanted: Sequence[int]) -> pa.Table:
    """The SqlInfo rows asked for (all when `wanted` is empty), by id; ids Fabric does
    not answer are left out."""
    values = sql_info_values(settings)
    ids = [i for i in wanted if i in values] if wanted else sorted(values)
    codes: list[int] = []
    offsets: list[int] = []
    children: list[list[object]] = [[] for _ in range(6)]
    for info in ids:
        code, value = values[info]
        codes.append(code)
        offsets.append(len(children[code]))
        children[code].append(value)
    arrays = [
        pa.array(children[index], _VALUE_TYPE.field(index).type)
        for index in range(_VALUE_TYPE.num_fields)
    ]
    union = pa.Array.from_buffers(
        _VALUE_TYPE,
        len(ids),
        [None, pa.array(codes, pa.int8()).buffers()[1], pa.array(offsets, pa.int32()).buffers()[1]],
        children=arrays,
    )
    return pa.table([pa.array(ids, pa.uint32()), union], schema=SQL_INFO_SCHEMA)


# -- GetXdbcTypeInfo -------------------------------------------------------------------------

XDBC_TYPE_INFO_SCHEMA = pa.schema(
    [
        pa.field("type_name", pa.utf8(), False),
        pa.field("data_type", pa.int32(), False),
        pa.field("column_size", pa.int32()),
        pa.field("literal_prefix", pa.utf8()),
        pa.field("literal_suffix", pa.utf8()),
        pa.field("create_params", pa.list_(pa.field("item", pa.utf8(), False))),
        pa.field("nullable", pa.int32(), False),
        pa.field("case_sensitive", pa.bool_(), False),
        pa.field("searchable", pa.int32(), False),
        pa.field("unsigned_attribute", pa.bool_()),
        pa.field("fixed_prec_scale", pa.bool_(), False),
        pa.field("auto_increment", pa.bool_()),
        pa.field("local_type_name", pa.utf8()),
        pa.field("minimum_scale", pa.int32()),
        pa.field("maximum_scale", pa.int32()),
        pa.field("sql_data_type", pa.int32(), False),
        pa.field("datetime_subcode", pa.int32()),
        pa.field("num_prec_radix", pa.int32()),
        pa.field("interval_precision", pa.int32()),
    ]
)

_DATETIME = 9  # XDBC_DATETIME: the sql_data_type of dates, times and timestamps
# (type name, XdbcDataType, column size, literal prefix/suffix, case sensitive,
#  searchable, fixed precision and scale, min/max scale, datetime subcode, radix)
_XDBC_TYPES: tuple[tuple[object, ...], ...] = (
    ("BIGINT", -5, 19, None, None, False, 2, True, 0, 0, None, 10),
    ("BOOLEAN", -7, 1, None, None, False, 2, False, None, None, None, None),
    ("BYTEA", -3, None, "'\\x", "'", False, 0, False, None, None, None, None),
    ("DATE", 91, 10, "DATE '", "'", False, 2, False, None, None, 1, None),
    ("DECIMAL", 3, 38, None, None, False, 2, True, 0, 38, None, 10),
    ("DOUBLE PRECISION", 8, 53, None, None, False, 2, False, None, None, None, 2),
    ("INTEGER", 4, 10, None, None, False, 2, True, 0, 0, None, 10),
    ("REAL", 7, 24, None, None, False, 2, False, None, None, None, 2),
    ("SMALLINT", 5, 5, None, None, False, 2, True, 0, 0, None, 10),
    ("TEXT", 12, None, "'", "'", True, 3, False, None, None, None, None),
    ("TIME", 92, 15, "TIME '", "'", False, 2, False, None, None, 2, None),
    ("TIMESTAMP", 93, 26, "TIMESTAMP '", "'", False, 2, False, None, None, 3, None),
)
"""The types Fabric results carry, as Fabric SQL (PostgreSQL) names them."""


def xdbc_type_info(data_type: int | None) -> pa.Table:
    """GetXdbcTypeInfo, ordered by data type then name; `data_type` filters."""
    rows = []
    ordered = sorted(_XDBC_TYPES, key=lambda t: (int(t[1]), str(t[0])))  # type: ignore[call-overload]
    for name, code, size, prefix, suffix, case, search, fixed, lo, hi, sub, radix in ordered:
        if data_type is not None and code != data_type:
            continue
        rows.append(
            {
                "type_name": name,
                "data_type": code,
                "column_size": size,
                "literal_prefix": prefix,
                "literal_suffix": suffix,
                "create_params": ["precision", "scale"] if name == "DECIMAL" else None,
                "nullable": 1,  # NULLABILITY_NULLABLE
                "case_sensitive": case,
                "searchable": search,
                "unsigned_attribute": False if radix == 10 else None,
                "fixed_prec_scale": fixed,
                "auto_increment": None,
                "local_type_name": name,
                "minimum_scale": lo,
                "maximum_scale": hi,
                "sql_data_type": _DATETIME if sub is not None else code,
                "datetime_subcode": sub,
                "num_prec_radix": radix,
                "interval_precision": None,
            }
        )
    return pa.Table.from_pylist(rows, schema=XDBC_TYPE_INFO_SCHEMA)
