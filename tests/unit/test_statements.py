"""Open statements: exact idle purges on a fake clock, isolation, payload release, leases."""

from __future__ import annotations

import asyncio
import gc
import logging
import threading
import weakref

import pytest

from fabric.clock import FakeClock
from fabric.errors import FailedPrecondition, NotFound, ResourceExhausted
from fabric.results.statements import OpenStatement, StatementRegistry


class Payload:
    """Stands for a source reader plus parameters and buffered rows."""

    def __init__(self) -> None:
        self.params = {"secret": "hunter2"}
        self.closed = 0

    def close(self) -> None:
        self.closed += 1


Registry = StatementRegistry[Payload]


def make(clock: FakeClock, **kwargs: float) -> Registry:
    return StatementRegistry(
        clock=clock,
        idle_limit=kwargs.get("idle_limit", 300.0),
        max_open=int(kwargs.get("max_open", 1000)),
    )


def open_one(
    reg: Registry,
    payload: Payload | None = None,
    *,
    tenant: str = "t1",
    stage: str = "dev",
    connection: str = "c1",
) -> OpenStatement[Payload]:
    p = payload if payload is not None else Payload()
    return reg.open(
        tenant=tenant,
        stage=stage,
        principal="app",
        payload=p,
        close_fn=p.close,
        connection=connection,
    )


def test_open_get_close(fake_clock: FakeClock) -> None:
    reg = make(fake_clock)
    p = Payload()
    st = open_one(reg, p)
    assert len(st.id) >= 32
    assert reg.get(st.id, tenant="t1", stage="dev") is st
    assert st.payload is p
    assert (st.tenant, st.stage, st.principal, st.connection) == ("t1", "dev", "app", "c1")
    reg.close(st.id, tenant="t1", stage="dev")
    assert p.closed == 1
    assert st.closed
    with pytest.raises(NotFound):
        _ = st.payload
    stats = reg.stats
    assert (stats.open, stats.opened, stats.closed, stats.purged_idle) == (0, 1, 1, 0)


def test_ids_are_unique_and_unguessable(fake_clock: FakeClock) -> None:
    reg = make(fake_clock)
    ids = {open_one(reg).id for _ in range(200)}
    assert len(ids) == 200


def test_second_close_is_not_found(fake_clock: FakeClock) -> None:
    reg = make(fake_clock)
    p = Payload()
    st = open_one(reg, p)
    reg.close(st.id, tenant="t1", stage="dev")
    with pytest.raises(NotFound):
        reg.close(st.id, tenant="t1", stage="dev")
    reg.close(st.id, tenant="t1", stage="dev", missing_ok=True)
    assert p.closed == 1  # close_fn ran once


def test_idle_purge_exactly_at_the_limit(fake_clock: FakeClock) -> None:
    reg = make(fake_clock, idle_limit=300)
    p = Payload()
    st = open_one(reg, p)
    fake_clock.advance(299.999)
    assert reg.sweep() == 0
    assert reg.get(st.id, tenant="t1", stage="dev") is st  # resets idleness
    fake_clock.advance(299.999)
    assert reg.sweep() == 0
    fake_clock.advance(0.001)  # exactly idle_limit since the get
    assert reg.sweep() == 1
    assert p.closed == 1
    with pytest.raises(NotFound):
        reg.get(st.id, tenant="t1", stage="dev")
    stats = reg.stats
    assert (stats.open, stats.closed, stats.purged_idle) == (0, 1, 1)


def test_sweep_only_takes_idle_ones(fake_clock: FakeClock) -> None:
    reg = make(fake_clock, idle_limit=10)
    old = open_one(reg)
    fake_clock.advance(5)
    young = open_one(reg)
    fake_clock.advance(5)
    assert reg.sweep() == 1
    assert young.id in {reg.get(young.id, tenant="t1", stage="dev").id}
    with pytest.raises(NotFound):
        reg.get(old.id, tenant="t1", stage="dev")


def _opened_with_weakref(reg: Registry) -> tuple[str, weakref.ref[Payload]]:
    p = Payload()
    st = open_one(reg, p)
    return st.id, weakref.ref(p)


@pytest.mark.parametrize("how", ["close", "sweep", "close_all", "close_connection", "exhausted"])
def test_payload_is_dropped(fake_clock: FakeClock, how: str) -> None:
    reg = make(fake_clock, idle_limit=10)
    statement_id, ref = _opened_with_weakref(reg)
    gc.collect()
    assert ref() is not None  # the registry holds it while open
    st = reg.get(statement_id, tenant="t1", stage="dev")
    if how == "close":
        reg.close(statement_id, tenant="t1", stage="dev")
    elif how == "sweep":
        fake_clock.advance(10)
        assert reg.sweep() == 1
    elif how == "close_all":
        assert reg.close_all() == 1
    elif how == "close_connection":
        assert reg.close_connection("t1", "c1") == 1
    else:
        with reg.lease(statement_id, tenant="t1", stage="dev") as leased:
            leased.rows_sent = 10
            leased.exhausted = True
    gc.collect()
    assert ref() is None  # released even though the statement object is still referenced
    assert st.closed
    assert reg.stats.open == 0


