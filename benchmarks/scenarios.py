"""The eight benchmark scenarios, each against an anchor measured in the same run.

Every scenario function takes the run's `Bench` and returns a result dict (see
`report.py` for the shape). A wrong result raises `WrongResult`; that, like any other
exception, is recorded as the scenario's error and makes the run exit non-zero. A missed
target is not an error: `met` is false and the JSON says so.
"""

from __future__ import annotations

import asyncio
import random
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import grpc
import psycopg

from benchmarks.capacity import capacity
from benchmarks.common import Pg, cpu_seconds, geomean, rounded, summarize
from benchmarks.echo import EXECUTE, EchoProcess
from benchmarks.federation import federated_tpch
from benchmarks.gateway import CONNECTION, FabricHome, GatewayProcess
from benchmarks.tpch import Dataset, queries
from benchmarks.tpch_split import SplitSources

LARGE_SQL = "SELECT * FROM lineitem WHERE l_orderkey <= 1000000"
AGGREGATE_SQL = """SELECT l_returnflag, l_linestatus, sum(l_quantity) AS sum_qty,
  sum(l_extendedprice) AS sum_base_price,
  sum(l_extendedprice * (1 - l_discount)) AS sum_disc_price,
  sum(l_extendedprice * (1 - l_discount) * (1 + l_tax)) AS sum_charge,
  avg(l_quantity) AS avg_qty, avg(l_extendedprice) AS avg_price,
  avg(l_discount) AS avg_disc, count(*) AS count_order
FROM lineitem
WHERE l_shipdate <= DATE '1998-09-02'
GROUP BY l_returnflag, l_linestatus
ORDER BY l_returnflag, l_linestatus"""
POINT_SQL = "SELECT * FROM orders WHERE o_orderkey = :k"
POINT_SQL_PG = "SELECT * FROM orders WHERE o_orderkey = %s"
STREAM_SQL = "SELECT * FROM lineitem"
CACHE_TTL = 3600
TPCH_CAP_SECONDS = 10.0
MIB = 1 << 20


class WrongResult(Exception):
    """Fabric's answer differs from the direct answer (or rows went missing)."""


@dataclass
class Plan:
    """How much to measure; quick mode shrinks everything."""

    quick: bool
    warmup: int = 1
    repeat: int = 5
    latency_calls: int = 2000
    latency_warmup: int = 200
    point_calls: int = 1000
    throughput_seconds: float = 20.0
    clients: int = 32
    compile_misses: int = 60
    hit_batches: int = 200
    memory_runs: int = 2
    tpch_repeat: int = 3

    @staticmethod
    def make(quick: bool, repeat: int | None) -> Plan:
        if quick:
            plan = Plan(
                quick=True,
                repeat=3,
                latency_calls=300,
                latency_warmup=50,
                point_calls=200,
                throughput_seconds=3.0,
                compile_misses=20,
                hit_batches=50,
                memory_runs=1,
                tpch_repeat=2,
            )
        else:
            plan = Plan(quick=False)
        if repeat is not None:
            plan.repeat = plan.tpch_repeat = max(1, repeat)
            plan.memory_runs = max(1, min(repeat, plan.memory_runs))
        return plan


@dataclass
class Bench:
    """Everything a scenario needs; owned and cleaned up by the runner."""

    pg: Pg
    data: Dataset
    home: FabricHome
    gateway: GatewayProcess
    echo: EchoProcess
    plan: Plan
    cold_starts: list[float] = field(default_factory=list)
    token: str | None = None
    split: SplitSources | None = None
    """TPC-H split across PostgreSQL, MariaDB and DuckDB (scenario 10 only)."""
    split_error: str = ""
    """Why the split could not be prepared, if it could not."""

    @property
    def metadata(self) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {self.token}"),) if self.token else ()

    def client(self, address: str | None = None, timeout: float = 600.0) -> Any:
        """The public client; the echo gets the same client with the same token."""
        from fabric.client import FabricClient

        return FabricClient(address or self.gateway.address, self.token, timeout=timeout)

    def direct(self, **extra: Any) -> psycopg.Connection[Any]:
        return psycopg.connect(
            self.pg.conninfo(schema=self.data.schema, connect_timeout=10, **extra), autocommit=True
        )


def target(op: str, value: float, text: str) -> dict[str, Any]:
    return {"op": op, "value": value, "text": text}


def is_met(ratio: float, tgt: dict[str, Any]) -> bool:
    return ratio <= tgt["value"] if tgt["op"] == "<=" else ratio >= tgt["value"]


