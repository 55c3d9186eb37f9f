"""A source that stops answering: what the gateway does about it (a private PostgreSQL,
frozen through a TCP proxy or by SIGSTOP, next to an embedded DuckDB connection).

- The other connections keep being served: each source has its own lane of threads
  (admission lets no more queries run there than it has connections), so a frozen one
  holds only its own.
- Callers that give up while their query waits for the frozen source leave nothing
  behind that would start once it is back.
- The query timeout ends the call on time whatever the source does, and the connection
  that was stuck is cut off and discarded, never pooled again.
- Describing a statement on a frozen server does not stop the process's other threads.
- SIGTERM with a stuck source: the port closes after the grace period and the process
  exits in a bounded time.
"""

from __future__ import annotations

import functools
import itertools
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import psycopg
import pytest

from connectors.base import ConnectorConfig
from connectors.postgres import PostgresConnector
from fabric.client import FabricClient, QueryResult
from tests.support.chaos import (
    ChaosRig,
    call,
    chaos_rig,
    codes,
    wait_for,
)
from tests.support.pg_instance import PgInstance
from tests.support.tcp_proxy import TcpProxy

pytestmark = pytest.mark.postgres

SCAN = "SELECT grp, count(*) AS n FROM items WHERE id < :n GROUP BY grp"
NOTES = "SELECT count(*) AS n FROM notes WHERE id > :m"
SLOW = "SELECT count(*) AS n FROM slow_items"
SIGTERM_APP = "fabric-sigterm"


@pytest.fixture
def pg(items_postgres: PgInstance) -> PgInstance:
    return items_postgres


def _scan(client: FabricClient) -> QueryResult:
    return client.execute("pg", SCAN, {"n": 50_000})


def test_a_frozen_source_does_not_hold_up_another_connection(
    pg: PgInstance, tmp_path: Path
) -> None:
    # Four worker threads in all, eight callers on the frozen source: before each source
    # had its own lane, they took every thread and the DuckDB connection waited too.
    # No connection held back for short queries: both take a scan.
    with chaos_rig(
        tmp_path, pg, pool_max=2, worker_threads=4, query_timeout=8.0, short_query_reserve=0
    ) as rig:
        with rig.client() as client:
            assert client.execute("duck", NOTES, {"m": 0}).table.num_rows == 1
            _scan(client)
        before = rig.started("pg")
        rig.proxy.pause()
        with ThreadPoolExecutor(8) as callers:
            frozen = [
                callers.submit(call, lambda: _scan(FabricClient(rig.address, timeout=30)))
                for _ in range(8)
            ]
            wait_for(lambda: rig.started("pg") >= before + 2, 10)  # both connections stuck
            with rig.client(timeout=10) as client:
                for m in range(5):
                    took = call(functools.partial(client.execute, "duck", NOTES, {"m": m}))
                    assert took.code == "OK" and took.seconds < 2.0, took
            rig.proxy.resume()
            outcomes = [f.result(timeout=60) for f in frozen]
        # What the frozen source's callers got: an answer or a clear failure, never a
        # result cut short and called complete.
        assert set(codes(outcomes)) <= {"OK", "DEADLINE_EXCEEDED", "UNAVAILABLE"}
        assert all(o.complete and o.rows == 100 for o in outcomes if o.code == "OK")
        with rig.client() as client:
            wait_for(lambda: call(lambda: _scan(client)).code == "OK", 15)
        wait_for(lambda: not rig.busy_sessions(), 15)


def test_callers_that_gave_up_start_nothing_once_the_source_is_back(
    pg: PgInstance, tmp_path: Path
) -> None:
    with chaos_rig(tmp_path, pg, pool_max=1, worker_threads=4, query_timeout=30.0) as rig:
        with rig.client() as client:
            _scan(client)
        before = rig.started("pg")
        rig.proxy.pause()
        with ThreadPoolExecutor(1) as holder:
            stuck = holder.submit(call, lambda: _scan(FabricClient(rig.address, timeout=30)))
            wait_for(lambda: rig.started("pg") == before + 1, 10)
            # Six callers queue behind it and give up after a second each.
            with ThreadPoolExecutor(6) as quitters:
                gave_up = list(
                    quitters.map(
                        lambda _: call(lambda: _scan(FabricClient(rig.address, timeout=1.0))),
                        range(6),
                    )
                )
            assert codes(gave_up) == {"DEADLINE_EXCEEDED": 6}
            rig.proxy.resume()
            assert stuck.result(timeout=60).code == "OK"
        # One more query: had any of the six been left waiting for the connection, it
        # would have had it first.
        with rig.client() as client:
            _scan(client)
        # the stuck query and the one after it; none of the six that gave up
        assert rig.started("pg") == before + 2


def _session_pids(rig: ChaosRig) -> set[int]:
    return {int(row[0]) for row in rig.sessions()}


def test_the_query_timeout_ends_the_call_on_time_and_discards_the_stuck_connection(
    pg: PgInstance, tmp_path: Path
) -> None:
    with chaos_rig(tmp_path, pg, pool_max=1, query_timeout=2.0) as rig:
        with rig.client() as client:
            _scan(client)
            [stuck_pid] = _session_pids(rig)
            [connector] = rig.connectors["pg"]
            pool = connector.inner._pool  # type: ignore[attr-defined]
            rig.proxy.pause()
            try:
                outcome = call(lambda: _scan(client))
                # on time: the timeout and the short grace for the source's own report
                assert outcome.code == "DEADLINE_EXCEEDED"
                assert outcome.seconds < 2.0 + 1.5, outcome
                # while the source still does not answer, the stuck connection is cut
                # off and handed back broken: the pool drops it
                wait_for(lambda: pool.get_stats().get("returns_bad", 0) >= 1, 10)
            finally:
                rig.proxy.resume()
            # The stuck connection was cut off, not pooled: its session ends once the
            # network lets the server hear it, and the next query gets a new one.
            wait_for(lambda: stuck_pid not in _session_pids(rig), 10)
            assert call(lambda: _scan(client)).code == "OK"
            assert stuck_pid not in _session_pids(rig)
        assert rig.engine.snapshot()["source_calls_overrun"] >= 1
        wait_for(lambda: not rig.busy_sessions(), 10)


