"""The soak run: a `fabric serve` process with a PostgreSQL of its own, under a mixed
load from several client processes for a bounded time, watched from outside.

`python -m tests.soak.run [--seconds N]` (`make soak`: 10 minutes; FABRIC_SOAK_SECONDS,
FABRIC_SOAK_PROCESSES and FABRIC_SOAK_THREADS change the defaults) prints one row per
window (calls, unexpected outcomes, p50 and p99 latency, the gateway's peak RSS), one
row per kind of call, and the verdict on each criterion; it exits 1 when one fails.
tests/soak/test_soak.py runs a short one in CI and asserts the same criteria.

The criteria (after a warm-up of a fifth of the run, at least 15 s and at most 120 s):

- RSS flat: the gateway's peak RSS over the last third of the run is within
  RSS_TOLERANCE of its peak over the first two thirds (the warm-up, when the cache and
  the pools fill, and the middle third). A gateway that keeps something per call grows
  past it; one whose memory is bounded stays under it, whatever the allocator's ups and
  downs from one window to the next (a single window is no reference: it may be a low).
- p99 stable: no window after the warm-up has a p99 above P99_BAND times the median of
  those windows' p99s.
- no unexpected outcome: every call is OK, except a scan its caller cancelled and the
  open statement a greedy caller asks for over its share (RESOURCE_EXHAUSTED, and it
  must be refused: the share holds); a result with the wrong rows counts as unexpected.
- nothing left behind once the load stops: no session of the gateway at PostgreSQL is
  doing anything (running, idle in a transaction), no statement is open, no query holds
  a slot (the gateway's own metrics).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import psycopg

from fabric.app.parts import local_token
from fabric.config import Settings
from tests.support.chaos import fill_postgres
from tests.support.gateway_process import free_port, gateway_process, rss_bytes
from tests.support.pg_instance import PgInstance, private_postgres

APP = "fabric-soak"
"""application_name of the gateway's PostgreSQL sessions."""
SHARE = 4
"""Statements each principal may hold open (FABRIC_PRINCIPAL_MAX_STATEMENTS)."""
RSS_TOLERANCE = 0.10
P99_BAND = 3.0
MIB = 1 << 20


@dataclass(frozen=True, slots=True)
class Window:
    start: float
    """Seconds since the load began."""
    calls: int
    unexpected: int
    p50_ms: float
    p99_ms: float
    rss_mib: float
    """The gateway's peak RSS in the window."""
    cpu_ms_per_call: float
    """The gateway's CPU time in the window per call started in it: flat while the
    gateway does the same work per call, whatever else the machine runs."""
    load: float
    """The machine's 1-minute load average at the window's end (other processes too)."""


@dataclass
class SoakReport:
    seconds: float
    clients: str
    warmup: float
    windows: list[Window]
    kinds: dict[str, tuple[int, float, float, dict[str, int]]]
    """kind: (calls, p50 ms, p99 ms, outcomes)."""
    unexpected: Counter[str]
    leftovers: dict[str, float]
    verdicts: list[tuple[str, bool, str]] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return all(ok for _, ok, _ in self.verdicts)

    def table(self) -> str:
        lines = [
            f"soak: {self.seconds:.0f} s, {self.clients}; warm-up {self.warmup:.0f} s",
            "",
            "| window (s) | calls | unexpected | p50 ms | p99 ms | peak RSS MiB "
            "| gateway CPU ms/call | load avg |",
            "| --- | --- | --- | --- | --- | --- | --- | --- |",
        ]
        for w in self.windows:
            mark = " (warm-up)" if w.start < self.warmup else ""
            lines.append(
                f"| {w.start:.0f}{mark} | {w.calls} | {w.unexpected} | {w.p50_ms:.1f} "
                f"| {w.p99_ms:.1f} | {w.rss_mib:.0f} | {w.cpu_ms_per_call:.2f} | {w.load:.1f} |"
            )
        lines += [
            "",
            "| call | calls | p50 ms | p99 ms | outcomes |",
            "| --- | --- | --- | --- | --- |",
        ]
        for kind, (calls, p50, p99, outcomes) in sorted(self.kinds.items()):
            told = ", ".join(f"{code} {n}" for code, n in sorted(outcomes.items()))
            lines.append(f"| {kind} | {calls} | {p50:.1f} | {p99:.1f} | {told} |")
        lines.append("")
        for name, ok, detail in self.verdicts:
            lines.append(f"- {'PASS' if ok else 'FAIL'} {name}: {detail}")
        return "\n".join(lines)


@dataclass(frozen=True, slots=True)
class Call:
    kind: str
    started: float
    ended: float
    outcome: str
    expected: bool

    @property
    def ms(self) -> float:
        return (self.ended - self.started) * 1000


