"""Running queries over the bus (in-process bus, real sealing): a LIST gathers every
replica of the stage, a replica answers for its own tenant only, a long list is cut to
what one message holds (oldest first, said so), and CANCEL reaches the replica named in
the id."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import pytest

from fabric.context import RequestContext, Role
from fabric.errors import InvalidArgument, NotFound
from fabric.messaging.admin_rpc import AdminResponder, RunningQueriesClient
from fabric.messaging.inprocess import InProcessBus
from fabric.messaging.sealing import BusSealer
from fabric.query.running import QueryList
from fabric.security.kms import LocalKeyRing

STAGE = "production"


def _ctx(tenant: str) -> RequestContext:
    return RequestContext(tenant=tenant, stage=STAGE, role=Role.APP, principal=f"{tenant}-app")


def test_lists_are_gathered_from_every_replica_per_tenant_and_cancel_is_routed(
    tmp_path: Path,
) -> None:
    kms = LocalKeyRing.open(tmp_path / "keyring")

    async def body() -> None:
        bus = InProcessBus()
        lists = [QueryList("r0"), QueryList("r1")]
        responders = [
            AdminResponder(bus, queries, BusSealer(kms), stage=STAGE) for queries in lists
        ]
        for responder in responders:
            await responder.start()
        client = RunningQueriesClient(bus, BusSealer(kms), window=0.2)
        held = asyncio.Event()
        cancelled: list[bool] = []

        async def run(queries: QueryList, tenant: str, started: asyncio.Event) -> None:
            with queries.track(_ctx(tenant), "crm", "SELECT 1", protocol="grpc", kind="stream"):
                started.set()
                try:
                    await held.wait()
                except asyncio.CancelledError:
                    cancelled.append(queries.cancelled_here(asyncio.current_task()))

        loop = asyncio.get_running_loop()
        tasks = []
        for queries, tenant in ((lists[0], "acme"), (lists[1], "acme"), (lists[1], "other")):
            started = asyncio.Event()
            tasks.append(loop.create_task(run(queries, tenant, started)))
            await started.wait()
        gathered = await client.list("acme", STAGE)
        assert gathered.replicas == ["r0", "r1"] and not gathered.truncated
        assert sorted(v.replica for v in gathered.queries) == ["r0", "r1"]
        assert {v.tenant for v in gathered.queries} == {"acme"}
        (on_r1,) = [v.id for v in gathered.queries if v.replica == "r1"]
        with pytest.raises(NotFound):
            await client.cancel("other", STAGE, on_r1)  # another tenant's query
        assert await client.cancel("acme", STAGE, on_r1) == "r1"
        await asyncio.wait_for(tasks[1], 5)
        assert cancelled == [True]
        with pytest.raises(NotFound):
            await client.cancel("acme", STAGE, "r9:0123456789abcdef")  # no such replica
        with pytest.raises(InvalidArgument):
            await client.cancel("acme", STAGE, "not-an-id")
        held.set()
        await asyncio.gather(*tasks)
        for responder in responders:
            await responder.stop()
        await bus.close()

    asyncio.run(body())


def test_a_list_longer_than_one_message_is_cut_to_its_oldest(tmp_path: Path) -> None:
    kms = LocalKeyRing.open(tmp_path / "keyring")

    async def body() -> None:
        bus = InProcessBus(max_payload=16 * 1024)
        queries = QueryList("r0")
        responder = AdminResponder(bus, queries, BusSealer(kms), stage=STAGE)
        await responder.start()
        client = RunningQueriesClient(bus, BusSealer(kms), window=0.2)
        with contextlib.ExitStack() as stack:
            for n in range(200):
                sql = f"SELECT a, b, c FROM wide_table_{n} WHERE x = :x"
                stack.enter_context(
                    queries.track(_ctx("acme"), "crm", sql, protocol="grpc", kind="stream")
                )
            gathered = await client.list("acme", STAGE)
        assert gathered.truncated and gathered.replicas == ["r0"]
        assert 0 < len(gathered.queries) < 200
        shapes = [v.sql_shape for v in gathered.queries]
        assert shapes == [
            f"SELECT a, b, c FROM wide_table_{n} WHERE x = :x" for n in range(len(shapes))
        ]
        await responder.stop()
        await bus.close()

    asyncio.run(body())
