"""A bare gRPC echo service: the anchor for what the gRPC hop alone costs.

It runs in its own process with the gateway's own server options
(`fabric.api.server.channel_options`) on grpc.aio, and answers
`/fabric.v1.QueryService/Execute` by replaying byte for byte the response messages the
gateway sent for the same request (recorded by the benchmark and loaded with `Set`). So
the same client (`fabric.client.FabricClient`, decoding the same Arrow IPC) receives the
same number of messages and bytes; the difference is what the gateway itself costs.

`python -m benchmarks.echo [--listen 127.0.0.1:0]` prints `echo serving on port N`.
"""

from __future__ import annotations

import argparse
import asyncio
import select
import signal
import struct
import subprocess
import sys
from collections.abc import AsyncIterator, Sequence

import grpc

EXECUTE = "/fabric.v1.QueryService/Execute"
SET = "/fabric.bench.Echo/Set"


def frame(items: Sequence[bytes]) -> bytes:
    parts = [struct.pack(">I", len(items))]
    for item in items:
        parts.append(struct.pack(">I", len(item)))
        parts.append(item)
    return b"".join(parts)


def unframe(data: bytes) -> list[bytes]:
    (count,), offset = struct.unpack_from(">I", data), 4
    items = []
    for _ in range(count):
        (size,) = struct.unpack_from(">I", data, offset)
        offset += 4
        items.append(data[offset : offset + size])
        offset += size
    return items


class _Echo:
    def __init__(self) -> None:
        self.responses: dict[bytes, list[bytes]] = {}

    async def execute(
        self, request: bytes, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[bytes]:
        messages = self.responses.get(request) or self.responses.get(b"")
        if messages is None:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, "nothing recorded")
            return
        for message in messages:
            yield message

    async def set(self, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        key, *messages = unframe(request)
        self.responses[key] = messages
        return b""


async def serve(listen: str) -> None:
    from fabric.api.server import channel_options
    from fabric.config import Settings

    server = grpc.aio.server(options=channel_options(Settings.from_env()))
    echo = _Echo()
    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                "fabric.v1.QueryService",
                {"Execute": grpc.unary_stream_rpc_method_handler(echo.execute)},
            ),
            grpc.method_handlers_generic_handler(
                "fabric.bench.Echo", {"Set": grpc.unary_unary_rpc_method_handler(echo.set)}
            ),
        )
    )
    port = server.add_insecure_port(listen)
    await server.start()
    print(f"echo serving on port {port}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop(1.0)


class EchoProcess:
    """The echo service in a subprocess; `stop()` (or the context manager) ends it."""

    def __init__(self) -> None:
        self.proc: subprocess.Popen[str] | None = None
        self.port = 0

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, timeout: float = 30.0) -> EchoProcess:
        from benchmarks.common import ROOT

        self.proc = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.echo"], cwd=ROOT, stdout=subprocess.PIPE, text=True
        )
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        line = self.proc.stdout.readline() if ready else ""  # the port comes first
        if not line.startswith("echo serving on port "):
            self.stop()
            raise RuntimeError(f"echo service did not start: {line!r}")
        self.port = int(line.rsplit(" ", 1)[1])
        return self

    def set(self, request: bytes, messages: Sequence[bytes]) -> None:
        """Answer `request` (b"" = any request) with these response messages."""
        with grpc.insecure_channel(
            self.address, options=[("grpc.max_send_message_length", 1 << 30)]
        ) as channel:
            channel.unary_unary(SET)(frame([request, *messages]), timeout=60)

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        if proc.stdout is not None:
            proc.stdout.close()

    def __enter__(self) -> EchoProcess:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.echo")
    parser.add_argument("--listen", default="127.0.0.1:0")
    args = parser.parse_args(argv)
    asyncio.run(serve(args.listen))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