def _raw_request(sql: str, params: dict[str, Any] | None = None, cache_ttl: int = 0) -> bytes:
    from fabric.proto_values import params_to_proto
    from fabric.v1 import query_pb2 as pb

    return pb.ExecuteRequest(
        connection=CONNECTION, sql=sql, params=params_to_proto(params), cache_ttl_seconds=cache_ttl
    ).SerializeToString()


def record_response(b: Bench, request: bytes) -> list[bytes]:
    """The gateway's response messages to `request`, byte for byte (for the echo)."""
    with grpc.insecure_channel(
        b.gateway.address, options=[("grpc.max_receive_message_length", 1 << 30)]
    ) as channel:
        call = channel.unary_stream(EXECUTE)
        return list(call(request, timeout=120, metadata=b.metadata))


def _interleaved(
    paths: dict[str, Callable[[], Any]], warmup: int, repeat: int
) -> tuple[dict[str, list[float]], dict[str, list[float]], dict[str, Any]]:
    """Run each path once per round, rotating the order; the first `warmup` rounds are
    kept apart. Returns (samples, warm-up samples, last result per path)."""
    samples: dict[str, list[float]] = {name: [] for name in paths}
    warm: dict[str, list[float]] = {name: [] for name in paths}
    last: dict[str, Any] = {}
    names = list(paths)
    for round_no in range(warmup + repeat):
        shift = round_no % len(names)
        for name in names[shift:] + names[:shift]:
            started = time.perf_counter()
            last[name] = paths[name]()
            elapsed = time.perf_counter() - started
            (warm if round_no < warmup else samples)[name].append(elapsed)
    return samples, warm, last


# -- 1: large result ----------------------------------------------------------------------


def large_result(b: Bench) -> dict[str, Any]:
    import adbc_driver_postgresql.dbapi as adbc

    pg, schema = b.pg, b.data.schema
    with b.direct() as conn:
        expected = conn.execute(f"SELECT count(*) FROM ({LARGE_SQL}) q").fetchone()[0]
    copy = f"\\copy ({LARGE_SQL}) to '/dev/null' with (format csv)"
    psql = [
        "psql",
        "-X",
        "-q",
        "-v",
        "ON_ERROR_STOP=1",
        "-h",
        pg.host,
        "-p",
        str(pg.port),
        "-U",
        pg.user,
        "-d",
        pg.database,
        "-c",
        copy,
    ]
    env = pg.env(schema)

    def floor() -> int:
        subprocess.run(psql, env=env, check=True, timeout=600, capture_output=True)
        return expected

    adbc_conn = adbc.connect(pg.uri(schema))
    client = b.client()
    try:

        def adbc_direct() -> int:
            with adbc_conn.cursor() as cur:
                cur.execute(LARGE_SQL)
                return int(cur.fetch_arrow_table().num_rows)

        def fabric() -> int:
            return int(client.query(CONNECTION, LARGE_SQL).num_rows)

        samples, warm, last = _interleaved(
            {"psql_copy_floor": floor, "adbc_direct": adbc_direct, "fabric": fabric},
            b.plan.warmup,
            b.plan.repeat,
        )
    finally:
        client.close()
        adbc_conn.close()
    for name in ("adbc_direct", "fabric"):
        if last[name] != expected:
            raise WrongResult(f"{name} returned {last[name]} rows, the database {expected}")
    fab = summarize(samples["fabric"])["median"]
    floor_med = summarize(samples["psql_copy_floor"])["median"]
    adbc_med = summarize(samples["adbc_direct"])["median"]
    ratio, ratio_adbc = fab / floor_med, fab / adbc_med
    t1, t2 = target("<=", 1.25, "<= 1.25 x floor"), target("<", 1.0, "faster than ADBC")
    return {
        "metric": "seconds to a client pyarrow.Table",
        "unit": "s",
        "rows": expected,
        "fabric": summarize(samples["fabric"]),
        "anchors": {
            "psql_copy_floor": summarize(samples["psql_copy_floor"]),
            "adbc_direct": summarize(samples["adbc_direct"]),
        },
        "ratio": ratio,
        "ratios": {"vs_floor": ratio, "vs_adbc": ratio_adbc},
        "target": t1,
        "targets": [t1, t2],
        "met": ratio <= 1.25 and ratio_adbc < 1.0,
        "samples": {k: rounded(v) for k, v in samples.items()},
        "warmup_samples": {k: rounded(v) for k, v in warm.items()},
    }


# -- 2: cache hit latency -----------------------------------------------------------------


