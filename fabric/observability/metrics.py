"""Prometheus metrics of one gateway. Labels carry outcomes and kinds, never values.

Label cardinality is bounded: outcomes, reasons and kinds are fixed sets; the `connection`
label (pool gauges, latency by connection) takes only names of connections an
administrator created and that a query resolved (a name a caller merely asked for never
becomes a label), with their tenant and stage: as many series as connections."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

LATENCY_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    300.0,
)

# (name, help, kind) of figures read from components at scrape time, so each number
# has one owner and is never counted twice.
Snapshot = Callable[[], Mapping[str, float]]
GAUGES = {
    "result_cache_bytes": "Bytes held by the result cache.",
    "result_cache_entries": "Results held by the result cache.",
    "open_statements": "Statements open for paging.",
    "compiled_statements": "Entries of the compiled-statement cache.",
    "admission_running": "Queries admitted to run at their sources (open statements "
    "holding a connection included).",
    "admission_waiting": "Queries waiting to be admitted.",
    "memory_budget_bytes": "The gateway's memory budget.",
    "memory_used_bytes": "Bytes counted on the memory budget.",
    "flight_prepared_statements": "Flight SQL prepared statements held.",
    "flight_started_results": "Flight SQL results started by GetFlightInfo, not yet read.",
    "running_queries": "Queries in this process's list of running queries.",
}
COUNTERS = {
    "result_cache_hits": "Queries answered from the result cache.",
    "result_cache_misses": "Cacheable queries not found in the result cache.",
    "result_cache_evictions": "Results evicted to keep within the byte budget.",
    "result_cache_rejected_too_large": "Results that streamed through without being held.",
    "result_cache_coalesced": "Queries that waited for an identical one in flight.",
    "compiled_statement_hits": "Compilations skipped thanks to the statement cache.",
    "compiled_statement_misses": "SQL texts compiled.",
    "admission_admitted": "Queries admitted to run at their sources.",
    "admission_queued": "Queries that waited for admission (admitted or refused in the end).",
    "memory_charges_refused": "Reservations and growth the memory budget had no room for "
    "(queries waited, results streamed uncached, statement buffers stopped growing).",
    "memory_given_back": "Times free memory was returned to the system once idle.",
    "source_calls_overrun": "Calls ended at their deadline while their source had not "
    "answered (the query is stopped in the background).",
    "running_queries_untracked": "Queries run without a place in the (full) list of running "
    "queries.",
    "running_queries_cancelled": "Running queries cancelled by an administrator.",
}
# Labelled figures: one family each, its label values read from the snapshot keys that
# start with the prefix (their owners list them: admission reasons, statement shares,
# memory uses).
LABELLED = (
    (
        CounterMetricFamily,
        "fabric_admission_refused",
        "Queries refused admission (RESOURCE_EXHAUSTED, or DEADLINE_EXCEEDED when the call's "
        "deadline ended the wait), by the limit they were at.",
        "reason",
        "admission_refused_",
    ),
    (
        CounterMetricFamily,
        "fabric_statements_refused",
        "Statement opens refused, by the share that was full.",
        "share",
        "statements_refused_",
    ),
    (
        GaugeMetricFamily,
        "fabric_memory_held_bytes",
        "Bytes on the memory budget, by use.",
        "use",
        "memory_held_",
    ),
)
PURGE_REASONS = (
    "statement_idle",
    "statement_closed",
    "result_expired",
    "connection_purged",
    "compiled_purged",
    # the Flight SQL door's prepared statements and started results
    "flight_statement_idle",
    "flight_statement_closed",
    # the platform's departures (fabric.platform.departure)
    "connection_changed",
    "connection_deleted",
    "metadata_stale",
    "result_purged",
    "source_purged",
    # running work stopped because access it was compiled under narrowed
    # (fabric.query.revocation)
    "statement_revoked",
    "stream_revoked",
)


# Bus figures (fabric.messaging: replica, forwarder, sealer, platform events, NATS link),
# reported only by a process that has a bus.
BUS_GAUGES = {
    "bus_connected": "1 while the NATS connection is up.",
    "bus_replica_in_flight": "Queries this runtime replica is serving now.",
    "bus_events_pending": "Platform events waiting in the outbox to be published again.",
    "bus_replica_ready": "1 once this runtime replica serves (metadata loaded, events caught up).",
    "bus_replica_metadata_loaded": "1 once this runtime replica's metadata store answered.",
    "bus_replica_events_caught_up": "1 once this runtime replica applied every event it was owed.",
}
BUS_COUNTERS = {
    "bus_reconnects": "Reconnections to NATS.",
    "bus_replica_accepted": "Bus queries this replica accepted.",
    "bus_replica_served": "Bus queries this replica answered to the end.",
    "bus_replica_failed": "Bus queries that ended in an error on this replica.",
    "bus_replica_cancelled": "Bus queries cancelled (caller gone, shutdown).",
    "bus_replica_stalled": "Bus queries cancelled for lack of flow-control credit.",
    "bus_replica_busy": "Bus queries refused as busy (retried elsewhere).",
    "bus_replica_chunks_sent": "Sealed result chunks sent.",
    "bus_replica_bytes_sent": "Sealed result bytes sent.",
    "bus_forwarder_requests": "Queries forwarded to runtime replicas.",
    "bus_forwarder_attempts": "Attempts of forwarded queries.",
    "bus_forwarder_retries": "Retried attempts of forwarded queries.",
    "bus_forwarder_completed": "Forwarded queries that completed.",
    "bus_forwarder_failed": "Forwarded queries that failed.",
    "bus_forwarder_cancelled": "Forwarded queries cancelled by their caller.",
    "bus_forwarder_chunks_received": "Result chunks received from replicas.",
    "bus_forwarder_protocol_errors": "Result streams with a gap, duplicate or overflow.",
    "bus_sealed": "Bus payloads sealed.",
    "bus_opened": "Bus payloads opened.",
    "bus_events_published": "Platform events stored on JetStream at the first try.",
    "bus_events_publish_failed": "Platform events JetStream did not store at once "
    "(the admin call reported it).",
    "bus_events_republished": "Platform events stored by a background retry.",
    "bus_events_outbox_dropped": "Platform events dropped from a full outbox.",
    "bus_events_applied": "Platform events applied by this replica (once per event).",
    "bus_events_duplicates": "Redelivered platform events skipped as already applied.",
    "bus_events_apply_failed": "Platform event applications that failed (redelivered).",
    "bus_events_ignored": "Platform events with nothing to apply here (keys rotated).",
}
TRUNCATION_REASONS = ("rows", "bytes")
AUTH_FAILURE_REASONS = ("missing_token", "invalid_token", "wrong_stage", "role")
"""Why a call was refused before it ran: no usable `authorization: Bearer` metadata, a
token that does not verify (signature, issuer, audience, lifetime), a token of another
stage on a runtime replica, a role below the method's."""
PoolFigures = tuple[str, str, str, int, int, int]
"""(tenant, connection, stage, in use, idle, waiting) of one source's connection pool."""
BUS_REJECT_REASONS = ("integrity", "oversized", "malformed", "expired", "duplicate", "unexpected")


