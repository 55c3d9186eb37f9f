"""Traces: one trace from the caller's call on the platform, over NATS, to the runtime
replica and its source, with parent/child links and never a value in a span; and spans
exported over OTLP/HTTP to a collector.

The first test records spans with the SDK's in-memory exporter (the SDK is not what is
tested: Fabric's instrumentation is), on a platform and a runtime replica over the real
NATS server with a DuckDB source. The second sends them with the OTLP/HTTP exporter to a
small HTTP receiver run by the test, which decodes what arrives."""

from __future__ import annotations

import asyncio
import http.server
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from fabric.app.parts import local_token
from fabric.client import FabricClient
from fabric.errors import Unauthenticated
from fabric.observability import tracing
from fabric.proto_values import params_to_proto
from fabric.v1 import query_pb2 as pb
from fabric.v1 import query_pb2_grpc as pb_grpc
from tests.e2e.conftest import start_harness
from tests.integration.test_roles import (
    CONNECTION,
    address,
    cluster,
    make_site,
    names,
    settings_for,
    until,
)
from tests.support.gateway_process import gateway_process
from tests.support.nats import nats_url, run_bounded

CANARY = "canary-Vx93-Quattlebaum"
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER_SPAN = "00f067aa0ba902b7"


@pytest.fixture
def recorded() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.install(provider)
    try:
        yield exporter
    finally:
        tracing.install(None)
        provider.shutdown()


def _everything_said(span: ReadableSpan) -> str:
    """Every text a span carries: name, attributes, events, status."""
    parts = [span.name, str(span.status.description or "")]
    parts += [f"{k}={v}" for k, v in (span.attributes or {}).items()]
    for event in span.events:
        parts.append(event.name)
        parts += [f"{k}={v}" for k, v in (event.attributes or {}).items()]
    return "\n".join(parts)


def test_one_trace_runs_from_the_platform_over_nats_to_the_replica_and_its_source(
    tmp_path: Path, recorded: InMemorySpanExporter
) -> None:
    url = nats_url()
    tenant, stage = names()
    make_site(tmp_path, tenant, stage)
    settings = settings_for(tmp_path, url)
    token = local_token(settings, tenant=tenant, stage=stage, role="developer")
    sql = f"SELECT count(*) AS n FROM people WHERE name <> :who AND name <> '{CANARY}-lit'"

    async def body() -> None:
        async with cluster(settings, stage, replicas=1) as (platform, runtimes):
            metadata = (
                ("authorization", f"Bearer {token}"),
                ("traceparent", f"00-{TRACE_ID}-{CALLER_SPAN}-01"),
            )

            def call() -> list[Any]:
                with grpc.insecure_channel(address(platform)) as channel:
                    stub = pb_grpc.QueryServiceStub(channel)
                    request = pb.ExecuteRequest(
                        connection=CONNECTION, sql=sql, params=params_to_proto({"who": CANARY})
                    )
                    return list(stub.Execute(request, metadata=metadata, timeout=30))

            chunks = await asyncio.to_thread(call)
            assert chunks[-1].summary.rows == 1

            def forged() -> grpc.StatusCode:
                with grpc.insecure_channel(address(platform)) as channel:
                    stub = pb_grpc.QueryServiceStub(channel)
                    request = pb.ExecuteRequest(connection=CONNECTION, sql="SELECT 1 AS one")
                    try:
                        list(stub.Execute(request, metadata=(("authorization", "Bearer x"),)))
                    except grpc.RpcError as error:
                        return error.code()
                return grpc.StatusCode.OK

            assert await asyncio.to_thread(forged) == grpc.StatusCode.UNAUTHENTICATED
            assert runtimes[0].replica.stats.served == 1
            await until(
                lambda: any(s.name == "fabric.call" for s in recorded.get_finished_spans()),
                10,
                "the call's span to end",
            )

    run_bounded(body(), 90)
    finished = recorded.get_finished_spans()
    # Authentication: a child of its call, which starts when it did; the forged token's
    # refusal is a failed one.
    refused = [
        s for s in finished if (s.attributes or {}).get("fabric.auth.outcome") == "invalid_token"
    ]
    assert len(refused) == 1 and not refused[0].status.is_ok
    refused_call = next(
        s for s in finished if refused[0].parent and s.context.span_id == refused[0].parent.span_id
    )
    assert refused_call.name == "fabric.call"
    assert refused_call.start_time == refused[0].start_time
    spans = {
        span.name: span
        for span in finished
        if span.context.trace_id == int(TRACE_ID, 16)  # the caller's trace
    }
    assert set(spans) >= {
        "fabric.call",
        "fabric.auth",
        "fabric.bus.forward",
        "fabric.bus.serve",
        "fabric.query",
        "fabric.compile",
        "fabric.admission",
        "fabric.source",
    }, sorted(spans)
    # One trace, the caller's, with every hop a child of the one before.
    assert {format(s.context.trace_id, "032x") for s in spans.values()} == {TRACE_ID}

    def parent_of(name: str) -> str:
        span = spans[name]
        assert span.parent is not None, name
        return format(span.parent.span_id, "016x")

    def span_id(name: str) -> str:
        return format(spans[name].context.span_id, "016x")

    assert parent_of("fabric.call") == CALLER_SPAN
    assert parent_of("fabric.auth") == span_id("fabric.call")
    assert (spans["fabric.auth"].attributes or {})["fabric.auth.outcome"] == "ok"
    assert spans["fabric.call"].start_time == spans["fabric.auth"].start_time
    assert parent_of("fabric.bus.forward") == span_id("fabric.call")
    assert parent_of("fabric.bus.serve") == span_id("fabric.bus.forward")
    assert spans["fabric.bus.serve"].parent.is_remote  # type: ignore[union-attr]
    assert parent_of("fabric.query") == span_id("fabric.bus.serve")
    for child in ("fabric.compile", "fabric.admission", "fabric.source"):
        assert parent_of(child) == span_id("fabric.query"), child
    source = spans["fabric.source"].attributes or {}
    assert (source["db.system"], source["fabric.connection"], source["fabric.rows"]) == (
        "duckdb",
        CONNECTION,
        1,
    )
    assert (spans["fabric.query"].attributes or {})["fabric.rows"] == 1
    assert (spans["fabric.call"].attributes or {})["rpc.method"] == (
        "/fabric.v1.QueryService/Execute"
    )
    # The canary (a parameter value and a literal) and the SQL text are in no span.
    for span in spans.values():
        said = _everything_said(span)
        assert CANARY not in said and "SELECT" not in said and "people" not in said, said


