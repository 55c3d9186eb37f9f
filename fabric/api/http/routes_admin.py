"""Running queries over REST (admin): the same listing and cancelling as the gRPC
AdminService (`fabric.api.admin_service.RunningQueryAdmin`)."""

from __future__ import annotations

import datetime as dt
from typing import Any

from fabric.api.http import schemas as s
from fabric.api.http.endpoint import Call, Endpoint
from fabric.context import Role
from fabric.errors import NotFound
from fabric.query.running import RunningQueryView


def _view(view: RunningQueryView) -> dict[str, Any]:
    return {
        "id": view.id,
        "principal": view.principal,
        "connection": view.connection,
        "sql_shape": view.sql_shape,
        "started_at": dt.datetime.fromtimestamp(view.started_at, dt.UTC).isoformat(),
        "elapsed_ms": round(view.elapsed * 1000, 3),
        "replica": view.replica,
        "stage": view.stage,
        "protocol": view.protocol,
        "kind": view.kind,
        "phase": view.phase,
        "rows": view.rows,
    }


async def list_running_queries(call: Call) -> Any:
    views, replicas, truncated = await call.services.admin.list(call.ctx, call.query("stage") or "")
    return {
        "queries": [_view(view) for view in views],
        "replicas": replicas,
        "truncated": truncated,
    }


async def cancel_running_query(call: Call) -> Any:
    try:
        replica = await call.services.admin.cancel(
            call.ctx, call.path("query_id"), call.query("stage") or ""
        )
    except NotFound:
        # Ended before the cancel reached it: nothing to cancel any more.
        return {"cancelled": False, "replica": None}
    return {"cancelled": True, "replica": replica}


RUNNING_QUERY = s.obj(
    id=s.STRING,
    principal=s.STRING,
    connection=s.STRING,
    sql_shape=s.STRING,
    started_at=s.STRING,
    elapsed_ms=s.NUMBER,
    replica=s.STRING,
    stage=s.STRING,
    protocol=s.STRING,
    kind=s.STRING,
    phase=s.STRING,
    rows=s.INTEGER,
)

ENDPOINTS = [
    Endpoint(
        "GET", "/api/v1/running", list_running_queries, Role.ADMIN,
        "The tenant's queries running now in a stage (default: the caller's), on every replica",
        "running",
        s.obj(queries=s.array(RUNNING_QUERY), replicas=s.array(s.STRING), truncated=s.BOOLEAN),
        query={"stage": s.STRING},
    ),
    Endpoint(
        "POST", "/api/v1/running/{query_id}/cancel", cancel_running_query, Role.ADMIN,
        "Cancel a running query where it runs", "running",
        s.obj(cancelled=s.BOOLEAN, replica=s.NULLABLE_STRING), query={"stage": s.STRING},
    ),
]  # fmt: skip
