"""Connections, kinds, discovery, selection, refresh and audit over REST: the same
platform calls (`fabric.api.platform_calls`, the connection admin, the catalog manager)
the gRPC ConnectionService and CatalogService make, run off the event loop."""

from __future__ import annotations

import asyncio
from typing import Any

from connectors import registry
from fabric.api import platform_calls as calls
from fabric.api.http import schemas as s
from fabric.api.http import shapes
from fabric.api.http.body import Fields
from fabric.api.http.endpoint import Call, Endpoint, Reply
from fabric.catalog.manager import TableChoice
from fabric.context import Role
from fabric.errors import FabricError, InvalidArgument, NotFound, PermissionDenied
from fabric.model import Connection, SettingValue
from fabric.platform.connections import StageInput

MAX_AUDIT_LIMIT = 10_000


def _connection_json(call: Call, connection: Connection) -> dict[str, Any]:
    version = call.services.platform.manager.catalog_version(connection.tenant, connection.name)
    return shapes.connection(connection, version)


def _setting(fields: Fields, name: str, value: Any) -> SettingValue:
    if isinstance(value, bool | int | float | str):
        return value
    raise InvalidArgument(
        f"field '{fields.name('settings')}.{name}' must be a string, number or boolean"
    )


def _stage_inputs(body: Fields, field: str, *, required: bool) -> dict[str, StageInput]:
    result: dict[str, StageInput] = {}
    for stage_fields in body.objects(field, required=required):
        stage_fields.only("stage", "settings", "password")
        stage = stage_fields.required_string("stage")
        if stage in result:
            raise InvalidArgument(f"stage {stage!r} is configured twice")
        raw = stage_fields.obj("settings") or {}
        settings = {name: _setting(stage_fields, name, value) for name, value in raw.items()}
        result[stage] = StageInput(settings, stage_fields.string("password"))
    return result


async def list_kinds(call: Call) -> Any:
    return [shapes.kind(spec) for spec in registry.specs()]


async def list_connections(call: Call) -> Any:
    def run() -> dict[str, Any]:
        found = call.services.platform.connections.list(call.ctx.tenant)
        return {"connections": [_connection_json(call, c) for c in found]}

    return await asyncio.to_thread(run)


async def get_connection(call: Call) -> Any:
    def run() -> dict[str, Any]:
        found = call.services.platform.connections.get(call.ctx.tenant, call.path("name"))
        return _connection_json(call, found)

    return await asyncio.to_thread(run)


async def create_connection(call: Call) -> Any:
    body = call.body
    body.only("name", "kind", "stages", "verify")
    name = body.required_string("name")
    kind = body.required_string("kind")
    stages = _stage_inputs(body, "stages", required=True)
    verify = body.boolean("verify")
    ctx = call.ctx

    def run() -> dict[str, Any]:
        created = call.services.platform.connections.create(
            ctx.tenant, name, kind, stages, verify=verify, actor=ctx.principal
        )
        return _connection_json(call, created)

    return Reply(await asyncio.to_thread(run), 201)


async def update_connection(call: Call) -> Any:
    body = call.body
    body.only("expected_version", "stages", "remove_stages", "clear_password_stages", "verify")
    expected = body.integer("expected_version", minimum=1)
    stages = _stage_inputs(body, "stages", required=False)
    remove = body.strings("remove_stages") or []
    clear = body.strings("clear_password_stages") or []
    verify = body.boolean("verify")
    ctx = call.ctx

    def run() -> dict[str, Any]:
        updated = call.services.platform.connections.update(
            ctx.tenant,
            call.path("name"),
            stages=stages,
            remove_stages=remove,
            clear_passwords=clear,
            expected_version=expected,
            verify=verify,
            actor=ctx.principal,
        )
        return _connection_json(call, updated)

    return await asyncio.to_thread(run)


def _expected_version(call: Call) -> int | None:
    raw = call.query("expected_version")
    if raw is None:
        return None
    if not raw.isdigit() or int(raw) < 1:
        raise InvalidArgument("query parameter 'expected_version' must be a positive integer")
    return int(raw)