class _Collector(http.server.ThreadingHTTPServer):
    """A tiny OTLP/HTTP receiver: keeps what is POSTed to /v1/traces."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Receive)
        self.received: list[trace_service_pb2.ExportTraceServiceRequest] = []
        self.paths: list[str] = []


class _Receive(http.server.BaseHTTPRequestHandler):
    server: _Collector

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        request = trace_service_pb2.ExportTraceServiceRequest()
        request.ParseFromString(body)
        self.server.paths.append(self.path)
        self.server.received.append(request)
        answer = trace_service_pb2.ExportTraceServiceResponse().SerializeToString()
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, *args: Any) -> None:
        return None


def test_spans_arrive_at_an_otlp_http_collector(tmp_path: Path) -> None:
    collector = _Collector()
    serving = threading.Thread(target=collector.serve_forever, daemon=True)
    serving.start()
    provider = tracing.configure_tracing(
        f"http://127.0.0.1:{collector.server_address[1]}", "fabric-under-test"
    )
    h = start_harness(tmp_path)
    try:
        with FabricClient(h.address, timeout=30) as client:
            table = client.query("shop", "SELECT count(*) AS n FROM orders")
        assert table.to_pylist() == [{"n": 20_000}]
        deadline = time.monotonic() + 10
        names: set[str] = set()
        while "fabric.source" not in names or "fabric.call" not in names:
            tracing.flush()
            names = {
                span.name
                for request in collector.received
                for resource in request.resource_spans
                for scope in resource.scope_spans
                for span in scope.spans
            }
            if time.monotonic() > deadline:
                pytest.fail(f"the spans never arrived; got {sorted(names)}")
        assert {"fabric.call", "fabric.query", "fabric.compile", "fabric.source"} <= names
        assert set(collector.paths) == {"/v1/traces"}
        services = {
            attribute.value.string_value
            for request in collector.received
            for resource in request.resource_spans
            for attribute in resource.resource.attributes
            if attribute.key == "service.name"
        }
        assert services == {"fabric-under-test"}
    finally:
        h.gateway.stop()
        h.store.close()
        tracing.install(None)
        if provider is not None:
            provider.shutdown()
        collector.shutdown()
        collector.server_close()


def test_tracing_is_off_by_default_and_then_costs_one_shared_object() -> None:
    assert not tracing.tracing_enabled()
    first = tracing.span("fabric.query", None)
    assert first is tracing.span("fabric.compile") is tracing.span("fabric.source")
    with first as handle:
        handle.set("fabric.rows", 1)  # does nothing, raises nothing
    assert tracing.inject() == {} and tracing.extract({"traceparent": "x"}) is None


def test_the_standard_otel_variables_choose_the_collector_and_the_service_name() -> None:
    base = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318/"}
    assert tracing.traces_url("", {}) == ""
    assert tracing.traces_url("", base) == "http://collector:4318/v1/traces"
    traces = {**base, "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://other:4318/spans"}
    assert tracing.traces_url("", traces) == "http://other:4318/spans"  # as is, per the spec
    assert tracing.traces_url("", {**base, "OTEL_TRACES_EXPORTER": "none"}) == ""
    assert tracing.traces_url("", {**base, "OTEL_SDK_DISABLED": "true"}) == ""
    # Fabric's own setting wins over the standard ones.
    assert tracing.traces_url("http://mine:4318", traces) == "http://mine:4318/v1/traces"
    named = {"OTEL_SERVICE_NAME": "orders-gateway"}
    assert tracing.service_name("", named, "fabric-all") == "orders-gateway"
    assert tracing.service_name("fabric-eu", named, "fabric-all") == "fabric-eu"
    assert tracing.service_name("", {}, "fabric-all") == "fabric-all"


def test_a_gateway_process_exports_to_the_collector_the_otel_variables_name(
    tmp_path: Path,
) -> None:
    collector = _Collector()
    serving = threading.Thread(target=collector.serve_forever, daemon=True)
    serving.start()
    environment = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{collector.server_address[1]}",
        "OTEL_SERVICE_NAME": "gateway-from-otel-variables",
        "OTEL_BSP_SCHEDULE_DELAY": "50",  # the SDK's batch delay (ms), also standard
    }
    try:
        with gateway_process(tmp_path / "home", environment, tmp_path / "serve.log") as gateway:
            with (
                FabricClient(gateway.address, None, timeout=30) as client,
                pytest.raises(Unauthenticated),
            ):
                client.query("shop", "SELECT 1 AS one")
            deadline = time.monotonic() + 20
            while not collector.received:
                assert time.monotonic() < deadline, "no span reached the collector"
                time.sleep(0.05)
        names = {
            span.name
            for request in collector.received
            for resource in request.resource_spans
            for scope in resource.scope_spans
            for span in scope.spans
        }
        services = {
            attribute.value.string_value
            for request in collector.received
            for resource in request.resource_spans
            for attribute in resource.resource.attributes
            if attribute.key == "service.name"
        }
        assert "fabric.call" in names
        assert services == {"gateway-from-otel-variables"}
        assert set(collector.paths) == {"/v1/traces"}
    finally:
        collector.shutdown()
        collector.server_close()


def test_result_cache_lookups_are_spans_of_their_query(
    tmp_path: Path, recorded: InMemorySpanExporter
) -> None:
    h = start_harness(tmp_path)
    try:
        with FabricClient(h.address, timeout=30) as client:
            for _ in range(2):
                table = client.query("shop", "SELECT count(*) AS n FROM orders", cache_ttl=60)
                assert table.to_pylist() == [{"n": 20_000}]
    finally:
        h.gateway.stop()
        h.store.close()
    finished = recorded.get_finished_spans()
    queries = {s.context.span_id: s for s in finished if s.name == "fabric.query"}
    lookups = sorted(
        (s for s in finished if s.name == "fabric.cache"), key=lambda s: s.start_time or 0
    )
    assert [(s.attributes or {})["fabric.cache_hit"] for s in lookups] == [False, True]
    assert all(s.parent is not None and s.parent.span_id in queries for s in lookups)
    # The hit went to no source.
    hit_query = queries[lookups[1].parent.span_id]  # type: ignore[union-attr]
    sources = [s for s in finished if s.name == "fabric.source"]
    assert len(sources) == 1 and sources[0].parent.span_id != hit_query.context.span_id  # type: ignore[union-attr]
