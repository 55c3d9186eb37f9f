"""The list of running queries: registered while they run, scoped by tenant, bounded, and
cancelled through their own task."""

from __future__ import annotations

import asyncio

import pytest

from fabric.context import RequestContext, Role
from fabric.errors import InvalidArgument
from fabric.query.running import QueryList, replica_of

ACME = RequestContext(tenant="acme", stage="production", role=Role.APP, principal="app-1")
OTHER = RequestContext(tenant="other", stage="production", role=Role.APP, principal="app-2")


def test_a_query_is_listed_while_it_runs_with_its_shape_and_never_its_literals() -> None:
    queries = QueryList("r1")

    async def body() -> None:
        with queries.track(
            ACME,
            "crm",
            "SELECT name FROM people WHERE email = 'a@b.c'",
            protocol="grpc",
            kind="stream",
        ) as entry:
            assert entry is not None
            (view,) = queries.list("acme")
            assert view.id == entry.id and replica_of(view.id) == "r1"
            assert view.sql_shape == "SELECT name FROM people WHERE email = ?"
            assert (view.tenant, view.stage, view.principal, view.connection) == (
                "acme",
                "production",
                "app-1",
                "crm",
            )
            assert queries.list("other") == []
            assert queries.list("acme", "development") == []
        assert queries.list("acme") == []

    asyncio.run(body())


def test_cancel_reaches_the_task_of_the_query_and_only_its_tenant_may() -> None:
    queries = QueryList("r1")
    outcome: list[str] = []

    async def running(started: asyncio.Event) -> None:
        with queries.track(ACME, "crm", "SELECT 1", protocol="grpc", kind="stream"):
            started.set()
            try:
                await asyncio.Event().wait()  # stands for a wait at the source
            except asyncio.CancelledError:
                outcome.append(
                    "cancelled-here" if queries.cancelled_here(asyncio.current_task()) else "gone"
                )
                return

    async def body() -> None:
        started = asyncio.Event()
        task = asyncio.get_running_loop().create_task(running(started))
        await started.wait()
        (view,) = queries.list("acme")
        assert not queries.cancel(view.id, "other")
        assert queries.cancel(view.id, "acme")
        await asyncio.wait_for(task, 5)
        assert outcome == ["cancelled-here"]
        assert task.cancelling() == 0  # the cancellation was taken back, and told
        assert not queries.cancel(view.id, "acme")  # ended: nothing to cancel
        assert queries.snapshot()["running_queries_cancelled"] == 1

    asyncio.run(body())


def test_a_cancel_arriving_after_the_query_ended_leaves_its_task_alone() -> None:
    queries = QueryList("r1")

    async def body() -> None:
        with queries.track(ACME, "crm", "SELECT 1", protocol="grpc", kind="stream") as entry:
            assert entry is not None
            assert queries.cancel(entry.id, "acme")  # scheduled on the loop, not yet run
        # The query left the list before the loop ran the cancellation: this task goes on.
        # Callbacks run in order: once this one has, the cancellation's has too.
        after = asyncio.Event()
        asyncio.get_running_loop().call_soon(after.set)
        await after.wait()
        assert not queries.cancelled_here(asyncio.current_task())

    asyncio.run(body())


def test_the_list_is_bounded_and_queries_past_it_run_untracked() -> None:
    queries = QueryList("r1", max_entries=2)

    async def body() -> None:
        with (
            queries.track(ACME, "a", "SELECT 1", protocol="grpc", kind="stream") as first,
            queries.track(OTHER, "b", "SELECT 1", protocol="grpc", kind="stream") as second,
            queries.track(ACME, "c", "SELECT 1", protocol="grpc", kind="stream") as third,
        ):
            assert first is not None and second is not None and third is None
            assert len(queries) == 2
        assert queries.snapshot()["running_queries_untracked"] == 1
        assert len(queries) == 0

    asyncio.run(body())


@pytest.mark.parametrize(
    "query_id",
    ["", "r1", "r1:xyz", "r1:0123456789abcdeX", "a.b:0123456789abcdef", ":0123456789abcdef"],
)
def test_a_malformed_id_names_no_replica(query_id: str) -> None:
    assert replica_of(query_id) is None


def test_replica_names_are_bus_tokens() -> None:
    assert replica_of("host-1_a:0123456789abcdef") == "host-1_a"
    with pytest.raises(InvalidArgument):
        QueryList("a.b")
