"""Scenario 10: TPC-H split across three sources (benchmarks.tpch_split), every query
through the gateway as one federated query, against the all-in-PostgreSQL reference run
directly with psycopg; and per query the rows the sources moved (from EXPLAIN ANALYZE)
against the rows a perfect pushdown would move (benchmarks.tpch_pushdown).

MariaDB's copy is cached across runs: a database per scale factor with a marker table
(scale, generator, layout, source schema), reloaded when any of them differs or on
--reload. The DuckDB file is rebuilt in the run's FABRIC_HOME each run (seconds).
"""

from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING, Any

from benchmarks.common import Pg, geomean, rounded, summarize
from benchmarks.tpch import Dataset, queries
from benchmarks.tpch_pushdown import perfect_rows
from benchmarks.tpch_split import (
    MARIADB_LAYOUT,
    MariaDb,
    SplitSources,
    arrow_rows,
    build_sources,
    compare,
    qualify,
    register,
)

if TYPE_CHECKING:
    from benchmarks.gateway import FabricHome
    from benchmarks.scenarios import Bench

DEFAULT_MARIADB_URL = "mysql://root@127.0.0.1:3306/"
TARGET = 1.5
CAP_SECONDS = 120.0
"""A federated query slower than this is reported over the cap (not timed further)."""


def mariadb() -> MariaDb:
    """The MariaDB server for the split, from FABRIC_BENCH_MARIADB_URL."""
    server = MariaDb.from_url(os.environ.get("FABRIC_BENCH_MARIADB_URL", DEFAULT_MARIADB_URL))
    if server.host not in ("127.0.0.1", "localhost", "::1"):
        raise SystemExit(f"the benchmark only talks to 127.0.0.1; got host {server.host!r}")
    return server


def prepare(pg: Pg, data: Dataset, home: FabricHome, *, force: bool = False) -> SplitSources:
    """The split's MariaDB database (reused when its marker matches) and DuckDB file, and
    the three connections registered in `home`."""
    from fabric.app.parts import catalog_manager
    from fabric.catalog.metadata.sqlite import SqliteMetadataStore
    from fabric.context import DEFAULT_STAGE, DEFAULT_TENANT

    server = mariadb()
    database = f"fabric_bench_{data.schema}"
    marker = {
        "scale": str(data.scale),
        "generator": data.generator,
        "layout": MARIADB_LAYOUT,
        "source": f"{pg.database}.{data.schema}",
        "source_rows": data.rows,
    }
    if force:
        server.drop(database)
    t0 = time.perf_counter()
    sources = build_sources(
        pg.conninfo(connect_timeout=10),
        data.schema,
        server,
        database,
        home.path / "tpch-split.duckdb",
        marker=marker,
    )
    how = "reused" if sources.mariadb_reused else f"loaded in {sources.mariadb_seconds:.1f} s"
    print(
        f"split TPC-H SF{data.scale}: MariaDB {database} {how}; DuckDB file in "
        f"{sources.duckdb_seconds:.1f} s ({time.perf_counter() - t0:.1f} s in all)",
        flush=True,
    )
    store = SqliteMetadataStore(home.path / "metadata.sqlite")
    try:
        settings = {"host": pg.host, "port": pg.port, "database": pg.database, "user": pg.user}
        entities = register(
            catalog_manager(store),
            DEFAULT_TENANT,
            DEFAULT_STAGE,
            settings,
            data.schema,
            server,
            sources,
        )
    finally:
        store.close()
    print(
        "registered " + "; ".join(f"{c}: {', '.join(e)}" for c, e in entities.items()),
        flush=True,
    )
    return sources


def explain_client(b: Bench) -> Any:
    """A client for EXPLAIN, which takes the developer role (a plan names physical
    tables): with FABRIC_AUTH=local a token minted with the run's local key, else the
    run's token."""
    from fabric.client import FabricClient
    from fabric.config import Settings

    settings = Settings.from_env({**os.environ, "FABRIC_HOME": str(b.home.path)})
    token = b.token
    if settings.auth == "local":
        from fabric.app.parts import local_token

        token = local_token(settings, role="developer", subject="fabric-bench", ttl=4 * 3600)
    return FabricClient(b.gateway.address, token, timeout=CAP_SECONDS)


def moved_rows(client: Any, text: str) -> dict[str, Any]:
    """What each source moved for `text`, from EXPLAIN ANALYZE (a run of its own, never
    cached): rows and bytes per connection, and each part's statement."""
    explained = client.explain("", text, analyze=True)
    rows: dict[str, int] = {}
    nbytes: dict[str, int] = {}
    parts = []
    for part in explained.parts:
        parts.append(
            {
                "name": part.name,
                "connection": part.connection,
                "sql": part.sql,
                "rows": part.rows,
                "bytes": part.bytes,
                "dynamic_filter": part.dynamic_filter,
            }
        )
        if part.connection:
            rows[part.connection] = rows.get(part.connection, 0) + part.rows
            nbytes[part.connection] = nbytes.get(part.connection, 0) + part.bytes
    return {
        "federated": explained.federated,
        "moved_rows": rows,
        "moved_bytes": nbytes,
        "parts": parts,
    }


