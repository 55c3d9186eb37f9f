"""Runtime replicas serve their stage's apps directly; the platform serves developers.

Real NATS (the shared server), a real DuckDB or PostgreSQL source, the real gRPC client.
The processes are assembled in this test's event loop (`fabric.app.processes`), except
in the SIGKILL test, which runs `python -m fabric.cli serve --role runtime` subprocesses
(killed in `finally`). Each test has its own tenant, stage and replica ids. Every wait is
bounded (`until`, `run_bounded`, timeouts).
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import re
import secrets
import signal
import threading
import time
from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import AsyncExitStack, asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import grpc
import psycopg
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from connectors import Connector
from fabric.api.status import ERROR_CODE_KEY
from fabric.app.parts import catalog_manager, local_token
from fabric.app.processes import PlatformProcess, RuntimeProcess
from fabric.catalog.metadata.sqlite import SqliteMetadataStore
from fabric.client import FabricClient
from fabric.config import Settings
from fabric.errors import GatewayUnavailable, NotFound, PermissionDenied, SourceUnavailable
from fabric.messaging.platform_events import PlatformEventApplier
from fabric.model import Connection, SettingValue
from fabric.platform.departure import EnginePurger
from fabric.proto_values import params_to_proto
from fabric.query.engine import QueryEngine
from fabric.query.sources import default_connector_factory
from fabric.v1 import platform_pb2 as ppb
from fabric.v1 import query_pb2 as pb
from tests.e2e.conftest import RecordingConnector
from tests.integration.test_roles import (
    CONNECTION,
    SQL,
    _free_port,
    admin,
    bearer,
    cached,
    expected,
    make_site,
    names,
    purges,
    scrape,
    served,
    settings_for,
    until,
)
from tests.support.nats import nats_url, run_bounded

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def address_of(process: PlatformProcess | RuntimeProcess) -> str:
    return f"127.0.0.1:{process.gateway.port}"


def health(address: str) -> int:
    with grpc.insecure_channel(address) as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service="fabric.v1.QueryService"), timeout=5
        )
    return int(reply.status)


@asynccontextmanager
async def stage_of(
    settings: Settings, stage: str, replicas: int, **engine_options: Any
) -> AsyncIterator[tuple[PlatformProcess, list[RuntimeProcess]]]:
    """A platform and `replicas` replicas of `stage`, each serving apps on its own port."""
    async with AsyncExitStack() as stack:
        platform = await PlatformProcess.open(settings, role="platform", listen="127.0.0.1:0")
        stack.push_async_callback(platform.stop, 1.0)
        await platform.start()
        runtimes = []
        for index in range(replicas):
            own = dataclasses.replace(settings, replica_id=f"{stage}-d{index}")
            runtime = await RuntimeProcess.open(
                own, stage=stage, listen="127.0.0.1:0", **engine_options
            )
            stack.push_async_callback(runtime.stop, 1.0)
            await runtime.start()
            runtimes.append(runtime)
        yield platform, runtimes


# -- a replica serves its own stage only -----------------------------------------------------


def test_a_replica_refuses_a_token_of_another_stage(tmp_path: Path) -> None:
    """A Development replica once answered a Production app token. Now a replica verifies
    the token itself and refuses another stage's with PERMISSION_DENIED, before any
    work reaches the source; its own stage's token is served."""
    url = nats_url()
    tenant, stage = names()
    other = f"{stage}-prod"
    database = make_site(tmp_path, tenant, stage)
    settings = settings_for(tmp_path, url, replica_id=f"{stage}-own")
    executed: list[tuple[str, tuple[Any, ...]]] = []
    gate = threading.Event()
    gate.set()

    def recording(
        connection: Connection, values: Mapping[str, SettingValue], password: str | None
    ) -> Connector:
        return RecordingConnector(
            default_connector_factory(connection, values, password), executed, gate
        )

    async def body() -> None:
        runtime = await RuntimeProcess.open(
            settings, stage=stage, listen="127.0.0.1:0", connector_factory=recording
        )
        try:
            await runtime.start()
            for role in ("app", "developer", "admin"):
                foreign = local_token(settings, tenant=tenant, stage=other, role=role)
                with FabricClient(address_of(runtime), foreign, timeout=30) as client:
                    with pytest.raises(PermissionDenied) as refused:
                        await asyncio.to_thread(client.execute, CONNECTION, SQL, {"min": 0})
                    assert f"serves stage '{stage}'" in refused.value.message
                    assert f"for stage '{other}'" in refused.value.message
            assert executed == []  # refused before any work reached the source
            own = local_token(settings, tenant=tenant, stage=stage, role="app")
            with FabricClient(address_of(runtime), own, timeout=30) as client:
                result = await asyncio.to_thread(client.execute, CONNECTION, SQL, {"min": 10})
            assert result.table.to_pylist() == expected(database, 10)
            assert len(executed) == 1
        finally:
            await runtime.stop(1.0)

    run_bounded(body(), 60)


