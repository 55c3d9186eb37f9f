"""What an operator runs: `fabric serve --check` before starting a process, and a metrics
endpoint Prometheus can scrape on a non-loopback-only address."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

from fabric.api.auth import local_admin_context
from fabric.api.background import BackgroundGateway
from fabric.app.gateway import assemble_gateway
from fabric.catalog.metadata.sqlite import SqliteMetadataStore
from fabric.config import Settings
from fabric.query.engine import QueryEngine
from tests.support.nats import nats_url

FABRIC = [sys.executable, "-m", "fabric.cli"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _check(home: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("FABRIC_")}
    environ.update({"FABRIC_HOME": str(home), **env})
    return subprocess.run(
        [*FABRIC, "serve", *args, "--check"],
        env=environ,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_serve_check_passes_when_everything_is_reachable(tmp_path: Path) -> None:
    done = _check(tmp_path, "--role", "platform", FABRIC_NATS_URL=nats_url())
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    for name in ("listen address", "metadata store", "secret store", "key management", "NATS"):
        assert any(line.startswith("ok") and name in line for line in lines), done.stdout
    assert lines[-1] == "ready to serve"
    assert "JetStream ready" in done.stdout


def test_serve_check_names_what_is_unreachable_and_fails(tmp_path: Path) -> None:
    closed = _free_port()  # nothing listens there
    done = _check(
        tmp_path,
        "--role",
        "runtime",
        "--stage",
        "development",
        "--listen",
        "0.0.0.0:50051",
        FABRIC_NATS_URL=f"nats://fabric:pa55word@127.0.0.1:{closed}",
        FABRIC_BUS_CONNECT_TIMEOUT="1",
    )
    assert done.returncode == 1
    lines = done.stdout.splitlines()
    failed = [line for line in lines if line.startswith("FAIL")]
    assert any("NATS" in line and f"127.0.0.1:{closed}" in line for line in failed), lines
    assert any("listen address" in line and "without TLS" in line for line in failed), lines
    assert any(line.startswith("ok") and "metadata store" in line for line in lines)
    assert lines[-1] == "not ready: listen address, NATS"
    assert "pa55word" not in done.stdout + done.stderr
    assert "Traceback" not in done.stderr


def test_prometheus_scrapes_metrics_on_a_configured_address(tmp_path: Path) -> None:
    """127.0.0.2 is loopback but not 127.0.0.1: the endpoint follows FABRIC_METRICS_LISTEN."""
    store = SqliteMetadataStore(tmp_path / "metadata.sqlite")
    settings = Settings(home=tmp_path, metrics_listen="127.0.0.2:0")
    engine = QueryEngine(store, settings)
    gateway = BackgroundGateway(
        assemble_gateway(engine, context_provider=local_admin_context), metrics=True
    )
    gateway.start()
    try:
        port = gateway.gateway.metrics_port
        assert port and gateway.gateway.metrics_host == "127.0.0.2"
        with urllib.request.urlopen(f"http://127.0.0.2:{port}/metrics", timeout=10) as reply:
            body = reply.read().decode()
        assert reply.status == 200 and "fabric_" in body
    finally:
        gateway.stop()
        store.close()