def _unlabelled(
    values: Mapping[str, float], gauges: Mapping[str, str], counters: Mapping[str, str]
) -> Iterator[Metric]:
    """One gauge or counter per documented name, 0 where the snapshots have no value."""
    for name, doc in gauges.items():
        g = GaugeMetricFamily(f"fabric_{name}", doc)
        g.add_metric([], float(values.get(name, 0)))
        yield g
    for name, doc in counters.items():
        c = CounterMetricFamily(f"fabric_{name}", doc)
        c.add_metric([], float(values.get(name, 0)))
        yield c


def _by_reason(
    values: Mapping[str, float], name: str, doc: str, reasons: Iterable[str], prefix: str
) -> CounterMetricFamily:
    """One counter labelled by reason, read from the snapshot values `<prefix><reason>`."""
    counter = CounterMetricFamily(name, doc, labels=["reason"])
    for reason in reasons:
        counter.add_metric([reason], float(values.get(f"{prefix}{reason}", 0)))
    return counter


def _bus_metrics(values: Mapping[str, float]) -> Iterator[Metric]:
    yield from _unlabelled(values, BUS_GAUGES, BUS_COUNTERS)
    yield _by_reason(
        values,
        "fabric_bus_rejected",
        "Bus messages refused, by reason (never opened in clear).",
        BUS_REJECT_REASONS,
        "bus_rejected_",
    )