# -- the platform serves developers; apps go to their stage ---------------------------------


def test_the_platform_serves_previews_and_refuses_apps_unless_told_to(tmp_path: Path) -> None:
    url = nats_url()
    tenant, stage = names()
    database = make_site(tmp_path, tenant, stage)
    settings = settings_for(tmp_path, url)
    app = local_token(settings, tenant=tenant, stage=stage, role="app")
    developer = local_token(settings, tenant=tenant, stage=stage, role="developer")

    async def body() -> None:
        async with stage_of(settings, stage, 1) as (platform, [runtime]):
            with FabricClient(address_of(platform), app, timeout=30) as client:
                for call in (
                    lambda: client.execute(CONNECTION, SQL, {"min": 0}),
                    lambda: client.open_statement(CONNECTION, SQL, {"min": 0}),
                ):
                    with pytest.raises(PermissionDenied, match="runtime replicas directly"):
                        await asyncio.to_thread(call)
            assert runtime.replica.stats.accepted == 0

            # A developer's preview (and query) from the Studio: forwarded over NATS to
            # the stage's replica, which runs it.
            with FabricClient(address_of(platform), developer, timeout=30) as client:
                preview = await asyncio.to_thread(client.preview, CONNECTION, "people", 5)
                result = await asyncio.to_thread(client.execute, CONNECTION, SQL, {"min": 7})
            assert preview.num_rows == 5 and set(preview.column_names) == {"id", "name", "score"}
            assert result.table.to_pylist() == expected(database, 7)
            assert runtime.replica.stats.served == 2
            assert (
                platform.gateway.engine.metrics.registry.get_sample_value(
                    "fabric_bus_forwarder_completed_total"
                )
                == 2
            )

            # The same app, at its stage's replica.
            with FabricClient(address_of(runtime), app, timeout=30) as client:
                direct = await asyncio.to_thread(client.execute, CONNECTION, SQL, {"min": 7})
            assert direct.table.to_pylist() == expected(database, 7)
            assert runtime.replica.stats.served == 2  # not over the bus

        # Opted in: the platform forwards apps' queries too. (A site of its own: DuckDB
        # does not reopen, in one process, a file whose truncated preview it was reading.)
        home = tmp_path / "opted"
        home.mkdir()
        other_database = make_site(home, tenant, stage)
        opted = settings_for(home, url, platform_app_queries=True)
        opted_app = local_token(opted, tenant=tenant, stage=stage, role="app")
        async with stage_of(opted, stage, 1) as (platform, [runtime]):
            with FabricClient(address_of(platform), opted_app, timeout=30) as client:
                result = await asyncio.to_thread(client.execute, CONNECTION, SQL, {"min": 3})
            assert result.table.to_pylist() == expected(other_database, 3)
            assert runtime.replica.stats.served == 1

    run_bounded(body(), 90)


# -- readiness ------------------------------------------------------------------------------


def raw_execute(address: str, token: str) -> grpc.RpcError:
    """The error of an Execute sent on a plain channel (no health checking, no retry)."""
    request = pb.ExecuteRequest(connection=CONNECTION, sql=SQL, params=params_to_proto({"min": 0}))
    with grpc.insecure_channel(address) as channel:
        call = channel.unary_stream(
            "/fabric.v1.QueryService/Execute",
            request_serializer=pb.ExecuteRequest.SerializeToString,
            response_deserializer=pb.ResultChunk.FromString,
        )
        try:
            list(call(request, metadata=bearer(token), timeout=10))
        except grpc.RpcError as error:
            return error
    pytest.fail("the call was answered")