def percentile(values: Sequence[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _fabric(env: dict[str, str], *args: str, stdin: str = "") -> None:
    done = subprocess.run(
        [sys.executable, "-m", "fabric.cli", *args, "--local"],
        env=env,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
    )
    if done.returncode != 0:
        raise RuntimeError(f"fabric {args[0]} {args[1]} failed: {done.stderr[-2000:]}")


def _configure(home: Path, pg: PgInstance, pool_max: int) -> dict[str, str]:
    """The gateway's environment, with the connection `pg` created and its tables
    selected through the CLI, as an administrator would."""
    env = {
        **os.environ,
        "FABRIC_HOME": str(home),
        "FABRIC_AUTH": "local",
        "FABRIC_NATS_URL": "",
        "FABRIC_METRICS_PORT": str(free_port()),
        "FABRIC_PRINCIPAL_MAX_STATEMENTS": str(SHARE),
        # a small cache, so that it fills and evicts during the warm-up and memory that
        # keeps growing after it is the gateway's, not the cache settling
        "FABRIC_CACHE_MAX_BYTES": str(32 * MIB),
        "FABRIC_LOG_LEVEL": "warning",
    }
    _fabric(
        env,
        "connection", "create", "pg", "--kind", "postgres", "--password-stdin",
        "--set", "host=127.0.0.1", "--set", f"port={pg.port}",
        "--set", "database=postgres", "--set", f"user={pg.user}",
        "--set", f"application_name={APP}", "--set", f"pool_max={pool_max}",
        stdin=pg.password + "\n",
    )  # fmt: skip
    _fabric(env, "catalog", "select", "pg", "public.items")
    return env


def _metrics(port: str) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as page:
        text = page.read().decode()
    values: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("fabric_") and "{" not in line:
            name, _, value = line.partition(" ")
            values[name] = float(value)
    return values


def _busy_sessions(pg: PgInstance) -> int:
    with psycopg.connect(pg.url(), autocommit=True, connect_timeout=10) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s AND state <> 'idle'",
            [APP],
        ).fetchone()
    return int(row[0]) if row else 0


def _poll(condition: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)
    return True


@dataclass(frozen=True, slots=True)
class Sample:
    at: float
    """Unix seconds."""
    rss: int
    cpu: float
    """The gateway's CPU seconds so far (user and system)."""
    load: float
    """The machine's 1-minute load average."""


def _cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _load() -> float:
    with open("/proc/loadavg") as loadavg:
        return float(loadavg.read().split()[0])


class RssSampler:
    """The gateway's RSS and CPU time, and the machine's load, once a second, in a
    thread, until stopped."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.samples: list[Sample] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.samples.append(
                Sample(time.time(), rss_bytes(self.pid), _cpu_seconds(self.pid), _load())
            )
            self._stop.wait(1.0)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)


@contextmanager
def _clients(
    address: str, tokens: list[list[str]], greedy: list[str], until: float, workdir: Path
) -> Iterator[list[Path]]:
    """One `tests.soak.clients` process per entry of `tokens`; yields their output files
    once every one has exited (killed if one outlives the run by much)."""
    outputs, processes = [], []
    try:
        for index, (mixed, own_greedy) in enumerate(zip(tokens, greedy, strict=True)):
            out = workdir / f"calls-{index}.jsonl"
            spec = {
                "address": address,
                "tokens": mixed,
                "greedy_token": own_greedy,
                "share": SHARE,
                "until": until,
                "out": str(out),
                "seed": index + 1,
            }
            process = subprocess.Popen(
                [sys.executable, "-m", "tests.soak.clients"],
                stdin=subprocess.PIPE,
                text=True,
            )
            assert process.stdin is not None
            process.stdin.write(json.dumps(spec))
            process.stdin.close()
            outputs.append(out)
            processes.append(process)
        for process in processes:
            process.wait(timeout=max(0.0, until - time.time()) + 120)
        failed = [p.returncode for p in processes if p.returncode != 0]
        if failed:
            raise RuntimeError(f"a load process failed (exit codes {failed})")
        yield outputs
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait(timeout=10)


def soak(
    seconds: float,
    *,
    processes: int = 4,
    threads: int = 4,
    workdir: Path,
) -> SoakReport:
    """Run the soak for `seconds` of load and judge it (see the module docstring)."""
    warmup = min(120.0, max(15.0, seconds / 5))
    window = max(5.0, seconds / 10)
    with private_postgres("Soak-Run-31c7") as pg:
        fill_postgres(pg)
        home = workdir / "home"
        home.mkdir()
        env = _configure(home, pg, pool_max=8)
        extra = {k: env[k] for k in env if k.startswith("FABRIC_") and k != "FABRIC_HOME"}
        with gateway_process(home, extra, workdir / "serve.log") as gateway:
            settings = Settings(home=home)
            tokens = [
                [
                    local_token(settings, role="app", subject=f"soak-{p}-{t}", ttl=seconds + 900)
                    for t in range(threads)
                ]
                for p in range(processes)
            ]
            greedy = [
                local_token(settings, role="app", subject=f"greedy-{p}", ttl=seconds + 900)
                for p in range(processes)
            ]
            began = time.time()
            with (
                RssSampler(gateway.pid) as sampler,
                _clients(gateway.address, tokens, greedy, began + seconds, workdir) as outputs,
            ):
                calls = [
                    Call(**json.loads(line))
                    for path in outputs
                    for line in path.read_text().splitlines()
                ]
            port = env["FABRIC_METRICS_PORT"]
            quiet = _poll(lambda: _busy_sessions(pg) == 0, 30)
            settled = _poll(
                lambda: (
                    _metrics(port).get("fabric_open_statements", -1) == 0
                    and _metrics(port).get("fabric_admission_running", -1) == 0
                ),
                30,
            )
            final = _metrics(port)
            leftovers = {
                "busy_sessions": float(_busy_sessions(pg)),
                "open_statements": final.get("fabric_open_statements", -1),
                "admission_running": final.get("fabric_admission_running", -1),
            }
    report = _judge(
        calls,
        sampler.samples,
        began=began,
        seconds=seconds,
        warmup=warmup,
        window=window,
        clients=f"{processes} processes x {threads} mixed clients + 1 greedy each",
        leftovers=leftovers,
    )
    report.verdicts.append(
        (
            "nothing left behind",
            quiet and settled and not any(leftovers.values()),
            ", ".join(f"{k} {v:g}" for k, v in leftovers.items()),
        )
    )
    return report


def _judge(
    calls: list[Call],
    samples: list[Sample],
    *,
    began: float,
    seconds: float,
    warmup: float,
    window: float,
    clients: str,
    leftovers: dict[str, float],
) -> SoakReport:
    windows: list[Window] = []
    start = 0.0
    while start < seconds - 1e-6:
        end = min(seconds, start + window)
        inside = [c for c in calls if start <= c.started - began < end]
        timed = [c.ms for c in inside if c.kind != "over_share"]
        inside_samples = [x for x in samples if start <= x.at - began < end]
        rss = [x.rss for x in inside_samples]
        cpu = inside_samples[-1].cpu - inside_samples[0].cpu if len(inside_samples) > 1 else 0.0
        windows.append(
            Window(
                start,
                len(inside),
                sum(not c.expected for c in inside),
                percentile(timed, 0.50),
                percentile(timed, 0.99),
                max(rss, default=0) / MIB,
                cpu * 1000 / len(inside) if inside else 0.0,
                inside_samples[-1].load if inside_samples else 0.0,
            )
        )
        start = end
    by_kind: dict[str, list[Call]] = defaultdict(list)
    for c in calls:
        by_kind[c.kind].append(c)
    kinds = {
        kind: (
            len(group),
            percentile([c.ms for c in group], 0.50),
            percentile([c.ms for c in group], 0.99),
            dict(Counter(c.outcome for c in group)),
        )
        for kind, group in by_kind.items()
    }
    unexpected = Counter(f"{c.kind} {c.outcome}" for c in calls if not c.expected)
    report = SoakReport(seconds, clients, warmup, windows, kinds, unexpected, leftovers)

    split = max(warmup, seconds * 2 / 3)
    reference = max((x.rss for x in samples if x.at - began < split), default=0)
    last_third = max((x.rss for x in samples if x.at - began >= split), default=0)
    growth = (last_third / reference - 1) * 100 if reference else 0.0
    report.verdicts.append(
        (
            "RSS flat after warm-up",
            0 < last_third <= reference * (1 + RSS_TOLERANCE),
            f"peak {last_third / MIB:.0f} MiB over the last third vs {reference / MIB:.0f} "
            f"MiB over the first two thirds ({growth:+.1f}%, "
            f"allowed +{RSS_TOLERANCE * 100:.0f}%)",
        )
    )
    after = [w.p99_ms for w in windows if w.start >= warmup and w.calls]
    median = statistics.median(after) if after else 0.0
    worst = max(after, default=0.0)
    report.verdicts.append(
        (
            "p99 stable",
            bool(after) and worst <= P99_BAND * median,
            f"window p99s after the warm-up {min(after, default=0):.0f}-{worst:.0f} ms, "
            f"median {median:.0f} ms (allowed up to {P99_BAND:g}x the median)",
        )
    )
    refused = kinds.get("over_share", (0, 0, 0, {}))[3].get("RESOURCE_EXHAUSTED", 0)
    cancelled = kinds.get("cancel", (0, 0, 0, {}))[0]
    report.verdicts.append(
        (
            "no unexpected outcome",
            not unexpected and refused > 0 and cancelled > 0 and len(calls) > 0,
            f"{len(calls)} calls, {sum(unexpected.values())} unexpected "
            f"{dict(unexpected) if unexpected else ''}; {refused} over-share refusals, "
            f"{cancelled} scans cancelled by their callers",
        )
    )
    return report


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.soak.run", description=__doc__)
    parser.add_argument(
        "--seconds", type=float, default=float(os.environ.get("FABRIC_SOAK_SECONDS", 600))
    )
    parser.add_argument(
        "--processes", type=int, default=int(os.environ.get("FABRIC_SOAK_PROCESSES", 4))
    )
    parser.add_argument(
        "--threads", type=int, default=int(os.environ.get("FABRIC_SOAK_THREADS", 4))
    )
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="fabric-soak-") as workdir:
        report = soak(
            args.seconds, processes=args.processes, threads=args.threads, workdir=Path(workdir)
        )
    print(report.table(), flush=True)
    return 0 if report.passed else 1


if __name__ == "__main__":
    raise SystemExit(main())