async def deletion_preview(call: Call) -> Any:
    services = call.services
    return await asyncio.to_thread(
        calls.deletion_preview,
        services.platform,
        services.engine,
        call.ctx.tenant,
        call.path("name"),
    )


async def delete_connection(call: Call) -> Any:
    services = call.services
    ctx = call.ctx
    name = call.path("name")
    expected = _expected_version(call)

    def run() -> dict[str, int]:
        # Counted just before the delete: what it purges (this process's cached results
        # and open statements; at rest, the stages, passwords and entities).
        purged = calls.deletion_preview(services.platform, services.engine, ctx.tenant, name)
        report = services.platform.connections.delete(
            ctx.tenant, name, expected_version=expected, actor=ctx.principal
        )
        return {**purged, "secrets_removed": report.secrets_removed}

    return await asyncio.to_thread(run)


async def test_connection(call: Call) -> Any:
    call.body.only("stage")
    stage = call.body.string("stage")
    ctx = call.ctx
    name = call.path("name")

    def run() -> dict[str, Any]:
        try:
            result = calls.connection_test(call.services.platform, ctx, name, stage)
        except (NotFound, InvalidArgument, PermissionDenied):
            raise  # about the request, not the connection: an error, not a result
        except FabricError as error:
            return {
                "results": [
                    {
                        "stage": stage or ctx.stage,
                        "ok": False,
                        "code": error.code,
                        "message": error.message,
                    }
                ]
            }
        return {
            "results": [{"stage": result.stage, "ok": True, "elapsed_ms": result.elapsed_us / 1000}]
        }

    return await asyncio.to_thread(run)


async def discover(call: Call) -> Any:
    call.body.only("stage", "schemas")
    stage = call.body.string("stage") or call.ctx.stage
    schemas = call.body.strings("schemas")
    ctx = call.ctx

    def run() -> dict[str, Any]:
        tables = call.services.platform.manager.discover(
            ctx.tenant, call.path("name"), stage, schemas or None
        )
        return {"tables": [shapes.table(t) for t in tables]}

    return await asyncio.to_thread(run)


async def list_entities(call: Call) -> Any:
    def run() -> dict[str, Any]:
        snapshot = call.services.platform.manager.store.catalog(call.ctx.tenant, call.path("name"))
        return {
            "entities": [shapes.entity(e) for e in snapshot.entities.values()],
            "catalog_version": snapshot.version,
        }

    return await asyncio.to_thread(run)


async def select_entity(call: Call) -> Any:
    body = call.body
    body.only(
        "entity", "schema", "table", "columns", "stage", "stage_tables", "expected_catalog_version"
    )
    schema = body.string("schema")
    table = body.required_string("table")
    columns = body.strings("columns")
    if columns is not None and not columns:
        raise InvalidArgument("field 'columns' must name at least one column (omit it: all)")
    stage_tables_raw = body.obj("stage_tables") or {}
    for key, value in stage_tables_raw.items():
        if not isinstance(value, str) or not value:
            raise InvalidArgument(f"field 'stage_tables.{key}' must be 'schema.table'")
    choice = TableChoice(
        f"{schema}.{table}" if schema else table,
        columns,
        body.string("entity") or None,
        dict(stage_tables_raw),
    )
    stage = body.string("stage")
    expected = body.integer("expected_catalog_version", minimum=0)
    services = call.services
    connection = call.path("name")
    entities, version = await asyncio.to_thread(
        calls.select,
        services.platform,
        call.ctx,
        connection,
        stage,
        [choice],
        expected_catalog_version=expected,
    )
    await services.announcements.selection_changed(
        call.ctx.tenant, connection, stage or call.ctx.stage, version
    )
    return Reply({"entities": [shapes.entity(e) for e in entities], "catalog_version": version})


async def unselect_entity(call: Call) -> Any:
    services = call.services
    ctx = call.ctx
    connection = call.path("name")
    version = await asyncio.to_thread(
        services.platform.manager.unselect,
        ctx.tenant,
        connection,
        [call.path("entity")],
        actor=ctx.principal,
        stage=ctx.stage,
    )
    await services.announcements.selection_changed(ctx.tenant, connection, None, version)
    return {"catalog_version": version}