class GatedPurger(EnginePurger):
    """A purger of the replica's engine, held at the door until the test opens the gate
    (so the window in which the replica is not ready yet can be observed)."""

    def __init__(self, engine: QueryEngine, gate: threading.Event) -> None:
        super().__init__(engine)
        self._gate = gate

    def purge(self, tenant: str, connection: str, reason: str) -> dict[str, int]:
        if not self._gate.wait(timeout=30):
            raise TimeoutError("the test never opened the gate")
        return super().purge(tenant, connection, reason)


def test_a_replica_serves_only_once_it_has_applied_the_events_it_missed(tmp_path: Path) -> None:
    """A replica coming back under its id is NOT_SERVING, and refuses calls with
    UNAVAILABLE (retry elsewhere), until it has applied what was published while it was
    away; a client given both replicas' addresses loses no call meanwhile."""
    url = nats_url()
    tenant, stage = names()
    database = make_site(tmp_path, tenant, stage)
    settings = settings_for(tmp_path, url)
    token = local_token(settings, tenant=tenant, stage=stage, role="admin")
    app = local_token(settings, tenant=tenant, stage=stage, role="app")
    # With a plain health-only port too, as a Kubernetes probe would use it.
    returning = dataclasses.replace(
        settings, replica_id=f"{stage}-back", health_listen="127.0.0.1:0"
    )
    gate = threading.Event()

    async def body() -> None:
        async with stage_of(settings, stage, 1) as (platform, [steady]):
            first = await RuntimeProcess.open(returning, stage=stage, listen="127.0.0.1:0")
            await first.start()
            assert first.readiness.ready
            await first.stop(1.0)

            channel, _, catalog = admin(platform, token)
            with channel:
                for _ in range(2):  # two selection changes while the replica is away
                    await asyncio.to_thread(
                        catalog.Select,
                        ppb.SelectRequest(
                            connection=CONNECTION,
                            stage=stage,
                            tables=[ppb.TableSelection(table="people")],
                        ),
                        metadata=bearer(token),
                        timeout=30,
                    )

            back = await RuntimeProcess.open(returning, stage=stage, listen="127.0.0.1:0")
            back.applier = PlatformEventApplier(GatedPurger(back.gateway.engine, gate))
            starting = asyncio.create_task(back.start())
            try:
                await until(lambda: back.gateway.port is not None, 10, "the replica to listen")
                await until(
                    lambda: back.readiness.metadata_loaded, 10, "the metadata store to answer"
                )
                assert not back.readiness.events_caught_up
                assert await asyncio.to_thread(health, address_of(back)) == NOT_SERVING
                probe = f"127.0.0.1:{back.gateway.health_port}"
                assert await asyncio.to_thread(health, probe) == NOT_SERVING
                # A caller that ignores health is refused by the replica itself...
                refused = await asyncio.to_thread(raw_execute, address_of(back), app)
                assert refused.code() == grpc.StatusCode.UNAVAILABLE
                assert "not ready yet" in (refused.details() or "")
                assert dict(refused.trailing_metadata() or ())[ERROR_CODE_KEY] == (
                    GatewayUnavailable.code
                )
                # ... and the client does not even send the call: the replica's health
                # says NOT_SERVING.
                with (
                    FabricClient(address_of(back), app, timeout=30, retries=0) as alone,
                    pytest.raises(SourceUnavailable, match="unhealthy"),
                ):
                    await asyncio.to_thread(alone.execute, CONNECTION, SQL, {"min": 0})
                both = f"{address_of(back)},{address_of(steady)}"
                with FabricClient(both, app, timeout=30) as client:
                    for minimum in range(6):
                        result = await asyncio.to_thread(
                            client.execute, CONNECTION, SQL, {"min": minimum}
                        )
                        assert result.table.to_pylist() == expected(database, minimum)
                assert not starting.done()
                gate.set()
                await asyncio.wait_for(starting, 30)
                assert back.readiness.ready and back.applier.applied == 2
                assert await asyncio.to_thread(health, address_of(back)) == SERVING
                assert await asyncio.to_thread(health, probe) == SERVING
                with FabricClient(address_of(back), app, timeout=30, retries=0) as alone:
                    result = await asyncio.to_thread(alone.execute, CONNECTION, SQL, {"min": 1})
                assert result.table.to_pylist() == expected(database, 1)
                figures = back.readiness.snapshot()
                assert figures["bus_replica_ready"] == 1.0
            finally:
                gate.set()
                if not starting.done():
                    starting.cancel()
                await back.stop(1.0)

    run_bounded(body(), 120)