def test_other_tenant_or_stage_gets_not_found(fake_clock: FakeClock) -> None:
    reg = make(fake_clock)
    p = Payload()
    st = open_one(reg, p)
    with pytest.raises(NotFound) as unknown:
        reg.get("no-such-id", tenant="t1", stage="dev")
    for tenant, stage in (("t2", "dev"), ("t1", "prod")):
        with pytest.raises(NotFound) as other:
            reg.get(st.id, tenant=tenant, stage=stage)
        assert str(other.value) == str(unknown.value)  # existence is not revealed
        with pytest.raises(NotFound):
            reg.close(st.id, tenant=tenant, stage=stage)
        with pytest.raises(NotFound), reg.lease(st.id, tenant=tenant, stage=stage):
            pass
    assert p.closed == 0
    assert reg.get(st.id, tenant="t1", stage="dev") is st


def test_max_open_sweeps_first_then_refuses(fake_clock: FakeClock) -> None:
    reg = make(fake_clock, idle_limit=10, max_open=2)
    first = open_one(reg)
    fake_clock.advance(10)
    open_one(reg)
    open_one(reg)  # room made by sweeping the idle first one
    with pytest.raises(NotFound):
        reg.get(first.id, tenant="t1", stage="dev")
    refused = Payload()
    with pytest.raises(ResourceExhausted):
        open_one(reg, refused)
    assert refused.closed == 1  # ownership taken: the refused payload is released
    stats = reg.stats
    assert (stats.open, stats.opened, stats.purged_idle) == (2, 3, 1)


def test_busy_statement_is_not_swept(fake_clock: FakeClock) -> None:
    reg = make(fake_clock, idle_limit=10)
    p = Payload()
    st = open_one(reg, p)
    with reg.lease(st.id, tenant="t1", stage="dev") as leased:
        assert leased.busy
        fake_clock.advance(100)  # a long fetch
        assert reg.sweep() == 0
        assert leased.payload is p
    assert not st.busy
    fake_clock.advance(9.999)  # idleness counts from the end of the fetch
    assert reg.sweep() == 0
    fake_clock.advance(0.001)
    assert reg.sweep() == 1
    assert p.closed == 1


def test_concurrent_fetch_is_refused(fake_clock: FakeClock) -> None:
    reg = make(fake_clock)
    st = open_one(reg)
    with reg.lease(st.id, tenant="t1", stage="dev"):
        with pytest.raises(FailedPrecondition), reg.lease(st.id, tenant="t1", stage="dev"):
            pass
        assert st.busy  # the refused lease did not release the running one
    with reg.lease(st.id, tenant="t1", stage="dev"):
        pass


def test_close_during_fetch_is_deferred_to_its_end(fake_clock: FakeClock) -> None:
    reg = make(fake_clock)
    p = Payload()
    st = open_one(reg, p)
    with reg.lease(st.id, tenant="t1", stage="dev") as leased:
        reg.close(st.id, tenant="t1", stage="dev")
        assert p.closed == 0  # not closed under the running fetch
        assert leased.payload is p
        with pytest.raises(NotFound):
            reg.get(st.id, tenant="t1", stage="dev")  # but no new fetch finds it
        assert reg.close_all() == 0
    assert p.closed == 1
    assert reg.stats.closed == 1


def test_failed_fetch_leaves_statement_open(fake_clock: FakeClock) -> None:
    reg = make(fake_clock)
    p = Payload()
    st = open_one(reg, p)
    with pytest.raises(RuntimeError), reg.lease(st.id, tenant="t1", stage="dev"):
        raise RuntimeError("source hiccup")
    assert not st.busy
    assert p.closed == 0
    assert reg.get(st.id, tenant="t1", stage="dev") is st


