"""Fabric's side: the gateway as its own process (`fabric serve`), registered through the
public catalog API, with its health, Prometheus metrics and resident memory."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from benchmarks.common import Pg, free_port, rss_bytes

CONNECTION = "tpch"


def pinned(cpus: Sequence[int] | None) -> list[str]:
    """The command prefix that pins a process to `cpus` (nothing when None)."""
    if cpus is None:
        return []
    return ["taskset", "-c", ",".join(str(cpu) for cpu in cpus)]


class FabricHome:
    """A throwaway FABRIC_HOME holding the metadata store with the TPC-H connection."""

    def __init__(self) -> None:
        self._tmp = tempfile.TemporaryDirectory(prefix="fabric-bench-home-")
        self.path = Path(self._tmp.name)

    def register(self, pg: Pg, schema: str) -> list[str]:
        """Create the `tpch` connection and select every table of the schema; returns
        the entity names."""
        from fabric.app.parts import catalog_manager
        from fabric.catalog.metadata.sqlite import SqliteMetadataStore
        from fabric.context import DEFAULT_STAGE, DEFAULT_TENANT

        store = SqliteMetadataStore(self.path / "metadata.sqlite")
        try:
            manager = catalog_manager(store)
            manager.create_connection(
                DEFAULT_TENANT,
                CONNECTION,
                "postgres",
                {
                    "*": {
                        "host": pg.host,
                        "port": pg.port,
                        "database": pg.database,
                        "user": pg.user,
                        "application_name": "fabric-bench",
                    }
                },
            )
            entities = manager.select_all(DEFAULT_TENANT, CONNECTION, DEFAULT_STAGE, [schema])
            return sorted(e.name for e in entities)
        finally:
            store.close()

    def token(self) -> str | None:
        """A bearer token for the benchmark's calls: with FABRIC_AUTH=local (the default)
        one minted with this home's local key (role app, as a runtime app would hold);
        otherwise FABRIC_TOKEN, if set. Call before starting the gateway (the key file is
        created on first use and the gateway reads the same one)."""
        from fabric.config import Settings

        settings = Settings.from_env({**os.environ, "FABRIC_HOME": str(self.path)})
        if settings.auth == "local":
            from fabric.app.parts import local_token

            return local_token(settings, role="app", subject="fabric-bench", ttl=4 * 3600)
        return os.environ.get("FABRIC_TOKEN")

    def cleanup(self) -> None:
        self._tmp.cleanup()


class GatewayProcess:
    """`python -m fabric.cli serve [args]` on a free port, metrics on another; cold start
    is the time from spawning the process to the first SERVING health check. `cpus`
    pins the process (every thread it will start) to those cores, with taskset."""

    def __init__(
        self,
        home: FabricHome,
        pg: Pg,
        *,
        extra_env: dict[str, str] | None = None,
        args: Sequence[str] = (),
        cpus: Sequence[int] | None = None,
    ) -> None:
        self.home = home
        self.pg = pg
        self.extra_env = extra_env or {}
        self.args = list(args)
        self.cpus = cpus
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0
        self.metrics_port = 0
        self.flight_port = 0
        self.cold_start_seconds = float("nan")
        self._log: Any = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def flight_uri(self) -> str:
        """The Flight SQL endpoint the gateway serves next to its gRPC API."""
        return f"grpc://127.0.0.1:{self.flight_port}"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self, timeout: float = 60.0) -> GatewayProcess:
        self.port, self.metrics_port, self.flight_port = free_port(), free_port(), free_port()
        env = self.pg.env()
        env.update(
            {
                "FABRIC_HOME": str(self.home.path),
                "FABRIC_LISTEN": f"127.0.0.1:{self.port}",
                "FABRIC_METRICS_PORT": str(self.metrics_port),
                "FABRIC_FLIGHT_LISTEN": f"127.0.0.1:{self.flight_port}",
                "FABRIC_MAX_ROWS": str(1_000_000_000),
                # lineitem whole (scenario 6) is ~1 GiB of Arrow data, past the default cap.
                "FABRIC_MAX_RESULT_BYTES": str(1 << 40),
                **self.extra_env,
            }
        )
        log_path = self.home.path / f"gateway-{self.port}.log"
        self._log = open(log_path, "wb")  # noqa: SIM115 - closed in stop()
        started = time.perf_counter()
        self.proc = subprocess.Popen(
            [*pinned(self.cpus), sys.executable, "-m", "fabric.cli", "serve", *self.args],
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        try:
            self._wait_healthy(started, timeout)
        except BaseException:
            self.stop()
            raise
        self.cold_start_seconds = time.perf_counter() - started
        return self

    def _wait_healthy(self, started: float, timeout: float) -> None:
        assert self.proc is not None
        with grpc.insecure_channel(self.address) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            while True:
                if self.proc.poll() is not None:
                    raise RuntimeError("the gateway exited during start-up:\n" + self.log_tail())
                try:
                    reply = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=0.5)
                    if reply.status == health_pb2.HealthCheckResponse.SERVING:
                        return
                except grpc.RpcError:
                    pass
                if time.perf_counter() - started > timeout:
                    raise RuntimeError(
                        f"the gateway was not healthy after {timeout:.0f} s:\n" + self.log_tail()
                    )
                time.sleep(0.01)

    def log_tail(self, lines: int = 30) -> str:
        path = self.home.path / f"gateway-{self.port}.log"
        try:
            return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def rss(self) -> int:
        return rss_bytes(self.pid)

    def metrics(self) -> dict[str, float]:
        """The Prometheus exposition, as name{labels} -> value."""
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=10) as response:
            text = response.read().decode()
        values: dict[str, float] = {}
        for line in text.splitlines():
            if not line or line.startswith("#"):
                continue
            match = re.match(r"^(\S+?)(\{.*\})?\s+(\S+)$", line)
            if match:
                with contextlib.suppress(ValueError):
                    values[match.group(1) + (match.group(2) or "")] = float(match.group(3))
        return values

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> GatewayProcess:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def gateway_env_note() -> str:
    return (
        "gateway: `python -m fabric.cli serve` with default settings except "
        "FABRIC_MAX_ROWS=1e9 and FABRIC_MAX_RESULT_BYTES=1 TiB (so the 6 M-row scenario is "
        "not truncated); "
        f"pid-isolated, {os.cpu_count()} cores shared with the client"
    )
