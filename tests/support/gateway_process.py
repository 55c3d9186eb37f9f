"""A `fabric serve` subprocess, for tests that watch the gateway as a process: its
memory as the kernel counts it (/proc), killed when the context ends whatever happens."""

from __future__ import annotations

import os
import queue
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def rss_bytes(pid: int) -> int:
    """The resident set size of process `pid`, in bytes (VmRSS of /proc/<pid>/status)."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


@dataclass
class GatewayProcess:
    process: subprocess.Popen[str]
    address: str

    @property
    def pid(self) -> int:
        return self.process.pid

    def rss(self) -> int:
        return rss_bytes(self.pid)

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)


@contextmanager
def gateway_process(
    home: Path, environment: Mapping[str, str], log: Path, timeout: float = 60.0
) -> Iterator[GatewayProcess]:
    """`fabric serve` (both planes, one process) on a free loopback port with FABRIC_HOME
    `home` and the extra `environment`; yields once it says it is serving."""
    port = free_port()
    env = {
        **os.environ,
        "FABRIC_HOME": str(home),
        "FABRIC_LISTEN": f"127.0.0.1:{port}",
        "FABRIC_METRICS_PORT": "0",
        **environment,
    }
    with open(log, "w") as errors:
        process = subprocess.Popen(
            [sys.executable, "-m", "fabric.cli", "serve"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=errors,
            text=True,
        )
        lines: queue.Queue[str] = queue.Queue()

        def read() -> None:
            assert process.stdout is not None
            for line in process.stdout:
                lines.put(line)

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        gateway = GatewayProcess(process, f"127.0.0.1:{port}")
        try:
            deadline = time.monotonic() + timeout
            while True:
                if time.monotonic() > deadline or process.poll() is not None:
                    pytest.fail(f"the gateway did not start: {log.read_text()}")
                try:
                    if " serving " in lines.get(timeout=0.2):
                        break
                except queue.Empty:
                    continue
            yield gateway
        finally:
            gateway.kill()
            reader.join(timeout=10)
            if process.stdout is not None:
                process.stdout.close()
