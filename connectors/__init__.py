"""Connectors: one module per external system, behind the contract in `connectors.base`,
each registered once in `connectors.registry`."""

from __future__ import annotations

from connectors import registry
from connectors.base import Connector, ConnectorConfig, ParamStyle, QueryHandle

__all__ = [
    "Connector",
    "ConnectorConfig",
    "ParamStyle",
    "QueryHandle",
    "connector_class",
    "registry",
]


def connector_class(kind: str) -> type[Connector]:
    """The connector class for a connection kind, imported on first use so an unused
    driver never loads; InvalidArgument naming the registered kinds for an unknown one."""
    return registry.get(kind).load()
