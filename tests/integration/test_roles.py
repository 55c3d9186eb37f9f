"""`fabric serve --role platform|runtime` on real NATS: events purge every replica, queries
go through the platform to a stage's replicas, a NATS restart loses no event.

Real NATS (the shared 127.0.0.1:4222, or FABRIC_TEST_NATS_URL), or a private nats-server
(killed in `finally`) for the restart; a real DuckDB source and a real SQLite metadata
store shared by every process through FABRIC_HOME, with the local key ring. Each test
uses its own tenant, stage and replica ids, so runs sharing the server do not meet. The
in-process tests assemble the roles with `fabric.app.processes` on one event loop; the last test
starts `python -m fabric.cli serve ...` subprocesses, killed in `finally`. Every wait is
bounded (`until`, `run_bounded`, subprocess timeouts).
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AsyncExitStack, asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import duckdb
import grpc
import pytest

from fabric.app.parts import catalog_manager, local_token
from fabric.app.processes import PlatformProcess, RuntimeProcess
from fabric.catalog.metadata.sqlite import SqliteMetadataStore
from fabric.client import FabricClient
from fabric.config import Settings
from fabric.errors import FailedPrecondition
from fabric.v1 import platform_pb2 as ppb
from fabric.v1 import platform_pb2_grpc as ppb_grpc
from tests.support.nats import NatsServerProcess, nats_url, private_nats_server, run_bounded

CONNECTION = "crm"
SQL = "SELECT count(*) AS n, sum(score) AS total FROM people WHERE score > :min"
FABRIC = [sys.executable, "-m", "fabric.cli"]


# -- a site: a DuckDB source and a metadata store under one FABRIC_HOME -------------------


def make_site(home: Path, tenant: str, stage: str) -> Path:
    database = home / "crm.duckdb"
    with duckdb.connect(str(database)) as con:
        con.execute(
            "CREATE TABLE people (id INTEGER PRIMARY KEY, name VARCHAR, score BIGINT);"
            "INSERT INTO people SELECT i, 'person ' || i, i * 10 "
            "FROM range(1, 101) t(i);"
        )
    store = SqliteMetadataStore(home / "metadata.sqlite")
    try:
        manager = catalog_manager(store)
        manager.create_connection(tenant, CONNECTION, "duckdb", {"*": {"path": str(database)}})
        manager.select(tenant, CONNECTION, stage, "people")
    finally:
        store.close()
    return database


def expected(database: Path, minimum: int) -> list[dict[str, Any]]:
    with duckdb.connect(str(database), read_only=True) as con:
        n, total = con.execute(
            "SELECT count(*), sum(score) FROM people WHERE score > ?", [minimum]
        ).fetchone()  # type: ignore[misc]
    return [{"n": n, "total": total}]


def names() -> tuple[str, str]:
    tag = uuid.uuid4().hex[:8]
    return f"tn-{tag}", f"st-{tag}"


def settings_for(home: Path, url: str, **overrides: Any) -> Settings:
    return Settings(
        home=home,
        metrics_port=0,
        nats_url=url,
        bus_connect_timeout=5.0,
        bus_publish_timeout=2.0,
        **overrides,
    )


async def until(condition: Callable[[], bool], timeout: float, what: str) -> float:
    """Wait for `condition` (checked every 5 ms); returns the seconds it took."""
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > timeout:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.005)
    return time.monotonic() - started


@asynccontextmanager
async def cluster(
    settings: Settings, stage: str, replicas: int = 2
) -> AsyncIterator[tuple[PlatformProcess, list[RuntimeProcess]]]:
    """A platform and `replicas` runtime replicas of `stage`, in this process."""
    async with AsyncExitStack() as stack:
        platform = await PlatformProcess.open(settings, role="platform", listen="127.0.0.1:0")
        stack.push_async_callback(platform.stop, 1.0)
        await platform.start()
        runtimes = []
        for index in range(replicas):
            own = dataclasses.replace(settings, replica_id=f"{stage}-r{index}")
            runtime = await RuntimeProcess.open(own, stage=stage, listen="127.0.0.1:0")
            stack.push_async_callback(runtime.stop, 1.0)
            await runtime.start()
            runtimes.append(runtime)
        yield platform, runtimes


def address(platform: PlatformProcess) -> str:
    return f"127.0.0.1:{platform.gateway.port}"


def admin(platform: PlatformProcess, token: str) -> tuple[grpc.Channel, Any, Any]:
    channel = grpc.insecure_channel(address(platform))
    return channel, ppb_grpc.ConnectionServiceStub(channel), ppb_grpc.CatalogServiceStub(channel)


def bearer(token: str) -> list[tuple[str, str]]:
    return [("authorization", f"Bearer {token}")]


def cached(runtime: RuntimeProcess) -> int:
    """Results the replica's engine holds (the test's one connection is the only one)."""
    return len(runtime.engine.results)


def purges(runtime: RuntimeProcess, reason: str) -> float:
    return runtime.gateway.purger.snapshot()[f"purge_{reason}"]


async def fill_caches(client: FabricClient, runtimes: list[RuntimeProcess]) -> None:
    """Query through the platform (cache lifetime 60 s) until every replica holds a
    result: the queue group picks a replica at random for each query."""
    for _ in range(300):
        if all(cached(runtime) > 0 for runtime in runtimes):
            return
        result = await asyncio.to_thread(client.execute, CONNECTION, SQL, {"min": 0}, 60)
        assert result.table.num_rows == 1
    pytest.fail("the queue group never sent a query to every replica")


# -- (1) a deletion purges every replica within a second -----------------------------------


def test_deleting_a_connection_purges_every_replica_within_a_second(tmp_path: Path) -> None:
    url = nats_url()
    tenant, stage = names()
    database = make_site(tmp_path, tenant, stage)
    settings = settings_for(tmp_path, url)
    token = local_token(settings, tenant=tenant, stage=stage, role="admin")

    async def body() -> None:
        async with cluster(settings, stage) as (platform, runtimes):
            with FabricClient(address(platform), token, timeout=30) as client:
                result = await asyncio.to_thread(client.execute, CONNECTION, SQL, {"min": 500})
                assert result.table.to_pylist() == expected(database, 500)
                await fill_caches(client, runtimes)
            served = sum(r.replica.stats.served for r in runtimes)
            assert served >= 2 and all(r.replica.stats.accepted > 0 for r in runtimes)

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
                elapsed = time.monotonic() - started
            assert elapsed < 1.0, f"the purge took {elapsed:.3f}s"
            for runtime in runtimes:  # counted by the purger, then by the applier
                await until(
                    lambda r=runtime: r.applier.applied == 1,  # type: ignore[misc]
                    5.0,
                    "the event to be counted as applied",
                )
                assert purges(runtime, "connection_deleted") == 1
                assert runtime.applier.snapshot()["bus_events_apply_failed"] == 0
            assert platform.publisher is not None
            figures = platform.publisher.snapshot()
            assert figures["bus_events_published"] == 1
            assert figures["bus_events_publish_failed"] == 0
            scraped = platform.gateway.engine.metrics.registry.get_sample_value(
                "fabric_bus_forwarder_completed_total"
            )
            assert scraped is not None and scraped >= served

    run_bounded(body(), 90)


def test_role_all_with_nats_publishes_events_for_outside_replicas(tmp_path: Path) -> None:
    """`--role all` answers queries itself, and with FABRIC_NATS_URL its changes also
    reach runtime replicas elsewhere."""
    url = nats_url()
    tenant, stage = names()
    database = make_site(tmp_path, tenant, stage)
    settings = settings_for(tmp_path, url)
    token = local_token(settings, tenant=tenant, stage=stage, role="admin")

    async def body() -> None:
        both = await PlatformProcess.open(settings, role="all", listen="127.0.0.1:0")
        outside = await RuntimeProcess.open(
            dataclasses.replace(settings, replica_id=f"{stage}-outside"),
            stage=stage,
            listen="127.0.0.1:0",
        )
        try:
            assert (await both.start()).startswith("fabric gateway serving on port")
            await outside.start()
            with FabricClient(address(both), token, timeout=30) as client:
                result = await asyncio.to_thread(client.execute, CONNECTION, SQL, {"min": 0})
            assert result.table.to_pylist() == expected(database, 0)
            assert outside.replica.stats.accepted == 0  # served in-process
            channel, connections, _ = admin(both, token)
            with channel:
                await asyncio.to_thread(
                    connections.DeleteConnection,
                    ppb.DeleteConnectionRequest(name=CONNECTION),
                    metadata=bearer(token),
                    timeout=30,
                )
            assert both.gateway.purger.snapshot()["purge_connection_deleted"] == 1
            await until(
                lambda: purges(outside, "connection_deleted") == 1,
                5.0,
                "the outside replica to apply the deletion",
            )
        finally:
            await outside.stop(1.0)
            await both.stop(1.0)

    run_bounded(body(), 60)


def test_two_replicas_cannot_share_one_replica_id(tmp_path: Path) -> None:
    """Two processes on one durable would split the events between them (each replica
    must see every event): the second one refuses to start, naming the setting."""
    url = nats_url()
    tenant, stage = names()
    make_site(tmp_path, tenant, stage)
    settings = settings_for(tmp_path, url, replica_id=f"{stage}-same")

    async def body() -> None:
        first = await RuntimeProcess.open(settings, stage=stage, listen="127.0.0.1:0")
        try:
            await first.start()
            second = await RuntimeProcess.open(settings, stage=stage, listen="127.0.0.1:0")
            try:
                with pytest.raises(FailedPrecondition, match="FABRIC_REPLICA_ID"):
                    await second.start()
            finally:
                await second.stop(0)
        finally:
            await first.stop(1.0)

    run_bounded(body(), 60)


# -- (2) a NATS restart: reconnect, queued events applied once ----------------------------


def test_nats_restart_queued_events_are_applied_exactly_once(tmp_path: Path) -> None:
    tenant, stage = names()
    database = make_site(tmp_path, tenant, stage)

    async def body(server: NatsServerProcess) -> None:
        settings = settings_for(tmp_path, server.url)
        token = local_token(settings, tenant=tenant, stage=stage, role="admin")
        async with cluster(settings, stage) as (platform, runtimes):
            with FabricClient(address(platform), token, timeout=30) as client:
                await fill_caches(client, runtimes)
            loop = asyncio.get_running_loop()
            channel, connections, catalog = admin(platform, token)
            with channel:
                # -- NATS goes away; an admin change is committed but cannot be announced
                await loop.run_in_executor(None, server.stop)
                await platform.bus.wait_disconnected(10)
                path = ppb.SettingValue(string_value=str(database))
                update = ppb.UpdateConnectionRequest(
                    name=CONNECTION, stages=[ppb.StageConfig(stage="*", settings={"path": path})]
                )
                with pytest.raises(grpc.RpcError) as refused:
                    await asyncio.to_thread(
                        connections.UpdateConnection, update, metadata=bearer(token), timeout=30
                    )
                assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
                assert "change is committed" in (refused.value.details() or "")
                assert platform.publisher is not None
                assert platform.publisher.pending == 1
                assert all(cached(r) > 0 for r in runtimes)  # nobody was told yet

                # -- NATS is back: everyone reconnects, the outbox is published, applied once
                await loop.run_in_executor(None, server.start)
                for bus in (platform.bus, *(r.bus for r in runtimes)):
                    await bus.wait_connected(20)
                await until(
                    lambda: all(purges(r, "connection_changed") == 1 for r in runtimes),
                    20.0,
                    "the queued update to reach every replica",
                )
                assert all(cached(r) == 0 for r in runtimes)
                publisher = platform.publisher
                await until(lambda: publisher.pending == 0, 5.0, "the outbox to empty")
                assert all(r.bus.reconnects >= 1 for r in runtimes)

                # -- events after the restart: a selection change, then the deletion
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
                await until(
                    lambda: all(purges(r, "connection_changed") == 2 for r in runtimes),
                    10.0,
                    "the selection change to reach every replica",
                )
                await asyncio.to_thread(
                    connections.DeleteConnection,
                    ppb.DeleteConnectionRequest(name=CONNECTION),
                    metadata=bearer(token),
                    timeout=30,
                )
                await until(
                    lambda: all(purges(r, "connection_deleted") == 1 for r in runtimes),
                    10.0,
                    "the deletion to reach every replica",
                )
            for runtime in runtimes:  # exactly once in effect: one purge per event
                await until(
                    lambda r=runtime: r.applier.applied == 3,  # type: ignore[misc]
                    5.0,
                    "the events to be counted as applied",
                )
                assert purges(runtime, "connection_changed") == 2
                assert purges(runtime, "connection_deleted") == 1
                assert runtime.applier.applied == 3
            figures = platform.publisher.snapshot()
            assert figures["bus_events_publish_failed"] == 1
            assert figures["bus_events_republished"] == 1
            assert figures["bus_events_published"] == 2

    with private_nats_server(tmp_path) as server:
        run_bounded(body(server), 120)


# -- (3) the product as a user runs it: subprocesses -------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Served:
    """A `fabric serve` subprocess whose stdout lines are collected by a thread."""

    def __init__(self, args: list[str], env: dict[str, str], log: Path) -> None:
        self._log = open(log, "w")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [*FABRIC, "serve", *args], env=env, stdout=subprocess.PIPE, stderr=self._log, text=True
        )
        self.lines: queue.Queue[str] = queue.Queue()
        self.log_path = log
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line.rstrip())

    def ready(self, timeout: float = 60.0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=0.2)
            except queue.Empty:
                if self.proc.poll() is not None:
                    break
                continue
            if " serving " in line:
                return line
        pytest.fail(f"not ready: {self.log_path.read_text()}")

    def stop(self) -> int | None:
        """SIGTERM, then kill after a bound; returns the exit code of a graceful stop."""
        code = None
        try:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
                try:
                    code = self.proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait(timeout=10)
            else:
                code = self.proc.returncode
        finally:
            self.close()
        return code

    def close(self) -> None:
        """Kill if still running, then release the pipes (after the reader saw EOF)."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self._reader.join(timeout=10)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self._log.close()


