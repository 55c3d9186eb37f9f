"""The platform calls both doors make (gRPC servicers and the REST API), as plain
functions of the platform and the caller: what a call does beyond one service method
(the stage it defaults to, which selection it makes, the purge after a refresh, timing)
lives here once. Blocking: the metadata store, the secret store and the sources are
called; the doors run these off the event loop.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

from fabric.catalog.audit import AuditEvent
from fabric.catalog.manager import TableChoice
from fabric.clock import elapsed_us
from fabric.context import RequestContext
from fabric.errors import InvalidArgument
from fabric.model import Entity
from fabric.platform.plane import Platform
from fabric.platform.refresh import RefreshReport, refresh_catalog
from fabric.query.engine import QueryEngine

DEFAULT_AUDIT_LIMIT = 100


def required(value: str, what: str) -> str:
    """`value`, or InvalidArgument saying `what` is required when it is empty."""
    if not value:
        raise InvalidArgument(f"{what} is required")
    return value


@dataclass(frozen=True, slots=True)
class ConnectionTestResult:
    stage: str
    elapsed_us: int


def connection_test(
    platform: Platform, ctx: RequestContext, name: str, stage: str | None
) -> ConnectionTestResult:
    """Test the connection in `stage` (default: the caller's), timed; audited by the
    connection admin."""
    stage = stage or ctx.stage
    started = time.perf_counter()
    platform.connections.test(ctx.tenant, required(name, "name"), stage, actor=ctx.principal)
    return ConnectionTestResult(stage, elapsed_us(started))


def select(
    platform: Platform,
    ctx: RequestContext,
    connection: str,
    stage: str | None,
    choices: Sequence[TableChoice],
    *,
    all_tables: bool = False,
    schemas: Sequence[str] | None = None,
    expected_catalog_version: int | None = None,
) -> tuple[list[Entity], int]:
    """Select `choices` (or every table of `schemas`, with `all_tables`) in `stage`
    (default: the caller's); the stored entities and the new catalog version."""
    connection = required(connection, "connection")
    stage = stage or ctx.stage
    manager = platform.manager
    if all_tables:
        if choices:
            raise InvalidArgument("give tables or all_tables, not both")
        entities = manager.select_all(
            ctx.tenant, connection, stage, list(schemas or ()) or None, actor=ctx.principal
        )
    else:
        if not choices:
            raise InvalidArgument("name at least one table, or set all_tables")
        entities = manager.select_tables(
            ctx.tenant,
            connection,
            stage,
            choices,
            expected_catalog_version=expected_catalog_version,
            actor=ctx.principal,
        )
    return entities, manager.catalog_version(ctx.tenant, connection)


def refresh(
    platform: Platform, ctx: RequestContext, connection: str, stage: str | None
) -> RefreshReport:
    """Refresh the selection of `connection` from `stage` (default: the caller's) and,
    when something changed, purge what was derived from the old metadata."""
    connection = required(connection, "connection")
    report = refresh_catalog(
        platform.manager, ctx.tenant, connection, stage or ctx.stage, actor=ctx.principal
    )
    if report.changed:
        # The version moved already; purging now stops the running queries the change
        # revokes and frees memory at once too. A refresh that found nothing changed
        # nothing, so there is nothing to purge.
        platform.listener.connection_changed(ctx.tenant, connection)
    return report


def list_audit(
    platform: Platform, ctx: RequestContext, connection: str | None, limit: int | None
) -> list[AuditEvent]:
    """The caller's tenant's audit trail, newest first (default limit 100)."""
    return platform.manager.store.list_audit(
        ctx.tenant, connection=connection or None, limit=limit or DEFAULT_AUDIT_LIMIT
    )


def deletion_preview(
    platform: Platform, engine: QueryEngine, tenant: str, name: str
) -> dict[str, int]:
    """What deleting the connection would remove: its stage configurations, stored
    passwords and selected entities at rest, and the cached results and open statements
    this process holds for it. NotFound when there is no such connection."""
    connection = platform.connections.get(tenant, required(name, "name"))
    entities = platform.manager.store.catalog(tenant, connection.name).entities
    return {
        "stages": len(connection.stages),
        "secrets": len(set(connection.secret_refs.values())),
        "entities": len(entities),
        "cached_results": engine.results.count_connection(tenant, connection.name),
        "open_statements": engine.open_statements.count_connection(tenant, connection.name),
    }
