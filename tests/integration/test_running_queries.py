"""Running queries across a stage's replicas: listed and cancelled by an administrator
from another process (`fabric queries list|cancel`), the cancellation reaching
PostgreSQL.

Real NATS (the shared server), real PostgreSQL (a schema of its own, dropped at the end),
a platform and two runtime replicas assembled in this process on one event loop, and the
CLI as subprocesses. The query waits at its source on a table lock held by the test, so
it is running (and seen in pg_stat_activity) for as long as the test needs; every wait
is bounded.
"""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import grpc
import psycopg
import pytest

from fabric.app.parts import local_token
from fabric.client import FabricClient
from fabric.errors import Cancelled, NotFound, PermissionDenied
from fabric.proto_values import params_to_proto
from fabric.v1 import query_pb2 as pb
from fabric.v1 import query_pb2_grpc as pb_grpc
from tests.integration.test_direct_replicas import pg_site, stage_of
from tests.integration.test_roles import CONNECTION, address, names, settings_for, until
from tests.support.nats import nats_url, run_bounded

FABRIC = [sys.executable, "-m", "fabric.cli"]
SLOW_SQL = "SELECT count(*) AS n FROM people WHERE score > :min"


class AccessLines(logging.Handler):
    """The access log's records (every process of the test shares this one)."""

    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    async def of(self, method: str) -> dict[str, Any]:
        """The one line of `method` (written as its call ends: waited for)."""
        found: list[dict[str, Any]] = []

        def written() -> bool:
            found[:] = [vars(r) for r in list(self.records) if vars(r).get("method") == method]
            return bool(found)

        await until(written, 10, f"the access-log line of {method}")
        (line,) = found
        return line


def _waiting_backends(watcher: psycopg.Connection[Any], table: str) -> int:
    """Backends running a query on `table` (other than the test's own sessions)."""
    row = watcher.execute(
        "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' "
        "AND query LIKE %s AND pid <> pg_backend_pid() AND query NOT LIKE '%%LOCK TABLE%%'",
        (f"%{table.split('.')[0]}%",),
    ).fetchone()
    assert row is not None
    return int(row[0])


