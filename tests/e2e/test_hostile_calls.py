"""Hostile and unlucky calls against a real gateway over a real channel: bytes that are
not a request are refused with INVALID_ARGUMENT and no traceback (before authentication
too), and a call that arrives while the gateway shuts down is told UNAVAILABLE with a
retry hint, never cut off as CANCELLED."""

from __future__ import annotations

import asyncio
import logging
import threading
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from fabric.api.status import ERROR_CODE_KEY
from fabric.client import FabricClient
from fabric.security.tokens import TokenConfig, mint_token
from fabric.v1 import query_pb2 as pb
from tests.e2e.conftest import Harness, start_harness
from tests.e2e.test_gateway import _wait_for

JUNK = b"\xff\xff\xff\xff\x0fnot a protobuf message"
UNARY_METHODS = (
    "/fabric.v1.QueryService/Fetch",
    "/fabric.v1.QueryService/OpenStatement",
    "/fabric.v1.ConnectionService/ListConnections",
)
STREAM_METHODS = ("/fabric.v1.QueryService/Execute",)


def _send_junk(
    channel: grpc.Channel, method: str, metadata: tuple[tuple[str, str], ...]
) -> grpc.RpcError:
    """Send JUNK as the request of `method` (identity serializers: the bytes go as they
    are); the error the call ends with."""
    with pytest.raises(grpc.RpcError) as failed:
        if method in STREAM_METHODS:
            list(channel.unary_stream(method)(JUNK, metadata=metadata, timeout=10))
        else:
            channel.unary_unary(method)(JUNK, metadata=metadata, timeout=10)
    return failed.value


def _tracebacks(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.exc_info or r.exc_text or r.stack_info]


def test_junk_bytes_are_invalid_argument_and_log_no_traceback(
    secured: tuple[Harness, TokenConfig], caplog: pytest.LogCaptureFixture
) -> None:
    h, config = secured
    bearer = mint_token(
        config, tenant="default", stage="development", role="admin", subject="t", ttl=300
    )
    authorized = (("authorization", f"Bearer {bearer}"),)
    rounds = 5
    with caplog.at_level(logging.DEBUG), grpc.insecure_channel(h.address) as channel:
        for _ in range(rounds):
            for method in (*UNARY_METHODS, *STREAM_METHODS):
                error = _send_junk(channel, method, authorized)
                assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, method
                details = error.details() or ""
                assert "not a valid fabric.v1." in details and "do not parse" in details
                assert (ERROR_CODE_KEY, "invalid_argument") in (error.trailing_metadata() or ())
                # before authentication: refused for the missing token, the bytes unread
                anonymous = _send_junk(channel, method, ())
                assert anonymous.code() == grpc.StatusCode.UNAUTHENTICATED, method
        # the gateway still answers a well-formed call on the same channel
        fetch = channel.unary_unary(
            "/fabric.v1.QueryService/Fetch",
            request_serializer=pb.FetchRequest.SerializeToString,
            response_deserializer=pb.Page.FromString,
        )
        with pytest.raises(grpc.RpcError) as missing:
            fetch(pb.FetchRequest(statement_id="nope"), metadata=authorized, timeout=10)
        assert missing.value.code() == grpc.StatusCode.NOT_FOUND
    assert _tracebacks(caplog) == []
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []
    calls = rounds * (len(UNARY_METHODS) + len(STREAM_METHODS))
    ours = [r for r in caplog.records if r.name.startswith("fabric")]
    # At most one (debug) line per junk call, besides the access log's one per call.
    assert len([r for r in ours if r.name != "fabric.access"]) <= calls
    assert len([r for r in ours if r.name == "fabric.access"]) <= 2 * calls + 1


def test_junk_bytes_with_authentication_off_are_invalid_argument(
    harness: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.DEBUG), grpc.insecure_channel(harness.address) as channel:
        for method in (*UNARY_METHODS, *STREAM_METHODS):
            error = _send_junk(channel, method, ())
            assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, method
    assert _tracebacks(caplog) == []


def _health(channel: grpc.Channel) -> health_pb2.HealthCheckResponse.ServingStatus.ValueType:
    try:
        reply = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(), timeout=5
        )
    except grpc.RpcError:
        return health_pb2.HealthCheckResponse.UNKNOWN
    return reply.status


def test_a_call_arriving_during_shutdown_is_unavailable_with_a_retry_hint(
    tmp_path: Path,
) -> None:
    h = start_harness(tmp_path)
    gateway = h.gateway.gateway
    running: list[object] = []
    try:
        with grpc.insecure_channel(h.address) as channel, FabricClient(h.address) as client:
            assert _health(channel) == health_pb2.HealthCheckResponse.SERVING
            h.gate.clear()  # the next query waits at the source: the gateway drains
            in_flight = threading.Thread(
                target=lambda: running.append(client.query("shop", "SELECT id FROM orders"))
            )
            in_flight.start()
            assert _wait_for(lambda: len(h.executed) == 1)
            stopping = asyncio.run_coroutine_threadsafe(gateway.stop(30), h.gateway._loop)
            assert _wait_for(lambda: _health(channel) == health_pb2.HealthCheckResponse.NOT_SERVING)
            fetch = channel.unary_unary(
                "/fabric.v1.QueryService/Fetch",
                request_serializer=pb.FetchRequest.SerializeToString,
                response_deserializer=pb.Page.FromString,
            )
            with pytest.raises(grpc.RpcError) as refused:
                fetch(pb.FetchRequest(statement_id="any"), timeout=10)
            assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
            details = refused.value.details() or ""
            assert "shutting down" in details and "retry" in details
            assert not stopping.done()  # the call in flight holds the drain open
            h.gate.set()
            in_flight.join(timeout=30)
            assert running and getattr(running[0], "num_rows", None) == 20_000
            stopping.result(timeout=30)  # drained: stopped without waiting out the grace
    finally:
        h.gate.set()
        h.gateway.stop()
        h.store.close()