def test_describing_a_statement_over_a_slow_link_stops_no_other_thread(pg: PgInstance) -> None:
    """Every round trip to the server takes over a second; describing a new statement
    (its columns asked for before it runs) must wait for its answer without holding the
    interpreter: psycopg's blocking describe call does, and every other thread of the
    gateway (the event loop among them) stood still for the whole round trip."""
    ticks: list[float] = []
    stop = threading.Event()

    def tick() -> None:
        while not stop.is_set():
            ticks.append(time.monotonic())
            time.sleep(0.02)

    with TcpProxy(pg.port) as proxy:
        connector = PostgresConnector(
            ConnectorConfig(
                {
                    "host": "127.0.0.1",
                    "port": proxy.port,
                    "database": "postgres",
                    "user": pg.user,
                    "pool_min": 1,
                    "pool_max": 1,
                },
                password=pg.password,
            )
        )
        ticker = threading.Thread(target=tick, daemon=True)
        try:
            connector._get_pool().wait(timeout=10)
            proxy.lag(0.6)
            ticker.start()
            # A text never described on this connector: its columns are asked for first.
            handle = connector.execute("SELECT 41 AS described_now", (), timeout=60)
            assert handle.reader.read_all().column(0).to_pylist() == [41]
            handle.close()
        finally:
            stop.set()
            proxy.lag(0)
            connector.close()
        ticker.join(timeout=10)
    gaps = [b - a for a, b in itertools.pairwise(ticks)]
    assert max(gaps) < 0.5, f"another thread stood still for {max(gaps):.1f}s"


# -- SIGTERM with a stuck source ----------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _fabric(env: dict[str, str], *args: str, stdin: str = "") -> None:
    done = subprocess.run(
        [sys.executable, "-m", "fabric.cli", *args, "--local"],
        env=env,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr


def _port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def test_sigterm_with_a_stuck_source_closes_the_port_and_exits_in_bounded_time(
    pg: PgInstance, tmp_path: Path
) -> None:
    grace = 2.0
    port = _free_port()
    env = {
        **os.environ,
        "FABRIC_HOME": str(tmp_path),
        "FABRIC_LISTEN": f"127.0.0.1:{port}",
        "FABRIC_METRICS_PORT": "0",
        "FABRIC_AUTH": "none",
        "FABRIC_SHUTDOWN_GRACE": str(grace),
    }
    with TcpProxy(pg.port) as proxy:
        _fabric(
            env,
            "connection", "create", "pg", "--kind", "postgres", "--password-stdin",
            "--set", "host=127.0.0.1", "--set", f"port={proxy.port}",
            "--set", "database=postgres", "--set", f"user={pg.user}",
            "--set", f"application_name={SIGTERM_APP}",
            stdin=pg.password + "\n",
        )  # fmt: skip
        _fabric(env, "catalog", "select", "pg", "public.slow_items")
        log = tmp_path / "serve.log"
        with open(log, "w") as out:
            server = subprocess.Popen(
                [sys.executable, "-m", "fabric.cli", "serve"],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        try:
            with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
                grpc.channel_ready_future(channel).result(timeout=60)
            with FabricClient(f"127.0.0.1:{port}", timeout=120) as client:
                outcomes: queue.Queue[object] = queue.Queue()
                caller = threading.Thread(
                    target=lambda: outcomes.put(call(lambda: client.execute("pg", SLOW))),
                    daemon=True,
                )
                caller.start()
                # the query runs at the server; then the network to it stops
                try:
                    wait_for(lambda: _running_at_source(pg) or not outcomes.empty(), 30)
                except AssertionError:
                    with psycopg.connect(pg.url(), autocommit=True) as conn:
                        rows = conn.execute(
                            "SELECT application_name, state, query FROM pg_stat_activity"
                        ).fetchall()
                    raise AssertionError(f"{rows} {log.read_text()[-3000:]}") from None
                assert outcomes.empty(), outcomes.get()
                proxy.pause()
                stopped_at = time.monotonic()
                server.send_signal(signal.SIGTERM)
                wait_for(lambda: not _port_open(port), grace + 10)
                port_closed = time.monotonic() - stopped_at
                try:
                    code = server.wait(timeout=grace + 40)
                except subprocess.TimeoutExpired:
                    pytest.fail(f"still running after SIGTERM: {log.read_text()[-2000:]}")
                exited = time.monotonic() - stopped_at
            caller.join(timeout=30)
        finally:
            proxy.resume()
            if server.poll() is None:
                server.kill()
                server.wait(timeout=10)
    # The port closed once the grace was over; the process left soon after, although
    # a driver thread was still waiting on the frozen source.
    print(f"port closed after {port_closed:.1f}s, exited after {exited:.1f}s, code {code}")
    assert port_closed >= grace - 0.5
    assert exited < grace + 30, (exited, log.read_text()[-2000:])
    assert code in (0, 1), log.read_text()[-2000:]


def _running_at_source(instance: PgInstance) -> bool:
    """Whether the served gateway's slow query runs at the server (read directly)."""
    with psycopg.connect(instance.url(), autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s "
            "AND state = 'active' AND query LIKE %s",
            [SIGTERM_APP, "%slow_items%"],
        ).fetchone()
    return bool(row and row[0])