async def refresh(call: Call) -> Any:
    call.body.only("stage")
    stage = call.body.string("stage")
    report = await asyncio.to_thread(
        calls.refresh, call.services.refreshing, call.ctx, call.path("name"), stage
    )
    return shapes.refresh_report(report)


async def list_audit(call: Call) -> Any:
    raw = call.query("limit")
    limit = None
    if raw is not None:
        if not raw.isdigit() or not 1 <= int(raw) <= MAX_AUDIT_LIMIT:
            raise InvalidArgument(
                f"query parameter 'limit' must be an integer from 1 to {MAX_AUDIT_LIMIT}"
            )
        limit = int(raw)
    connection = call.query("connection")
    events = await asyncio.to_thread(
        calls.list_audit, call.services.platform, call.ctx, connection, limit
    )
    return {"events": [shapes.audit_event(e) for e in events]}


_NAME = "/api/v1/connections/{name}"
_OPTIONAL_BODY: dict[str, Any] = {"type": "object"}

ENDPOINTS = [
    Endpoint(
        "GET", "/api/v1/kinds", list_kinds, Role.DEVELOPER,
        "Connection kinds and their declared settings (the password is write-only)",
        "connections", s.array(s.KIND),
    ),
    Endpoint(
        "GET", "/api/v1/connections", list_connections, Role.DEVELOPER,
        "The tenant's connections (settings per stage, never a password)",
        "connections", s.obj(connections=s.array(s.CONNECTION)),
    ),
    Endpoint(
        "POST", "/api/v1/connections", create_connection, Role.ADMIN,
        "Create a connection", "connections", s.CONNECTION, s.CREATE_CONNECTION, status=201,
    ),
    Endpoint(
        "GET", _NAME, get_connection, Role.DEVELOPER, "One connection", "connections",
        s.CONNECTION,
    ),
    Endpoint(
        "PATCH", _NAME, update_connection, Role.ADMIN,
        "Change a connection's stages (at its expected version)", "connections",
        s.CONNECTION, s.UPDATE_CONNECTION,
    ),
    Endpoint(
        "GET", f"{_NAME}/deletion", deletion_preview, Role.ADMIN,
        "What deleting the connection would purge (counts)", "connections", s.PURGE_COUNTS,
    ),
    Endpoint(
        "DELETE", _NAME, delete_connection, Role.ADMIN,
        "Delete a connection; the counts of what was purged", "connections",
        s.DELETED, query={"expected_version": s.INTEGER},
    ),
    Endpoint(
        "POST", f"{_NAME}/test", test_connection, Role.ADMIN,
        "Test the connection in a stage (default: the caller's)", "connections",
        s.TEST_RESULTS, s.obj(stage=s.STRING),
    ),
    Endpoint(
        "POST", f"{_NAME}/discover", discover, Role.DEVELOPER,
        "Tables and columns of the source, with primary and foreign keys", "catalog",
        s.obj(tables=s.array(s.TABLE)), s.obj(stage=s.STRING, schemas=s.array(s.STRING)),
    ),
    Endpoint(
        "GET", f"{_NAME}/entities", list_entities, Role.DEVELOPER,
        "The selected entities", "catalog", s.ENTITIES,
    ),
    Endpoint(
        "POST", f"{_NAME}/entities", select_entity, Role.DEVELOPER,
        "Select a table (some or all of its columns) as an entity", "catalog",
        s.ENTITIES, s.SELECT,
    ),
    Endpoint(
        "DELETE", f"{_NAME}/entities/{{entity}}", unselect_entity, Role.DEVELOPER,
        "Unselect an entity", "catalog", s.obj(catalog_version=s.INTEGER),
    ),
    Endpoint(
        "POST", f"{_NAME}/refresh", refresh, Role.DEVELOPER,
        "Compare the selection with the source; the drift report", "catalog",
        s.REFRESH_REPORT, s.obj(stage=s.STRING),
    ),
    Endpoint(
        "GET", "/api/v1/audit", list_audit, Role.ADMIN,
        "The audit trail, newest first", "audit", s.obj(events=s.array(s.AUDIT_EVENT)),
        query={"connection": s.STRING, "limit": s.INTEGER},
    ),
]  # fmt: skip
