"""Memory is bounded by the gateway's budget, not by how many callers read at once: a real
`fabric serve` process over a real PostgreSQL, 16 callers reading 47 MiB results at
once (each its own, cacheable, so results are built for a 64 MiB cache and evicted while
other callers still send them), the process's RSS read from /proc.

The bound, with B = FABRIC_MEMORY_BUDGET and C = FABRIC_CACHE_MAX_BYTES:

    peak RSS           <= RSS before the load + B + SLACK
    RSS once idle      <= RSS before the load + C + SLACK   (within IDLE_WITHIN seconds)

SLACK is what the budget does not count: the interpreter's and gRPC's own buffers and
the allocator's slack. Measured on a 2-core machine: a peak of RSS before + 320 to 365
MiB and an idle RSS of RSS before + 75 to 90 MiB (a 47 MiB result cached); before the
budget, the same load peaked at RSS before + 1.55 GiB and idled at + 1.4 GiB.
"""

from __future__ import annotations

import os
import re
import secrets
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest

from fabric.app.parts import catalog_manager
from fabric.catalog.metadata.sqlite import SqliteMetadataStore
from fabric.client import FabricClient
from fabric.context import DEFAULT_STAGE, DEFAULT_TENANT

pytestmark = [
    pytest.mark.postgres,
    pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="RSS is read from /proc"),
]

MIB = 1 << 20
ROWS = 400_000
"""Rows of the table: a result of 47 MiB in Arrow."""
CALLERS = 16
BUDGET = 512 * MIB
CACHE = 64 * MIB
SLACK = 64 * MIB
IDLE_WITHIN = 10.0
SQL = "SELECT * FROM wide WHERE id > :skip"


@pytest.fixture(scope="module")
def wide_table(postgres_url: str) -> Iterator[str]:
    name = f"fabric_mem_{secrets.token_hex(4)}"
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(
            f"CREATE TABLE {name} (id bigint PRIMARY KEY, a bigint, b double precision, "
            "payload text)"
        )
        conn.execute(
            f"INSERT INTO {name} SELECT i, i * 7, i / 3.0, repeat(md5(i::text), 3) "
            f"FROM generate_series(1, {ROWS}) i"
        )
    try:
        yield name
    finally:
        with psycopg.connect(postgres_url, autocommit=True) as conn:
            conn.execute(f"DROP TABLE {name}")


@dataclass
class Served:
    process: subprocess.Popen[str]
    address: str

    def status(self, field: str) -> int:
        """A /proc/<pid>/status figure, in bytes (VmRSS: now; VmHWM: the peak so far)."""
        text = Path(f"/proc/{self.process.pid}/status").read_text()
        found = re.search(rf"^{field}:\s+(\d+) kB", text, re.MULTILINE)
        assert found is not None, f"no {field} in /proc status"
        return int(found.group(1)) * 1024


def _ready_line(process: subprocess.Popen[str], within: float) -> str:
    """The process's first line of output, or a failure after `within` seconds."""
    lines: list[str] = []
    reader = threading.Thread(
        target=lambda: lines.append(process.stdout.readline() if process.stdout else ""),
        daemon=True,
    )
    reader.start()
    reader.join(within)
    assert lines and lines[0], "fabric serve did not say it was serving"
    return lines[0]


@pytest.fixture
def served(tmp_path: Path, postgres_url: str, wide_table: str) -> Iterator[Served]:
    info = psycopg.conninfo.conninfo_to_dict(postgres_url)
    home = tmp_path / "home"
    home.mkdir()
    store = SqliteMetadataStore(home / "metadata.sqlite")
    manager = catalog_manager(store)
    manager.create_connection(
        DEFAULT_TENANT,
        "pg",
        "postgres",
        {
            "*": {
                "host": str(info.get("host") or "127.0.0.1"),
                "port": int(info.get("port") or 5432),
                "database": str(info["dbname"]),
                "user": str(info.get("user") or "postgres"),
                "pool_max": CALLERS + 4,
            }
        },
    )
    manager.select(DEFAULT_TENANT, "pg", DEFAULT_STAGE, f"public.{wide_table}", entity_name="wide")
    store.close()
    environment = {
        **os.environ,
        "FABRIC_HOME": str(home),
        "FABRIC_AUTH": "none",
        "FABRIC_METRICS_PORT": "0",
        "FABRIC_CACHE_MAX_BYTES": str(CACHE),
        "FABRIC_MEMORY_BUDGET": str(BUDGET),
        # Memory, not the caller's share, is what holds the callers back here.
        "FABRIC_PRINCIPAL_MAX_QUERIES": str(CALLERS),
        "FABRIC_ADMISSION_WAIT": "60",
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "fabric.cli", "serve", "--listen", "127.0.0.1:0"],
        env=environment,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        found = re.search(r"port (\d+)", _ready_line(process, 60))
        assert found is not None
        yield Served(process, f"127.0.0.1:{found.group(1)}")
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)
        if process.stdout is not None:
            process.stdout.close()


def _read(address: str, skip: int) -> int:
    """Rows of one whole result, read batch by batch (the caller keeps none of them)."""
    with FabricClient(address, timeout=120) as client:
        return sum(
            batch.num_rows
            for batch in client.query_batches("pg", SQL, {"skip": skip}, cache_ttl=60)
        )


def test_sixteen_callers_of_large_results_stay_within_the_memory_budget(
    served: Served,
) -> None:
    # Warm up (the modules, the pool, the statement) on a small result first.
    with FabricClient(served.address, timeout=60) as client:
        assert client.query("pg", SQL, {"skip": ROWS - 10}).num_rows == 10
    before = served.status("VmRSS")
    with ThreadPoolExecutor(CALLERS) as pool:
        rows = list(pool.map(lambda skip: _read(served.address, skip), range(CALLERS)))
    assert rows == [ROWS - skip for skip in range(CALLERS)]  # every result whole
    peak = served.status("VmHWM")
    assert peak <= before + BUDGET + SLACK, (
        f"peak RSS {peak / MIB:.0f} MiB: over {before / MIB:.0f} MiB before the load "
        f"+ the {BUDGET / MIB:.0f} MiB budget + {SLACK / MIB:.0f} MiB"
    )
    idle_bound = before + CACHE + SLACK
    deadline = time.monotonic() + IDLE_WITHIN
    while (idle := served.status("VmRSS")) > idle_bound:
        assert time.monotonic() < deadline, (
            f"RSS {idle / MIB:.0f} MiB {IDLE_WITHIN:g}s after the load: over "
            f"{before / MIB:.0f} MiB before + the {CACHE / MIB:.0f} MiB cache "
            f"+ {SLACK / MIB:.0f} MiB"
        )
        time.sleep(0.1)  # polling with a deadline
    print(
        f"RSS before {before / MIB:.0f} MiB, peak {peak / MIB:.0f} MiB, "
        f"idle {idle / MIB:.0f} MiB (budget {BUDGET / MIB:.0f} MiB, cache {CACHE / MIB:.0f} MiB)"
    )
