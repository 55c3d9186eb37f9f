"""Live figures for the portal, read from the gateway's own Prometheus registry (the
numbers /metrics serves): cache hit ratio, latency percentiles, purges, query counts."""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Any

from prometheus_client import CollectorRegistry


def _percentile(buckets: list[tuple[float, float]], count: float, q: float) -> float | None:
    """The upper bound (ms) of the first latency bucket holding the q-th quantile: an
    upper estimate, as precise as the buckets are."""
    if count <= 0:
        return None
    wanted = q * count
    for bound, cumulative in buckets:
        if cumulative >= wanted:
            return None if math.isinf(bound) else bound * 1000
    return None


def stats(registry: CollectorRegistry) -> dict[str, Any]:
    counters: dict[str, float] = defaultdict(float)
    purges: dict[str, float] = {}
    by_protocol: dict[str, float] = defaultdict(float)
    buckets: dict[float, float] = defaultdict(float)
    latency_count = 0.0
    for metric in registry.collect():
        for sample in metric.samples:
            if metric.name == "fabric_purges" and sample.name.endswith("_total"):
                purges[sample.labels.get("reason", "")] = sample.value
            elif metric.name == "fabric_queries" and sample.name.endswith("_total"):
                by_protocol[sample.labels.get("protocol", "")] += sample.value
            elif metric.name == "fabric_query_seconds":
                if sample.name.endswith("_bucket"):
                    buckets[float(sample.labels["le"])] += sample.value
                elif sample.name.endswith("_count"):
                    latency_count += sample.value
            elif sample.name in (f"{metric.name}_total", metric.name):
                counters[metric.name] += sample.value
    hits = counters["fabric_result_cache_hits"]
    misses = counters["fabric_result_cache_misses"]
    ordered = sorted(buckets.items())
    return {
        "cache_hit_ratio": hits / (hits + misses) if hits + misses else None,
        "latency_ms": {
            "p50": _percentile(ordered, latency_count, 0.50),
            "p95": _percentile(ordered, latency_count, 0.95),
            "p99": _percentile(ordered, latency_count, 0.99),
        },
        "purges": purges,
        "queries_total": sum(by_protocol.values()),
        "queries_by_protocol": dict(by_protocol),
    }
