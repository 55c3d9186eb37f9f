"""Canaries: a planted password, parameter value and row value go through success,
rejection, source error, timeout and cancellation, with logging at DEBUG and tracing on;
none of them may turn up in a log line (the access log's included), a span, a metric, the
metadata store or any file the gateway wrote."""

from __future__ import annotations

import base64
import io
import json
import logging
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import psycopg
import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import generate_latest

from fabric.api.background import BackgroundGateway
from fabric.app.gateway import configured_gateway
from fabric.app.parts import local_token, open_secret_store, open_store
from fabric.client import FabricClient
from fabric.config import Settings
from fabric.errors import DeadlineExceeded, FailedPrecondition, QueryRejected, SourceQueryError
from fabric.observability import tracing
from fabric.observability.logging import JsonFormatter
from tests.support.pg_instance import PgInstance, private_postgres

PASSWORD = "CanaryPassword-91b2"
PARAM = "CanaryParam-5e7d"
ROW = "CanaryRow-c3f0"
CANARIES = (PASSWORD, PARAM, ROW)
SERVER_TEXT = "CanaryServerText-7a41"
"""A database name that does not exist: the server's FATAL text names it, and a library
(psycopg_pool) logs that text. It is a setting, so the metadata store holds it; no log
line and no error message may."""


def _forms(value: str) -> list[bytes]:
    raw = value.encode()
    return [raw, base64.b64encode(raw), raw.hex().encode(), value.encode("utf-16-le")]


def _leaks(blob: bytes) -> list[str]:
    return [c for c in CANARIES if any(form in blob for form in _forms(c))]


def _wait_for_active_query(pg: PgInstance, marker: str, within: float = 10.0) -> bool:
    deadline = time.monotonic() + within
    with psycopg.connect(pg.url(), autocommit=True) as conn:
        while time.monotonic() < deadline:
            row = conn.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' "
                "AND query LIKE %s AND pid <> pg_backend_pid()",
                [f"%{marker}%"],
            ).fetchone()
            if row and row[0]:
                return True
            time.sleep(0.02)  # polling with a deadline
    return False


@pytest.fixture(scope="module")
def pg() -> Iterator[PgInstance]:
    with private_postgres(PASSWORD) as instance:
        with psycopg.connect(instance.url(), autocommit=True) as conn:
            conn.execute("CREATE TABLE people (id int PRIMARY KEY, name text, code text)")
            conn.execute(
                "INSERT INTO people SELECT i, CASE WHEN i = 7 THEN %s ELSE 'p' || i "
                "END, i::text FROM generate_series(1, 2000) i",
                [ROW],
            )
        yield instance


