"""The `fabric` command as a user runs it: separate processes, real gRPC, real files."""

from __future__ import annotations

import getpass
import json
import os
import signal
import socket
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import duckdb
import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from fabric.client import FabricClient
from fabric.demo_data import create_demo_database
from fabric.errors import SelectionChanged
from fabric.v1 import query_pb2, query_pb2_grpc

FABRIC = [sys.executable, "-m", "fabric.cli"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _env(home: Path, port: int, metrics_port: int) -> dict[str, str]:
    return {
        **os.environ,
        "FABRIC_HOME": str(home),
        "FABRIC_LISTEN": f"127.0.0.1:{port}",
        "FABRIC_METRICS_PORT": str(metrics_port),
    }


def _run(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*FABRIC, *args], env=env, capture_output=True, text=True, timeout=120)


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[dict[str, str], int, int]]:
    port, metrics_port = _free_port(), _free_port()
    env = _env(tmp_path, port, metrics_port)
    database = tmp_path / "retail.duckdb"
    create_demo_database(database)
    steps = [
        ("connection", "create", "retail", "--kind", "duckdb", "--set", f"path={database}"),
        ("catalog", "select", "retail", "orders"),
        ("catalog", "select", "retail", "customers", "--columns", "name,segment"),
    ]
    for step in steps:
        done = _run(env, *step, "--local")  # before the gateway runs
        assert done.returncode == 0, done.stderr
    with (
        open(tmp_path / "serve.log", "w") as log,
        subprocess.Popen(
            [*FABRIC, "serve"], env=env, stdout=log, stderr=subprocess.STDOUT
        ) as server,
    ):
        try:
            with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
                grpc.channel_ready_future(channel).result(timeout=30)
                health = health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(service="fabric.v1.QueryService"), timeout=10
                )
                assert health.status == health_pb2.HealthCheckResponse.SERVING
            yield env, port, metrics_port
        finally:
            server.send_signal(signal.SIGTERM)
            try:
                assert server.wait(timeout=30) == 0, (tmp_path / "serve.log").read_text()
            finally:
                if server.poll() is None:
                    server.kill()
                    server.wait(timeout=10)


def test_cli_registers_selects_serves_and_queries(served: tuple[dict[str, str], int, int]) -> None:
    env, _port, metrics_port = served
    listed = _run(env, "catalog", "list", "retail")
    assert listed.returncode == 0
    assert (
        "customers = main.customers key(id): id INTEGER, name VARCHAR, segment VARCHAR"
        in listed.stdout
    )

    query = _run(
        env,
        "query",
        "retail",
        "SELECT status, COUNT(*) AS n FROM orders WHERE order_date >= :since "
        "GROUP BY status ORDER BY status",
        "-p",
        "since:date=2024-01-01",
        "--format",
        "jsonl",
        "--cache-ttl",
        "30",
    )
    assert query.returncode == 0, query.stderr
    rows = [json.loads(line) for line in query.stdout.splitlines()]
    expected = (
        duckdb.connect(str(Path(env["FABRIC_HOME"]) / "retail.duckdb"), read_only=True)
        .sql(
            "SELECT status, COUNT(*) AS n FROM orders WHERE order_date >= DATE '2024-01-01' "
            "GROUP BY status ORDER BY status"
        )
        .fetchall()
    )
    assert [(r["status"], r["n"]) for r in rows] == expected
    assert "rows" in query.stderr

    again = _run(
        env,
        "query",
        "retail",
        "SELECT status, COUNT(*) AS n FROM orders WHERE order_date >= :since "
        "GROUP BY status ORDER BY status",
        "-p",
        "since:date=2024-01-01",
        "--format",
        "csv",
        "--cache-ttl",
        "30",
    )
    assert again.returncode == 0 and "from cache" in again.stderr
    assert again.stdout.splitlines()[0] == "status,n"
    as_array = _run(
        env,
        "query",
        "retail",
        "SELECT status, COUNT(*) AS n FROM orders WHERE order_date >= :since "
        "GROUP BY status ORDER BY status",
        "-p",
        "since:date=2024-01-01",
        "--format",
        "json",
        "--cache-ttl",
        "30",
    )
    assert as_array.returncode == 0, as_array.stderr
    assert json.loads(as_array.stdout) == rows

    preview = _run(env, "preview", "retail", "customers", "--limit", "3")
    assert preview.returncode == 0 and len(preview.stdout.splitlines()) == 5  # header, rule, 3

    rejected = _run(env, "query", "retail", "SELECT email FROM customers")
    assert rejected.returncode == 2
    assert "query_rejected" in rejected.stderr and "email" in rejected.stderr

    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10) as r:
        metrics = r.read().decode()
    assert 'fabric_queries_total{method="execute",outcome="ok",protocol="grpc"} 4.0' in metrics
    assert "fabric_result_cache_hits_total 2.0" in metrics


def test_reflection_lists_the_services(served: tuple[dict[str, str], int, int]) -> None:
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    _, port, _ = served
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        responses = stub.ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=10
        )
        names = {s.name for r in responses for s in r.list_services_response.service}
    assert {"fabric.v1.QueryService", "grpc.health.v1.Health"} <= names


