"""Admission on its own: shares, the short lane, memory, the order waiters are admitted
in, bounded waits, and what a caller that goes away leaves behind (nothing)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from fabric.errors import DeadlineExceeded, ResourceExhausted
from fabric.query.admission import (
    WAITING_PER_SLOT,
    Admission,
    AdmissionLimits,
    Claim,
    Ticket,
)
from fabric.results.memory import MemoryBudget

MIB = 1 << 20
SOURCE = object()


def limits(**overrides: Any) -> AdmissionLimits:
    values: dict[str, Any] = {
        "tenant_queries": 100,
        "principal_queries": 100,
        "short_reserve": 1,
        "max_wait": 5.0,
    }
    values.update(overrides)
    return AdmissionLimits(**values)


def claim(
    principal: str = "app",
    *,
    tenant: str = "acme",
    short: bool = False,
    capacity: int | None = None,
    memory: int = 0,
) -> Claim:
    return Claim(tenant, principal, SOURCE, capacity, short, memory)


def run(coro: Any) -> Any:
    return asyncio.run(asyncio.wait_for(coro, 20))


async def settle() -> None:
    """Let woken waiters run (a wake-up is a callback on the loop)."""
    for _ in range(5):
        await asyncio.sleep(0)


def test_a_principal_at_its_share_waits_then_is_refused_with_a_retry_hint() -> None:
    admission = Admission(limits(principal_queries=1, max_wait=0.2), MemoryBudget(MIB))

    async def body() -> None:
        held = await admission.admit(claim("greedy"))
        started = time.monotonic()
        with pytest.raises(ResourceExhausted) as refused:
            await admission.admit(claim("greedy"))
        assert time.monotonic() - started >= 0.2
        assert refused.value.retry_after == 1.0
        assert "this caller already runs its share" in refused.value.message
        other = await admission.admit(claim("modest"))  # another principal is not held
        other.release()
        held.release()
        again = await admission.admit(claim("greedy"))  # its share is free again
        again.release()

    run(body())
    stats = admission.stats
    assert stats.refused["principal_queries"] == 1 and stats.queued == 1
    assert stats.running == 0 and stats.waiting == 0


def test_a_tenant_at_its_share_waits_and_other_tenants_do_not() -> None:
    admission = Admission(limits(tenant_queries=2, max_wait=0.2), MemoryBudget(MIB))

    async def body() -> None:
        held = [await admission.admit(claim(p)) for p in ("one", "two")]
        with pytest.raises(ResourceExhausted) as refused:
            await admission.admit(claim("three"))
        assert "this tenant" in refused.value.message
        (await admission.admit(claim("x", tenant="globex"))).release()
        for ticket in held:
            ticket.release()

    run(body())
    assert admission.stats.refused["tenant_queries"] == 1


def test_long_queries_leave_the_reserved_slots_of_a_source_to_short_ones() -> None:
    admission = Admission(limits(short_reserve=1, max_wait=0.2), MemoryBudget(MIB))

    async def body() -> None:
        scan = await admission.admit(claim("scanner", capacity=2))
        with pytest.raises(ResourceExhausted) as refused:
            await admission.admit(claim("scanner", capacity=2))
        assert "every connection of this source" in refused.value.message
        lookup = await admission.admit(claim("lookup", capacity=2, short=True))
        # The source is full now: a short query waits too.
        with pytest.raises(ResourceExhausted):
            await admission.admit(claim("lookup", capacity=2, short=True))
        lookup.release()
        scan.release()

    run(body())
    assert admission.stats.refused["source_busy"] == 2


def test_a_source_of_one_connection_holds_none_back() -> None:
    admission = Admission(limits(short_reserve=3), MemoryBudget(MIB))

    async def body() -> None:
        (await admission.admit(claim(capacity=1))).release()

    run(body())


def test_a_waiter_is_admitted_as_soon_as_a_slot_frees() -> None:
    admission = Admission(limits(principal_queries=1), MemoryBudget(MIB))

    async def body() -> None:
        held = await admission.admit(claim("app"))
        waiting = asyncio.ensure_future(admission.admit(claim("app")))
        await settle()
        assert not waiting.done() and admission.stats.waiting == 1
        held.release()
        ticket = await waiting
        ticket.release()

    run(body())


def test_the_principal_running_fewest_queries_is_admitted_first() -> None:
    admission = Admission(limits(short_reserve=0), MemoryBudget(MIB))
    order: list[str] = []

    async def take(principal: str) -> Ticket:
        ticket = await admission.admit(claim(principal, capacity=2))
        order.append(principal)
        return ticket

    async def body() -> None:
        running = [await take("heavy"), await take("heavy")]  # the source is full
        order.clear()
        queued = [asyncio.ensure_future(take("heavy")) for _ in range(2)]
        await settle()
        queued.append(asyncio.ensure_future(take("light")))  # last in the queue
        await settle()
        assert admission.stats.waiting == 3
        running.pop().release()  # heavy runs 1 query, light none: light first
        await settle()
        assert order == ["light"]
        running.pop().release()
        await settle()
        assert order == ["light", "heavy"]
        queued[2].result().release()
        await settle()
        assert order == ["light", "heavy", "heavy"]
        for future in queued[:2]:
            future.result().release()

    run(body())


def test_a_caller_over_its_share_waits_behind_the_others() -> None:
    admission = Admission(limits(principal_queries=2, short_reserve=0), MemoryBudget(MIB))
    order: list[str] = []

    async def take(principal: str) -> Ticket:
        ticket = await admission.admit(claim(principal, capacity=2))
        order.append(principal)
        return ticket

    async def body() -> None:
        a, b = await take("greedy"), await take("greedy")
        order.clear()
        greedy = asyncio.ensure_future(take("greedy"))  # over its share and the source full
        await settle()
        fair = asyncio.ensure_future(take("fair"))
        await settle()
        a.release()  # greedy has 1 running, fair 0: fair goes first though it came later
        await settle()
        assert order == ["fair"]
        b.release()
        await settle()
        assert order == ["fair", "greedy"]
        for ticket in await asyncio.gather(fair, greedy):
            ticket.release()

    run(body())


def test_queries_wait_for_memory_and_are_refused_when_none_frees() -> None:
    budget = MemoryBudget(100 * MIB)
    admission = Admission(limits(max_wait=0.2), budget)

    async def body() -> None:
        big = await admission.admit(claim(memory=80 * MIB))
        assert budget.usage()["reserved"] == 80 * MIB
        with pytest.raises(ResourceExhausted) as refused:
            await admission.admit(claim(memory=40 * MIB))
        assert "memory budget" in refused.value.message
        small = await admission.admit(claim(memory=10 * MIB))  # fits beside it
        waiting = asyncio.ensure_future(admission.admit(claim(memory=40 * MIB)))
        await settle()
        big.release()
        (await waiting).release()
        small.release()

    run(body())
    assert budget.in_use == 0
    assert admission.stats.refused["memory"] == 1


def test_memory_freed_elsewhere_admits_a_waiter() -> None:
    budget = MemoryBudget(100 * MIB)
    admission = Admission(limits(), budget)
    cached = budget.charge("cached")
    assert cached.grow(90 * MIB)

    async def body() -> None:
        waiting = asyncio.ensure_future(admission.admit(claim(memory=40 * MIB)))
        await settle()
        assert not waiting.done()
        cached.release()  # an evicted cache entry, say
        (await waiting).release()

    run(body())


def test_a_reservation_grows_to_what_the_query_holds_and_all_of_it_is_returned() -> None:
    budget = MemoryBudget(100 * MIB)
    admission = Admission(limits(), budget)

    async def body() -> None:
        ticket = await admission.admit(claim(memory=10 * MIB))
        ticket.cover(150 * MIB)  # over the budget: counted all the same
        assert budget.in_use == 150 * MIB
        ticket.cover(20 * MIB)  # never shrinks by this
        assert budget.in_use == 150 * MIB
        ticket.release()
        ticket.release()

    run(body())
    assert budget.in_use == 0


def test_the_call_deadline_bounds_the_wait() -> None:
    admission = Admission(limits(principal_queries=1, max_wait=30), MemoryBudget(MIB))

    async def body() -> None:
        held = await admission.admit(claim())
        started = time.monotonic()
        with pytest.raises(DeadlineExceeded):
            await admission.admit(claim(), deadline=time.monotonic() + 0.2)
        assert time.monotonic() - started < 5
        held.release()

    run(body())


def test_a_caller_that_goes_away_while_waiting_leaves_nothing_behind() -> None:
    admission = Admission(limits(principal_queries=1), MemoryBudget(MIB))

    async def body() -> None:
        held = await admission.admit(claim())
        waiting = asyncio.ensure_future(admission.admit(claim()))
        await settle()
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        assert admission.stats.waiting == 0
        held.release()

    run(body())
    assert admission.stats.running == 0


def test_waiters_of_one_principal_cannot_pile_up() -> None:
    admission = Admission(limits(principal_queries=1), MemoryBudget(MIB))

    async def body() -> None:
        held = await admission.admit(claim())
        waiting = [asyncio.ensure_future(admission.admit(claim())) for _ in range(WAITING_PER_SLOT)]
        await settle()
        started = time.monotonic()
        with pytest.raises(ResourceExhausted):
            await admission.admit(claim())
        assert time.monotonic() - started < 1  # refused at once, not after a wait
        for future in waiting:
            future.cancel()
        await asyncio.gather(*waiting, return_exceptions=True)
        held.release()

    run(body())


def test_the_last_query_ending_is_reported_once_idle() -> None:
    idle: list[int] = []
    admission = Admission(limits(), MemoryBudget(MIB), on_idle=lambda: idle.append(1))

    async def body() -> None:
        first, second = await admission.admit(claim()), await admission.admit(claim())
        first.release()
        assert idle == []
        second.release()
        assert idle == [1]

    run(body())