# -- events reach every replica ---------------------------------------------------------------


def test_events_reach_every_replica_that_serves_apps_directly(tmp_path: Path) -> None:
    url = nats_url()
    tenant, stage = names()
    database = make_site(tmp_path, tenant, stage)
    settings = settings_for(tmp_path, url)
    token = local_token(settings, tenant=tenant, stage=stage, role="admin")
    app = local_token(settings, tenant=tenant, stage=stage, role="app")

    async def body() -> None:
        async with stage_of(settings, stage, 3) as (platform, runtimes):
            for runtime in runtimes:  # each replica caches a result of its own callers
                with FabricClient(address_of(runtime), app, timeout=30) as client:
                    result = await asyncio.to_thread(
                        client.execute, CONNECTION, SQL, {"min": 0}, 60
                    )
                assert result.table.to_pylist() == expected(database, 0)
                assert cached(runtime) == 1
            assert all(r.replica.stats.accepted == 0 for r in runtimes)  # nothing over NATS

            channel, connections, _ = admin(platform, token)
            with channel:
                started = time.monotonic()
                await asyncio.to_thread(
                    connections.DeleteConnection,
                    ppb.DeleteConnectionRequest(name=CONNECTION),
                    metadata=bearer(token),
                    timeout=30,
                )
                await until(
                    lambda: all(cached(r) == 0 for r in runtimes),
                    5.0,
                    "every replica to drop the connection's results",
                )
            assert time.monotonic() - started < 1.0
            # The results may go first by another path (a replica that sees the catalog
            # version move drops them); the platform's event still reaches every replica,
            # applied once each.
            await until(
                lambda: all(purges(r, "connection_deleted") == 1 for r in runtimes),
                5.0,
                "every replica to apply the connection's deletion event",
            )
            for runtime in runtimes:
                with (
                    FabricClient(address_of(runtime), app, timeout=30) as client,
                    pytest.raises(NotFound),
                ):
                    await asyncio.to_thread(client.execute, CONNECTION, SQL, {"min": 0}, 60)

    run_bounded(body(), 90)


# -- a replica killed mid-load ----------------------------------------------------------------


def _socket_ports(pid: int) -> set[int]:
    """The local TCP ports of the sockets process `pid` holds (from /proc)."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        match = re.fullmatch(r"socket:\[(\d+)\]", target)
        if match:
            inodes.add(match.group(1))
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as lines:
            next(lines)
            for line in lines:
                fields = line.split()
                if fields[9] in inodes:
                    ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


def _waiting_on_lock(conn: psycopg.Connection[Any], pids: list[int]) -> set[int]:
    """Client ports of the database backends of processes `pids` that wait for a lock."""
    ours = set().union(*(_socket_ports(pid) for pid in pids))
    rows = conn.execute(
        "SELECT client_port FROM pg_stat_activity "
        "WHERE wait_event_type = 'Lock' AND datname = current_database()"
    ).fetchall()
    return {int(row[0]) for row in rows} & ours


@contextmanager
def pg_site(postgres_url: str, home: Path, tenant: str, stage: str) -> Iterator[str]:
    """A PostgreSQL schema with a `people` table, registered as CONNECTION; yields the
    table's qualified name (the schema is dropped at the end)."""
    schema = f"g19_{secrets.token_hex(4)}"
    info = psycopg.conninfo.conninfo_to_dict(postgres_url)
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
        conn.execute(
            f"CREATE TABLE {schema}.people (id int PRIMARY KEY, name text, score bigint);"
            f"INSERT INTO {schema}.people SELECT i, 'person ' || i, i * 10 "
            "FROM generate_series(1, 100) i"
        )
    store = SqliteMetadataStore(home / "metadata.sqlite")
    try:
        manager = catalog_manager(store)
        settings: dict[str, SettingValue] = {
            "host": str(info.get("host") or "127.0.0.1"),
            "port": int(info.get("port") or 5432),
            "database": str(info["dbname"]),
            "user": str(info.get("user") or "postgres"),
        }
        manager.create_connection(tenant, CONNECTION, "postgres", {"*": settings})
        manager.select(tenant, CONNECTION, stage, f"{schema}.people", entity_name="people")
    finally:
        store.close()
    try:
        yield f"{schema}.people"
    finally:
        with psycopg.connect(postgres_url, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA {schema} CASCADE")


class Load:
    """Threads calling the stage through one client (both replicas' addresses) until
    stopped; every outcome is kept."""

    def __init__(self, client: FabricClient, threads: int) -> None:
        self._client = client
        self._stop = threading.Event()
        self.results: list[Any] = []
        self.failures: list[BaseException] = []
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run, args=(i,)) for i in range(threads)]

    def _run(self, index: int) -> None:
        minimum = index * 100
        while not self._stop.is_set():
            try:
                result = self._client.execute(CONNECTION, SQL, {"min": minimum})
            except BaseException as error:  # kept, and the test fails on it
                with self._lock:
                    self.failures.append(error)
                return
            with self._lock:
                self.results.append((minimum, result.table.to_pylist()))

    @property
    def done(self) -> int:
        with self._lock:
            return len(self.results)

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=60)


