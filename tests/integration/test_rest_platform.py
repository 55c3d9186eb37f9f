"""The REST API on a platform process (`--role platform`) over real NATS: a developer's
query is forwarded to the stage's runtime replica, exactly as the platform's gRPC
QueryService forwards it, and counted there under the protocol `rest`."""

from __future__ import annotations

from pathlib import Path

import httpx

from fabric.app.parts import local_token
from tests.integration.test_roles import (
    CONNECTION,
    SQL,
    cluster,
    expected,
    make_site,
    names,
    settings_for,
)
from tests.support.nats import nats_url, run_bounded


def test_a_rest_query_on_the_platform_runs_on_the_stage_replica(tmp_path: Path) -> None:
    tenant, stage = names()
    database = make_site(tmp_path, tenant, stage)
    settings = settings_for(tmp_path, nats_url(), auth="local", http_listen="127.0.0.1:0")
    developer = local_token(settings, tenant=tenant, stage=stage, role="developer")
    app = local_token(settings, tenant=tenant, stage=stage, role="app")

    async def body() -> None:
        async with cluster(settings, stage, replicas=1) as (platform, (runtime,)):
            assert runtime.gateway.http_port is None  # replicas serve no REST API
            base = f"http://127.0.0.1:{platform.gateway.http_port}"
            async with httpx.AsyncClient(base_url=base, timeout=30) as client:
                response = await client.post(
                    "/api/v1/query",
                    json={"connection": CONNECTION, "sql": SQL, "params": {"min": 500}},
                    headers={"Authorization": f"Bearer {developer}"},
                )
                refused = await client.get("/api/v1/me", headers={"Authorization": f"Bearer {app}"})
            assert response.status_code == 200, response.text
            [row] = expected(database, 500)
            # sum() of a BIGINT is a decimal, which JSON carries as a string
            assert response.json()["rows"] == [[row["n"], str(row["total"])]]
            assert refused.status_code == 403
            labels = {"method": "execute", "outcome": "ok", "protocol": "rest"}
            ran = runtime.gateway.engine.metrics.registry.get_sample_value(
                "fabric_queries_total", labels
            )
            assert ran == 1.0

    run_bounded(body(), timeout=60)