class _SnapshotCollector(Collector):
    def __init__(self, snapshot: Snapshot) -> None:
        self._snapshots = [snapshot]

    def add(self, snapshot: Snapshot) -> None:
        self._snapshots.append(snapshot)

    def collect(self) -> Iterator[Metric]:
        values: dict[str, float] = {}
        for snapshot in list(self._snapshots):
            values.update(snapshot())
        yield from _unlabelled(values, GAUGES, COUNTERS)
        yield _by_reason(
            values, "fabric_purges", "Data dropped from memory, by reason.", PURGE_REASONS, "purge_"
        )
        for family, name, doc, label, prefix in LABELLED:
            metric = family(name, doc, labels=[label])
            for key, value in values.items():
                if key.startswith(prefix):
                    metric.add_metric([key.removeprefix(prefix)], float(value))
            yield metric
        if any(name.startswith("bus_") for name in values):
            yield from _bus_metrics(values)


class _PoolCollector(Collector):
    """Pool gauges of the sources held now, read at scrape time."""

    def __init__(self) -> None:
        self._sources: list[Callable[[], Iterable[PoolFigures]]] = []

    def add(self, source: Callable[[], Iterable[PoolFigures]]) -> None:
        self._sources.append(source)

    def collect(self) -> Iterator[Metric]:
        labels = ["tenant", "connection", "stage"]
        families = {
            "in_use": GaugeMetricFamily(
                "fabric_pool_connections_in_use",
                "Connections of a source's pool lent to queries (or being opened).",
                labels=labels,
            ),
            "idle": GaugeMetricFamily(
                "fabric_pool_connections_idle",
                "Connections idle in a source's pool.",
                labels=labels,
            ),
            "waiting": GaugeMetricFamily(
                "fabric_pool_waiting",
                "Queries waiting for a connection of a source's pool.",
                labels=labels,
            ),
        }
        for source in list(self._sources):
            for tenant, connection, stage, in_use, idle, waiting in source():
                key = [tenant, connection, stage]
                families["in_use"].add_metric(key, float(in_use))
                families["idle"].add_metric(key, float(idle))
                families["waiting"].add_metric(key, float(waiting))
        yield from families.values()


class GatewayMetrics:
    def __init__(self, snapshot: Snapshot) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.queries = Counter(
            "fabric_queries",
            "Queries by method, outcome and protocol (the door: grpc, flight_sql, rest).",
            ["method", "outcome", "protocol"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "fabric_query_seconds",
            "Gateway time per query.",
            ["method", "source", "protocol"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.rows = Counter("fabric_rows_sent", "Rows sent to callers.", registry=self.registry)
        self.bytes_sent = Counter(
            "fabric_bytes_sent",
            "Arrow IPC bytes of results streamed by this process's engine, by the protocol "
            "the call came in by (grpc, flight_sql).",
            ["protocol"],
            registry=self.registry,
        )
        self.truncated = Counter(
            "fabric_results_truncated",
            "Results cut short at a cap, by which: rows (max_rows) or bytes (max_bytes).",
            ["reason"],
            registry=self.registry,
        )
        for reason in TRUNCATION_REASONS:
            self.truncated.labels(reason)  # shown at 0 before the first one
        self.auth_failures = Counter(
            "fabric_auth_failures",
            "Calls refused by authentication or authorization, by reason: "
            + ", ".join(AUTH_FAILURE_REASONS)
            + ".",
            ["reason"],
            registry=self.registry,
        )
        for reason in AUTH_FAILURE_REASONS:
            self.auth_failures.labels(reason)
        self.connection_latency = Histogram(
            "fabric_connection_query_seconds",
            "Time per query streamed (gRPC Execute, Flight SQL), by the connection it ran "
            "on and its outcome (ok, an error code, cancelled).",
            ["tenant", "connection", "outcome"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self._pools = _PoolCollector()
        self.registry.register(self._pools)
        self._collector = _SnapshotCollector(snapshot)
        self.registry.register(self._collector)

    def auth_failure(self, reason: str) -> None:
        """Count a refused call (`reason` one of AUTH_FAILURE_REASONS); any door calls it."""
        if reason not in AUTH_FAILURE_REASONS:
            raise ValueError(f"unknown authentication failure reason {reason!r}")
        self.auth_failures.labels(reason).inc()

    def add_pools(self, source: Callable[[], Iterable[PoolFigures]]) -> None:
        """Report the pools `source` lists at each scrape."""
        self._pools.add(source)

    def add_snapshot(self, snapshot: Snapshot) -> None:
        """Read more figures at scrape time (another component's purge counts, say); each
        name must have one owner."""
        self._collector.add(snapshot)
