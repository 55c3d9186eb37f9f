"""A runtime replica that is shutting down, while its bus queries finish, refuses a new
gRPC call on its own QueryService with UNAVAILABLE and a retry hint, and still finishes
the query it was running (real NATS, a platform and one replica in this process)."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from connectors import Connector
from fabric.app.parts import local_token
from fabric.app.processes import PlatformProcess, RuntimeProcess
from fabric.client import FabricClient
from fabric.model import Connection, SettingValue
from fabric.query.sources import default_connector_factory
from fabric.v1 import query_pb2 as pb
from tests.e2e.conftest import RecordingConnector
from tests.integration.test_roles import (
    CONNECTION,
    SQL,
    bearer,
    expected,
    make_site,
    names,
    settings_for,
    until,
)
from tests.support.nats import nats_url, run_bounded

SERVING = health_pb2.HealthCheckResponse.SERVING


def _health(channel: grpc.Channel) -> int:
    reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
    return int(reply.status)


def test_a_call_to_a_draining_replica_is_unavailable_with_a_retry_hint(tmp_path: Path) -> None:
    url = nats_url()
    tenant, stage = names()
    database = make_site(tmp_path, tenant, stage)
    settings = settings_for(tmp_path, url, replica_id=f"{stage}-r0")
    token = local_token(settings, tenant=tenant, stage=stage, role="admin")
    executed: list[tuple[str, tuple[Any, ...]]] = []
    gate = threading.Event()  # the replica's query waits at the source until it is set

    def gated(
        connection: Connection, values: Mapping[str, SettingValue], password: str | None
    ) -> Connector:
        return RecordingConnector(
            default_connector_factory(connection, values, password), executed, gate
        )

    async def body() -> None:
        platform = await PlatformProcess.open(settings, role="platform", listen="127.0.0.1:0")
        await platform.start()
        runtime = await RuntimeProcess.open(
            settings, stage=stage, listen="127.0.0.1:0", connector_factory=gated
        )
        await runtime.start()
        stopping: asyncio.Task[None] | None = None
        try:
            with FabricClient(f"127.0.0.1:{platform.gateway.port}", token, timeout=30) as client:
                forwarded = asyncio.ensure_future(
                    asyncio.to_thread(client.execute, CONNECTION, SQL, {"min": 500})
                )
                await until(lambda: len(executed) == 1, 10, "the query to reach the replica")
                with grpc.insecure_channel(f"127.0.0.1:{runtime.gateway.port}") as channel:
                    assert await asyncio.to_thread(_health, channel) == SERVING
                    stopping = asyncio.create_task(runtime.stop(30))
                    started = time.monotonic()
                    while await asyncio.to_thread(_health, channel) == SERVING:
                        assert time.monotonic() - started < 10, "health never left SERVING"
                    fetch = channel.unary_unary(
                        "/fabric.v1.QueryService/Fetch",
                        request_serializer=pb.FetchRequest.SerializeToString,
                        response_deserializer=pb.Page.FromString,
                    )
                    with pytest.raises(grpc.RpcError) as refused:
                        await asyncio.to_thread(
                            fetch,
                            pb.FetchRequest(statement_id="any"),
                            metadata=bearer(token),
                            timeout=10,
                        )
                assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
                details = refused.value.details() or ""
                assert "shutting down" in details and "retry" in details
                assert not stopping.done()  # the replica's bus query holds it open
                gate.set()
                result = await forwarded
                assert result.table.to_pylist() == expected(database, 500)
                await stopping
        finally:
            gate.set()
            if stopping is None:
                await runtime.stop(1.0)
            elif not stopping.done():
                await stopping
            await platform.stop(1.0)

    run_bounded(body(), 90)
