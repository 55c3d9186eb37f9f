"""A source whose schema moved since the last refresh: say which column, and what to do.

Between a change at the source (a column or table dropped) and a refresh of the catalog,
a query that reads the dropped part is refused by the source with an "undefined column"
or "undefined table" SQLSTATE. The source's message names the part but may echo more,
so it is never passed on. Instead the gateway compares what its own compiled statement
reads (`Grant.reads`) with what the source has now (one introspection of the schemas
involved) and names the missing columns and tables from its own metadata.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Final

from connectors import Connector
from fabric.errors import FabricError, SchemaMismatch, SourceQueryError
from fabric.model import TableInfo
from fabric.query.revocation import Grant

log = logging.getLogger(__name__)

UNDEFINED_COLUMN: Final = frozenset({"42703", "42S22"})
"""PostgreSQL's undefined_column; MySQL/MariaDB (1054) and SQL Server (207) as ODBC's
42S22, which their connectors report."""
UNDEFINED_TABLE: Final = frozenset({"42P01", "42S02"})
"""PostgreSQL's undefined_table; MySQL/MariaDB (1146) and SQL Server (208) as 42S02."""


def explain_source_error(
    error: FabricError, grant: Grant, connector: Connector | None
) -> Callable[[], FabricError] | None:
    """None unless `error` is the source saying a column or table the statement reads is
    gone; then a blocking call (it introspects the source) building the SchemaMismatch."""
    sqlstate = error.sqlstate
    if not isinstance(error, SourceQueryError) or sqlstate is None:
        return None
    if sqlstate not in UNDEFINED_COLUMN and sqlstate not in UNDEFINED_TABLE:
        return None
    if not grant.reads:
        return None

    def explain() -> FabricError:
        return schema_mismatch(sqlstate, grant, _source_tables(connector, grant))

    return explain


def schema_mismatch(
    sqlstate: str, grant: Grant, found: Mapping[tuple[str, str], TableInfo] | None
) -> SchemaMismatch:
    """The error naming what the statement reads and the source lacks (`found`: the
    source's tables now; None when they could not be read)."""
    gone: list[str] = []
    if found is not None:
        for read in grant.reads:
            info = found.get(read.table)
            if info is None:
                gone.append(
                    f"table {read.table[0]}.{read.table[1]} of entity '{read.entity}' no "
                    "longer exists at the source"
                )
                continue
            gone.extend(
                f"column '{read.entity}.{column}' no longer exists at the source"
                for column in read.columns
                if info.column(column) is None
            )
    if not gone:
        names = ", ".join(f"{r.entity}.{c}" for r in grant.reads for c in r.columns)
        gone.append(
            "a column or table the query reads no longer exists at the source"
            + (f" (it reads {names})" if names else "")
        )
    return SchemaMismatch(
        f"the source's schema no longer matches the selection: {'; '.join(gone)} "
        f"(SQLSTATE {sqlstate}). A refresh is needed: refresh the catalog of connection "
        f"'{grant.connection}' in stage '{grant.stage}' (CatalogService.Refresh, or "
        f"`fabric catalog refresh {grant.connection} --stage {grant.stage}`)",
        sqlstate=sqlstate,
    )


def _source_tables(
    connector: Connector | None, grant: Grant
) -> Mapping[tuple[str, str], TableInfo] | None:
    if connector is None:
        return None
    schemas = sorted({read.table[0] for read in grant.reads})
    try:
        tables = connector.introspect(schemas)
    except Exception as error:  # the explanation is a courtesy: the SQLSTATE still stands
        log.info(
            "could not introspect the source to explain a missing column: %s",
            type(error).__name__,
        )
        return None
    return {(table.schema, table.name): table for table in tables}
