"""SIGTERM to `fabric serve` under load: the queries running at the source finish, new
calls are refused with UNAVAILABLE (retry elsewhere), the port closes and the process
exits 0 within the grace period and a short bound; never a short result reported
complete. Calls that reach the server in the very instant its gRPC server stops (after
the last running query ended) are cancelled by gRPC itself, before the gateway sees
them: those come back CANCELLED, in milliseconds, with no work begun. (With a source
that stopped answering: tests/integration/test_source_faults.py.)"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import grpc
import psycopg
import pytest

from fabric.client import FabricClient, QueryResult
from tests.chaos.conftest import Record
from tests.support.chaos import LONG, Load, codes, scaled, wait_for
from tests.support.pg_instance import PgInstance

pytestmark = [pytest.mark.postgres, pytest.mark.timeout(900 if LONG else 120)]

APP = "fabric-chaos-sigterm"
SLOW = "SELECT count(*) AS n FROM slow_items WHERE id <= :n"
ROWS = 1500  # about 0.75 s at the source


def _port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def _running(instance: PgInstance) -> int:
    with psycopg.connect(instance.url(), autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s "
            "AND state = 'active'",
            [APP],
        ).fetchone()
    return int(row[0]) if row else 0


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


def test_sigterm_under_load(items_postgres: PgInstance, tmp_path: Path, record: Record) -> None:
    clients, grace = int(scaled(4, 16)), 3.0
    port = tmp_port()
    env = {
        **os.environ,
        "FABRIC_HOME": str(tmp_path),
        "FABRIC_LISTEN": f"127.0.0.1:{port}",
        "FABRIC_METRICS_PORT": "0",
        "FABRIC_AUTH": "none",
        "FABRIC_SHUTDOWN_GRACE": str(grace),
        # a connection for every client: none held back for short queries, so no call
        # waits for admission when the signal comes
        "FABRIC_SHORT_QUERY_RESERVE": "0",
    }
    env.pop("FABRIC_NATS_URL", None)
    pg = items_postgres
    _fabric(
        env,
        "connection", "create", "pg", "--kind", "postgres", "--password-stdin",
        "--set", "host=127.0.0.1", "--set", f"port={pg.port}",
        "--set", "database=postgres", "--set", f"user={pg.user}",
        "--set", f"application_name={APP}", "--set", f"pool_max={clients}",
        stdin=pg.password + "\n",
    )  # fmt: skip
    _fabric(env, "catalog", "select", "pg", "public.slow_items")

    def slow(client: FabricClient, index: int) -> QueryResult:
        return client.execute("pg", SLOW, {"n": ROWS})

    log = tmp_path / "serve.log"
    with open(log, "w") as out:
        server = subprocess.Popen(
            [sys.executable, "-m", "fabric.cli", "serve"], env=env, stdout=out, stderr=out
        )
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            grpc.channel_ready_future(channel).result(timeout=60)
        load = Load(f"127.0.0.1:{port}", clients, slow, timeout=30).start()
        try:
            wait_for(lambda: len(load.outcomes) >= scaled(clients, 10 * clients), 120)
            wait_for(lambda: _running(pg) >= 1, 30)
            stopped_at = time.monotonic()
            server.send_signal(signal.SIGTERM)
            code = server.wait(timeout=grace + 30)
            exited = time.monotonic() - stopped_at
            wait_for(lambda: bool(load.since(stopped_at + exited)), 30)
        finally:
            load.stop()
    finally:
        if server.poll() is None:
            server.kill()
            server.wait(timeout=10)
    in_flight = [o for o in load.outcomes if o.started < stopped_at < o.ended]
    refused = [o for o in load.outcomes if o.code == "UNAVAILABLE"]
    cancelled = [o for o in load.outcomes if o.code == "CANCELLED"]
    record(
        scenario="SIGTERM under load",
        load=f"{clients} clients, queries of about 0.75 s",
        fault=f"SIGTERM, grace {grace:g} s",
        callers=codes(load.outcomes),
        recovery_s=None,
        note=(
            f"exit {code} after {exited:.1f} s; the {codes(in_flight)['OK']} queries "
            "running at the signal finished OK"
            + ("; CANCELLED: arrived as the gRPC server stopped" if cancelled else "")
        ),
    )
    assert code == 0, log.read_text()[-2000:]
    assert exited < grace + 5.0
    assert not _port_open(port)
    assert set(codes(load.outcomes)) <= {"OK", "UNAVAILABLE", "CANCELLED"}, codes(load.outcomes)
    # CANCELLED comes from gRPC itself, for calls that reach the server in the instant it
    # stops (after the last running query ended): never one that had started work
    assert all(o.started > stopped_at and o.seconds < 0.5 for o in cancelled), cancelled
    assert all(o.complete and o.rows == 1 for o in load.outcomes if o.code == "OK")
    # the query running at the source when the signal came was let finish; a call that
    # was still on its way was refused at once (retry elsewhere), never cut off
    assert codes(in_flight)["OK"] >= 1, codes(in_flight)
    assert all(o.seconds < 0.5 for o in in_flight + refused if o.code != "OK"), [
        o for o in in_flight + refused if o.code != "OK"
    ]
    wait_for(lambda: _running(pg) == 0, 15)


def tmp_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