def test_demo_runs_and_serves_the_second_query_from_memory(tmp_path: Path) -> None:
    done = subprocess.run(
        [*FABRIC, "demo"],
        env={**os.environ, "FABRIC_HOME": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert "second run: served from memory" in done.stdout
    assert "identical: True" in done.stdout
    assert "rejected before reaching the database (query_rejected)" in done.stdout
    # The demo serves Flight SQL too and queries it through the ADBC driver.
    assert "(Arrow Flight SQL)" in done.stdout
    assert "small_business |" in done.stdout.split("through Arrow Flight SQL", 1)[1]


def test_clients_leaving_after_the_result_leave_the_gateway_quiet(
    served: tuple[dict[str, str], int, int], tmp_path: Path
) -> None:
    """A client that stops reading once it has the result (before the call's status)
    cancels the call. The gateway ends such calls quietly: no error or traceback in its
    log (the identity's clean-up once failed there, on every such call), and it keeps
    answering."""
    env, port, _ = served
    minted = _run(env, "token", "--role", "app")
    assert minted.returncode == 0, minted.stderr
    metadata = (("authorization", f"Bearer {minted.stdout.strip()}"),)
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = query_pb2_grpc.QueryServiceStub(channel)
        for _ in range(20):
            call = stub.Execute(
                query_pb2.ExecuteRequest(
                    connection="retail", sql="SELECT COUNT(*) AS n FROM orders"
                ),
                metadata=metadata,
                timeout=10,
            )
            while not next(call).HasField("summary"):
                pass
            call.cancel()
    again = _run(env, "query", "retail", "SELECT COUNT(*) AS n FROM orders")
    assert again.returncode == 0, again.stderr
    log = (tmp_path / "serve.log").read_text()
    assert "Traceback" not in log and "ERROR" not in log, log[-2000:]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["token", "--ttl", "31536000"], "ttl must be at most"),
        (["--tenant", "no tenant", "token"], "tenant is empty or has characters"),
    ],
)
def test_a_token_that_cannot_be_minted_is_a_clear_error_not_a_traceback(
    tmp_path: Path, args: list[str], message: str
) -> None:
    done = subprocess.run(
        [*FABRIC, *args],
        env={**os.environ, "FABRIC_HOME": str(tmp_path), "FABRIC_AUTH": "local"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode != 0
    assert message in done.stderr
    assert "Traceback" not in done.stderr
    assert done.stdout == ""


def test_cli_changes_reach_running_statements_and_name_their_actor(
    served: tuple[dict[str, str], int, int],
) -> None:
    """The CLI writes the metadata store directly (no event reaches the gateway): a
    statement opened before a CLI change that narrows what it reads is stopped at its next
    page all the same; one the change leaves allowed goes on. The audit trail names the
    operating system account behind each CLI change."""
    env, port, _ = served
    minted = _run(env, "token", "--role", "app")
    assert minted.returncode == 0, minted.stderr
    with FabricClient(f"127.0.0.1:{port}", minted.stdout.strip(), timeout=30) as app:
        segments = app.open_statement(
            "retail", "SELECT id, segment FROM customers ORDER BY id", page_rows=10
        )
        statuses = app.open_statement(
            "retail", "SELECT id, status FROM orders ORDER BY id", page_rows=10
        )
        assert segments.fetch() is not None and statuses.fetch() is not None

        narrowed = _run(env, "catalog", "select", "retail", "customers", "--columns", "name")
        assert narrowed.returncode == 0, narrowed.stderr
        with pytest.raises(SelectionChanged, match=r"column 'customers\.segment'"):
            segments.fetch()
        page = statuses.fetch()
        assert page is not None and page.num_rows == 10

        unselected = _run(env, "catalog", "unselect", "retail", "orders")
        assert unselected.returncode == 0, unselected.stderr
        with pytest.raises(SelectionChanged, match="entity 'orders' is no longer selected"):
            statuses.fetch()

    audit = _run(env, "audit", "list", "--connection", "retail")
    assert audit.returncode == 0, audit.stderr
    actors = {line.split("\t")[2]: line.split("\t")[1] for line in audit.stdout.splitlines()}
    me = f"local:{getpass.getuser()}"  # the subject of the token the CLI minted
    assert actors["catalog.unselect"] == actors["catalog.select"] == me
    assert actors["connection.create"] == me


def test_query_takes_several_addresses_and_skips_one_that_is_gone(
    served: tuple[dict[str, str], int, int],
) -> None:
    env, port, _metrics_port = served
    gone = _free_port()  # nothing listens there
    addresses = f"127.0.0.1:{gone},127.0.0.1:{port}"
    for _ in range(4):  # each run starts on either address; every one is answered
        done = _run(
            env,
            "query",
            "retail",
            "SELECT COUNT(*) AS n FROM orders",
            "--address",
            addresses,
            "--format",
            "json",
        )
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout)[0]["n"] > 0