def _wait(condition: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.01)


@pytest.mark.postgres
def test_a_replica_killed_mid_load_loses_no_call_that_had_not_started_streaming(
    tmp_path: Path, postgres_url: str
) -> None:
    """Two replica processes of a stage under load from one client given both addresses.
    The table is locked, so every call in flight waits at the source, before its first
    byte; one replica is killed (SIGKILL) with its share of the calls waiting. Every
    call completes: the client took the killed replica's calls to the other one, and
    every call was served once, by the killed replica before it died or by the other."""
    url = nats_url()
    tenant, stage = names()
    threads = 6
    base = {
        **os.environ,
        "FABRIC_HOME": str(tmp_path),
        "FABRIC_NATS_URL": url,
        "FABRIC_AUTH": "local",
        "FABRIC_BUS_CONNECT_TIMEOUT": "10",
    }
    ports = [_free_port(), _free_port()]
    metrics = [_free_port(), _free_port()]
    envs = [
        {
            **base,
            "FABRIC_REPLICA_ID": f"{stage}-k{i}",
            "FABRIC_LISTEN": f"127.0.0.1:{ports[i]}",
            "FABRIC_METRICS_PORT": str(metrics[i]),
        }
        for i in range(2)
    ]
    args = ["--role", "runtime", "--stage", stage]
    count = 'fabric_queries_total{method="execute",outcome="ok",protocol="grpc"}'
    with (
        pg_site(postgres_url, tmp_path, tenant, stage) as table,
        served(args, envs[0], tmp_path / "k0.log") as doomed,
        served(args, envs[1], tmp_path / "k1.log") as survivor,
        psycopg.connect(postgres_url) as locker,
        psycopg.connect(postgres_url, autocommit=True) as watcher,
    ):
        for process in (doomed, survivor):
            process.ready()
        app = local_token(Settings(home=tmp_path), tenant=tenant, stage=stage, role="app")
        addresses = ",".join(f"127.0.0.1:{port}" for port in ports)
        with FabricClient(addresses, app, timeout=60) as client:
            load = Load(client, threads)
            load.start()
            try:
                _wait(lambda: load.done >= 20 or bool(load.failures), 30, "the load to run")
                locker.execute(f"LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE")
                replicas = [doomed.proc.pid, survivor.proc.pid]
                _wait(
                    lambda: len(_waiting_on_lock(watcher, replicas)) == threads,
                    30,
                    "every call in flight to wait at the source",
                )
                on_doomed = _waiting_on_lock(watcher, [doomed.proc.pid])
                assert on_doomed, "no call in flight on the replica about to be killed"
                # Nothing completes while the table is locked: this count is final.
                served_by_doomed = scrape(metrics[0], count)
                done_before = load.done
                doomed.proc.send_signal(signal.SIGKILL)
                doomed.proc.wait(timeout=10)
                locker.rollback()  # the lock goes: the calls taken elsewhere run
                _wait(
                    lambda: load.done >= done_before + 4 * threads or bool(load.failures),
                    60,
                    "the load to go on with one replica",
                )
            finally:
                load.stop()
        assert load.failures == [], load.failures[:3]
        for minimum, rows in load.results:
            scores = [i * 10 for i in range(1, 101) if i * 10 > minimum]
            assert rows == [{"n": len(scores), "total": sum(scores)}]
        # Every call completed was served exactly once: by the killed replica before it
        # died, or by the other (the calls waiting on the killed one among them).
        assert len(load.results) == served_by_doomed + scrape(metrics[1], count)
        assert load.done >= done_before + len(on_doomed)
