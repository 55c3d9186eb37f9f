"""Faults of a PostgreSQL source under load, through a real gateway that also serves an
embedded DuckDB connection: a frozen database, a restart, connections cut mid-stream, an
exhausted pool, a slow link, callers that go away mid-stream.

Every scenario checks what the callers got (status codes; every OK result whole, never
a short one reported complete), that the source is served again without restarting the
gateway, and that nothing is left behind: no session at the server running or idle in
a transaction, no open statement, no slot held, no stop still running.
"""

from __future__ import annotations

import functools
import time
from pathlib import Path

import pytest

from connectors.workers import WorkerThreads
from fabric.client import FabricClient, QueryResult
from tests.chaos.conftest import Record
from tests.support.chaos import (
    ITEMS,
    LONG,
    Load,
    Outcome,
    assert_nothing_left,
    call,
    chaos_rig,
    codes,
    hold,
    recovery,
    scaled,
    wait_for,
)
from tests.support.pg_instance import PgInstance

pytestmark = [pytest.mark.postgres, pytest.mark.timeout(900 if LONG else 120)]

SCAN = "SELECT grp, count(*) AS n FROM items WHERE id < :n GROUP BY grp"
LOOKUP = "SELECT id, grp FROM items WHERE id = :id"
STREAM = "SELECT id, payload FROM items WHERE id <= :n"
SLOW = "SELECT count(*) AS n FROM slow_items WHERE id <= :n"
NOTES = "SELECT count(*) AS n FROM notes WHERE id > :m"


def scan(client: FabricClient, index: int) -> QueryResult:
    return client.execute("pg", SCAN, {"n": 50_000})


def lookup(client: FabricClient, index: int) -> QueryResult:
    return client.execute("pg", LOOKUP, {"id": 1 + index})


def notes(client: FabricClient, index: int) -> QueryResult:
    return client.execute("duck", NOTES, {"m": index})


def _counts(outcomes: list[Outcome]) -> str:
    return ", ".join(f"{code} {n}" for code, n in sorted(codes(outcomes).items()))


def whole(load: Load, rows: int) -> None:
    """Every OK call of `load` got all `rows` rows and was reported complete."""
    short = [o for o in load.outcomes if o.code == "OK" and (o.rows != rows or not o.complete)]
    assert not short, short[:3]


def only(load: Load, *allowed: str) -> None:
    got = codes(load.outcomes)
    assert set(got) <= {"OK", *allowed}, got


