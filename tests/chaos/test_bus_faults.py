"""Faults between the planes under load: the NATS server restarts, a runtime replica is
killed (SIGKILL). Queries go through the platform to a stage's replicas over NATS, from
client threads; every OK result must be the whole, right one, the rest UNAVAILABLE, and
the stage must serve again without any gateway being restarted."""

from __future__ import annotations

import asyncio
import functools
import os
import time
from pathlib import Path

import pytest

from fabric.app.parts import local_token
from fabric.client import FabricClient, QueryResult
from fabric.config import Settings
from tests.chaos.conftest import Record
from tests.integration.test_roles import (
    CONNECTION,
    SQL,
    _free_port,
    address,
    cluster,
    expected,
    make_site,
    names,
    served,
    settings_for,
)
from tests.support.chaos import LONG, Load, codes, hold, recovery, scaled, wait_for
from tests.support.nats import NatsServerProcess, nats_url, private_nats_server, run_bounded

pytestmark = pytest.mark.timeout(900 if LONG else 120)

MINIMUM = 500


def _work(client: FabricClient, index: int) -> QueryResult:
    return client.execute(CONNECTION, SQL, {"min": MINIMUM})


def _right(rows: list[dict[str, object]], results: list[QueryResult]) -> None:
    """Every result that came back is the right one."""
    assert all(result.table.to_pylist() == rows for result in results)


def test_nats_restarts_under_load(tmp_path: Path, record: Record) -> None:
    clients, restarts, down = int(scaled(4, 16)), int(scaled(1, 3)), scaled(1.0, 5.0)
    tenant, stage = names()
    database = make_site(tmp_path, tenant, stage)
    want = expected(database, MINIMUM)
    results: list[QueryResult] = []

    def checked(client: FabricClient, index: int) -> QueryResult:
        result = _work(client, index)
        results.append(result)
        return result

    async def body(server: NatsServerProcess) -> None:
        # App tokens' queries through the platform, forwarded over the bus.
        settings = settings_for(tmp_path, server.url, bus_timeout=5.0, platform_app_queries=True)
        token = local_token(settings, tenant=tenant, stage=stage, role="app")
        async with cluster(settings, stage, replicas=1) as (platform, runtimes):
            load = Load(address(platform), clients, checked, token=token).start()
            backs: list[float] = []
            try:
                for _ in range(restarts):
                    await asyncio.to_thread(wait_for, lambda: len(load.outcomes) >= clients, 30)
                    await asyncio.to_thread(server.stop)
                    await asyncio.to_thread(hold, down)
                    await asyncio.to_thread(server.start)
                    back_at = time.monotonic()
                    succeeded = functools.partial(load.succeeded_since, back_at)
                    await asyncio.to_thread(wait_for, succeeded, 60)
                    backs.append(back_at)
            finally:
                await asyncio.to_thread(load.stop)
            recoveries = [recovery(load.outcomes, back) for back in backs]
            record(
                scenario="NATS restarted",
                load=f"{clients} clients through the platform, 1 replica",
                fault=f"{restarts} restart(s), {down:g} s down each",
                callers=codes(load.outcomes),
                recovery_s=max(r for r in recoveries if r is not None),
                note="UNAVAILABLE while NATS is down (callers retry at once, no backoff)",
            )
            assert set(codes(load.outcomes)) <= {"OK", "UNAVAILABLE"}, codes(load.outcomes)
            assert all(o.complete and o.rows == 1 for o in load.outcomes if o.code == "OK")
            _right(want, results)
            assert all(r is not None and r < 15.0 for r in recoveries), recoveries
            assert all(r.bus.reconnects >= restarts for r in runtimes)

    with private_nats_server(tmp_path) as server:
        run_bounded(body(server), 600 if LONG else 100)


def test_a_replica_killed_under_load(tmp_path: Path, record: Record) -> None:
    clients = int(scaled(4, 16))
    url = nats_url()
    tenant, stage = names()
    database = make_site(tmp_path, tenant, stage)
    want = expected(database, MINIMUM)
    port = _free_port()
    base = {
        **os.environ,
        "FABRIC_HOME": str(tmp_path),
        "FABRIC_NATS_URL": url,
        "FABRIC_AUTH": "local",
        "FABRIC_METRICS_PORT": "0",
        "FABRIC_BUS_TIMEOUT": "5",
    }
    base.pop("FABRIC_REPLICA_ID", None)
    token = local_token(Settings(home=tmp_path), tenant=tenant, stage=stage, role="app")
    results: list[QueryResult] = []

    def checked(client: FabricClient, index: int) -> QueryResult:
        result = _work(client, index)
        results.append(result)
        return result

    runtime = ["--role", "runtime", "--stage", stage]
    # Each replica serves its own address; the load goes through the platform, which
    # forwards app tokens' queries over the bus.
    replicas = [
        {**base, "FABRIC_REPLICA_ID": f"{stage}-k{i}", "FABRIC_LISTEN": f"127.0.0.1:{_free_port()}"}
        for i in range(2)
    ]
    platform_env = {
        **base,
        "FABRIC_LISTEN": f"127.0.0.1:{port}",
        "FABRIC_PLATFORM_APP_QUERIES": "true",
    }
    with (
        served(runtime, replicas[0], tmp_path / "r0.log") as r0,
        served(runtime, replicas[1], tmp_path / "r1.log") as r1,
        served(["--role", "platform"], platform_env, tmp_path / "platform.log") as platform,
    ):  # fmt: skip
        for process in (r0, r1, platform):
            process.ready()
        load = Load(f"127.0.0.1:{port}", clients, checked, token=token).start()
        try:
            wait_for(lambda: len(load.outcomes) >= 4 * clients, 60)
            killed_at = time.monotonic()
            r0.proc.kill()  # SIGKILL: no goodbye, queries in flight cut off
            r0.proc.wait(timeout=10)
            hold(scaled(2.0, 20.0))
            after = time.monotonic()
            wait_for(lambda: len(load.since(after)) >= 2 * clients, 60)
        finally:
            load.stop()
        cut = load.ended_between(killed_at, after)
        record(
            scenario="runtime replica killed (SIGKILL)",
            load=f"{clients} clients through the platform, 2 replicas",
            fault="one replica killed mid-load",
            callers=codes(load.outcomes),
            recovery_s=recovery(load.outcomes, killed_at),
            note=f"{len(cut)} calls ended in the {scaled(2.0, 20.0):g} s after the kill",
        )
        assert set(codes(load.outcomes)) <= {"OK", "UNAVAILABLE"}, codes(load.outcomes)
        assert all(o.complete and o.rows == 1 for o in load.outcomes if o.code == "OK")
        _right(want, results)
        # the surviving replica serves every query from then on
        later = load.since(after)
        assert later and codes(later) == {"OK": len(later)}
        assert platform.stop() == 0 and r1.stop() == 0