def test_close_fn_failure_does_not_leak(
    fake_clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    reg = make(fake_clock, idle_limit=10)

    def failing() -> None:
        raise ValueError("value hunter2 in the driver's message")

    st = reg.open(tenant="t1", stage="dev", principal="app", payload=Payload(), close_fn=failing)
    st2 = reg.open(tenant="t1", stage="dev", principal="app", payload=Payload(), close_fn=failing)
    with caplog.at_level(logging.WARNING):
        reg.close(st.id, tenant="t1", stage="dev")
        fake_clock.advance(10)
        assert reg.sweep() == 1
    assert "hunter2" not in caplog.text
    assert "ValueError" in caplog.text
    assert st.closed and st2.closed
    stats = reg.stats
    assert (stats.open, stats.closed, stats.close_errors) == (0, 2, 2)


def test_close_connection_only_that_connection(fake_clock: FakeClock) -> None:
    reg = make(fake_clock)
    a = open_one(reg, connection="c1")
    b = open_one(reg, connection="c2")
    c = open_one(reg, connection="c1", tenant="t2")
    assert reg.close_connection("t1", "c1") == 1
    assert a.closed and not b.closed and not c.closed


def test_repr_hides_id_and_payload(fake_clock: FakeClock) -> None:
    st = open_one(make(fake_clock))
    text = repr(st)
    assert st.id not in text and "hunter2" not in text


def test_invalid_settings(fake_clock: FakeClock) -> None:
    with pytest.raises(ValueError):
        StatementRegistry[Payload](idle_limit=0, clock=fake_clock)
    with pytest.raises(ValueError):
        StatementRegistry[Payload](max_open=0, clock=fake_clock)


def test_run_sweeper_sweeps_and_cancels(fake_clock: FakeClock) -> None:
    reg = make(fake_clock, idle_limit=10)
    released = threading.Event()
    reg.open(tenant="t1", stage="dev", principal="app", payload=Payload(), close_fn=released.set)
    fake_clock.advance(10)

    async def scenario() -> None:
        task = asyncio.create_task(reg.run_sweeper(interval=0))
        # Wait on the event in a thread, so the loop keeps running the sweeper; no sleep.
        assert await asyncio.wait_for(asyncio.to_thread(released.wait, 10), timeout=10)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(scenario())
    assert reg.stats.purged_idle == 1


def test_thread_safety_smoke(fake_clock: FakeClock) -> None:
    reg = make(fake_clock, idle_limit=5, max_open=50)
    errors: list[BaseException] = []
    payloads: list[Payload] = []
    guard = threading.Lock()

    def worker() -> None:
        try:
            for _ in range(300):
                p = Payload()
                with guard:
                    payloads.append(p)
                try:
                    st = open_one(reg, p)
                except ResourceExhausted:
                    continue
                try:
                    with reg.lease(st.id, tenant="t1", stage="dev") as leased:
                        leased.rows_sent += 1
                    reg.close(st.id, tenant="t1", stage="dev", missing_ok=True)
                except NotFound:
                    pass  # swept by another thread
                reg.sweep()
                fake_clock.advance(0.01)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert reg.stats.open == 0
    assert all(p.closed == 1 for p in payloads)


# -- the idle limit is checked by the fetch; revocation leaves a marker ---------------------


@pytest.mark.parametrize("how", ["get", "lease"])
def test_the_idle_limit_holds_without_a_sweep(fake_clock: FakeClock, how: str) -> None:
    reg = make(fake_clock, idle_limit=60)
    payload = Payload()
    s = open_one(reg, payload)
    fake_clock.advance(59.999)
    reg.get(s.id, tenant="t1", stage="dev")  # still in time: idleness restarts
    fake_clock.advance(60)
    with pytest.raises(NotFound, match="expired"):
        if how == "get":
            reg.get(s.id, tenant="t1", stage="dev")
        else:
            with reg.lease(s.id, tenant="t1", stage="dev"):
                pass
    assert payload.closed == 1 and len(reg) == 0
    assert reg.stats.purged_idle == 1 and reg.sweep() == 0
    with pytest.raises(NotFound, match="statement not found"):
        reg.get(s.id, tenant="t1", stage="dev")


def test_a_revoked_statement_answers_its_error_once_to_its_owner_only(
    fake_clock: FakeClock,
) -> None:
    reg = make(fake_clock, idle_limit=60)
    kept, doomed, busy = Payload(), Payload(), Payload()
    open_one(reg, kept)
    gone = open_one(reg, doomed)
    held = open_one(reg, busy)
    why = FailedPrecondition("the selection changed: test")
    with reg.lease(held.id, tenant="t1", stage="dev"):
        assert reg.revoke_where(lambda p: why if p is not kept else None) == 2
        assert busy.closed == 0  # not under the running fetch
    assert busy.closed == 1 and doomed.closed == 1 and kept.closed == 0
    assert reg.stats.revoked == 2 and len(reg) == 1
    for tenant, stage in (("t2", "dev"), ("t1", "prod")):
        with pytest.raises(NotFound):
            reg.get(gone.id, tenant=tenant, stage=stage)
    with pytest.raises(FailedPrecondition, match="the selection changed"):
        reg.get(gone.id, tenant="t1", stage="dev")
    with pytest.raises(NotFound):
        reg.get(gone.id, tenant="t1", stage="dev")
    # A marker nobody asks about is forgotten by the sweeper after the idle limit.
    fake_clock.advance(60)
    reg.sweep()
    with pytest.raises(NotFound):
        reg.get(held.id, tenant="t1", stage="dev")