def _latency_blocks(
    calls: dict[str, Callable[[], Any]], total: int, warmup: int, block: int = 50
) -> dict[str, list[float]]:
    for fn in calls.values():
        for _ in range(warmup):
            fn()
    samples: dict[str, list[float]] = {name: [] for name in calls}
    perf = time.perf_counter
    for _ in range(max(1, total // block)):
        for name, fn in calls.items():
            out = samples[name]
            for _ in range(block):
                started = perf()
                fn()
                out.append(perf() - started)
    return samples


def cache_hit(b: Bench) -> dict[str, Any]:
    client, echo_client = b.client(), b.client(b.echo.address)
    try:
        first = client.execute(CONNECTION, AGGREGATE_SQL, cache_ttl=CACHE_TTL)
        second = client.execute(CONNECTION, AGGREGATE_SQL, cache_ttl=CACHE_TTL)
        if not second.summary.from_cache:
            raise WrongResult("the second identical cacheable query was not a cache hit")
        if not first.table.equals(second.table):
            raise WrongResult("the cached result differs from the first result")
        messages = record_response(b, _raw_request(AGGREGATE_SQL, cache_ttl=CACHE_TTL))
        b.echo.set(b"", messages)
        misses = 0

        def fabric() -> None:
            nonlocal misses
            if not client.execute(
                CONNECTION, AGGREGATE_SQL, cache_ttl=CACHE_TTL
            ).summary.from_cache:
                misses += 1

        def echo() -> None:
            echo_client.execute(CONNECTION, AGGREGATE_SQL, cache_ttl=CACHE_TTL)

        samples = _latency_blocks(
            {"fabric": fabric, "echo": echo}, b.plan.latency_calls, b.plan.latency_warmup
        )
    finally:
        client.close()
        echo_client.close()
    fab, ech = summarize(samples["fabric"]), summarize(samples["echo"])
    ratio = fab["median"] / ech["median"]
    tgt = target("<=", 1.5, "p50 <= 1.5 x echo p50")
    return {
        "metric": "latency of a cached aggregate (p50, p99)",
        "unit": "s",
        "response_bytes": sum(len(m) for m in messages),
        "response_messages": len(messages),
        "rows": second.table.num_rows,
        "not_from_cache": misses,
        "fabric": fab,
        "anchors": {"echo": ech},
        "ratio": ratio,
        "ratios": {"p50_vs_echo": ratio, "p99_vs_echo": fab["p99"] / ech["p99"]},
        "target": tgt,
        "met": is_met(ratio, tgt),
        "samples": {k: rounded(v) for k, v in samples.items()},
    }


# -- 3: point query -----------------------------------------------------------------------


def point_query(b: Bench) -> dict[str, Any]:
    from psycopg_pool import ConnectionPool

    rng = random.Random(7)
    with b.direct() as conn:
        keys = [
            r[0]
            for r in conn.execute(
                "SELECT o_orderkey FROM orders ORDER BY random() LIMIT %s",
                (b.plan.point_calls * 4,),
            ).fetchall()
        ]
    client, echo_client = b.client(), b.client(b.echo.address)
    pool = ConnectionPool(
        b.pg.conninfo(schema=b.data.schema, connect_timeout=10),
        min_size=1,
        max_size=1,
        open=True,
        kwargs={"autocommit": True},
        name="bench-direct",
    )
    try:
        pool.wait(timeout=30)
        probe = keys[0]
        table = client.query(CONNECTION, POINT_SQL, {"k": probe})
        with pool.connection() as conn:
            direct_rows = conn.execute(POINT_SQL_PG, (probe,), prepare=True).fetchall()
        if table.num_rows != 1 or len(direct_rows) != 1:
            raise WrongResult(
                f"point query returned {table.num_rows} rows through Fabric, "
                f"{len(direct_rows)} direct; expected 1"
            )
        if table.column("o_orderkey")[0].as_py() != direct_rows[0][0]:
            raise WrongResult("point query returned another order than the database")
        b.echo.set(b"", record_response(b, _raw_request(POINT_SQL, {"k": probe})))
        bad = 0

        def fabric() -> None:
            nonlocal bad
            if client.execute(CONNECTION, POINT_SQL, {"k": rng.choice(keys)}).summary.rows != 1:
                bad += 1

        def direct() -> None:
            with pool.connection() as conn:
                conn.execute(POINT_SQL_PG, (rng.choice(keys),), prepare=True).fetchall()

        def echo() -> None:
            echo_client.execute(CONNECTION, POINT_SQL, {"k": rng.choice(keys)})

        samples = _latency_blocks(
            {"fabric": fabric, "direct_psycopg": direct, "echo": echo},
            b.plan.point_calls,
            max(20, b.plan.point_calls // 10),
        )
    finally:
        client.close()
        echo_client.close()
        pool.close()
    if bad:
        raise WrongResult(f"{bad} point queries did not return exactly one row")
    fab, dire, ech = (summarize(samples[k]) for k in ("fabric", "direct_psycopg", "echo"))
    ratio = fab["median"] / (dire["median"] + ech["median"])
    tgt = target("<=", 1.3, "p50 <= 1.3 x (direct p50 + echo p50)")
    return {
        "metric": "latency of an uncached point query (p50)",
        "unit": "s",
        "fabric": fab,
        "anchors": {"direct_psycopg_prepared": dire, "echo": ech},
        "anchor_median": dire["median"] + ech["median"],
        "ratio": ratio,
        "target": tgt,
        "met": is_met(ratio, tgt),
        "samples": {k: rounded(v) for k, v in samples.items()},
    }


# -- 4: throughput ------------------------------------------------------------------------


async def _load(
    address: str,
    request: bytes,
    clients: int,
    seconds: float,
    warmup: float,
    expected: Sequence[bytes],
    metadata: tuple[tuple[str, str], ...],
) -> dict[str, Any]:
    """`clients` concurrent callers for `seconds` after `warmup`; a response counts when it
    has the expected number of messages and size (the summary's elapsed time may change
    the size by a few bytes)."""
    expected_count, expected_bytes = len(expected), sum(len(m) for m in expected)
    options = [("grpc.max_receive_message_length", 1 << 28), ("grpc.use_local_subchannel_pool", 1)]
    channels = [grpc.aio.insecure_channel(address, options=options) for _ in range(clients)]
    try:
        calls = [ch.unary_stream(EXECUTE) for ch in channels]
        errors: list[str] = []
        done: list[float] = []
        measuring = False
        start = time.perf_counter()
        stop_at = start + warmup + seconds

        async def worker(call: Any) -> None:
            while time.perf_counter() < stop_at:
                try:
                    size = count = 0
                    async for message in call(request, timeout=30, metadata=metadata):
                        size += len(message)
                        count += 1
                    if count != expected_count or abs(size - expected_bytes) > 16:
                        errors.append(
                            f"response of {count} messages, {size} bytes; expected "
                            f"{expected_count}, {expected_bytes}"
                        )
                    elif measuring:
                        done.append(time.perf_counter())
                except grpc.RpcError as exc:
                    errors.append(str(exc.code()))

        tasks = [asyncio.create_task(worker(call)) for call in calls]
        await asyncio.sleep(warmup)
        measuring = True
        began = time.perf_counter()
        await asyncio.gather(*tasks)
        ended = time.perf_counter()
        per_second = [0] * max(1, int(seconds + 0.999))
        for t in done:
            per_second[min(len(per_second) - 1, int(t - began))] += 1
        return {
            "requests": len(done),
            "seconds": ended - began,
            "rps": len(done) / (ended - began),
            "errors": len(errors),
            "error_kinds": sorted(set(errors))[:5],
            "per_second": per_second,
        }
    finally:
        for ch in channels:
            await ch.close()


def throughput(b: Bench) -> dict[str, Any]:
    request = _raw_request(AGGREGATE_SQL, cache_ttl=CACHE_TTL)
    messages = record_response(b, request)
    b.echo.set(b"", messages)
    plan = b.plan
    warm = 1.0 if plan.quick else 2.0

    def measured(address: str, server_pid: int) -> dict[str, Any]:
        # CPU used by the server and by this (client) process over the whole load
        # (warm-up included), as a fraction of the wall time: shows which side saturates.
        wall, client_cpu, server_cpu = (
            time.perf_counter(),
            time.process_time(),
            cpu_seconds(server_pid),
        )
        out = asyncio.run(
            _load(
                address, request, plan.clients, plan.throughput_seconds, warm, messages, b.metadata
            )
        )
        wall = time.perf_counter() - wall
        out["client_cpu_fraction"] = (time.process_time() - client_cpu) / wall
        out["server_cpu_fraction"] = (cpu_seconds(server_pid) - server_cpu) / wall
        return out

    assert b.echo.proc is not None
    fabric = measured(b.gateway.address, b.gateway.pid)
    echo = measured(b.echo.address, b.echo.proc.pid)
    ratio = fabric["rps"] / echo["rps"]
    tgt = target(">=", 0.6, ">= 0.6 x echo req/s, zero errors")
    return {
        "metric": f"requests/s, {plan.clients} concurrent clients, cached query",
        "unit": "req/s",
        "clients": plan.clients,
        "seconds": plan.throughput_seconds,
        "fabric": {
            "median": fabric["rps"],
            **{k: v for k, v in fabric.items() if k != "per_second"},
        },
        "anchors": {
            "echo": {"median": echo["rps"], **{k: v for k, v in echo.items() if k != "per_second"}}
        },
        "ratio": ratio,
        "target": tgt,
        "met": is_met(ratio, tgt) and fabric["errors"] == 0,
        "samples": {
            "fabric_per_second": fabric["per_second"],
            "echo_per_second": echo["per_second"],
        },
        "client": "grpc.aio in the benchmark process, raw bytes, one channel (own TCP "
        "connection) per client; identical for the echo. client_cpu_fraction near "
        "1.0 means the load generator (one Python process) is the limit",
        "errors": fabric["errors"] + echo["errors"],
    }


# -- 5: statement compile -----------------------------------------------------------------


def compile_cache(b: Bench) -> dict[str, Any]:
    from connectors import connector_class
    from fabric.catalog.metadata.sqlite import SqliteMetadataStore
    from fabric.config import Settings
    from fabric.context import DEFAULT_TENANT
    from fabric.query.compiler import StatementCompiler
    from fabric.query.statement_cache import StatementCache

    store = SqliteMetadataStore(b.home.path / "metadata.sqlite")
    try:
        catalog = store.catalog(DEFAULT_TENANT, CONNECTION)
    finally:
        store.close()
    cls = connector_class("postgres")
    args = {
        "tenant": DEFAULT_TENANT,
        "connection": CONNECTION,
        "sql": AGGREGATE_SQL,
        "catalog": catalog,
        "dialect": cls.dialect,
        "param_style": cls.param_style,
        "max_rows": Settings().max_rows,
    }
    compiler = StatementCompiler()
    perf = time.perf_counter

    def miss() -> float:
        cache = StatementCache(compiler, 16)
        started = perf()
        cache.get_or_compile(**args)
        return perf() - started

    for _ in range(3):
        miss()
    misses = [miss() for _ in range(b.plan.compile_misses)]
    cache = StatementCache(compiler, 16)
    cache.get_or_compile(**args)
    per_batch = 200
    hits = []
    for _ in range(b.plan.hit_batches):
        started = perf()
        for _ in range(per_batch):
            cache.get_or_compile(**args)
        hits.append((perf() - started) / per_batch)
    hit, mis = summarize(hits), summarize(misses)
    ratio = hit["median"] / mis["median"]
    tgt = target("<=", 0.02, "hit <= 2% of a miss")
    return {
        "metric": "StatementCache.get_or_compile of the Q1-style text, in process",
        "unit": "s",
        "fabric": hit,
        "anchors": {"first_compile": mis},
        "ratio": ratio,
        "target": tgt,
        "met": is_met(ratio, tgt),
        "samples": {"hit_per_call_batches_of_200": rounded(hits, 9), "miss": rounded(misses, 9)},
    }


# -- 6: memory ----------------------------------------------------------------------------


class _RssSampler(threading.Thread):
    def __init__(self, gateway: GatewayProcess, interval: float = 0.01) -> None:
        super().__init__(daemon=True, name="rss-sampler")
        self.gateway, self.interval = gateway, interval
        self.samples: list[tuple[float, int]] = []
        self._halt = threading.Event()
        self._t0 = time.perf_counter()

    def run(self) -> None:
        while not self._halt.is_set():
            self.samples.append((time.perf_counter() - self._t0, self.gateway.rss()))
            self._halt.wait(self.interval)

    def finish(self) -> list[tuple[float, int]]:
        self._halt.set()
        self.join(timeout=5)
        return self.samples


def memory(b: Bench) -> dict[str, Any]:
    expected = b.data.rows["lineitem"]
    gateway = GatewayProcess(b.home, b.pg).start()
    b.cold_starts.append(gateway.cold_start_seconds)
    try:
        client = b.client(gateway.address)
        try:
            client.query(CONNECTION, "SELECT * FROM lineitem WHERE l_orderkey <= 100")
            time.sleep(0.5)
            before = gateway.rss()
            runs = []
            for _ in range(b.plan.memory_runs):
                sampler = _RssSampler(gateway)
                sampler.start()
                started = time.perf_counter()
                rows = 0
                try:
                    for batch in client.query_batches(CONNECTION, STREAM_SQL):
                        rows += batch.num_rows
                finally:
                    timeline = sampler.finish()
                elapsed = time.perf_counter() - started
                if rows != expected:
                    raise WrongResult(f"the client received {rows:,} rows of {expected:,}")
                time.sleep(0.5)
                peak = max(r for _, r in timeline)
                step = max(1, len(timeline) // 400)
                runs.append(
                    {
                        "rows": rows,
                        "seconds": elapsed,
                        "peak_rss": peak,
                        "growth_bytes": peak - before,
                        "rss_after": gateway.rss(),
                        "rss_timeline": [[round(t, 3), r] for t, r in timeline[::step]],
                    }
                )
        finally:
            client.close()
    finally:
        gateway.stop()
    growth = max(r["growth_bytes"] for r in runs)
    tgt = target("<=", 256 * MIB, "growth <= 256 MiB, every row received")
    return {
        "metric": "gateway RSS growth streaming the whole lineitem table uncached",
        "unit": "bytes",
        "rows": expected,
        "rss_before": before,
        "fabric": {
            "median": growth,
            "growth_mib": growth / MIB,
            "seconds": summarize([r["seconds"] for r in runs])["median"],
            "rows_per_second": expected / summarize([r["seconds"] for r in runs])["median"],
        },
        "anchors": {"rss_before": {"median": before}},
        "ratio": growth / (256 * MIB),
        "target": tgt,
        "met": growth <= 256 * MIB,
        "samples": {"runs": runs},
        "note": "fresh gateway process; growth = max over runs of (peak RSS during the "
        "query - RSS before the first query), sampled every 10 ms from "
        "/proc/PID/status VmRSS",
    }


# -- 7: TPC-H -----------------------------------------------------------------------------


def _norm(value: Any) -> Any:
    if isinstance(value, Decimal):
        return value.normalize() if value.is_finite() else value
    return value


def _rows_direct(rows: Sequence[Sequence[Any]]) -> list[tuple[Any, ...]]:
    return [tuple(_norm(v) for v in row) for row in rows]


def _rows_arrow(table: Any) -> list[tuple[Any, ...]]:
    columns = [table.column(i).to_pylist() for i in range(table.num_columns)]
    return [tuple(_norm(v) for v in row) for row in zip(*columns, strict=True)]


def _compare(
    fabric: list[tuple[Any, ...]], direct: list[tuple[Any, ...]], ordered: bool
) -> str | None:
    if len(fabric) != len(direct):
        return f"{len(fabric)} rows through Fabric, {len(direct)} direct"
    if fabric and len(fabric[0]) != len(direct[0]):
        return f"{len(fabric[0])} columns through Fabric, {len(direct[0])} direct"
    if ordered:
        if fabric == direct:
            return None
        for i, (f, d) in enumerate(zip(fabric, direct, strict=True)):
            if f != d:
                return f"row {i} differs: fabric {f!r} vs direct {d!r}"
    if sorted(fabric, key=repr) == sorted(direct, key=repr):
        return None
    for f, d in zip(sorted(fabric, key=repr), sorted(direct, key=repr), strict=True):
        if f != d:
            return f"rows differ (as multisets): fabric {f!r} vs direct {d!r}"
    return "rows differ"


def tpch_queries(b: Bench) -> dict[str, Any]:
    from fabric.errors import FabricError, QueryRejected

    per_query: list[dict[str, Any]] = []
    wrong: list[str] = []
    errors: list[str] = []
    client = b.client(timeout=120)
    conn = b.direct()
    conn.execute(f"SET statement_timeout = {int(TPCH_CAP_SECONDS * 1000)}")
    try:
        for q in queries(b.data.scale):
            entry: dict[str, Any] = {"query": f"Q{q.number}", "total_order": q.total_order}
            per_query.append(entry)
            try:
                started = time.perf_counter()
                cursor = conn.execute(q.sql)
                names_direct = [c.name for c in cursor.description or []]
                direct_rows = cursor.fetchall()
                first_direct = time.perf_counter() - started
            except psycopg.errors.QueryCanceled:
                entry.update(
                    status="over_cap", reason=f"PostgreSQL took over {TPCH_CAP_SECONDS:.0f} s"
                )
                continue
            try:
                started = time.perf_counter()
                table = client.query(CONNECTION, q.sql)
                first_fabric = time.perf_counter() - started
            except QueryRejected as exc:
                entry.update(status="rejected", reason=exc.message)
                continue
            except FabricError as exc:
                entry.update(status="error", reason=f"{exc.code}: {exc.message}")
                errors.append(f"Q{q.number}: {exc.code}: {exc.message}")
                continue
            diff = _compare(_rows_arrow(table), _rows_direct(direct_rows), q.total_order)
            entry["column_names_match"] = names_direct == table.column_names
            if not entry["column_names_match"]:
                entry["column_names"] = {"fabric": table.column_names, "direct": names_direct}
            if diff is not None:
                entry.update(status="wrong_result", reason=diff)
                wrong.append(f"Q{q.number}: {diff}")
                continue
            samples, _warm, _ = _interleaved(
                {
                    "direct": lambda sql=q.sql: conn.execute(sql).fetchall(),
                    "fabric": lambda sql=q.sql: client.query(CONNECTION, sql),
                },
                0,
                b.plan.tpch_repeat,
            )
            d, f = summarize(samples["direct"]), summarize(samples["fabric"])
            entry.update(
                status="ok",
                rows=len(direct_rows),
                direct=d,
                fabric=f,
                ratio=f["median"] / d["median"],
                samples={
                    "direct": rounded(samples["direct"]),
                    "fabric": rounded(samples["fabric"]),
                },
                warmup_samples={
                    "direct": [round(first_direct, 7)],
                    "fabric": [round(first_fabric, 7)],
                },
            )
    finally:
        client.close()
        conn.close()
    ok = [e for e in per_query if e["status"] == "ok"]
    eligible = [e for e in per_query if e["status"] != "over_cap"]
    ratio = geomean([e["ratio"] for e in ok])
    tgt = target("<=", 1.05, "geomean <= 1.05, every eligible query identical")
    counts: dict[str, int] = {}
    for e in per_query:
        counts[e["status"]] = counts.get(e["status"], 0) + 1
    result = {
        "metric": "TPC-H queries through Fabric vs direct psycopg (geometric mean of the "
        "per-query median ratios)",
        "unit": "ratio",
        "fabric": {"median": geomean([e["fabric"]["median"] for e in ok]) if ok else None},
        "anchors": {
            "direct_psycopg": {
                "median": geomean([e["direct"]["median"] for e in ok]) if ok else None
            }
        },
        "ratio": ratio,
        "target": tgt,
        "met": bool(ok) and ratio <= 1.05 and len(ok) == len(eligible),
        "counts": counts,
        "queries": per_query,
        "samples": {e["query"]: e.get("samples") for e in ok},
        "cap_seconds": TPCH_CAP_SECONDS,
    }
    if wrong:
        raise WrongResultWith(result, "; ".join(wrong))
    if errors:
        raise ErrorWith(result, "; ".join(errors))
    return result


# -- 9: Flight SQL ------------------------------------------------------------------------

POINT_SQL_POSITIONAL = "SELECT * FROM orders WHERE o_orderkey = ?"


def _flight_connection(b: Bench) -> Any:
    """An ADBC Flight SQL connection to the gateway's Flight SQL endpoint, as an app
    would open one (token in the authorization header, connection in a call header)."""
    import adbc_driver_flightsql.dbapi as flight_sql

    options = {"adbc.flight.sql.rpc.call_header.x-fabric-connection": CONNECTION}
    if b.token:
        options["adbc.flight.sql.authorization_header"] = f"Bearer {b.token}"
    return flight_sql.connect(b.gateway.flight_uri, db_kwargs=options, autocommit=True)


def flight_sql(b: Bench) -> dict[str, Any]:
    """1: the large result through Flight SQL into the ADBC client, against the psql
    floor, Fabric's own Execute and ADBC straight to PostgreSQL; 3: point-query p50
    through Flight SQL (a prepared statement run per key) against Execute."""
    import adbc_driver_postgresql.dbapi as adbc

    pg, schema = b.pg, b.data.schema
    with b.direct() as conn:
        expected = conn.execute(f"SELECT count(*) FROM ({LARGE_SQL}) q").fetchone()[0]
        keys = [
            r[0]
            for r in conn.execute(
                "SELECT o_orderkey FROM orders ORDER BY random() LIMIT %s",
                (b.plan.point_calls * 4,),
            ).fetchall()
        ]
    copy = f"\\copy ({LARGE_SQL}) to '/dev/null' with (format csv)"
    psql = ["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", pg.host, "-p", str(pg.port)]
    psql += ["-U", pg.user, "-d", pg.database, "-c", copy]
    env = pg.env(schema)
    rng = random.Random(8)
    pg_conn = adbc.connect(pg.uri(schema))
    flight_conn = _flight_connection(b)
    client = b.client()
    try:

        def floor() -> int:
            subprocess.run(psql, env=env, check=True, timeout=600, capture_output=True)
            return expected

        def adbc_direct() -> int:
            with pg_conn.cursor() as cur:
                cur.execute(LARGE_SQL)
                return int(cur.fetch_arrow_table().num_rows)

        def execute() -> int:
            return int(client.query(CONNECTION, LARGE_SQL).num_rows)

        def flight() -> int:
            with flight_conn.cursor() as cur:
                cur.execute(LARGE_SQL)
                return int(cur.fetch_arrow_table().num_rows)

        samples, warm, last = _interleaved(
            {
                "psql_copy_floor": floor,
                "adbc_direct": adbc_direct,
                "execute": execute,
                "flight_sql": flight,
            },
            b.plan.warmup,
            b.plan.repeat,
        )
        for name in ("adbc_direct", "execute", "flight_sql"):
            if last[name] != expected:
                raise WrongResult(f"{name} returned {last[name]} rows, the database {expected}")
        with flight_conn.cursor() as cur:
            cur.execute(POINT_SQL_POSITIONAL, (keys[0],))
            if len(cur.fetchall()) != 1:
                raise WrongResult("the Flight SQL point query did not return one row")
        bad = 0
        point_cursor = flight_conn.cursor()

        def point_flight() -> None:
            nonlocal bad
            point_cursor.execute(POINT_SQL_POSITIONAL, (rng.choice(keys),))
            if point_cursor.fetch_arrow_table().num_rows != 1:
                bad += 1

        def point_execute() -> None:
            nonlocal bad
            if client.execute(CONNECTION, POINT_SQL, {"k": rng.choice(keys)}).summary.rows != 1:
                bad += 1

        try:
            points = _latency_blocks(
                {"flight_sql": point_flight, "execute": point_execute},
                b.plan.point_calls,
                max(20, b.plan.point_calls // 10),
            )
        finally:
            point_cursor.close()
    finally:
        client.close()
        flight_conn.close()
        pg_conn.close()
    if bad:
        raise WrongResult(f"{bad} point queries did not return exactly one row")
    fl, floor_s, ex, direct = (
        summarize(samples[k]) for k in ("flight_sql", "psql_copy_floor", "execute", "adbc_direct")
    )
    ratio = fl["median"] / floor_s["median"]
    vs_execute = fl["median"] / ex["median"]
    point_fl, point_ex = summarize(points["flight_sql"]), summarize(points["execute"])
    t1 = target("<=", 1.15, "<= 1.15 x floor")
    t2 = target("<=", 1.0, "no slower than Execute")
    return {
        "metric": "seconds to a client pyarrow.Table through Flight SQL (ADBC)",
        "unit": "s",
        "rows": expected,
        "fabric": fl,
        "anchors": {"psql_copy_floor": floor_s, "execute": ex, "adbc_direct": direct},
        "ratio": ratio,
        "ratios": {
            "vs_floor": ratio,
            "vs_execute": vs_execute,
            "vs_adbc": fl["median"] / direct["median"],
            "point_p50_flight_vs_execute": point_fl["median"] / point_ex["median"],
        },
        "point_query": {"flight_sql": point_fl, "execute": point_ex},
        "target": t1,
        "targets": [t1, t2],
        "met": ratio <= 1.15 and vs_execute <= 1.0,
        "samples": {k: rounded(v) for k, v in samples.items()},
        "warmup_samples": {k: rounded(v) for k, v in warm.items()},
        "point_samples": {k: rounded(v) for k, v in points.items()},
    }


class ErrorWith(Exception):
    """An error that still carries the partial result."""

    def __init__(self, result: dict[str, Any], message: str) -> None:
        super().__init__(message)
        self.result = result


class WrongResultWith(ErrorWith, WrongResult):
    pass


@dataclass(frozen=True)
class Scenario:
    number: int
    name: str
    run: Callable[[Bench], dict[str, Any]]


SCENARIOS = [
    Scenario(1, "large result (~1 M rows x 16 columns), uncached", large_result),
    Scenario(2, "cache hit: Q1-style aggregate, latency", cache_hit),
    Scenario(3, "point query, uncached, random keys", point_query),
    Scenario(4, "throughput: 32 concurrent clients, cached", throughput),
    Scenario(5, "statement compile: cache hit vs first compile", compile_cache),
    Scenario(6, "memory: stream all of lineitem, uncached", memory),
    Scenario(7, "TPC-H queries vs direct", tpch_queries),
    Scenario(8, "capacity: server CPU per call by topology, 1 and 2 replicas", capacity),
    Scenario(9, "Flight SQL: large result into ADBC, point query p50", flight_sql),
    Scenario(10, "federated TPC-H split across PostgreSQL, MariaDB, DuckDB", federated_tpch),
]
