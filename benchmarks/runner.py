"""`python -m benchmarks`: prepare the data, start the gateway and the echo service, run
the scenarios, write the results, stop everything it started."""

from __future__ import annotations

import argparse
import shlex
import sys
import time
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks import federation, report, tpch
from benchmarks.common import RESULTS, Pg, machine_facts
from benchmarks.echo import EchoProcess
from benchmarks.gateway import FabricHome, GatewayProcess
from benchmarks.scenarios import SCENARIOS, Bench, ErrorWith, Plan, WrongResult

QUICK_SCALE = 0.01


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="Fabric benchmarks: ratios against anchors measured in the "
        "same run. PostgreSQL: FABRIC_BENCH_POSTGRES_URL (default "
        "postgresql://postgres@127.0.0.1:5432/fabric_bench).",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"smoke test: scale {QUICK_SCALE}, fewer repetitions, 3 s of "
        "throughput; targets reported, not asserted",
    )
    parser.add_argument(
        "--scale", type=float, help=f"TPC-H scale factor (default 1; quick {QUICK_SCALE})"
    )
    parser.add_argument("--only", help="comma-separated scenario numbers, e.g. 1,2")
    parser.add_argument(
        "--repeat", type=int, help="measured repetitions of the long scenarios (default 5; quick 3)"
    )
    parser.add_argument("--reload", action="store_true", help="regenerate and reload the data")
    parser.add_argument("--output", default=str(RESULTS), help="results directory")
    parser.add_argument(
        "--name",
        help="file stem of the results (default: latest for a full "
        "run of every scenario, quick for --quick, partial "
        "for --only)",
    )
    args = parser.parse_args(argv)
    if args.scale is None:
        args.scale = QUICK_SCALE if args.quick else 1.0
    if args.scale <= 0:
        parser.error("--scale must be positive")
    known = {s.number for s in SCENARIOS}
    if args.only:
        try:
            args.only = sorted({int(x) for x in args.only.split(",") if x.strip()})
        except ValueError:
            parser.error("--only takes scenario numbers, e.g. 1,2")
        if not set(args.only) <= known:
            parser.error(f"unknown scenario in --only; known: {sorted(known)}")
    else:
        args.only = sorted(known)
    return args


def _scale_text(scale: float) -> float | int:
    return int(scale) if float(scale).is_integer() else scale


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    command = " ".join(
        [
            "python -m benchmarks",
            *(shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv)),
        ]
    )
    plan = Plan.make(args.quick, args.repeat)
    pg = Pg.from_env()
    started = time.perf_counter()
    data = tpch.prepare(pg, args.scale, force=args.reload)
    results: list[dict[str, Any]] = []
    failures: list[str] = []
    cold_starts: list[float] = []
    also: dict[str, Any] = {}
    home = FabricHome()
    echo = EchoProcess()
    gateway: GatewayProcess | None = None
    try:
        entities = home.register(pg, data.schema)
        print(f"registered connection 'tpch' with entities {', '.join(entities)}", flush=True)
        split, split_error = None, ""
        if 10 in args.only:
            try:
                split = federation.prepare(pg, data, home, force=args.reload)
            except Exception as exc:  # scenario 10 reports it; the others still run
                split_error = f"{type(exc).__name__}: {exc}"
                print(f"the split TPC-H sources could not be prepared: {split_error}", flush=True)
        token = home.token()
        echo.start()
        gateway = GatewayProcess(home, pg).start()
        cold_starts.append(gateway.cold_start_seconds)
        print(
            f"gateway healthy in {gateway.cold_start_seconds:.2f} s on {gateway.address}; "
            f"echo on {echo.address}",
            flush=True,
        )
        bench = Bench(pg, data, home, gateway, echo, plan, cold_starts, token, split, split_error)
        # The memory scenario runs last, in its own fresh gateway, after the main gateway's
        # counters are read and it is stopped.
        order = [s for s in SCENARIOS if s.number in args.only]
        order.sort(key=lambda s: s.number == 6)
        for scenario in order:
            if scenario.number == 6 and gateway is not None:
                also.update(_gateway_figures(gateway))
                gateway.stop()
                gateway = None
            results.append(_run_one(scenario, bench, failures))
        if gateway is not None:
            also.update(_gateway_figures(gateway))
    finally:
        if gateway is not None:
            gateway.stop()
        echo.stop()
        home.cleanup()
    results.sort(key=lambda s: s["number"])
    also["cold_start_seconds"] = cold_starts
    run = {
        "suite": "fabric benchmarks",
        "command": command,
        "quick": args.quick,
        "scale": _scale_text(args.scale),
        "dataset": {
            "database": pg.database,
            "schema": data.schema,
            "rows": data.rows,
            "generator": data.generator,
            "reused": data.reused,
            "load_seconds": data.load_seconds,
        },
        "plan": vars(plan),
        "machine": machine_facts(pg),
        "scenarios": results,
        "also": also,
        "errors": failures,
        "seconds": time.perf_counter() - started,
        "targets_asserted": not args.quick,
    }
    stem = args.name or (
        "quick" if args.quick else "latest" if len(args.only) == len(SCENARIOS) else "partial"
    )
    paths = report.write(run, Path(args.output), stem)
    print(report.markdown(run, stem))
    print("wrote " + ", ".join(str(p) for p in paths), flush=True)
    if failures:
        print("ERRORS:\n  " + "\n  ".join(failures), file=sys.stderr)
        return 1
    return 0