async def _cli(*args: str, home: Path) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        *FABRIC,
        *args,
        env={**os.environ, "FABRIC_HOME": str(home)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


@pytest.mark.postgres
def test_an_admin_lists_a_running_query_from_another_process_and_cancels_it_at_the_source(
    tmp_path: Path, postgres_url: str
) -> None:
    url = nats_url()
    tenant, stage = names()
    settings = settings_for(tmp_path, url, auth="local")
    admin = local_token(settings, tenant=tenant, stage=stage, role="admin")
    developer = local_token(settings, tenant=tenant, stage=stage, role="developer")
    stranger = local_token(settings, tenant=f"{tenant}-x", stage=stage, role="admin")

    lines = AccessLines()
    logging.getLogger("fabric.access").addHandler(lines)

    async def body() -> None:
        with (
            pg_site(postgres_url, tmp_path, tenant, stage) as table,
            psycopg.connect(postgres_url) as locker,
            psycopg.connect(postgres_url, autocommit=True) as watcher,
        ):
            async with stage_of(settings, stage, 2) as (platform, runtimes):
                gateway = address(platform)
                locker.execute(f"LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE")
                client = FabricClient(gateway, developer, timeout=60)
                call = asyncio.ensure_future(
                    asyncio.to_thread(client.execute, CONNECTION, SLOW_SQL, {"min": 12345})
                )
                try:
                    await until(
                        lambda: _waiting_backends(watcher, table) == 1 or call.done(),
                        30,
                        "the query to wait at PostgreSQL",
                    )
                    assert not call.done(), call.exception()
                    code, out, err = await _cli(
                        "queries", "list", "--address", gateway, "--token", admin, home=tmp_path
                    )
                    assert code == 0, err
                    rows = [line.split("\t") for line in out.splitlines()[1:-1]]
                    assert len(rows) == 1, out
                    (
                        query_id,
                        request_id,
                        _elapsed,
                        phase,
                        rows_sent,
                        principal,
                        connection,
                        protocol,
                        sql,
                    ) = rows[0]
                    owner = next(r for r in runtimes if query_id.startswith(r.replica_id + ":"))
                    assert (phase, rows_sent, connection, protocol) == (
                        "running",
                        "0",
                        CONNECTION,
                        "grpc",
                    )
                    assert principal == "local"
                    # The shape of the SQL, never a parameter value.
                    assert sql == SLOW_SQL
                    assert "12345" not in out
                    # Every replica answered, and the platform for its own engine.
                    replicas = [r.replica_id for r in runtimes]
                    replicas.append(platform.gateway.engine.queries.replica)
                    assert out.splitlines()[-1] == f"1 running on {', '.join(sorted(replicas))}"

                    # Another tenant's administrator sees nothing and cancels nothing;
                    # a developer may not ask.
                    with FabricClient(gateway, stranger, timeout=30) as other:
                        listed = await asyncio.to_thread(other.list_running_queries)
                        assert list(listed.queries) == []
                        with pytest.raises(NotFound):
                            await asyncio.to_thread(other.cancel_query, query_id)
                    with (
                        FabricClient(gateway, developer, timeout=30) as dev,
                        pytest.raises(PermissionDenied),
                    ):
                        await asyncio.to_thread(dev.list_running_queries)
                    assert _waiting_backends(watcher, table) == 1

                    code, out, err = await _cli(
                        "queries",
                        "cancel",
                        query_id,
                        "--address",
                        gateway,
                        "--token",
                        admin,
                        home=tmp_path,
                    )
                    cancelled = time.monotonic()
                    assert code == 0, err
                    assert out.strip() == f"cancelled {query_id} on {owner.replica_id}"
                    took = await until(
                        lambda: _waiting_backends(watcher, table) == 0,
                        5,
                        "the query to leave pg_stat_activity",
                    )
                    assert time.monotonic() - cancelled < 1.0, f"took {took:.3f}s"
                    with pytest.raises(Cancelled) as told:
                        await asyncio.wait_for(call, 30)
                    assert "administrator cancelled" in told.value.message
                    # One request id for the call on the platform and on the replica.
                    platform_line = await lines.of("/fabric.v1.QueryService/Execute")
                    replica_line = await lines.of("fabric.query")
                    assert platform_line["request_id"] == replica_line["request_id"] == request_id
                    assert (platform_line["status"], replica_line["status"]) == (
                        "CANCELLED",
                        "cancelled",
                    )
                    assert replica_line["protocol"] == "bus"
                    assert owner.engine.queries.snapshot()["running_queries_cancelled"] == 1
                    await until(lambda: len(owner.engine.queries) == 0, 5, "the list to empty")
                    with FabricClient(gateway, admin, timeout=30) as again:
                        listed = await asyncio.to_thread(again.list_running_queries)
                        assert list(listed.queries) == []
                        with pytest.raises(NotFound):
                            await asyncio.to_thread(again.cancel_query, query_id)
                finally:
                    locker.rollback()
                    client.close()
                    await asyncio.wait({call}, timeout=30)
                    if call.done() and not call.cancelled():
                        call.exception()  # retrieved: the test has asserted what it needs

    try:
        run_bounded(body(), 120)
    finally:
        logging.getLogger("fabric.access").removeHandler(lines)


@pytest.mark.postgres
def test_a_caller_that_goes_away_while_its_query_waits_at_the_source_stops_it_there(
    tmp_path: Path, postgres_url: str
) -> None:
    """The same path as an administrator's cancel, from the caller's side: the query
    waits on a lock before PostgreSQL has even described it (its connector has not
    returned a handle yet); the caller cancels its call, and the query leaves
    pg_stat_activity within a second."""
    url = nats_url()
    tenant, stage = names()
    settings = settings_for(tmp_path, url, auth="local")
    developer = local_token(settings, tenant=tenant, stage=stage, role="developer")

    async def body() -> None:
        with (
            pg_site(postgres_url, tmp_path, tenant, stage) as table,
            psycopg.connect(postgres_url) as locker,
            psycopg.connect(postgres_url, autocommit=True) as watcher,
        ):
            async with stage_of(settings, stage, 1) as (platform, runtimes):
                locker.execute(f"LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE")
                try:
                    with grpc.insecure_channel(address(platform)) as channel:
                        call = pb_grpc.QueryServiceStub(channel).Execute(
                            pb.ExecuteRequest(
                                connection=CONNECTION,
                                sql=SLOW_SQL,
                                params=params_to_proto({"min": 1}),
                            ),
                            metadata=[("authorization", f"Bearer {developer}")],
                            timeout=60,
                        )
                        await until(
                            lambda: _waiting_backends(watcher, table) == 1,
                            30,
                            "the query to wait at PostgreSQL",
                        )
                        call.cancel()
                        cancelled = time.monotonic()
                        await until(
                            lambda: _waiting_backends(watcher, table) == 0,
                            5,
                            "the query to leave pg_stat_activity",
                        )
                        assert time.monotonic() - cancelled < 1.0
                        assert call.code() == grpc.StatusCode.CANCELLED
                    await until(
                        lambda: runtimes[0].replica.stats.cancelled == 1,
                        10,
                        "the replica to count the cancellation",
                    )
                finally:
                    locker.rollback()

    run_bounded(body(), 120)
