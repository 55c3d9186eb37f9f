"""PostgreSQL discovery: tables, views, columns and keys from the system catalogs."""

from __future__ import annotations

import json
from typing import Any

from connectors.discovery import TableAssembler
from connectors.postgres.decode import pg_arrow_type
from fabric.model import ColumnInfo, TableInfo, TableKind

SYSTEM_SCHEMAS = ("pg_catalog", "information_schema", "pg_toast")


COLUMNS_SQL = """
SELECT n.nspname, c.relname, c.relkind, a.attname,
       pg_catalog.format_type(a.atttypid, a.atttypmod),
       COALESCE(NULLIF(t.typbasetype, 0), a.atttypid)::int8,
       (CASE WHEN t.typbasetype <> 0 THEN t.typtypmod ELSE a.atttypmod END)::int8,
       (a.attnotnull OR (t.typtype = 'd' AND t.typnotnull))
FROM pg_catalog.pg_class c
JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
JOIN pg_catalog.pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
JOIN pg_catalog.pg_type t ON t.oid = a.atttypid
WHERE c.relkind IN ('r', 'p', 'v', 'm', 'f')
  AND NOT c.relispartition
  AND n.nspname <> ALL (%(system)s::text[])
  AND n.nspname NOT LIKE 'pg\\_temp\\_%%' AND n.nspname NOT LIKE 'pg\\_toast\\_temp\\_%%'
  AND (%(schemas)s::text[] IS NULL OR n.nspname = ANY (%(schemas)s::text[]))
ORDER BY n.nspname, c.relname, a.attnum
"""

CONSTRAINTS_SQL = """
SELECT n.nspname, c.relname, con.contype, con.conname,
       pg_catalog.array_to_json(ARRAY(
           SELECT a.attname FROM unnest(con.conkey) WITH ORDINALITY AS k(attnum, ord)
           JOIN pg_catalog.pg_attribute a ON a.attrelid = con.conrelid AND a.attnum = k.attnum
           ORDER BY k.ord))::text,
       rn.nspname, rc.relname,
       pg_catalog.array_to_json(ARRAY(
           SELECT a.attname FROM unnest(con.confkey) WITH ORDINALITY AS k(attnum, ord)
           JOIN pg_catalog.pg_attribute a ON a.attrelid = con.confrelid AND a.attnum = k.attnum
           ORDER BY k.ord))::text
FROM pg_catalog.pg_constraint con
JOIN pg_catalog.pg_class c ON c.oid = con.conrelid
JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
LEFT JOIN pg_catalog.pg_class rc ON rc.oid = con.confrelid
LEFT JOIN pg_catalog.pg_namespace rn ON rn.oid = rc.relnamespace
WHERE con.contype IN ('p', 'f')
  AND n.nspname <> ALL (%(system)s::text[])
  AND (%(schemas)s::text[] IS NULL OR n.nspname = ANY (%(schemas)s::text[]))
ORDER BY n.nspname, c.relname, con.conname
"""


def build_tables(column_rows: list[Any], constraint_rows: list[Any]) -> list[TableInfo]:
    tables = TableAssembler()
    for schema, table, relkind, name, source_type, oid, typmod, notnull in column_rows:
        kind = TableKind.VIEW if relkind in ("v", "m") else TableKind.TABLE
        tables.add_column(
            schema,
            table,
            kind,
            ColumnInfo(
                name=name,
                source_type=source_type,
                arrow_type=pg_arrow_type(int(oid), int(typmod)),
                nullable=notnull not in ("t", True),
            ),
        )
    for schema, table, contype, name, cols, ref_schema, ref_table, ref_cols in constraint_rows:
        if contype == "p":
            for column in json.loads(cols):
                tables.add_primary_key_column(schema, table, column)
        else:
            for column, referenced in zip(json.loads(cols), json.loads(ref_cols), strict=True):
                tables.add_foreign_key_column(
                    schema, table, name, column, ref_schema, ref_table, referenced
                )
    return tables.tables()
