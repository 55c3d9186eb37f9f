"""The capacity scenario's load generator, in its own process so its CPU is measured
apart from the servers'.

`python -m benchmarks.load` reads one JSON object on standard input::

    {"addresses": ["127.0.0.1:50061", ...], "requests": [<hex ExecuteRequest>, ...],
     "metadata": [["authorization", "Bearer ..."]], "clients": 16, "warmup": 1.0,
     "seconds": 5.0, "pids": [123, 456]}

and writes one JSON object on standard output: the calls that completed inside the
measured window and their errors, the window's length, the CPU seconds each server pid
used inside that same window (read from /proc/PID/stat at its start and its end, so the
servers' and the load's windows are one and the same), and this process's own CPU
seconds over it. Client `i` talks to `addresses[i % len(addresses)]` on its own channel
(its own TCP connection) and cycles through `requests` (raw `ExecuteRequest` bytes: no
protobuf or Arrow work on this side, so the load costs as little CPU as it can).
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from typing import Any

import grpc

from benchmarks.common import cpu_seconds
from benchmarks.echo import EXECUTE


async def run(spec: dict[str, Any]) -> dict[str, Any]:
    addresses: list[str] = spec["addresses"]
    requests = [bytes.fromhex(r) for r in spec["requests"]]
    metadata = tuple(tuple(pair) for pair in spec["metadata"])
    clients: int = spec["clients"]
    pids: list[int] = spec["pids"]
    options = [("grpc.max_receive_message_length", 1 << 28), ("grpc.use_local_subchannel_pool", 1)]
    channels = [
        grpc.aio.insecure_channel(addresses[i % len(addresses)], options=options)
        for i in range(clients)
    ]
    done = 0
    errors: list[str] = []
    measuring = False
    stop_at = time.perf_counter() + spec["warmup"] + spec["seconds"]

    async def client(index: int, channel: grpc.aio.Channel) -> None:
        nonlocal done
        call = channel.unary_stream(EXECUTE)
        turn = index
        while time.perf_counter() < stop_at:
            request = requests[turn % len(requests)]
            turn += 1
            try:
                received = 0
                async for _message in call(request, timeout=30, metadata=metadata):
                    received += 1
                if not received:
                    errors.append("empty response")
                elif measuring:
                    done += 1
            except grpc.RpcError as exc:
                errors.append(str(exc.code()))

    try:
        tasks = [asyncio.create_task(client(i, ch)) for i, ch in enumerate(channels)]
        await asyncio.sleep(spec["warmup"])
        measuring = True
        errors.clear()
        began, own = time.perf_counter(), time.process_time()
        cpu_before = {pid: cpu_seconds(pid) for pid in pids}
        await asyncio.sleep(max(0.0, stop_at - time.perf_counter()))
        calls = done
        cpu_after = {pid: cpu_seconds(pid) for pid in pids}
        seconds = time.perf_counter() - began
        own = time.process_time() - own
        measuring = False
        await asyncio.gather(*tasks)
    finally:
        for channel in channels:
            await channel.close()
    return {
        "calls": calls,
        "seconds": seconds,
        "calls_per_second": calls / seconds,
        "errors": len(errors),
        "error_kinds": sorted(set(errors))[:5],
        "server_cpu_seconds": {str(pid): cpu_after[pid] - cpu_before[pid] for pid in pids},
        "load_cpu_seconds": own,
    }


def main() -> int:
    spec = json.loads(sys.stdin.read())
    print(json.dumps(asyncio.run(run(spec))), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