def test_database_frozen_under_load(
    items_postgres: PgInstance, tmp_path: Path, record: Record
) -> None:
    clients, freeze, timeout = int(scaled(6, 16)), scaled(3.0, 20.0), scaled(4.0, 10.0)
    with chaos_rig(tmp_path, items_postgres, pool_max=4, query_timeout=timeout) as rig:
        scans = Load(rig.address, clients // 2, scan).start()
        lookups = Load(rig.address, clients - clients // 2, lookup).start()
        duck = Load(rig.address, 2, notes).start()
        wait_for(lambda: len(scans.outcomes) >= clients, 30)
        frozen_at = time.monotonic()
        items_postgres.freeze()
        try:
            hold(freeze)
        finally:
            items_postgres.thaw()
        thawed_at = time.monotonic()
        wait_for(lambda: bool(scans.since(thawed_at)) and bool(lookups.since(thawed_at)), 30)
        for load in (scans, lookups, duck):
            load.stop()
        pg_calls = scans.outcomes + lookups.outcomes
        during = duck.ended_between(frozen_at, thawed_at)
        record(
            scenario="database frozen (SIGSTOP)",
            load=f"{clients} clients on it, 2 on DuckDB",
            fault=f"{freeze:g} s freeze, query timeout {timeout:g} s",
            callers=codes(pg_calls),
            recovery_s=recovery(pg_calls, thawed_at),
            note=(
                f"DuckDB meanwhile: {_counts(during)}, slowest "
                f"{max((o.seconds for o in during), default=0.0):.2f} s; longest call "
                f"{max(o.seconds for o in pg_calls):.1f} s"
            ),
        )
        only(scans, "DEADLINE_EXCEEDED", "UNAVAILABLE")
        only(lookups, "DEADLINE_EXCEEDED", "UNAVAILABLE")
        whole(scans, 100)
        whole(lookups, 1)
        # the other connection kept being served, promptly, all along
        assert during and codes(during) == {"OK": len(during)}
        assert max(o.seconds for o in during) < 2.0
        # no call outlived its timeout (and the short grace) by much
        assert max(o.seconds for o in pg_calls) < timeout + 2.0
        back = recovery(pg_calls, thawed_at)
        assert back is not None and back < 5.0
        assert_nothing_left(rig)


def test_database_restarted_under_load(
    items_postgres: PgInstance, tmp_path: Path, record: Record
) -> None:
    clients, restarts = int(scaled(4, 16)), int(scaled(1, 3))
    with chaos_rig(tmp_path, items_postgres, pool_max=4, query_timeout=10.0) as rig:
        scans = Load(rig.address, clients // 2, scan).start()
        lookups = Load(rig.address, clients - clients // 2, lookup).start()
        recoveries: list[float] = []
        for _ in range(restarts):
            wait_for(lambda: len(scans.outcomes) >= clients, 30)
            items_postgres.restart()
            back_at = time.monotonic()
            wait_for(functools.partial(scans.succeeded_since, back_at), 30)
            wait_for(functools.partial(lookups.succeeded_since, back_at), 30)
            got = recovery(scans.outcomes + lookups.outcomes, back_at)
            assert got is not None
            recoveries.append(got)
        settled_at = time.monotonic() + 1.0
        wait_for(lambda: len(scans.since(settled_at)) >= clients, 30)
        for load in (scans, lookups):
            load.stop()
        pg_calls = scans.outcomes + lookups.outcomes
        record(
            scenario="database restarted",
            load=f"{clients} clients",
            fault=f"{restarts} fast restart(s), every pooled connection dropped",
            callers=codes(pg_calls),
            recovery_s=max(recoveries),
            note="every call from 1 s after each restart OK",
        )
        only(scans, "UNAVAILABLE")
        only(lookups, "UNAVAILABLE")
        whole(scans, 100)
        whole(lookups, 1)
        assert max(recoveries) < 5.0
        # once back, no call fails on a connection the restart killed
        later = [o for o in pg_calls if o.started >= settled_at]
        assert later and codes(later) == {"OK": len(later)}
        assert_nothing_left(rig)


def test_connections_cut_mid_stream(
    items_postgres: PgInstance, tmp_path: Path, record: Record
) -> None:
    clients, cuts = int(scaled(3, 8)), int(scaled(2, 6))

    def stream(client: FabricClient, index: int) -> QueryResult:
        return client.execute("pg", STREAM, {"n": ITEMS})

    with chaos_rig(tmp_path, items_postgres, pool_max=4, query_timeout=60.0) as rig:
        rig.proxy.slow(8_000_000)  # a few seconds per stream: cuts land mid-stream
        streams = Load(rig.address, clients, stream).start()
        for _ in range(cuts):
            # rows are flowing (a cut while a query starts is retried on a new
            # connection, unseen by its caller; this one must land mid-stream)
            wait_for(functools.partial(rig.proxy.forwarded_past, rig.proxy.forwarded + 10**6), 30)
            before = len(streams.outcomes)
            rig.proxy.cut()
            wait_for(functools.partial(streams.more_than, before), 60)
        cut_at = time.monotonic()
        rig.proxy.slow(None)
        wait_for(lambda: any(o.code == "OK" for o in streams.since(cut_at)), 60)
        streams.stop()
        record(
            scenario="connections cut mid-stream (RST)",
            load=f"{clients} clients streaming {ITEMS:,} rows each",
            fault=f"{cuts} cuts of every connection",
            callers=codes(streams.outcomes),
            recovery_s=recovery(streams.outcomes, cut_at),
            note="every OK stream whole; recovery: the next whole stream",
        )
        only(streams, "UNAVAILABLE")
        assert codes(streams.outcomes)["UNAVAILABLE"] >= 1
        whole(streams, ITEMS)
        assert_nothing_left(rig)


def test_pool_exhausted(items_postgres: PgInstance, tmp_path: Path, record: Record) -> None:
    clients, seconds = int(scaled(8, 24)), scaled(5.0, 30.0)

    def slow(client: FabricClient, index: int) -> QueryResult:
        return client.execute("pg", SLOW, {"n": 1000})  # about half a second at the source

    # Admission holds the callers past the pool's two connections on the event loop,
    # for at most FABRIC_ADMISSION_WAIT.
    with chaos_rig(
        tmp_path, items_postgres, pool_max=2, pool_timeout=1.0, admission_wait=1.0
    ) as rig:
        slows = Load(rig.address, clients, slow).start()
        duck = Load(rig.address, 2, notes).start()
        hold(seconds)
        [pg_lane] = [lane for lane in rig.engine.lanes.all() if lane.name == "postgres"]
        slows.stop()
        duck.stop()
        refused = [o for o in slows.outcomes if o.code == "RESOURCE_EXHAUSTED"]
        record(
            scenario="pool exhausted",
            load=f"{clients} clients, pool of 2, admission wait 1 s, {seconds:g} s",
            fault="every connection busy with a slow query",
            callers=codes(slows.outcomes),
            recovery_s=None,
            note=(
                f"refused after {max(o.seconds for o in refused):.1f} s at most; "
                f"DuckDB meanwhile: {_counts(duck.outcomes)}"
            ),
        )
        only(slows, "RESOURCE_EXHAUSTED")
        assert refused, "with three times more callers than connections, some must wait out"
        assert max(o.seconds for o in refused) < 1.0 + 1.5  # refused after the admission wait
        whole(slows, 1)
        assert codes(duck.outcomes) == {"OK": len(duck.outcomes)}
        assert max(o.seconds for o in duck.outcomes) < 2.0
        # the source's lane has as many threads as connections
        assert pg_lane.max_threads == 2
        assert isinstance(pg_lane.threads, WorkerThreads) and pg_lane.threads.threads <= 2
        assert rig.engine.admission.stats.refused["source_busy"] == len(refused)
        with rig.client() as client:
            assert call(lambda: slow(client, 0)).code == "OK"
        assert_nothing_left(rig)


def test_slow_source(items_postgres: PgInstance, tmp_path: Path, record: Record) -> None:
    clients, timeout, seconds = int(scaled(2, 6)), 4.0, scaled(6.0, 30.0)

    def small(client: FabricClient, index: int) -> QueryResult:
        return client.execute("pg", STREAM, {"n": 10_000})  # about 1 MB

    def big(client: FabricClient, index: int) -> QueryResult:
        return client.execute("pg", STREAM, {"n": ITEMS})  # about 20 MB: past the timeout

    with chaos_rig(tmp_path, items_postgres, pool_max=4, query_timeout=timeout) as rig:
        rig.proxy.slow(1_000_000)
        smalls = Load(rig.address, clients, small).start()
        bigs = Load(rig.address, 1, big).start()
        hold(seconds)
        wait_for(lambda: bool(bigs.outcomes), 60)
        rig.proxy.slow(None)
        fast_at = time.monotonic()
        wait_for(lambda: any(o.code == "OK" for o in bigs.since(fast_at)), 60)
        smalls.stop()
        bigs.stop()
        record(
            scenario="slow source (1 MB/s link)",
            load=f"{clients} clients reading 10,000 rows, 1 reading {ITEMS:,}",
            fault=f"{seconds:g} s at 1 MB/s, query timeout {timeout:g} s",
            callers=codes(smalls.outcomes + bigs.outcomes),
            recovery_s=recovery(bigs.outcomes, fast_at),
            note=(
                "DEADLINE_EXCEEDED after "
                f"{max(o.seconds for o in bigs.outcomes if o.started < fast_at):.1f} s at "
                "most; recovery: the big read whole once the link is fast"
            ),
        )
        only(smalls, "DEADLINE_EXCEEDED")
        only(bigs, "DEADLINE_EXCEEDED")
        whole(smalls, 10_000)
        whole(bigs, ITEMS)
        slow_big = [o for o in bigs.outcomes if o.started < fast_at]
        assert codes(slow_big)["DEADLINE_EXCEEDED"] >= 1
        assert max(o.seconds for o in slow_big) < timeout + 2.0  # on time
        assert_nothing_left(rig)


def test_clients_gone_mid_stream(
    items_postgres: PgInstance, tmp_path: Path, record: Record
) -> None:
    rounds = int(scaled(6, 40))
    with chaos_rig(
        tmp_path,
        items_postgres,
        pool_max=4,
        statement_idle_limit=1.0,
        statement_sweep_interval=0.2,
    ) as rig:
        left: list[str] = []
        for index in range(rounds):
            client = rig.client(timeout=60)
            if index % 2:
                # reads the first batch of a big stream, then goes away
                reader = client.query_batches("pg", STREAM, {"n": ITEMS})
                next(iter(reader))
                left.append("stream")
            else:
                # opens a statement, reads its first page, never closes it
                statement = client.open_statement("pg", STREAM, {"n": ITEMS}, page_rows=1000)
                assert statement.fetch() is not None
                left.append("statement")
            client.close()
        gone_at = time.monotonic()
        with rig.client() as client:
            outcome = call(lambda: scan(client, 0))
        assert outcome.code == "OK" and outcome.rows == 100
        assert_nothing_left(rig)
        record(
            scenario="clients gone mid-stream",
            load=f"{rounds} clients, one after another",
            fault="half leave a stream after its first batch, half an open statement",
            callers={"OK": 1},
            recovery_s=time.monotonic() - gone_at,
            note="recovery: until every query was stopped at the source and released",
        )
