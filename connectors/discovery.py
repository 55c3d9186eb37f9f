"""Turning a source's catalog rows into `TableInfo` values, the same way for every
connector: columns in table order, composite keys kept whole in key order."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from fabric.model import ColumnInfo, ForeignKey, TableInfo, TableKind

TableKey = tuple[str, str]


def schema_filter(
    column: str, system: Sequence[str], schemas: Sequence[str] | None
) -> tuple[str, tuple[str, ...]]:
    """A WHERE fragment on the schema `column` with its values (FORMAT placeholders):
    never a `system` schema, and only `schemas` when given (an empty list matches
    nothing)."""
    clause = f"{column} NOT IN (" + ", ".join(["%s"] * len(system)) + ")"
    params = tuple(system)
    if schemas is not None:
        wanted = tuple(schemas)
        if not wanted:
            return "1 = 0", ()
        clause += f" AND {column} IN (" + ", ".join(["%s"] * len(wanted)) + ")"
        params += wanted
    return clause, params


@dataclass
class _ForeignKeyParts:
    referenced_schema: str
    referenced_table: str
    columns: list[str] = field(default_factory=list)
    referenced_columns: list[str] = field(default_factory=list)


class TableAssembler:
    """Collects discovery rows (one per column, one per key column, in key order) and
    builds the tables they describe."""

    def __init__(self) -> None:
        self._columns: dict[TableKey, list[ColumnInfo]] = {}
        self._kinds: dict[TableKey, TableKind] = {}
        self._primary: dict[TableKey, list[str]] = {}
        self._foreign: dict[TableKey, dict[str, _ForeignKeyParts]] = {}

    def add_column(self, schema: str, table: str, kind: TableKind, column: ColumnInfo) -> None:
        key = (schema, table)
        self._kinds[key] = kind
        self._columns.setdefault(key, []).append(column)

    def add_primary_key_column(self, schema: str, table: str, column: str) -> None:
        self._primary.setdefault((schema, table), []).append(column)

    def add_foreign_key_column(
        self,
        schema: str,
        table: str,
        name: str,
        column: str,
        referenced_schema: str,
        referenced_table: str,
        referenced_column: str,
    ) -> None:
        parts = self._foreign.setdefault((schema, table), {}).setdefault(
            name, _ForeignKeyParts(referenced_schema, referenced_table)
        )
        parts.columns.append(column)
        parts.referenced_columns.append(referenced_column)

    def tables(self) -> list[TableInfo]:
        return [
            TableInfo(
                schema=key[0],
                name=key[1],
                columns=tuple(columns),
                primary_key=tuple(self._primary.get(key, ())),
                foreign_keys=tuple(
                    ForeignKey(
                        name=name,
                        columns=tuple(fk.columns),
                        referenced_schema=fk.referenced_schema,
                        referenced_table=fk.referenced_table,
                        referenced_columns=tuple(fk.referenced_columns),
                    )
                    for name, fk in self._foreign.get(key, {}).items()
                ),
                kind=self._kinds[key],
            )
            for key, columns in self._columns.items()
        ]