def _run_one(scenario: Any, bench: Bench, failures: list[str]) -> dict[str, Any]:
    print(f"-- scenario {scenario.number}: {scenario.name}", flush=True)
    t0 = time.perf_counter()
    base = {"number": scenario.number, "name": scenario.name}
    try:
        result = {**base, **scenario.run(bench)}
    except Exception as exc:  # recorded, and the run exits non-zero
        kind = "wrong result" if isinstance(exc, WrongResult) else type(exc).__name__
        message = f"{kind}: {exc}"
        partial = exc.result if isinstance(exc, ErrorWith) else {}
        result = {
            **base,
            **partial,
            "met": False,
            "error": message,
            "traceback": traceback.format_exc(limit=8),
        }
        failures.append(f"scenario {scenario.number}: {message}")
        print(f"   ERROR {message}", flush=True)
        if bench.gateway.proc is not None:
            tail = bench.gateway.log_tail(15)
            if tail:
                result["gateway_log_tail"] = tail
    result["wall_seconds"] = time.perf_counter() - t0
    if "error" not in result:
        print(
            f"   ratio {result.get('ratio'):.4g} target {result['target']['text']} "
            f"met={result['met']} ({result['wall_seconds']:.1f} s)",
            flush=True,
        )
    return result


def _gateway_figures(gateway: GatewayProcess) -> dict[str, Any]:
    try:
        m = gateway.metrics()
    except OSError as exc:
        return {"metrics_error": str(exc)}

    def get(name: str) -> float | None:
        for key in (name, name + "_total"):
            if key in m:
                return m[key]
        return None

    hits, misses = get("fabric_compiled_statement_hits"), get("fabric_compiled_statement_misses")
    ratio = hits / (hits + misses) if hits is not None and misses and hits + misses else None
    return {
        "compiled_statement_hits": hits,
        "compiled_statement_misses": misses,
        "compiled_statement_hit_ratio": ratio,
        "result_cache_bytes": get("fabric_result_cache_bytes"),
        "result_cache_entries": get("fabric_result_cache_entries"),
        "result_cache_hits": get("fabric_result_cache_hits"),
        "gateway_rss_end": gateway.rss() if gateway.proc is not None else None,
        "metrics_source": f"http://127.0.0.1:{gateway.metrics_port}/metrics",
    }
