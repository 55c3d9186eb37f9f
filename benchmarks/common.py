"""Shared pieces: where PostgreSQL is, statistics, free ports, machine facts."""

from __future__ import annotations

import datetime as dt
import importlib.metadata
import importlib.util
import math
import os
import platform
import socket
import statistics
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).resolve().parent / "results"
DEFAULT_URL = "postgresql://postgres@127.0.0.1:5432/fabric_bench"


# -- PostgreSQL ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Pg:
    """The benchmark database, from FABRIC_BENCH_POSTGRES_URL (default: a dedicated
    `fabric_bench` database on 127.0.0.1:5432, user postgres)."""

    host: str
    port: int
    user: str
    database: str
    password: str | None = None

    @staticmethod
    def from_env() -> Pg:
        from psycopg.conninfo import conninfo_to_dict

        url = os.environ.get("FABRIC_BENCH_POSTGRES_URL", DEFAULT_URL)
        info = conninfo_to_dict(url)
        host = str(info.get("host") or "127.0.0.1")
        if host not in ("127.0.0.1", "localhost", "::1"):
            raise SystemExit(f"the benchmark only talks to 127.0.0.1; got host {host!r}")
        return Pg(
            host=host,
            port=int(info.get("port") or 5432),
            user=str(info.get("user") or "postgres"),
            database=str(info.get("dbname") or "fabric_bench"),
            password=info.get("password"),  # type: ignore[arg-type]
        )

    def conninfo(
        self, *, database: str | None = None, schema: str | None = None, **extra: Any
    ) -> str:
        parts = {
            "host": self.host,
            "port": self.port,
            "user": self.user,
            "dbname": database or self.database,
            **extra,
        }
        if self.password:
            parts["password"] = self.password
        if schema:
            parts["options"] = f"-c search_path={schema}"
        from psycopg.conninfo import make_conninfo

        return make_conninfo("", **parts)

    def uri(self, schema: str | None = None) -> str:
        auth = quote(self.user) + (f":{quote(self.password)}" if self.password else "")
        uri = f"postgresql://{auth}@{self.host}:{self.port}/{quote(self.database)}"
        if schema:
            uri += "?options=" + quote(f"-csearch_path={schema}", safe="")
        return uri

    def env(self, schema: str | None = None) -> dict[str, str]:
        """Environment for psql (and for the gateway, when the URL carries a password:
        libpq reads PGPASSWORD; connections registered in Fabric hold no secret)."""
        env = dict(os.environ)
        if self.password:
            env["PGPASSWORD"] = self.password
        if schema:
            env["PGOPTIONS"] = f"-c search_path={schema}"
        return env


# -- statistics ---------------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100)."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def summarize(samples: Sequence[float]) -> dict[str, Any]:
    if not samples:
        return {"n": 0}
    return {
        "n": len(samples),
        "median": statistics.median(samples),
        "p99": percentile(samples, 99),
        "min": min(samples),
        "max": max(samples),
        "mean": statistics.fmean(samples),
    }


def geomean(values: Sequence[float]) -> float:
    if not values:
        return math.nan
    return math.exp(statistics.fmean(math.log(v) for v in values))


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    started = time.perf_counter()
    result = fn()
    return time.perf_counter() - started, result


def rounded(samples: Sequence[float], digits: int = 7) -> list[float]:
    return [round(s, digits) for s in samples]


# -- processes and ports ------------------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds a process has used (from /proc/PID/stat)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# -- machine facts ------------------------------------------------------------------------


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _mem_total() -> int | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _run(cmd: list[str]) -> str:
    try:
        return subprocess.run(
            cmd, capture_output=True, text=True, timeout=10, cwd=ROOT
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def machine_facts(pg: Pg) -> dict[str, Any]:
    import grpc
    import psycopg
    import pyarrow

    server_version = ""
    try:
        with psycopg.connect(pg.conninfo(connect_timeout=5)) as conn:
            row = conn.execute("SHOW server_version").fetchone()
            server_version = str(row[0]) if row else ""
    except psycopg.Error:
        pass
    has_sqlglotc = importlib.util.find_spec("sqlglotc") is not None
    commit = _run(["git", "rev-parse", "--short", "HEAD"])
    dirty = bool(_run(["git", "status", "--porcelain", "--", "fabric", "connectors"]))
    return {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "cpu_model": _cpu_model(),
        "cores": os.cpu_count(),
        "memory_bytes": _mem_total(),
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "postgresql_server": server_version,
        "psql": _run(["psql", "--version"]),
        "pyarrow": pyarrow.__version__,
        "grpcio": grpc.__version__,
        "psycopg": psycopg.__version__,
        "sqlglot": importlib.metadata.version("sqlglot"),
        "sqlglotc": has_sqlglotc,
        "fabric_commit": commit + ("+dirty" if dirty else ""),
    }