def _timed_rounds(direct: Any, federated: Any, repeat: int) -> tuple[list[float], list[float]]:
    """`repeat` rounds of both, alternating which goes first."""
    samples: dict[str, list[float]] = {"direct": [], "fabric": []}
    order = [("direct", direct), ("fabric", federated)]
    for round_no in range(repeat):
        for name, fn in order if round_no % 2 == 0 else order[::-1]:
            started = time.perf_counter()
            fn()
            samples[name].append(time.perf_counter() - started)
    return samples["direct"], samples["fabric"]


def federated_tpch(b: Bench) -> dict[str, Any]:
    from fabric.errors import DeadlineExceeded, FabricError

    if b.split is None:
        raise RuntimeError(f"the split sources were not prepared: {b.split_error or 'not asked'}")
    per_query: list[dict[str, Any]] = []
    wrong: list[str] = []
    errors: list[str] = []
    client = b.client(timeout=CAP_SECONDS)
    explainer = explain_client(b)
    conn = b.direct()
    try:
        for q in queries(b.data.scale):
            entry: dict[str, Any] = {"query": f"Q{q.number}", "total_order": q.total_order}
            per_query.append(entry)
            text = qualify(q.sql)
            entry["perfect_rows"] = perfect_rows(conn, q.number, q.sql)
            started = time.perf_counter()
            expected = [tuple(r) for r in conn.execute(q.sql).fetchall()]
            first_direct = time.perf_counter() - started
            try:
                started = time.perf_counter()
                table = client.query("", text)
                first_fabric = time.perf_counter() - started
            except DeadlineExceeded:
                entry.update(status="over_cap", reason=f"over {CAP_SECONDS:.0f} s through Fabric")
                print(f"   Q{q.number}: over the cap", flush=True)
                continue
            except FabricError as exc:
                entry.update(status="error", reason=f"{exc.code}: {exc.message}")
                errors.append(f"Q{q.number}: {exc.code}: {exc.message}")
                print(f"   Q{q.number}: error {exc.code}", flush=True)
                continue
            diff = compare(arrow_rows(table), expected, q.total_order)
            if diff is not None:
                entry.update(status="wrong_result", reason=diff)
                wrong.append(f"Q{q.number}: {diff}")
                print(f"   Q{q.number}: wrong result", flush=True)
                continue
            entry.update(moved_rows(explainer, text))
            direct, fabric = _timed_rounds(
                lambda sql=q.sql: conn.execute(sql).fetchall(),
                lambda text=text: client.query("", text),
                b.plan.tpch_repeat,
            )
            d, f = summarize(direct), summarize(fabric)
            print(
                f"   Q{q.number}: {f['median'] / d['median']:.2f}x, "
                f"moved {sum(entry['moved_rows'].values()):,} rows "
                f"(perfect {sum(entry['perfect_rows'].values()):,})",
                flush=True,
            )
            entry.update(
                status="ok",
                rows=len(expected),
                direct=d,
                fabric=f,
                ratio=f["median"] / d["median"],
                samples={"direct": rounded(direct), "fabric": rounded(fabric)},
                warmup_samples={
                    "direct": [round(first_direct, 7)],
                    "fabric": [round(first_fabric, 7)],
                },
            )
    finally:
        client.close()
        explainer.close()
        conn.close()
    ok = [e for e in per_query if e["status"] == "ok"]
    ratio = geomean([e["ratio"] for e in ok])
    counts: dict[str, int] = {}
    for e in per_query:
        counts[e["status"]] = counts.get(e["status"], 0) + 1
    moved = sum(sum(e.get("moved_rows", {}).values()) for e in ok)
    perfect = sum(sum(e["perfect_rows"].values()) for e in ok)
    result = {
        "metric": "split TPC-H (lineitem, orders in PostgreSQL; customer, nation, region in "
        "MariaDB; part, partsupp, supplier in DuckDB) through Fabric's federation vs "
        "all-in-PostgreSQL direct psycopg (geometric mean of the per-query median ratios)",
        "unit": "ratio",
        "fabric": {"median": geomean([e["fabric"]["median"] for e in ok]) if ok else None},
        "anchors": {
            "direct_psycopg_all_in_postgres": {
                "median": geomean([e["direct"]["median"] for e in ok]) if ok else None
            }
        },
        "ratio": ratio,
        "target": {"op": "<=", "value": TARGET, "text": f"geomean <= {TARGET}, all 22 equal"},
        "met": len(ok) == len(per_query) and ratio <= TARGET,
        "counts": counts,
        "rows_moved": {"sources": moved, "perfect_pushdown": perfect},
        "queries": per_query,
        "split_load": {
            "mariadb_seconds": b.split.mariadb_seconds,
            "mariadb_reused": b.split.mariadb_reused,
            "duckdb_seconds": b.split.duckdb_seconds,
        },
        "cap_seconds": CAP_SECONDS,
    }
    if wrong or errors:
        from benchmarks.scenarios import ErrorWith, WrongResultWith

        if wrong:
            raise WrongResultWith(result, "; ".join(wrong + errors))
        raise ErrorWith(result, "; ".join(errors))
    return result
