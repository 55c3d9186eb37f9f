"""Connectors: one module per external system, behind the contract in `connectors.base`."""

from __future__ import annotations

from connectors.base import Connector, ConnectorConfig, ParamStyle, QueryHandle

__all__ = ["Connector", "ConnectorConfig", "ParamStyle", "QueryHandle", "connector_class"]


def connector_class(kind: str) -> type[Connector]:
    """The connector class for a connection kind; imported lazily so an unused driver
    never loads."""
    if kind == "duckdb":
        from connectors.duckdb import DuckDBConnector

        return DuckDBConnector
    if kind == "postgres":
        from connectors.postgres import PostgresConnector

        return PostgresConnector
    if kind == "mysql":
        from connectors.mysql import MySQLConnector

        return MySQLConnector
    if kind == "sqlserver":
        from connectors.sqlserver import SqlServerConnector

        return SqlServerConnector
    from fabric.errors import InvalidArgument

    raise InvalidArgument(
        f"no connector for kind {kind!r}; available: duckdb, postgres, mysql, sqlserver"
    )