def test_canaries_never_leave_memory(pg: PgInstance, tmp_path: Path) -> None:
    home = tmp_path / "home"
    env = {**os.environ, "FABRIC_HOME": str(home)}
    created = subprocess.run(
        [
            sys.executable,
            "-m",
            "fabric.cli",
            "--verbose",
            "connection",
            "create",
            "crm",
            "--kind",
            "postgres",
            "--set",
            "host=127.0.0.1",
            "--set",
            f"port={pg.port}",
            "--set",
            "database=postgres",
            "--set",
            f"user={pg.user}",
            "--password-stdin",
            "--local",
        ],
        input=PASSWORD + "\n",
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert created.returncode == 0, created.stderr
    selected = subprocess.run(
        [
            sys.executable,
            "-m",
            "fabric.cli",
            "--verbose",
            "catalog",
            "select",
            "crm",
            "public.people",
            "--local",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert selected.returncode == 0, selected.stderr
    missing = subprocess.run(
        [
            sys.executable,
            "-m",
            "fabric.cli",
            "--verbose",
            "connection",
            "create",
            "crm_missing",
            "--kind",
            "postgres",
            "--set",
            "host=127.0.0.1",
            "--set",
            f"port={pg.port}",
            "--set",
            f"database={SERVER_TEXT}",
            "--set",
            f"user={pg.user}",
            "--password-stdin",
            "--no-verify",
            "--local",
        ],
        input=PASSWORD + "\n",
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert missing.returncode == 0, missing.stderr

    sink = io.StringIO()
    handler = logging.StreamHandler(sink)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    previous_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    settings = Settings(home=home, metrics_port=0, log_level="debug")
    store, secrets = open_store(settings), open_secret_store(settings)
    # Every span too (recorded in memory), for every path below.
    spans = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(spans))
    tracing.install(provider)
    try:
        gateway = configured_gateway(settings, store, secrets=secrets.get)
        with BackgroundGateway(gateway) as background:
            token = local_token(settings)
            with FabricClient(background.address, token, timeout=30) as client:
                # success: the row canary comes back to the caller, and only to the caller
                found = client.query(
                    "crm",
                    "SELECT name FROM people WHERE name = :n OR code = :c",
                    {"n": ROW, "c": PARAM},
                    cache_ttl=30,
                )
                assert found.column("name").to_pylist() == [ROW]
                # rejection, with the canary as a literal and as a parameter
                with pytest.raises(QueryRejected):
                    client.query(
                        "crm", f"SELECT secret FROM people WHERE name = '{PARAM}'", {"p": PARAM}
                    )
                # source error whose database text would echo the value
                with pytest.raises(SourceQueryError) as bad_cast:
                    client.query(
                        "crm",
                        "SELECT CAST(name AS integer) AS n FROM people WHERE name = :n",
                        {"n": ROW},
                    )
                assert not _leaks(str(bad_cast.value).encode())
                # a source whose server names the missing database in its FATAL text,
                # which psycopg_pool logs: the log line is redacted, the error value-free
                with pytest.raises(FailedPrecondition) as missing_db:
                    client.query("crm_missing", "SELECT 1 AS one")
                assert SERVER_TEXT not in str(missing_db.value)
                assert "no database by the name" in str(missing_db.value)
                deadline = time.monotonic() + 10
                while "error connecting in" not in sink.getvalue():
                    assert time.monotonic() < deadline, "psycopg_pool's record never came"
                    time.sleep(0.02)  # polling with a deadline
            # timeout
            slow = (
                "SELECT COUNT(*) AS n FROM people a CROSS JOIN people b CROSS JOIN "
                "people c WHERE a.name <> :n"
            )
            with (
                FabricClient(background.address, token, timeout=1.0) as hurried,
                pytest.raises(DeadlineExceeded),
            ):
                hurried.query("crm", slow, {"n": PARAM})
            # cancellation
            from fabric.v1 import query_pb2 as pb
            from fabric.v1 import query_pb2_grpc as pb_grpc

            with grpc.insecure_channel(background.address) as channel:
                call = pb_grpc.QueryServiceStub(channel).Execute(
                    pb.ExecuteRequest(
                        connection="crm", sql=slow, params={"n": pb.Value(string_value=PARAM)}
                    ),
                    metadata=[("authorization", f"Bearer {token}")],
                )
                done = threading.Event()

                def consume() -> None:
                    try:
                        for _ in call:
                            pass
                    except grpc.RpcError:
                        pass
                    finally:
                        done.set()

                threading.Thread(target=consume, daemon=True).start()
                assert _wait_for_active_query(pg, "CROSS JOIN")
                call.cancel()
                assert done.wait(timeout=10)
            metrics = generate_latest(gateway.engine.metrics.registry)
    finally:
        tracing.install(None)
        provider.shutdown()
        root.removeHandler(handler)
        root.setLevel(previous_level)
        store.close()

    recorded = spans.get_finished_spans()
    assert {"fabric.call", "fabric.query", "fabric.source"} <= {s.name for s in recorded}
    for span in recorded:
        said = [span.name, str(span.status.description or "")]
        said += [f"{k}={v}" for k, v in (span.attributes or {}).items()]
        said += [e.name for e in span.events]
        assert _leaks("\n".join(said).encode()) == [], span.name

    assert _leaks(metrics) == []
    log_text = sink.getvalue()
    assert "query failed" in log_text  # the failures were logged...
    for line in log_text.splitlines():
        json.loads(line)  # ...as JSON lines
    assert _leaks(log_text.encode()) == []  # ...without a single canary
    assert SERVER_TEXT not in log_text and "FATAL" not in log_text
    assert (
        _leaks((created.stdout + created.stderr + selected.stdout + selected.stderr).encode()) == []
    )
    assert SERVER_TEXT not in missing.stdout + missing.stderr
    written = [p for p in home.rglob("*") if p.is_file()]
    assert any(p.name == "metadata.sqlite" for p in written)
    leaking = {str(p.relative_to(home)): _leaks(p.read_bytes()) for p in written}
    assert {name: found for name, found in leaking.items() if found} == {}