@contextmanager
def served(args: list[str], env: dict[str, str], log: Path) -> Iterator[Served]:
    process = Served(args, env, log)
    try:
        yield process
    finally:
        process.close()


def scrape(port: int, name: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} is not in the metrics")


def test_query_through_platform_and_two_runtime_subprocesses(tmp_path: Path) -> None:
    url = nats_url()
    tenant, stage = names()
    database = make_site(tmp_path, tenant, stage)
    port = _free_port()
    base = {
        **os.environ,
        "FABRIC_HOME": str(tmp_path),
        "FABRIC_NATS_URL": url,
        "FABRIC_AUTH": "local",
        "FABRIC_BUS_CONNECT_TIMEOUT": "10",
    }
    base.pop("FABRIC_REPLICA_ID", None)
    metrics = [_free_port(), _free_port()]
    platform_env = {**base, "FABRIC_LISTEN": f"127.0.0.1:{port}", "FABRIC_METRICS_PORT": "0"}
    runtime_envs = [
        {
            **base,
            "FABRIC_REPLICA_ID": f"{stage}-p{i}",
            "FABRIC_METRICS_PORT": str(metrics[i]),
            "FABRIC_LISTEN": f"127.0.0.1:{_free_port()}",
        }
        for i in range(2)
    ]
    token = local_token(Settings(home=tmp_path), tenant=tenant, stage=stage, role="developer")

    with (
        served(["--role", "runtime", "--stage", stage], runtime_envs[0], tmp_path / "r0.log") as r0,
        served(["--role", "runtime", "--stage", stage], runtime_envs[1], tmp_path / "r1.log") as r1,
        served(["--role", "platform"], platform_env, tmp_path / "platform.log") as platform,
    ):
        for process in (r0, r1):
            line = process.ready()
            assert f"of stage {stage} serving on port" in line
        assert platform.ready().startswith(f"fabric platform serving on port {port}")

        queries = 0
        with FabricClient(f"127.0.0.1:{port}", token, timeout=30) as client:
            for minimum in (0, 150, 500, 990, 1000, 2):
                result = client.execute(CONNECTION, SQL, {"min": minimum})
                assert result.table.to_pylist() == expected(database, minimum)
                queries += 1
            preview = client.preview(CONNECTION, "people", limit=5)
            queries += 1
            assert preview.num_rows == 5
            assert set(preview.column_names) == {"id", "name", "score"}
        served_by = [scrape(m, "fabric_bus_replica_served_total") for m in metrics]
        assert sum(served_by) == queries, served_by  # every query ran on a replica

        assert [process.stop() for process in (platform, r0, r1)] == [0, 0, 0], (
            tmp_path / "r0.log"
        ).read_text() + (tmp_path / "platform.log").read_text()


def test_serve_refuses_to_start_without_nats(tmp_path: Path) -> None:
    closed = _free_port()
    env = {
        **os.environ,
        "FABRIC_HOME": str(tmp_path),
        "FABRIC_METRICS_PORT": "0",
        "FABRIC_NATS_URL": f"nats://127.0.0.1:{closed}",
        "FABRIC_BUS_CONNECT_TIMEOUT": "1",
    }
    runtime = subprocess.run(
        [*FABRIC, "serve", "--role", "runtime", "--stage", "dev"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert runtime.returncode == 2
    assert f"NATS at 127.0.0.1:{closed} did not answer" in runtime.stderr
    env.pop("FABRIC_NATS_URL")
    platform = subprocess.run(
        [*FABRIC, "serve", "--role", "platform"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert platform.returncode == 2
    assert "set FABRIC_NATS_URL" in platform.stderr
